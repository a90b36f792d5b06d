"""Test accuracies with 95% bootstrap intervals and paired differences, from ``test_predictions.jsonl`` files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a ``test_predictions.jsonl`` written by ``semift test``, or of its compact form (one line
    ``{"columns": {field: [value per item]}}``, as ``benchmarks/results`` keeps them)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) == 1 and set(rows[0]) == {"columns"}:
        columns = rows[0]["columns"]
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
    return rows


def correctness(rows: list[dict]) -> dict[str, float]:
    """Item id -> 1.0 where the prediction was right, else 0.0."""
    return {row["id"]: float(bool(row["correct"])) for row in rows}


def interval(values: torch.Tensor, resamples: int = 10000, generator: torch.Generator | None = None
             ) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of the mean of ``values`` (seed 0 unless a generator is given)."""
    generator = generator or torch.Generator().manual_seed(0)
    picks = torch.randint(len(values), (resamples, len(values)), generator=generator)
    means = values[picks].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    return values.mean().item(), low, high


def _in_id_order(scores: dict[str, float]) -> torch.Tensor:
    return torch.tensor([scores[i] for i in sorted(scores)], dtype=torch.float64)


def accuracy_interval(scores: dict[str, float], resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy and its 95% bootstrap interval, from item id -> correctness (items in id order, so the same run
    gives the same interval as in ``paired``)."""
    return interval(_in_id_order(scores), resamples, torch.Generator().manual_seed(seed))


def paired(baseline: dict[str, float], other: dict[str, float], resamples: int = 10000, seed: int = 0
           ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(accuracy interval of ``other``, interval of its paired difference to ``baseline``); both map the same item
    ids to correctness."""
    if sorted(other) != sorted(baseline):
        raise ValueError("the two runs hold different test item ids; pair runs of the same test set")
    values = _in_id_order(other)
    return (accuracy_interval(other, resamples, seed),
            interval(values - _in_id_order(baseline), resamples, torch.Generator().manual_seed(seed)))


def most_common_prediction(rows: list[dict]) -> tuple[str, int]:
    """The most common prediction of a run's rows and how many rows give it: a run that piled onto one answer
    shows here."""
    return Counter(row["prediction"] for row in rows).most_common(1)[0]


def verdict(low: float, high: float) -> str:
    """A paired difference's reading: "no difference" where its interval includes zero."""
    return "no difference" if low <= 0 <= high else ("better" if low > 0 else "worse")
