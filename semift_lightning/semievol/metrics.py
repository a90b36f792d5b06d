"""A round's diagnostics: agreement, answer mixes and (against the pool's gold column) accuracy."""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

from lightning.pytorch.utilities import rank_zero_warn

from semift_lightning.semievol.combine import same_answer
from semift_lightning.semievol.context import RoundContext
from semift_lightning.semievol.contract import RoundData
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.tasks.example import Example


def _scored(records: Sequence[PseudoLabel], gold: dict[str, Optional[str]]) -> list[tuple[PseudoLabel, str]]:
    """(record, gold answer) where the pool's gold answer is known: diagnostics only, never training or selection."""
    return [(r, gold[r.id]) for r in records if gold.get(r.id) is not None]


def _right(task, answer: Optional[str], record: PseudoLabel, gold: str) -> bool:
    return same_answer(task, answer, gold, Example(record.id, "", gold))


def voting_metrics(records: Sequence[PseudoLabel], gold: dict[str, Optional[str]], task) -> dict[str, float]:
    """The pool, how the views agreed, each view's answer mix and (against the gold column) accuracy."""
    finite = [r.uncertainty for r in records if math.isfinite(r.uncertainty)]
    metrics = {"pool": len(records), "agreement_rate": sum(r.unanimous for r in records) / len(records),
               "mean_uncertainty": sum(finite) / len(finite) if finite else float("nan"),
               "no_answer": sum(r.answer is None for r in records)}
    scored = _scored(records, gold)
    if scored:
        metrics["pseudo_label_accuracy"] = sum(_right(task, r.answer, r, g) for r, g in scored) / len(scored)
        for i in range(len(records[0].view_answers)):
            right = sum(_right(task, r.view_answers[i], r, g) for r, g in scored)
            metrics[f"view{i + 1}_accuracy"] = right / len(scored)
    if task.closed_form:  # each view's answer mix: a view that piles onto one option shows here
        for i in range(len(records[0].view_answers)):
            for answer, count in sorted(Counter(r.view_answers[i] for r in records if r.view_answers[i]).items()):
                metrics[f"view{i + 1}_answer_{answer}"] = count
    return metrics


def selection_metrics(records: Sequence[PseudoLabel], gold: dict[str, Optional[str]], task,
                       threshold: Optional[float]) -> dict[str, float]:
    """What was kept: how many, below which uncertainty, its answer mix and (against the gold column) accuracy."""
    selected = [r for r in records if r.selected]
    metrics = {"selected": len(selected), "selected_rate": len(selected) / len(records),
               "threshold": threshold if threshold is not None else float("nan"),
               "capped": sum(r.capped for r in records)}
    if task.closed_form:  # the answer mix of the selection: a pile-up on one option shows here
        for answer in sorted({r.answer for r in records if r.answer is not None}):
            metrics[f"selected_answer_{answer}"] = sum(r.answer == answer for r in selected)
    scored = _scored(records, gold)
    if scored:
        chosen = [(r, g) for r, g in scored if r.selected]
        metrics["selected_accuracy"] = (sum(_right(task, r.answer, r, g) for r, g in chosen) / len(chosen)
                                        if chosen else float("nan"))
    return metrics


def voted_metrics(context: RoundContext, records: Sequence[PseudoLabel], data: RoundData, index: int) -> dict:
    """Log the voted pool's uncertainty histogram, warn when no view answered, and return the voting metrics."""
    if not any(record.selectable for record in records):
        rank_zero_warn(f"pseudo-labeling round {index}: no view answered any item; training goes on with "
                       f"labeled data only")
    context.histogram("semievol/uncertainty", [r.uncertainty for r in records if math.isfinite(r.uncertainty)])
    return voting_metrics(records, data.store.pool_gold, data.task)
