"""Training speed: `semift fit`'s training loop against a plain PyTorch + peft loop, same model, data and batch size.

    python benchmarks/speed/speed_training.py --data-root ../shared/data/semievol [--epochs 1] [--seed 0] \
        [--question-last]
        [--gradient-checkpointing] [--quantization [--max-steps 20]]

Ours: SemiFTModule + SemiFTDataModule in a Lightning Trainer at the precision `semift` picks (bf16-mixed where bf16
is fast, else 32-true), length-grouped batches, the prompt opening all items of a batch share run once for the
batch (`share_prompt_prefix`), logits only at the answer tokens.
Plain (what a typical script does): the same model, LoRA settings and prompt/answer token ids, fp32, shuffled
batches right-padded to their longest item, Hugging Face's loss from logits at every position, AdamW.
With --gradient-checkpointing a third run, ours with `gradient_checkpointing`, shows what recomputing the layers
saves in memory and costs in time. With --quantization the sides are ours in the precision `semift` picks and
ours on a 4-bit (nf4) and an 8-bit (int8) base through bitsandbytes (`--model.quantization`), with the base weights'
size beside the peak RSS. Each runs in its own subprocess, one after the other (so each peak RSS is its
own), on FPB's labeled set. The script prints tokens per second (prompt and answer tokens, padding not counted),
the ratios, the achieved TFLOP/s (model FLOPs of what each computes, see measure.ModelFlops) against GEMM peaks
measured in the same command, and the peak RSS of each process.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device
from measure import ModelFlops, machine, mib, peak_memory_mib, run_sides
from torch.utils.data import DataLoader

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.cli.command import default_precision
from semift_lightning.data.batch import IGNORE_INDEX
from semift_lightning.student.loading import SMOLLM2_135M_INSTRUCT

CHECKPOINTED = "ours, checkpointed"  # the side --gradient-checkpointing adds
QUANTIZED = ("nf4", "int8")  # the bases --quantization compares ours on


def data_and_module(args, gradient_checkpointing: bool = False,
                    quantization: str = "none") -> tuple[SemiFTDataModule, SemiFTModule]:
    datamodule = SemiFTDataModule(task="fpb", root=args.data_root, labeled="fpb/labeled.csv",
                                  batch_size=args.batch_size,
                                  seed=args.seed, question_last=args.question_last)
    return datamodule, SemiFTModule(model=args.model, optimizer={"lr": 3e-4, "warmup_ratio": 0.05},
                                    gradient_checkpointing=gradient_checkpointing, quantization=quantization)


class Meter(L.Callback):
    """Wall time from the first training batch's start to the last one's end; tokens and model FLOPs per batch."""

    def __init__(self) -> None:
        self.start, self.seconds, self.tokens, self.model_flops = None, 0.0, 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None:
            self.start = time.perf_counter()
            self.model_flops = ModelFlops(pl_module.model.get_base_model())
        self.tokens += int(batch["attention_mask"].sum())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the step's kernels have finished
        self.seconds = time.perf_counter() - self.start


def run_ours(args, gradient_checkpointing: bool = False, quantization: str = "none") -> dict:
    L.seed_everything(args.seed)
    datamodule, module = data_and_module(args, gradient_checkpointing, quantization)
    meter = Meter()
    trainer = L.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, precision=default_precision(), logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[meter])
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    return {"seconds": meter.seconds, "tokens": meter.tokens, "flops": meter.model_flops.training_total,
            "steps": trainer.global_step, "weights_mib": module.model.get_base_model().get_memory_footprint() / 2**20}


def right_padded(pad_id: int):
    def collate(items: list[dict]) -> dict:
        width = max(len(item["input_ids"]) for item in items)
        def pad(key, value):
            return torch.tensor([item[key] + [value] * (width - len(item[key])) for item in items])
        return {"input_ids": pad("input_ids", pad_id), "labels": pad("labels", IGNORE_INDEX),
                "attention_mask": torch.tensor([[1] * len(item["input_ids"]) + [0] * (width - len(item["input_ids"]))
                                                for item in items])}
    return collate


def run_plain(args) -> dict:
    """A typical hand-written LoRA loop; the prompts and weights come from our classes so both train on the same
    token ids."""
    L.seed_everything(args.seed)
    datamodule, module = data_and_module(args)
    module.configure_model()  # the same base weights and LoRA settings, fp32
    model = module.model
    datamodule.connect(module.tokenizer)
    items = datamodule.encode("labeled", datamodule.load_split("labeled"), with_target=True)
    loader = DataLoader([{k: item[k] for k in ("input_ids", "labels")} for item in items],
                        batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed),
                        collate_fn=right_padded(module.tokenizer.pad_token_id))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    model_flops = ModelFlops(model.get_base_model())
    model.train()
    tokens, steps = 0, 0
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in loader:
            if steps == args.max_steps:
                break
            batch = move_data_to_device(batch, device)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            tokens += int(batch["attention_mask"].sum())
            steps += 1
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "flops": model_flops.training_total,
            "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder holding fpb/labeled.csv")
    parser.add_argument("--model", default=SMOLLM2_135M_INSTRUCT)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--question-last", action="store_true",
                        help="both loops train on prompts with the question after the options and instruction")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="also run ours with gradient checkpointing")
    parser.add_argument("--quantization", action="store_true", help="ours against ours on an nf4 and an int8 base")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop each side after this many steps")
    sides = {"ours": run_ours, CHECKPOINTED: lambda args: run_ours(args, gradient_checkpointing=True),
             "plain": run_plain, **{f"ours, {q}": partial(run_ours, quantization=q) for q in QUANTIZED}}
    parser.add_argument("--only", choices=list(sides), help=argparse.SUPPRESS)  # one side, in a subprocess
    args = parser.parse_args()
    if args.only:
        result = sides[args.only](args)
        print("RESULT " + json.dumps({**result, **peak_memory_mib()}), flush=True)
        return
    print(f"machine: {machine()}; seed {args.seed}; FPB labeled set, batch size {args.batch_size}, "
          f"{args.epochs} epoch(s), question {'last' if args.question_last else 'first'}")
    if args.quantization:
        chosen = ["ours", *(f"ours, {q}" for q in QUANTIZED)]
    else:
        chosen = [side for side in ("ours", CHECKPOINTED, "plain")
                  if args.gradient_checkpointing or side != CHECKPOINTED]
    results = run_sides(__file__, tuple(chosen))
    print("| loop | steps | seconds | tokens/s | achieved TFLOP/s | MFU (of the best GEMM peak) | peak RSS MiB | "
          "peak GPU MiB | base weights MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for side, r in results.items():
        weights = f"{r['weights_mib']:.2f}" if "weights_mib" in r else "-"
        print(f"| {side} | {r['steps']} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:.1f} | {r['tflops']:.4f} | "
              f"{r['peak_share']:.1%} | {mib(r['peak_rss_mib'])} | {mib(r['peak_gpu_mib'])} | {weights} |")
    speed = {side: r["tokens"] / r["seconds"] for side, r in results.items()}
    if not args.quantization:
        print(f"speed ratio (ours / plain, tokens per second): {speed['ours'] / speed['plain']:.2f}x")
    for side in chosen[1:] if args.quantization else []:
        print(f"{side} against ours: {speed[side] / speed['ours']:.2f}x the tokens per second, "
              f"{results[side]['peak_rss_mib'] / results['ours']['peak_rss_mib']:.2f}x the peak RSS, "
              f"{results[side]['weights_mib'] / results['ours']['weights_mib']:.2f}x the base weights")
    if args.gradient_checkpointing:
        checkpointed, ours = results[CHECKPOINTED], results["ours"]
        print(f"gradient checkpointing: {speed[CHECKPOINTED] / speed['ours']:.2f}x ours' speed, "
              f"{checkpointed['peak_rss_mib'] / ours['peak_rss_mib']:.2f}x its peak RSS")


if __name__ == "__main__":
    main()
