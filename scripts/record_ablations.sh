#!/usr/bin/env bash
# Record chapter 9's multi-seed ablations in book/results/ (too slow for CI; CI re-runs
# one seed of each live and checks it against the record):
#
#   bash scripts/record_ablations.sh               # both, seeds 0,1,2
#   bash scripts/record_ablations.sh fisher        # the Fisher flavours only
#   bash scripts/record_ablations.sh four_tasks    # the four-task sequence only
#
# fisher:     KFAC under each Fisher flavour (exact; MC with 1 and 8 sampled labels;
#             empirical), CNN, cpu profile, diseases -> drugs, λ re-chosen on dev per flavour
#             and seed (kfac_tutorial.experiments.fisher_ablation)
#             -> book/results/ablation_fisher_cnn.json
# four_tasks: the four-task sequence phenotypes -> diseases -> drugs -> icd10cm, CNN, ci
#             profile, per-task sums and online merges of EWC and KFAC
#             -> book/results/four_tasks_cnn.json (one process per seed, merged)
# Every file records its command, the package version and the git commit. Offline.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SEEDS="${SEEDS:-0 1 2}"
THREADS="${THREADS:-1}"
OUT="${OUT:-book/results}"
what=("$@")
[ "${#what[@]}" -eq 0 ] && what=(fisher four_tasks)
mkdir -p "$OUT/parts"
pids=()
for w in "${what[@]}"; do
    case "$w" in
    fisher)
        python3 -m kfac_tutorial.experiments.fisher_ablation --model cnn --profile cpu \
            --tasks diseases,drugs --seeds "$(echo $SEEDS | tr ' ' ,)" --threads "$THREADS" --no-progress \
            --out "$OUT/ablation_fisher_cnn.json" > "$OUT/parts/ablation_fisher_cnn.log" 2>&1 &
        pids+=($!) ;;
    four_tasks)
        for seed in $SEEDS; do
            python3 -m kfac_tutorial.experiments --model cnn --profile ci \
                --methods finetune,ewc,kfac,ewc_online,kfac_online \
                --tasks phenotypes,diseases,drugs,icd10cm --seeds "$seed" --threads "$THREADS" --no-progress \
                --out "$OUT/parts/four_tasks_cnn_seed${seed}.json" > "$OUT/parts/four_tasks_cnn_seed${seed}.log" 2>&1 &
            pids+=($!)
        done ;;
    *) echo "unknown ablation $w: choose fisher or four_tasks"; exit 2 ;;
    esac
done
for pid in "${pids[@]}"; do wait "$pid" || echo "a run failed (pid $pid): see $OUT/parts/*.log"; done
if [[ " ${what[*]} " == *" four_tasks "* ]] && compgen -G "$OUT/parts/four_tasks_cnn_seed*.json" > /dev/null; then
    python3 - "$OUT/four_tasks_cnn.json" "$OUT"/parts/four_tasks_cnn_seed*.json <<'PY'
import sys
from kfac_tutorial.experiments import read_results, write_json_atomic
from kfac_tutorial.experiments.seeds import merge_recorded
parts = sorted((read_results(p) for p in sys.argv[2:]), key=lambda r: r["seed"])
write_json_atomic(sys.argv[1], merge_recorded(*parts))
print("wrote", sys.argv[1], "from", len(parts), "parts")
PY
fi
