"""Self-justification against the order its candidates are listed in, replayed on a finished round.

    python benchmarks/experiments/justification_order.py --data-root ../shared/data/semievol \
        --checkpoint runs/NAME/logs/checkpoints/every-epoch=2.ckpt runs/NAME/logs/pseudo_labels_round1.jsonl

The checkpoint must be the one saved at the end of the round's epoch (the round does not change the weights, so it
holds the student the round used; the fit needs an extra ``ModelCheckpoint`` with ``save_top_k: -1`` to keep it).
The round's disputed items (the views' answers in the JSONL) are shown to that student with their candidates in
view order, in option order, in reverse option order, and averaged over every rotation of option order
(``CollaborativeVoting``'s default). For each the script prints the accuracy on the disputes and on the whole pool,
and what the round's selection (θ and per-answer as given) would keep, all against the gold column of the
unlabeled file (a diagnostic: nothing here trains). Scoring is deterministic; no seed is drawn.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speed"))
from measure import machine  # noqa: E402

from semift_lightning import SemiFTModule
from semift_lightning.analysis.report import accuracy, add_data_arguments, benchmark_data, unlabeled_gold
from semift_lightning.cli.command import default_precision
from semift_lightning.semievol.context import RoundContext
from semift_lightning.semievol.records import PseudoLabel, Vote, read_round
from semift_lightning.semievol.selection import EntropySelection
from semift_lightning.semievol.voting import CollaborativeVoting
from semift_lightning.tasks.parsing import LETTERS


def listed(records: list[PseudoLabel], order: str) -> dict[str, list[str]]:
    """Each record's distinct view answers (letters) in view order, option order or reverse option order."""
    letters = {r.id: list(dict.fromkeys(a for a in r.view_answers if a is not None)) for r in records}
    if order == "view":
        return letters
    return {key: sorted(found, key=LETTERS.index, reverse=order == "reverse") for key, found in letters.items()}


def justified_every_way(module, datamodule, disputed: list[PseudoLabel]) -> dict[str, dict[str, Vote]]:
    """The student's picks on the disputes, for each way of listing their candidates (no Trainer: one process)."""
    pool = [e for e in datamodule.load_split("unlabeled") if e.id in {r.id for r in disputed}]
    examples = {e.id: e for e in pool}
    ways = {"view order": ("view", False), "option order": ("option", False),
            "reverse option order": ("reverse", False), "averaged over rotations": ("option", True)}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    context = RoundContext(device, precision=default_precision())
    picks = {}
    with context.inference(module.to(device)):
        for name, (order, average) in ways.items():
            candidates = {key: [datamodule.task.proposed_answer(examples[key], letter) for letter in letters]
                          for key, letters in listed(disputed, order).items()}
            voting = CollaborativeVoting(average_candidate_orders=average)
            picks[name] = voting.justify(context, module, datamodule, pool, candidates)
    return picks


def replayed(records: list[PseudoLabel], picks: dict[str, Vote]) -> list[PseudoLabel]:
    """Copies of the round's records, the disputes' answers and uncertainties taken from ``picks``."""
    return [replace(record, answer=picks[record.id].answer, uncertainty=picks[record.id].uncertainty)
            if record.id in picks else replace(record) for record in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="the fit's checkpoint from the end of the round's epoch (it names the model)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--keep-fraction", type=float, default=0.5, help="θ of the replayed selection")
    parser.add_argument("--answer-mix", choices=["pool", "labeled"], default="pool",
                        help="the replayed per-answer selection's answer mix")
    parser.add_argument("round", metavar="PSEUDO_LABELS_ROUND_JSONL")
    args = parser.parse_args()
    records = read_round(args.round)
    if not any(r.disputed for r in records):
        raise SystemExit(f"{args.round}: no disputed items, nothing to justify")
    datamodule = benchmark_data(args.data_root, args.task, args.config)
    datamodule.eval_batch_size = args.eval_batch_size
    gold, labeled = unlabeled_gold(datamodule), datamodule.labeled_answers()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    module = SemiFTModule(**checkpoint["hyper_parameters"])  # the model and LoRA shape it was trained with
    datamodule.connect(module.tokenizer, module.max_context_length)
    module.configure_model()
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    disputed = [r for r in records if r.disputed]
    every_way = justified_every_way(module, datamodule, disputed)

    recorded = {r.id: r.answer for r in disputed}
    selection = EntropySelection(keep_fraction=args.keep_fraction, per_answer=True, answer_mix=args.answer_mix)
    print(f"machine: {machine()}; {args.round}: {len(records)} items, "
          f"{len(disputed)} disputed; selection θ={args.keep_fraction} per answer, answer mix {args.answer_mix}")
    print("| candidates listed | right on disputes | same pick as the round | picks | pool accuracy | selected "
          "(accuracy) |")
    print("|---|---|---|---|---|---|")
    for name, picks in every_way.items():
        answers = [{"id": key, "answer": vote.answer} for key, vote in picks.items()]
        same = sum(vote.answer == recorded[key] for key, vote in picks.items()) / len(picks)
        pool = replayed(records, picks)
        selection.select(pool, labeled)
        kept = [r.as_dict() for r in pool if r.selected]
        mix = dict(sorted(Counter(str(a["answer"]) for a in answers).items()))
        print(f"| {name} | {accuracy(answers, gold):.1%} | {same:.1%} | {mix} | "
              f"{accuracy([r.as_dict() for r in pool], gold):.1%} | {len(kept)} ({accuracy(kept, gold):.1%}) |")


if __name__ == "__main__":
    main()
