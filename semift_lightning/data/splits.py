"""Seeded splits and subsamples of examples, and the test-leakage check."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

from semift_lightning.tasks.example import Example


def same_items(examples: Sequence[Example], others: Sequence[Example]) -> list[tuple[Example, Example]]:
    """Pairs (item of ``examples``, item of ``others``) with the same question and options, case and whitespace
    aside: how test items leak into training data."""
    def key(example: Example) -> tuple:
        return " ".join(example.question.split()).casefold(), example.options

    first = {}
    for other in others:
        first.setdefault(key(other), other)
    return [(example, first[key(example)]) for example in examples if key(example) in first]


def check_fractions(fractions: Sequence[float]) -> list[str]:
    """Problems with split fractions (empty list when they are fine)."""
    problems = [f"fraction {f} is not in [0, 1]" for f in fractions if not 0 <= f <= 1]
    if abs(sum(fractions) - 1) > 1e-6:
        problems.append(f"fractions {list(fractions)} sum to {sum(fractions):g}, not 1")
    return problems


def split_examples(examples: Sequence[Example], fractions: Sequence[float], seed: int) -> list[list[Example]]:
    """Shuffle with ``seed`` and cut into consecutive parts of the given fractions (deterministic)."""
    problems = check_fractions(fractions)
    if problems:
        raise ValueError("; ".join(problems))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    bounds = [round(sum(fractions[:i]) * len(order)) for i in range(len(fractions) + 1)]
    return [[examples[j] for j in order[bounds[i]:bounds[i + 1]]] for i in range(len(fractions))]


def subsample(examples: Sequence[Example], limit: Optional[int], seed: int) -> list[Example]:
    """At most ``limit`` examples, chosen with ``seed``, in their original order."""
    if limit is None or limit >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


@dataclass
class SplitSizes:
    """Upper bounds on the items used from each split (a seeded subsample); unset means all.

    Args:
        labeled: labeled training items.
        unlabeled: unlabeled items.
        val: validation items.
        test: test items.
    """

    labeled: Optional[int] = None
    unlabeled: Optional[int] = None
    val: Optional[int] = None
    test: Optional[int] = None


def carve_validation(examples: Sequence[Example], fraction: float, seed: int,
                     by_answer: bool) -> tuple[list[Example], list[Example]]:
    """(train, validation): a seeded ``fraction`` of ``examples`` for validation, in their original order. With
    ``by_answer`` the fraction is taken within each answer, at least one item of an answer that has two or more."""
    groups: dict[Optional[str], list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(example.answer if by_answer else None, []).append(i)
    rng = random.Random(f"{seed}/val")
    chosen: set[int] = set()
    for answer in sorted(groups, key=str):
        members = groups[answer]
        count = round(fraction * len(members))
        count = max(count, 1) if by_answer and len(members) > 1 else count
        chosen.update(rng.sample(members, min(count, len(members) - 1)))
    return ([e for i, e in enumerate(examples) if i not in chosen],
            [e for i, e in enumerate(examples) if i in chosen])
