"""Pure helpers on option scores that the student and the SemiEvol stages share."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from semift_lightning.tasks.parsing import LETTERS


def option_vote(scores: torch.Tensor, option_count: int) -> tuple[Optional[str], torch.Tensor]:
    """The letter with the highest score among the first ``option_count`` and the distribution over them;
    (None, empty) when no option has a finite score."""
    valid = scores[:option_count]
    if not torch.isfinite(valid).any():
        return None, torch.empty(0)
    probs = valid.float().softmax(-1).cpu()
    return LETTERS[int(probs.argmax())], probs


def normalized_entropy(probs: torch.Tensor) -> float:
    """Shannon entropy over the options divided by log(option count): 0 is certain, 1 is uniform."""
    if probs.numel() < 2:
        return 0.0
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return float(entropy / math.log(probs.numel()))


def quantile_threshold(values: Sequence[float], keep_fraction: float) -> float:
    """The largest value among the ``keep_fraction`` smallest (at least one kept)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(keep_fraction * len(ordered))) - 1]


def em_prior(probs: torch.Tensor, trained_prior: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """The class prior of the items whose posteriors are the rows of ``probs``, as EM estimates it from a model
    trained under ``trained_prior`` (Saerens, Latinne and Decaestecker 2002)."""
    prior = trained_prior.clone()
    for _ in range(steps):
        adjusted = probs * (prior / trained_prior)
        prior = (adjusted / adjusted.sum(1, keepdim=True)).mean(0)
    return prior


def align_to_prior(probs: torch.Tensor, prior: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The rows of ``probs`` re-weighted, class by class, until their mean is ``prior`` (each row stays a
    distribution; distribution alignment as AdaMatch and SoftMatch do it)."""
    aligned = probs.clone()
    for _ in range(steps):
        aligned = aligned * (prior / aligned.mean(0).clamp_min(1e-12))
        aligned = aligned / aligned.sum(1, keepdim=True)
    return aligned
