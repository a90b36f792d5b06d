"""When the pseudo-labeling rounds run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Schedule:
    """When the pseudo-labeling rounds run: one schedule for every SemiEvol callback of a fit.

    Args:
        warmup_epochs: labeled-only epochs before the first round; 0: the first round runs when the fit starts,
            with the adapter the student starts from (train one first, or give one as ``--model.adapter``).
        refresh_every_n_epochs: epochs between rounds.
        rounds: how many pseudo-labeling rounds to run.
    """

    warmup_epochs: int = 1
    refresh_every_n_epochs: int = 1
    rounds: int = 1

    def problems(self) -> list[str]:
        """Every problem with the schedule, each naming its field; empty when all are fine."""
        problems = []
        if self.warmup_epochs < 0:
            problems.append(f"warmup_epochs: must be at least 0 (0: the first round runs when the fit starts), "
                            f"got {self.warmup_epochs}")
        if self.refresh_every_n_epochs < 1:
            problems.append(f"refresh_every_n_epochs: must be at least 1, got {self.refresh_every_n_epochs}")
        if self.rounds < 1:
            problems.append(f"rounds: must be at least 1, got {self.rounds}")
        return problems

    def round_due(self, epoch: int) -> Optional[int]:
        """The 1-based round that ends epoch ``epoch`` (0-based; -1: the fit's start), or None."""
        since = epoch + 1 - self.warmup_epochs
        if since < 0 or since % self.refresh_every_n_epochs:
            return None
        index = since // self.refresh_every_n_epochs + 1
        return index if index <= self.rounds else None


def as_schedule(value: Any) -> Schedule:
    """A Schedule from a Schedule, a mapping or a parsed-config namespace; the default one when None."""
    if value is None or isinstance(value, Schedule):
        return value or Schedule()
    return Schedule(**(value if isinstance(value, dict) else vars(value)))
