"""Accuracies with 95% bootstrap intervals over test items, and each run's paired difference to a baseline run.

    semift compare BASELINE_PREDICTIONS.jsonl OTHER_PREDICTIONS.jsonl [...] [--resamples 10000] [--seed 0]

Each file is a ``test_predictions.jsonl`` written by ``semift test``; items are paired by id (the files must hold
the same ids). A difference whose interval includes zero is reported as "no difference". Under each run: its most
common prediction and what answering that to every item would score (a run that piled onto one answer scores
about that much without knowing anything).
"""

from __future__ import annotations

import argparse
from typing import Optional

from semift_lightning.analysis.stats import (
    accuracy_interval,
    correctness,
    most_common_prediction,
    paired,
    read_predictions,
    verdict,
)
from semift_lightning.errors import DataError


def answer_pile_up(rows: list[dict]) -> str:
    """The run's most common prediction, its share, and what answering it to every item would score: a collapse
    onto one answer shows here."""
    answer, count = most_common_prediction(rows)
    constant = sum(row["gold"] == answer for row in rows) / len(rows)
    return (f"  most common prediction {answer!r} on {count} of {len(rows)} items ({count / len(rows):.1%}); "
            f"answering {answer!r} to every item would score {constant:.4f}")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="semift compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    baseline_rows = read_predictions(args.baseline)
    baseline = correctness(baseline_rows)
    print(f"{len(baseline)} paired items, {args.resamples} resamples, seed {args.seed}")
    mean, low, high = accuracy_interval(baseline, args.resamples, args.seed)
    print(f"{args.baseline}: accuracy {mean:.4f} [{low:.4f}, {high:.4f}] (baseline)")
    print(answer_pile_up(baseline_rows))
    for path in args.others:
        rows = read_predictions(path)
        try:
            (mean, low, high), (diff, dlow, dhigh) = paired(baseline, correctness(rows), args.resamples, args.seed)
        except ValueError:
            raise DataError(f"{path}: holds other item ids than {args.baseline}") from None
        print(f"{path}: accuracy {mean:.4f} [{low:.4f}, {high:.4f}]; paired difference {diff:+.4f} "
              f"[{dlow:+.4f}, {dhigh:+.4f}]: {verdict(dlow, dhigh)}")
        print(answer_pile_up(rows))

