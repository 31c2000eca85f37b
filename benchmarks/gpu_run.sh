#!/usr/bin/env bash
# On a GPU machine prepared by benchmarks/gpu_carry.sh (carry .gpu): the benchmarks on
# CUDA (BERT-base-sized and MiniLM estimation, training steps, growth) and the full-scale
# BERT experiment (every concept with a test mention, diseases → drugs → phenotypes) with one λ per method,
# each under a time limit; everything lands in $OUT (JSON, logs).
#   BENCH_SECONDS, GROWTH_SECONDS, FULL_SECONDS: the limits (defaults 170, 60, 330);
#   BENCH_DEVICE (default cuda; cpu for a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KFAC_PROGRESS_INTERVAL=30
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
mkdir -p /tmp/kfac_cache/tasks /tmp/minilm
for f in .gpu/cache/tasks/*.gz; do gunzip -c "$f" > "/tmp/kfac_cache/tasks/$(basename "$f" .gz)"; done
export KFAC_CACHE=/tmp/kfac_cache KFAC_BERT_CHECKPOINT=/tmp/minilm
cp .gpu/minilm/*.json .gpu/minilm/vocab.txt /tmp/minilm/
python3 -c "
import torch; from safetensors.torch import load_file, save_file
s = load_file('.gpu/minilm/model.fp16.safetensors')
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in s.items()}, '/tmp/minilm/model.safetensors')
print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
DEV="${BENCH_DEVICE:-cuda}"
timeout "${BENCH_SECONDS:-170}" python3 -m benchmarks --device "$DEV" --skip-methods "laplace diag" --sections estimation,step \
    --workloads cnn,minilm,bert-base --step-workloads minilm,bert-base --step-examples 2048 --repeats 5 \
    --out "$OUT/benchmarks_gpu.json" 2>&1 | tee "$OUT/benchmarks_gpu.log"
timeout "${GROWTH_SECONDS:-60}" python3 -m benchmarks --device "$DEV" --sections growth --repeats 5 \
    --out "$OUT/benchmarks_gpu.json" 2>&1 | tee -a "$OUT/benchmarks_gpu.log"
timeout "${FULL_SECONDS:-330}" python3 -m kfac_tutorial.experiments --model bert --profile full \
    --methods finetune,kfac,ewc --lambda kfac=1e5 --lambda ewc=1e6 --tasks diseases,drugs,phenotypes \
    --out "$OUT/full_bert.json" 2>&1 | tr '\r' '\n' | tee "$OUT/full_bert.log" | tail -40
ls -la "$OUT"
