"""Pseudo-labeling speed: our option-scoring round against the reference approach, same model, prompts, n and data.

    python benchmarks/speed/speed_pseudo_labeling.py --data-root ../shared/data/semievol [--items 96] [--adapter DIR] \
        [--question-last]

Ours: one SemiEvol round as ``semift fit`` runs it, through ``run_round`` (in-context propagation with k=6, the four
views of ``callbacks/semievol.yaml``, each one forward pass scoring all options, self-justification of disputes).
Reference (what SemiEvol's published code does): for every item n=4 sampled generations at temperature 1.0 from the
student with its 3 nearest labeled demonstrations (the neighbours are given to it for free), the answer parsed from
each text, majority vote, and one reflection generation (greedy, shown the candidates) where the samples disagree.
Each runs in its own subprocess on the same weights and seeded pool, one after the other (so each peak RSS is its
own); the script prints items per second of each, the ratio, both pseudo-label accuracies against the gold column (a
diagnostic, as in training), the achieved TFLOP/s of each (model FLOPs of every decoder call, see measure.ModelFlops)
against GEMM peaks measured in the same command, seeds and the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device
from measure import ModelFlops, machine, mib, peak_memory_mib, run_sides

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.cli.command import default_precision
from semift_lightning.data.splits import SplitSizes
from semift_lightning.semievol.context import RoundContext
from semift_lightning.semievol.propagation import InContextPropagation
from semift_lightning.semievol.selection import EntropySelection
from semift_lightning.semievol.stage import run_round
from semift_lightning.semievol.views import View
from semift_lightning.semievol.voting import CollaborativeVoting
from semift_lightning.student.loading import SMOLLM2_135M_INSTRUCT

N_SAMPLES = 4


def reference_round(module, datamodule, pool, neighbours, max_new_tokens: int, seed: int) -> dict:
    """n sampled generations per item, majority, reflection on disagreements; returns id -> answer."""
    task = datamodule.task
    demos = {key: value[:3] for key, value in neighbours.items()}
    answers, disputed = {}, {}
    torch.manual_seed(seed)
    for batch in datamodule.pool_loader("unlabeled", pool, demonstrations=demos):
        batch = move_data_to_device(batch, module.device)
        texts, _ = module.generate_with_nll(batch, do_sample=True, temperature=1.0, num_return_sequences=N_SAMPLES,
                                            max_new_tokens=max_new_tokens)
        for i, example in enumerate(batch["examples"]):
            votes = [task.parse(text, example) for text in texts[i * N_SAMPLES:(i + 1) * N_SAMPLES]]
            counted = Counter(vote for vote in votes if vote is not None)
            answers[example.id] = counted.most_common(1)[0][0] if counted else None
            if len(counted) > 1:
                disputed[example.id] = [task.proposed_answer(example, vote) for vote in counted]
    if disputed:
        items = [example for example in pool if example.id in disputed]
        for batch in datamodule.pool_loader("unlabeled", items, candidates=disputed):
            batch = move_data_to_device(batch, module.device)
            texts, _ = module.generate_with_nll(batch, max_new_tokens=max_new_tokens)
            for example, text in zip(batch["examples"], texts):
                answers[example.id] = task.parse(text, example) or answers[example.id]
    return {"answers": answers, "disputed": len(disputed)}


def accuracy(answers: dict, gold: dict) -> float:
    return sum(answers.get(key) == value for key, value in gold.items()) / len(gold)


def run_side(args, side: str, scratch: str) -> dict:
    """One side in this process: the same seeded pool, weights and (for the reference) neighbours as the other.
    Ours runs one round with ``run_round`` (no Trainer, no training step), its JSONL into ``scratch``."""
    L.seed_everything(args.seed)
    module = SemiFTModule(model=args.model, adapter=args.adapter)
    datamodule = SemiFTDataModule(task="fpb", root=args.data_root, labeled="fpb/labeled.csv",
                                  unlabeled="fpb/unlabeled.csv", sizes=SplitSizes(unlabeled=args.items), batch_size=8,
                                  eval_batch_size=args.eval_batch_size, seed=args.seed,
                                  question_last=args.question_last)
    datamodule.connect(module.tokenizer, module.max_context_length)
    datamodule.setup("fit")
    module.configure_model()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    context = RoundContext(device, scratch, precision=default_precision())
    propagation = InContextPropagation(k=6)
    flops = ModelFlops(module.model.get_base_model())
    gold = datamodule.store.pool_gold
    if side == "ours":
        views = [View(k=3), View(k=3, neighbour_offset=3), View(k=0), View(adapter="base", k=3)]
        stages = [propagation, CollaborativeVoting(views=views), EntropySelection(keep_fraction=0.5)]
        metrics = run_round(module, datamodule, stages, context=context)
        answers = {record.id: record.answer for record in datamodule.store.records}
        seconds = sum(value for key, value in metrics.items() if key.endswith("_seconds"))
        return {"seconds": seconds, "flops": flops.total, "items": len(answers), "accuracy": accuracy(answers, gold)}
    pool = datamodule.load_split("unlabeled")
    with context.inference(module):
        similar = propagation.similar(context, module, datamodule, pool)  # given to the reference for free
        neighbours = {key: [example for example, _ in row] for key, row in similar.items()}
        flops = ModelFlops(module.model.get_base_model())
        start = time.perf_counter()
        reference = reference_round(module, datamodule, pool, neighbours, args.max_new_tokens, args.seed)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "flops": flops.total, "items": len(pool), "disputed": reference["disputed"],
            "accuracy": accuracy(reference["answers"], gold)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder holding fpb/*.csv")
    parser.add_argument("--items", type=int, default=96, help="unlabeled items (a seeded subset)")
    parser.add_argument("--model", default=SMOLLM2_135M_INSTRUCT)
    parser.add_argument("--adapter", help="a saved adapter to pseudo-label with (default: a fresh, untrained one)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="reference generation length")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="items per scoring batch, both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--question-last", action="store_true",
                        help="both approaches use prompts with the question after the options and instruction")
    parser.add_argument("--only", choices=["ours", "reference"], help=argparse.SUPPRESS)  # one side, in a subprocess
    args = parser.parse_args()
    if args.only:
        with tempfile.TemporaryDirectory() as scratch:
            result = run_side(args, args.only, scratch)
        print("RESULT " + json.dumps({**result, **peak_memory_mib()}), flush=True)
        return
    print(f"machine: {machine()}; seed {args.seed}; {args.items} FPB unlabeled items, batches of "
          f"{args.eval_batch_size}, question {'last' if args.question_last else 'first'}")
    results = run_sides(__file__, ("ours", "reference"))
    described = {"ours": "ICP k=6 + 4 option-scoring views + self-justification",
                 "reference": f"{N_SAMPLES} samples at T=1.0 with 3 demonstrations, "
                              f"{results['reference']['disputed']} reflections, max {args.max_new_tokens} new tokens"}
    print("| approach | items | seconds | items/s | pseudo-label accuracy | achieved TFLOP/s | MFU (of the best GEMM "
          "peak) | peak RSS MiB | peak GPU MiB | what it runs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for side, r in results.items():
        print(f"| {side} | {r['items']} | {r['seconds']:.1f} | {r['items'] / r['seconds']:.3f} | {r['accuracy']:.3f} | "
              f"{r['tflops']:.4f} | {r['peak_share']:.1%} | {mib(r['peak_rss_mib'])} | {mib(r['peak_gpu_mib'])} | "
              f"{described[side]} |")
    rate = {side: r["items"] / r["seconds"] for side, r in results.items()}
    print(f"speed ratio (ours / reference): {rate['ours'] / rate['reference']:.1f}x")


if __name__ == "__main__":
    main()
