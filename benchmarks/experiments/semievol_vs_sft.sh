#!/usr/bin/env bash
# One task config: vanilla, SFT-only for the config's epochs, SemiEvol (labeled-only warm-up epochs, one
# pseudo-labeling round, then labeled + selected), and SFT-only for as many optimizer steps as SemiEvol took.
# Prints every test accuracy, the round's numbers and the wall time of each stage. Seed: the config's.
# Usage: benchmarks/experiments/semievol_vs_sft.sh CONFIG DATA_ROOT [RECIPE [SEMIFT_FIT_ARGS...]]
#   CONFIG: e.g. configs/fpb.yaml; runs go to runs/<config name>_{vanilla,sft,semievol,sft_equal_steps}.
#   DATA_ROOT: the folder the config's files are relative to, or - for a config whose data needs none (mmlu).
#   RECIPE default: callbacks/semievol_light.yaml; the default SEMIFT_FIT_ARGS (the published runs) warm up for 3
#   epochs of a 4-epoch fit.
#   COMMON_ARGS (environment, split on spaces): semift arguments for every run, e.g. a fixed subset
#   "--data.sizes.labeled 300 --data.sizes.unlabeled 900 --data.sizes.test 300".
#   BENCH_MODEL (environment, kept whole, so a path may hold spaces): the model of every run (--model.model).
#   BENCH_PARALLEL=1 (environment): the vanilla test and the SFT fit and test run in the background beside the
#   SemiEvol chain, for a GPU that one small model leaves mostly idle; each stage's seconds then include the sharing.
set -euo pipefail
config=${1:?pass a task config, e.g. configs/fpb.yaml}
root=${2:?pass the data folder, or - for none}
recipe=${3:-callbacks/semievol_light.yaml}
shift $(( $# < 3 ? $# : 3 ))
schedule=("$@")
if [ ${#schedule[@]} -eq 0 ]; then
  schedule=(--trainer.max_epochs 4 --semievol.warmup_epochs 3)
fi
name=$(basename "$config" .yaml)
every_run=(); [ "$root" = - ] || every_run=(--data.root "$root")
read -ra common <<< "${COMMON_ARGS:-}"
every_run+=("${common[@]}")
[ -z "${BENCH_MODEL:-}" ] || every_run+=(--model.model "$BENCH_MODEL")
ckpt() { echo "runs/${name}_$1/logs/checkpoints/last.ckpt"; }
run_fit() { local run=$1; shift; semift fit -c "$config" "${every_run[@]}" --trainer.logger.init_args.save_dir "runs/${name}_$run" "$@"; }
run_test() { semift test -c "$config" "${every_run[@]}" --trainer.logger.init_args.save_dir "runs/${name}_$1" ${2:+--ckpt_path "$2"}; }
timing=$(mktemp)
trap 'rm -f "$timing"' EXIT
timed() { local label=$1 start; shift; start=$(date +%s); "$@"; echo "$label=$(( $(date +%s) - start ))" >> "$timing"; }
sft_runs() {
  timed "vanilla test" run_test vanilla
  timed "SFT fit" run_fit sft
  timed "SFT test" run_test sft "$(ckpt sft)"
}

if [ "${BENCH_PARALLEL:-0}" = 1 ]; then sft_runs & beside=$!; else sft_runs; fi
timed "SemiEvol fit" run_fit semievol -c "$recipe" "${schedule[@]}"
timed "SemiEvol test" run_test semievol "$(ckpt semievol)"
steps=$(python -c "import torch; print(torch.load('$(ckpt semievol)', weights_only=True)['global_step'])")
timed "equal-steps SFT fit" run_fit sft_equal_steps --trainer.max_epochs -1 --trainer.max_steps "$steps"
timed "its test" run_test sft_equal_steps "$(ckpt sft_equal_steps)"
[ -z "${beside:-}" ] || wait "$beside"

for run in vanilla sft semievol sft_equal_steps; do
  python -c "import json; s = json.load(open('runs/${name}_$run/logs/test_summary.json')); print(f'${name}_$run: test accuracy {s[\"accuracy\"]:.4f} on {s[\"count\"]} items')"
done
python - "$(ckpt semievol)" <<'PY'
import sys, torch
checkpoint = torch.load(sys.argv[1], weights_only=True)
rounds = {}
for state in checkpoint["callbacks"].values():  # each SemiEvol callback keeps its own stage's metrics
    for metrics in state.get("history", []):
        rounds.setdefault(metrics["round"], {}).update(metrics)
for metrics in rounds.values():
    print("round:", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
PY
echo "SemiEvol optimizer steps: $steps"
seconds=""
for label in "vanilla test" "SFT fit" "SFT test" "SemiEvol fit" "SemiEvol test" "equal-steps SFT fit" "its test"; do
  seconds+="${seconds:+, }$label $(grep "^$label=" "$timing" | cut -d= -f2)"
done
echo "seconds: $seconds"
