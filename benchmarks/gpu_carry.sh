#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored through .git/info/exclude) for a GPU machine that has PyTorch
# and transformers but no network and none of our data or model packages:
#   .gpu/whl/      the peer libraries as wheels (pure Python);
#   .gpu/cache/    the task splits built here (gzip), served by load_task without the
#                  vocabulary packages (see kfac_tutorial.data.task._cached_without_source);
#   .gpu/minilm/   the offline MiniLM: config and tokenizer, weights in float16 to fit the
#                  transfer limit (max relative rounding 4.5e-4), restored to float32 there.
# Then on the GPU machine: bash benchmarks/gpu_run.sh (writes into $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && (grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude)
mkdir -p .gpu/whl .gpu/cache/tasks .gpu/minilm
python -c "import kfac_tutorial.data as d; [d.load_task(n) for n in ('diseases', 'drugs', 'phenotypes')]"
for n in diseases drugs phenotypes; do
  f="$(python -c "import kfac_tutorial.data as d; print(d.cache_path('$n'))")"
  gzip -c "$f" > ".gpu/cache/tasks/$(basename "$f").gz"
done
pip download -q --no-deps -d .gpu/whl curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv==0.1.0 \
    unfoldNd==0.2.3 nngeometry==0.4 laplace-torch==0.3 asdfghjkl==0.1a4
python - <<'PY'
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kfac_tutorial.linkers import default_checkpoint

src, dst = Path(default_checkpoint()), Path(".gpu/minilm")
for f in ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
    shutil.copy(src / f, dst / f)
state = load_file(src / "model.safetensors")
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()},
          dst / "model.fp16.safetensors")
PY
du -sh .gpu
