#!/usr/bin/env bash
# FPB with SmolLM2-135M-Instruct: vanilla, SFT-only (3 epochs = 171 optimizer steps) and SemiEvol
# (1 labeled-only epoch, one pseudo-labeling round, 1 epoch on labeled + at most as many selected pseudo-labels:
# 57 + 113 = 170 steps, so the SFT run is the equal-steps baseline). Usage: benchmarks/fpb_semievol_vs_sft.sh DATA_ROOT [RECIPE]
set -euo pipefail
root=${1:?pass the folder holding fpb/*.csv}
recipe=${2:-callbacks/semievol_light.yaml}
stamp() { date +%s; }
t0=$(stamp); semift test -c configs/fpb.yaml --data.root "$root" --trainer.logger.init_args.save_dir runs/fpb_vanilla
t1=$(stamp); semift fit -c configs/fpb.yaml --data.root "$root" --trainer.logger.init_args.save_dir runs/fpb_sft
t2=$(stamp); semift test -c configs/fpb.yaml --data.root "$root" --trainer.logger.init_args.save_dir runs/fpb_sft \
  --ckpt_path runs/fpb_sft/logs/checkpoints/last.ckpt
t3=$(stamp); semift fit -c configs/fpb.yaml -c "$recipe" --data.root "$root" --trainer.max_epochs 2 --data.max_pseudo_ratio 1.0 \
  --trainer.logger.init_args.save_dir runs/fpb_semievol
t4=$(stamp); semift test -c configs/fpb.yaml --data.root "$root" --trainer.logger.init_args.save_dir runs/fpb_semievol \
  --ckpt_path runs/fpb_semievol/logs/checkpoints/last.ckpt
t5=$(stamp)
for run in fpb_vanilla fpb_sft fpb_semievol; do
  python -c "import json,sys; s=json.load(open('runs/$run/logs/test_summary.json')); print(f'$run: accuracy {s[\"accuracy\"]:.4f} on {s[\"count\"]} items')"
done
echo "seconds: vanilla test $((t1-t0)), SFT fit $((t2-t1)), SFT test $((t3-t2)), SemiEvol fit $((t4-t3)), SemiEvol test $((t5-t4))"
