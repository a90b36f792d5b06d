"""Restarting the student after a round: what trains next starts from the base model, not the warmed-up adapter."""

from __future__ import annotations

from typing import Optional, Sequence

from lightning.pytorch.utilities import rank_zero_info

from semift_lightning.semievol.contract import RestartableStudent
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.stage import SemiEvolStage
from semift_lightning.tasks.kinds import Task


class RestartStudent(SemiEvolStage):
    """After the round, the student starts again from a fresh LoRA adapter, optimizer state and learning-rate
    schedule, and the epochs after it train that from the base model on labeled ∪ selected (as ReST-EM and Noisy
    Student do against confirmation bias) instead of continuing the warmed-up adapter. The module needs
    ``restart_adapter()``; the records stay as the stages before left them.

    Args:
        schedule: when the rounds run (the same in every SemiEvol callback).
    """

    stage = "restart"
    position = 40

    def __init__(self, schedule: Optional[Schedule] = None) -> None:
        super().__init__(schedule)

    def module_needs(self, task: Task, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        return [RestartableStudent]

    def process(self, context, module, data, pool, index) -> tuple[list[PseudoLabel], dict]:
        module.restart_adapter()
        rank_zero_info(f"pseudo-labeling round {index}: the student restarts from a fresh adapter")
        return list(data.store.records_of(index)), {}
