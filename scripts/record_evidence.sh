#!/usr/bin/env bash
# Record the multi-seed comparison of chapters 7-9 (issue 11) in book/results/:
#
#   bash scripts/record_evidence.sh            # CNN and BERT, seeds 0,1,2
#   bash scripts/record_evidence.sh cnn        # one model
#   SEEDS="0 1 2 3 4" bash scripts/record_evidence.sh cnn
#
# One process per model and seed, in parallel (CPU-bound: on a shared machine the seeds
# then share the cores instead of queueing). Each process runs the headline methods
# (finetune, ewc, kfac) first, then the baselines (l2, frozen, joint), into
# book/results/parts/; a run cut short still leaves the finished parts. The parts are then
# merged into book/results/evidence_<model>.json (kfac_tutorial.experiments.merge_recorded:
# a method's results do not depend on the other methods of its run, since task 0 is
# shared and every later task re-seeded). Every file records its command, the package
# version and the git commit. cpu profile, offline. Merge again at any time with
#   bash scripts/record_evidence.sh --merge-only cnn
# After a change of the code that alters one method's numbers (the live re-run of a
# chapter then no longer reproduces its record), re-record that method alone; its new
# parts replace the older ones at the merge:
#   bash scripts/record_evidence.sh --rerun kfac cnn
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SEEDS="${SEEDS:-0 1 2}"
TASKS="${TASKS:-phenotypes,diseases,drugs}"
THREADS="${THREADS:-1}"
PROGRESS_FLAG=--no-progress   # PROGRESS=1: tqdm bars in the per-seed logs
[ "${PROGRESS:-0}" = 1 ] && PROGRESS_FLAG=
OUT="${OUT:-book/results}"
merge_only=0
rerun=""
if [ "${1:-}" = "--merge-only" ]; then merge_only=1; shift; fi
if [ "${1:-}" = "--rerun" ]; then rerun="$2"; shift 2; fi
models=("$@")
[ "${#models[@]}" -eq 0 ] && models=(cnn bert)
mkdir -p "$OUT/parts"

one_seed() {  # model seed
    if [ -n "$rerun" ]; then
        python3 -m kfac_tutorial.experiments --model "$1" --methods "$rerun" --tasks "$TASKS" \
            --profile cpu --seeds "$2" --threads "$THREADS" $PROGRESS_FLAG \
            --out "$OUT/parts/evidence_${1}_seed${2}_rerun_${rerun//,/_}.json"
        return
    fi
    for part in main baselines; do
        methods=finetune,ewc,kfac
        [ "$part" = baselines ] && methods=l2,frozen,joint
        python3 -m kfac_tutorial.experiments --model "$1" --methods "$methods" --tasks "$TASKS" \
            --profile cpu --seeds "$2" --threads "$THREADS" $PROGRESS_FLAG \
            --out "$OUT/parts/evidence_${1}_seed${2}_${part}.json" || return 1
    done
}

if [ "$merge_only" = 0 ]; then
    pids=()
    for model in "${models[@]}"; do
        for seed in $SEEDS; do
            one_seed "$model" "$seed" > "$OUT/parts/evidence_${model}_seed${seed}.log" 2>&1 &
            pids+=($!)
        done
    done
    for pid in "${pids[@]}"; do wait "$pid" || echo "a seed run failed (pid $pid): see $OUT/parts/*.log"; done
fi
for model in "${models[@]}"; do
    compgen -G "$OUT/parts/evidence_${model}_seed*_*.json" > /dev/null || { echo "no parts for $model yet"; continue; }
    python3 - "$OUT/evidence_${model}.json" "$OUT"/parts/evidence_"${model}"_seed*_*.json <<'PY'
import sys
from kfac_tutorial.experiments import read_results, write_json_atomic
from kfac_tutorial.experiments.seeds import merge_recorded
import os
# per seed: re-recorded methods first (newest first), then the main part, then the baselines;
# a method in several parts is taken from the first (merge_recorded)
def rank(path):
    name = os.path.basename(path)
    return (0, -os.path.getmtime(path)) if "_rerun_" in name else (1 if name.endswith("_main.json") else 2, 0)
paths = sorted(sys.argv[2:], key=rank)
parts = sorted((read_results(p) for p in paths), key=lambda r: r["seed"])  # stable: keeps the rank order per seed
write_json_atomic(sys.argv[1], merge_recorded(*parts))
print("wrote", sys.argv[1], "from", len(parts), "parts")
PY
done
