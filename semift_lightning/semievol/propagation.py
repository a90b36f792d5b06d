"""In-context propagation: each pool item's nearest labeled items in the student's latent space."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import lightning as L
import torch

from semift_lightning.errors import ArgumentError
from semift_lightning.semievol.context import RoundContext, map_pool
from semift_lightning.semievol.contract import HiddenStates, RoundData
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.stage import SemiEvolStage
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task


class InContextPropagation(SemiEvolStage):
    """Finds, for every unlabeled item, its nearest labeled items in the student's latent space (mean-pooled
    last hidden states, L2-normalised, cosine similarity) and writes them into the item's record (``neighbours``);
    views with ``k > 0`` show them as demonstrations. Alone, it labels nothing.

    Args:
        k: neighbours kept per item (views use up to ``k``; 0 turns propagation off).
        schedule: when the rounds run (the same in every SemiEvol callback).
    """

    stage = "propagation"
    position = 0

    def __init__(self, k: int = 3, schedule: Optional[Schedule] = None) -> None:
        super().__init__(schedule, k=k)

    @classmethod
    def argument_problems(cls, **given: Any) -> list[str]:
        k = cls.arguments(given)["k"]
        return super().argument_problems(**given) + ([f"k: must be at least 0, got {k}"] if k < 0 else [])

    def module_needs(self, task: Task, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        return [HiddenStates] if self.k else []

    def check(self, datamodule: RoundData, stages: Sequence[SemiEvolStage]) -> None:
        labeled = datamodule.load_split("labeled")
        if self.k > len(labeled):
            raise ArgumentError(f"propagation.k: k={self.k} is larger than the labeled set ({len(labeled)} items)")

    def process(self, context, module, data, pool, index) -> tuple[list[PseudoLabel], dict]:
        with context.inference(module):
            found = self.similar(context, module, data, pool)
        records = [PseudoLabel(example.id, neighbours=[(neighbour.id, similarity)
                                                      for neighbour, similarity in found.get(example.id, [])])
                   for example in pool]
        nearest = [record.neighbours[0][1] for record in records if record.neighbours]
        return records, {"nearest_similarity": sum(nearest) / len(nearest) if nearest else float("nan")}

    def similar(self, context: RoundContext, module: L.LightningModule, datamodule: RoundData,
                pool: Sequence[Example]) -> dict[str, list[tuple[Example, float]]]:
        """Each pool item's ``k`` nearest labeled items with their cosine similarities, nearest first."""
        if self.k == 0 or not pool:
            return {}
        labeled = datamodule.load_split("labeled")
        embed = lambda batch: _mean_pooled(module, batch)  # noqa: E731
        labeled_vectors = map_pool(context, module, datamodule, "labeled", labeled, embed, "embedding labeled",
                                    embed=True)
        pool_vectors = map_pool(context, module, datamodule, "unlabeled", pool, embed, "embedding unlabeled",
                                 embed=True)
        keys = torch.stack([labeled_vectors[e.id] for e in labeled])
        queries = torch.stack([pool_vectors[e.id] for e in pool])
        nearest = (queries @ keys.T).topk(self.k, dim=1)
        return {example.id: [(labeled[j], similarity) for j, similarity in zip(rows, values)]
                for example, rows, values in zip(pool, nearest.indices.tolist(), nearest.values.tolist())}


def _mean_pooled(module, batch) -> list[torch.Tensor]:
    hidden = module.hidden_states(batch["input_ids"], batch["attention_mask"]).float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    return list(torch.nn.functional.normalize(pooled, dim=-1).cpu())
