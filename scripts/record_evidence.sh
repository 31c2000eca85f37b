#!/usr/bin/env bash
# Record the multi-seed comparison of chapters 7-9 (issue 11) in book/results/:
#
#   bash scripts/record_evidence.sh            # CNN then BERT, seeds 0,1,2
#   bash scripts/record_evidence.sh cnn        # one model
#   SEEDS=0,1,2,3,4 bash scripts/record_evidence.sh cnn
#
# Two runs per model, merged: the headline methods (finetune, ewc, kfac) first, then the
# baselines (finetune again for their reductions, l2, frozen, joint), so that a run cut
# short still holds the headline comparison. A method's results do not depend on the
# other methods of its run (task 0 is shared, every later task re-seeded). Each JSON
# records its commands, the package version and the git commit. cpu profile, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SEEDS="${SEEDS:-0,1,2}"
TASKS="${TASKS:-phenotypes,diseases,drugs}"
THREADS="${THREADS:-1}"
OUT="${OUT:-book/results}"
models=("$@")
[ "${#models[@]}" -eq 0 ] && models=(cnn bert)
for model in "${models[@]}"; do
    for part in main baselines; do
        methods=finetune,ewc,kfac
        [ "$part" = baselines ] && methods=finetune,l2,frozen,joint
        python3 -m kfac_tutorial.experiments --model "$model" --methods "$methods" --tasks "$TASKS" \
            --profile cpu --seeds "$SEEDS" --threads "$THREADS" --no-progress \
            --out "$OUT/evidence_${model}_${part}.json"
    done
    python3 - "$OUT/evidence_${model}_main.json" "$OUT/evidence_${model}_baselines.json" \
        "$OUT/evidence_${model}.json" <<'PY'
import sys
from kfac_tutorial.experiments import read_results, write_json_atomic
from kfac_tutorial.experiments.seeds import merge_recorded
write_json_atomic(sys.argv[3], merge_recorded(*(read_results(p) for p in sys.argv[1:3])))
print("wrote", sys.argv[3])
PY
done
