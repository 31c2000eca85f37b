#!/usr/bin/env bash
# Record the multi-seed comparison of chapters 7-9 (issue 11) in book/results/:
#
#   bash scripts/record_evidence.sh            # CNN and BERT, seeds 0,1,2 (sequentially)
#   bash scripts/record_evidence.sh cnn        # one model
#   SEEDS=0,1,2,3,4 bash scripts/record_evidence.sh cnn
#
# Each JSON records the command, the package version and the git commit
# (kfac_tutorial.experiments.__main__.run_provenance). cpu profile, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SEEDS="${SEEDS:-0,1,2}"
METHODS="${METHODS:-finetune,ewc,kfac,l2,frozen,joint}"
TASKS="${TASKS:-phenotypes,diseases,drugs}"
THREADS="${THREADS:-1}"
models=("$@")
[ "${#models[@]}" -eq 0 ] && models=(cnn bert)
for model in "${models[@]}"; do
    python3 -m kfac_tutorial.experiments --model "$model" --methods "$METHODS" --tasks "$TASKS" \
        --profile cpu --seeds "$SEEDS" --threads "$THREADS" --no-progress \
        --out "book/results/evidence_${model}.json"
done
