"""What a pseudo-labeling round did, against the gold column of the task's unlabeled file (a diagnostic only).

    python benchmarks/round_report.py --data-root ../shared/data/semievol [--task arc] \
        runs/NAME/logs/pseudo_labels_round1.jsonl
    python benchmarks/round_report.py --config runs/NAME/logs/config.yaml runs/NAME/logs/pseudo_labels_round1.jsonl

The second form takes the unlabeled split (and its gold column) from the data section of the run's saved config,
for data that is not a TASK/unlabeled.csv file (e.g. configs/mmlu.yaml's seeded split of one source).

Prints the pool's pseudo-label accuracy, each view's accuracy and answer mix, how the disputed items were
resolved (each view's and the final answer's accuracy on them), and the selection's size, accuracy and answer mix.
"""

from __future__ import annotations

import argparse
from collections import Counter

from figures import accuracy, add_data_arguments, benchmark_data, unlabeled_gold
from semift_lightning.pseudo_labels import PseudoLabel, read_round


def percent(part: float) -> str:
    return f"{100 * part:.1f}%"


def answers(records: list[PseudoLabel]) -> list[dict]:
    return [{"id": r.id, "answer": r.answer} for r in records]


def view_answers(records: list[PseudoLabel], view: int) -> list[dict]:
    return [{"id": r.id, "answer": r.view_answers[view]} for r in records]


def answer_mix(records: list[dict]) -> dict:
    return dict(sorted(Counter(str(r["answer"]) for r in records).items()))


def report(records: list[PseudoLabel], gold: dict) -> list[str]:
    views = range(len(records[0].view_answers))
    lines = [f"pool: {len(records)} items, pseudo-label accuracy {percent(accuracy(answers(records), gold))}, all "
             f"views agree on {percent(sum(r.unanimous for r in records) / len(records))}",
             f"gold mix: {answer_mix([{'answer': gold[r.id]} for r in records])}"]
    for i in views:
        given = view_answers(records, i)
        lines.append(f"view {i + 1}: accuracy {percent(accuracy(given, gold))}, answers {answer_mix(given)}")
    disputed = [r for r in records if r.disputed]
    if disputed:
        right = ", ".join(f"view {i + 1} {percent(accuracy(view_answers(disputed, i), gold))}" for i in views)
        how = "self-justification" if any(r.justified for r in disputed) else "majority"
        lines.append(f"disputed: {len(disputed)} items; right on them: {right}; final answer ({how}) "
                     f"{percent(accuracy(answers(disputed), gold))}")
    selected = answers([r for r in records if r.selected])
    if selected:
        lines.append(f"selected: {len(selected)} ({percent(len(selected) / len(records))}), accuracy "
                     f"{percent(accuracy(selected, gold))}, answers {answer_mix(selected)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("rounds", nargs="+", metavar="PSEUDO_LABELS_ROUND_JSONL")
    args = parser.parse_args()
    gold = unlabeled_gold(benchmark_data(args.data_root, args.task, args.config))
    for path in args.rounds:
        print(f"== {path}")
        print("\n".join(report(read_round(path), gold)))


if __name__ == "__main__":
    main()
