#!/usr/bin/env bash
# FPB with SmolLM2-135M-Instruct: vanilla, SFT-only for 3 epochs, SemiEvol (labeled-only warm-up epochs, one
# pseudo-labeling round, then labeled + selected), and SFT-only for as many optimizer steps as SemiEvol took.
# Prints every test accuracy, the round's numbers and the wall time of each stage. Seed: configs/fpb.yaml (42).
# Usage: benchmarks/fpb_semievol_vs_sft.sh DATA_ROOT [RECIPE [SEMIFT_FIT_ARGS...]]
#   RECIPE default: callbacks/semievol_light.yaml; the default SEMIFT_FIT_ARGS (the published run) warm up for 3
#   epochs of a 4-epoch fit.
set -euo pipefail
root=${1:?pass the folder holding fpb/*.csv}
recipe=${2:-callbacks/semievol_light.yaml}
shift $(( $# < 2 ? $# : 2 ))
schedule=("$@")
if [ ${#schedule[@]} -eq 0 ]; then
  schedule=(--trainer.max_epochs 4 --propagation.init_args.warmup_epochs 3 --voting.init_args.warmup_epochs 3
            --selection.init_args.warmup_epochs 3)
fi
stamp() { date +%s; }
ckpt() { echo "runs/$1/logs/checkpoints/last.ckpt"; }
run_test() { semift test -c configs/fpb.yaml --data.root "$root" --trainer.logger.init_args.save_dir "runs/$1" ${2:+--ckpt_path "$2"}; }

t0=$(stamp); run_test fpb_vanilla
t1=$(stamp); semift fit -c configs/fpb.yaml --data.root "$root" --trainer.logger.init_args.save_dir runs/fpb_sft
t2=$(stamp); run_test fpb_sft "$(ckpt fpb_sft)"
t3=$(stamp); semift fit -c configs/fpb.yaml -c "$recipe" --data.root "$root" --trainer.logger.init_args.save_dir runs/fpb_semievol \
  "${schedule[@]}"
t4=$(stamp); run_test fpb_semievol "$(ckpt fpb_semievol)"
t5=$(stamp)
steps=$(python -c "import torch; print(torch.load('$(ckpt fpb_semievol)', weights_only=True)['global_step'])")
semift fit -c configs/fpb.yaml --data.root "$root" --trainer.logger.init_args.save_dir runs/fpb_sft_equal_steps \
  --trainer.max_epochs -1 --trainer.max_steps "$steps"
t6=$(stamp); run_test fpb_sft_equal_steps "$(ckpt fpb_sft_equal_steps)"
t7=$(stamp)

for run in fpb_vanilla fpb_sft fpb_semievol fpb_sft_equal_steps; do
  python -c "import json; s = json.load(open('runs/$run/logs/test_summary.json')); print(f'$run: test accuracy {s[\"accuracy\"]:.4f} on {s[\"count\"]} items')"
done
python - "$(ckpt fpb_semievol)" <<'EOF'
import sys, torch
checkpoint = torch.load(sys.argv[1], weights_only=True)
history = next((state["history"] for state in checkpoint["callbacks"].values() if state.get("history")), [])
for metrics in history:  # every SemiEvol callback keeps the same history: print one
    print("round:", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
print(f"SemiEvol optimizer steps: {checkpoint['global_step']}")
EOF
echo "seconds: vanilla test $((t1-t0)), SFT fit $((t2-t1)), SFT test $((t3-t2)), SemiEvol fit $((t4-t3)), SemiEvol test $((t5-t4)), equal-steps SFT fit $((t6-t5)), its test $((t7-t6))"
