"""Class-prior alignment: the round's option distributions re-weighted so that the pool's answer mix matches a
prior, against a committee or student that under-predicts a class."""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn

from semift_lightning.distributions import align_to_prior, em_prior, normalized_entropy
from semift_lightning.errors import ArgumentError
from semift_lightning.semievol.contract import LabeledAnswers, RoundData
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.stage import SemiEvolStage
from semift_lightning.tasks.parsing import LETTERS


class PriorAlignment(SemiEvolStage):
    """Re-weights every record's option distribution, class by class, until their mean over the pool is a target
    prior, and sets each record's answer and uncertainty from its aligned distribution (the views' own answers
    stay). The target is the labeled set's answer shares (add-one smoothed), mixed with the pool's own prior as EM
    estimates it from the distributions (Saerens et al. 2002) by ``pool_weight``. USB's strongest methods at few
    labels (AdaMatch, SoftMatch) align pseudo-labels this way. Closed-form tasks whose items share their options;
    it runs after voting and before selection, and logs the pool's answer mix before and after.

    Args:
        pool_weight: the share of the pool's EM estimate in the target prior, in [0, 1] (0: the labeled shares).
        steps: re-weighting and EM iterations.
        schedule: when the rounds run (the same in every SemiEvol callback).
    """

    stage = "alignment"
    position = 20

    def __init__(self, pool_weight: float = 0.5, steps: int = 5, schedule: Optional[Schedule] = None) -> None:
        super().__init__(schedule, pool_weight=pool_weight, steps=steps)

    @classmethod
    def argument_problems(cls, **given: Any) -> list[str]:
        arguments = cls.arguments(given)
        problems = super().argument_problems(**given)
        if not 0 <= arguments["pool_weight"] <= 1:
            problems.append(f"pool_weight: must be in [0, 1], got {arguments['pool_weight']}")
        if arguments["steps"] < 1:
            problems.append(f"steps: must be at least 1, got {arguments['steps']}")
        return problems

    def datamodule_needs(self) -> list[type]:
        return [LabeledAnswers]

    def check(self, datamodule: RoundData, stages: Sequence[SemiEvolStage]) -> None:
        if not datamodule.task.closed_form:
            raise ArgumentError(f"alignment: needs a closed-form task (option distributions); "
                                f"{datamodule.task.name!r} has free-form answers")
        if not any(stage.labels_pool for stage in stages):
            raise ArgumentError("alignment: aligns the distributions voting makes; add a CollaborativeVoting or "
                                "CommitteeVoting stage")

    def process(self, context, module, data, pool, index) -> tuple[list[PseudoLabel], dict]:
        records = data.store.records_of(index)
        answered = [r for r in records if r.probs]
        count = len(answered[0].probs) if answered else 0
        if not answered or any(len(r.probs) != count for r in answered):
            rank_zero_warn(f"pseudo-labeling round {index}: no common option distributions to align; the records "
                           f"stay as voting left them")
            return records, {}
        shares = Counter(data.labeled_answers())
        labeled = torch.tensor([shares[letter] + 1.0 for letter in LETTERS[:count]])
        labeled /= labeled.sum()
        probs = torch.tensor([r.probs for r in answered], dtype=torch.float64)
        pool = em_prior(probs, labeled.double(), self.steps)
        target = (1 - self.pool_weight) * labeled.double() + self.pool_weight * pool
        aligned = align_to_prior(probs, target, self.steps)
        for record, row in zip(answered, aligned):
            record.probs = row.tolist()
            record.answer = LETTERS[int(row.argmax())]
            record.uncertainty = normalized_entropy(row)
        metrics = {}
        for name, mix in (("before", probs.mean(0)), ("target", target), ("after", aligned.mean(0))):
            metrics.update({f"prior_{name}_{letter}": float(share) for letter, share in zip(LETTERS, mix)})
        return records, metrics
