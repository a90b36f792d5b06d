"""Entropy selection: which pseudo-labels train."""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence

from lightning.pytorch.utilities import rank_zero_warn

from semift_lightning.distributions import quantile_threshold
from semift_lightning.semievol.contract import LabeledAnswers, RoundData
from semift_lightning.semievol.metrics import selection_metrics, voted_metrics
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.stage import SemiEvolStage
from semift_lightning.semievol.views import scorer_protocol, student_accuracy, student_answers
from semift_lightning.tasks.kinds import Task

VALIDATION = "validation"  # EntropySelection(keep_fraction=...): θ measured on the validation split


class EntropySelection(SemiEvolStage):
    """Keeps the pseudo-labels whose uncertainty is at or below the θ-quantile of the round's pool.

    Args:
        keep_fraction: θ, the fraction of answered items kept, in (0, 1]; or "validation": θ is the student's
            accuracy on the validation split at the round (STraTA's rule: keep as large a fraction as the student is
            accurate), logged as ``semievol/keep_fraction``.
        always_keep_unanimous: also keep every item all views agreed on.
        per_answer: apply θ within each answer separately, so that the kept items have the answer mix of the pool
            instead of piling up on the answer the student is surest of. Free-form answers group by what they
            mean (``Task.answer_key``: the number, or the normalised text).
        answer_mix: with ``per_answer``, whose answer mix the kept items follow. ``"pool"``: θ of each option's
            items. ``"labeled"``: θ of all answered items, shared among the options in the labeled set's
            proportions, the least uncertain of each option first; an option short of its share keeps all it
            has and the rest is not refilled. This guards against a bias every view shares (the pool piling
            up on one option), at the cost of fewer kept items. Closed-form tasks only.
        max_pseudo_ratio: at most this many selected items per labeled item: the least uncertain stay, the rest
            are marked ``capped`` (unset: no cap).
        schedule: when the rounds run (the same in every SemiEvol callback).

    Selection never votes: without a voting stage before it, it ranks the student's own answers (one view, no
    demonstrations).
    """

    stage = "selection"
    position = 30
    selects = True

    def __init__(self, keep_fraction: float | str = 0.5, always_keep_unanimous: bool = False, per_answer: bool = False,
                 answer_mix: str = "pool", max_pseudo_ratio: Optional[float] = None,
                 schedule: Optional[Schedule] = None) -> None:
        super().__init__(schedule, keep_fraction=keep_fraction, always_keep_unanimous=always_keep_unanimous,
                         per_answer=per_answer, answer_mix=answer_mix, max_pseudo_ratio=max_pseudo_ratio)

    @classmethod
    def argument_problems(cls, **given: Any) -> list[str]:
        arguments = cls.arguments(given)
        keep_fraction, per_answer = arguments["keep_fraction"], arguments["per_answer"]
        answer_mix, max_pseudo_ratio = arguments["answer_mix"], arguments["max_pseudo_ratio"]
        problems = super().argument_problems(**given)
        if max_pseudo_ratio is not None and not max_pseudo_ratio > 0:
            problems.append(f"max_pseudo_ratio: must be positive or unset, got {max_pseudo_ratio}")
        if keep_fraction != VALIDATION and not (isinstance(keep_fraction, (int, float)) and 0 < keep_fraction <= 1):
            problems.append(f"keep_fraction (θ): must be in (0, 1], got {keep_fraction!r} (or {VALIDATION!r}: θ from "
                            f"the student's validation accuracy)")
        if answer_mix not in ("pool", "labeled"):
            problems.append(f"answer_mix: must be 'pool' or 'labeled', got {answer_mix!r}")
        elif answer_mix == "labeled" and not per_answer:
            problems.append("answer_mix: 'labeled' shares θ among answer options, so it needs per_answer=True")
        return problems

    def module_needs(self, task: Task, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        labels_alone = not any(stage.position < self.position and stage.labels_pool for stage in stages)
        return [scorer_protocol(task)] if self.keep_fraction == VALIDATION or labels_alone else []

    def check(self, datamodule: RoundData, stages: Sequence[SemiEvolStage]) -> None:
        if self.keep_fraction == VALIDATION and not datamodule.load_split("val"):
            raise ValueError("EntropySelection: keep_fraction='validation' needs validation data (data.val or "
                             "data.val_fraction)")
        if self.answer_mix == "labeled" and not datamodule.task.closed_form:
            raise ValueError(f"EntropySelection: answer_mix='labeled' needs a closed-form task; "
                             f"{datamodule.task.name!r} has free-form answers")

    def process(self, context, module, data, pool, index) -> tuple[list[PseudoLabel], dict]:
        records = data.store.records_of(index)
        metrics: dict[str, Any] = {}
        if not any(record.voted for record in records):  # no voting this round: the student's own answers
            neighbours = {record.id: record.neighbours for record in records}  # propagation's, where it ran
            with context.inference(module):
                records = student_answers(context, module, data, pool)
            for record in records:
                record.neighbours = neighbours.get(record.id, [])
            metrics = voted_metrics(context, records, data, index)
        keep_fraction = student_accuracy(context, module, data, "val") if self.keep_fraction == VALIDATION else None
        labeled_answers = data.labeled_answers() if self.answer_mix == "labeled" else ()
        threshold = self.select(records, labeled_answers, data.task, keep_fraction)
        if self.max_pseudo_ratio is not None:
            limit = int(self.max_pseudo_ratio * len(data.load_split("labeled")))
            selected = sorted((r for r in records if r.selected), key=lambda r: (r.uncertainty, r.id))
            for record in selected[limit:]:
                record.selected, record.capped = False, True
        metrics.update(selection_metrics(records, data.store.pool_gold, data.task, threshold))
        if keep_fraction is not None:
            metrics["keep_fraction"] = keep_fraction
        if not metrics["selected"]:
            rank_zero_warn(f"pseudo-labeling round {index}: every candidate was rejected; training goes on with "
                           f"labeled data only")
        return records, metrics

    def datamodule_needs(self) -> list[type]:
        return [LabeledAnswers] if self.answer_mix == "labeled" else []

    def select(self, records: list[PseudoLabel], labeled_answers: Sequence[str] = (), task: Optional[Task] = None,
               keep_fraction: Optional[float] = None) -> Optional[float]:
        """Sets every record's ``selected`` flag (a record without an answer or with an infinite uncertainty is
        never kept); returns the threshold (with ``per_answer``, the largest of the answers').

        ``labeled_answers``: the labeled set's gold answers, which ``answer_mix="labeled"`` needs. ``task``: its
        ``answer_key`` groups answers that mean the same (unset: the answers as they are). ``keep_fraction``: θ
        when it is ``"validation"`` (the round measures it).
        """
        keep_fraction = self.keep_fraction if keep_fraction is None else keep_fraction
        if not isinstance(keep_fraction, (int, float)):
            raise ValueError("EntropySelection: keep_fraction='validation' needs the round's measured θ")
        key = task.answer_key if task is not None else (lambda answer: answer)
        if self.answer_mix == "labeled" and not labeled_answers:
            raise ValueError("EntropySelection: answer_mix='labeled' needs the labeled set's answers; none given")
        for record in records:
            record.selected = False
        answered = [r for r in records if r.selectable]
        groups: dict[Optional[str], list[PseudoLabel]] = {}
        for record in answered:
            groups.setdefault(key(record.answer) if self.per_answer else None, []).append(record)
        shares = Counter(map(key, labeled_answers))
        thresholds = []
        for answer, group in groups.items():
            if self.answer_mix == "labeled":
                quota = round(keep_fraction * len(answered) * shares[answer] / len(labeled_answers))
                kept = sorted(group, key=lambda r: (r.uncertainty, r.id))[:quota]
            else:
                threshold = quantile_threshold([r.uncertainty for r in group], keep_fraction)
                kept = [r for r in group if r.uncertainty <= threshold]
            thresholds += [max(r.uncertainty for r in kept)] if kept else []
            for record in kept + [r for r in group if self.always_keep_unanimous and r.unanimous]:
                record.selected = True
        return max(thresholds, default=None)
