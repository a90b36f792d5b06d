"""What a pseudo-labeling round did, against the gold column of the task's unlabeled file (a diagnostic only).

    semift report --data-root ../shared/data/semievol [--task arc] runs/NAME/logs/pseudo_labels_round1.jsonl
    semift report --config runs/NAME/logs/config.yaml runs/NAME/logs/pseudo_labels_round1.jsonl

The second form takes the unlabeled split (and its gold column) from the data section of the run's saved config,
for data that is not a TASK/unlabeled.csv file (e.g. configs/mmlu.yaml's seeded split of one source).

Prints the pool's pseudo-label accuracy, each view's accuracy and answer mix, how the disputed items were
resolved (each view's and the final answer's accuracy on them), and the selection's size, accuracy and answer mix.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Optional

import yaml
from jsonargparse import ArgumentParser

from semift_lightning.data.datamodule import SemiFTDataModule
from semift_lightning.semievol.records import PseudoLabel, read_round


def benchmark_data(data_root: Optional[str] = None, task: str = "fpb",
                   config: Optional[str] = None) -> SemiFTDataModule:
    """The data a run used: ``<data_root>/<task>/{labeled,unlabeled}.csv``, or the ``data`` section of the
    ``config.yaml`` a run saved (for data that is not such files, e.g. a seeded split of one source)."""
    if config is None:
        return SemiFTDataModule(task=task, root=data_root, labeled=f"{task}/labeled.csv",
                                unlabeled=f"{task}/unlabeled.csv")
    parser = ArgumentParser()
    parser.add_class_arguments(SemiFTDataModule, "data")
    data = yaml.safe_load(Path(config).read_text())["data"]
    return parser.instantiate(parser.parse_object({"data": data})).data


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-root", help="folder holding TASK/labeled.csv and TASK/unlabeled.csv")
    source.add_argument("--config", help="a run's saved config.yaml, whose data section names the splits")
    parser.add_argument("--task", default="fpb", help="task preset and folder name under --data-root")


def unlabeled_gold(datamodule: SemiFTDataModule) -> dict:
    """Gold answers of the unlabeled split by item id: for diagnostics only."""
    datamodule.load_split("unlabeled")
    return datamodule.store.pool_gold


def accuracy(records: list[dict], gold: dict) -> float:
    """The share of ``records`` whose answer is the gold one (a diagnostic)."""
    return sum(r["answer"] == gold[r["id"]] for r in records) / len(records)


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
        how = " (self-justification)" if any(r.justified for r in disputed) else ""  # else: the stage's combiner
        lines.append(f"disputed: {len(disputed)} items; right on them: {right}; final answer{how} "
                     f"{percent(accuracy(answers(disputed), gold))}")
    selected = answers([r for r in records if r.selected])
    if selected:
        lines.append(f"selected: {len(selected)} ({percent(len(selected) / len(records))}), accuracy "
                     f"{percent(accuracy(selected, gold))}, answers {answer_mix(selected)}")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="semift report", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("rounds", nargs="+", metavar="PSEUDO_LABELS_ROUND_JSONL")
    args = parser.parse_args(argv)
    gold = unlabeled_gold(benchmark_data(args.data_root, args.task, args.config))
    for path in args.rounds:
        print(f"== {path}")
        print("\n".join(report(read_round(path), gold)))

