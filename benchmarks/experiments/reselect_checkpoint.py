"""A checkpoint saved at the end of a pseudo-labeling round's epoch, with the round's selection redone at another θ.

    python benchmarks/experiments/reselect_checkpoint.py --data-root ../shared/data/semievol --keep-fraction 0.3 \
        runs/NAME/logs/checkpoints/every-epoch=2.ckpt runs/NAME_theta0.3.ckpt
    semift fit ... (the run's own arguments) --ckpt_path runs/NAME_theta0.3.ckpt

For sweeps of θ (and of the answer mix) that share the warm-up and the round: the round's records (answers and
uncertainties, in the DataModule's state) stay as they are, only which of them are selected changes, exactly as
``EntropySelection(keep_fraction, per_answer=True, answer_mix)`` selects during a fit (the labeled split's answers
are read for ``answer_mix: labeled``). A fit resumed from the new file does not recompute the finished round and
trains its remaining epochs on labeled + the new selection. Prints how many items each selection keeps; the input
file is not changed and the output is written atomically.
"""

from __future__ import annotations

import argparse

import torch

from semift_lightning.analysis.report import add_data_arguments, benchmark_data
from semift_lightning.files import atomic_write
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.semievol.selection import EntropySelection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--keep-fraction", type=float, required=True, help="θ of the new selection")
    parser.add_argument("--answer-mix", choices=["pool", "labeled"], default="pool")
    parser.add_argument("checkpoint", help="saved at the end of the round's epoch")
    parser.add_argument("out", help="the new checkpoint file")
    args = parser.parse_args()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = checkpoint.get("SemiFTDataModule", {})
    if not state.get("pseudo_labels"):
        raise SystemExit(f"{args.checkpoint}: holds no pseudo-labels; pass the checkpoint of a round's epoch")
    records = [PseudoLabel.from_dict(record, f"{args.checkpoint}: pseudo-label {number}")
               for number, record in enumerate(state["pseudo_labels"], start=1)]
    before = sum(r.selected for r in records)
    selection = EntropySelection(keep_fraction=args.keep_fraction, per_answer=True, answer_mix=args.answer_mix)
    selection.select(records, benchmark_data(args.data_root, args.task, args.config).labeled_answers())
    state["pseudo_labels"] = [record.as_dict() for record in records]
    atomic_write(args.out, lambda handle: torch.save(checkpoint, handle), binary=True)
    print(f"{args.checkpoint}: round {state['pseudo_round']}, {len(records)} items, {before} selected; "
          f"{args.out}: θ={args.keep_fraction} per answer, answer mix {args.answer_mix}: "
          f"{sum(r.selected for r in records)} selected")


if __name__ == "__main__":
    main()
