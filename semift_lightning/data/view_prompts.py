"""Training prompts in the forms a round's views read: with demonstrations, or with proposed answers."""

from __future__ import annotations

import random
from typing import Sequence

from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task
from semift_lightning.tasks.parsing import LETTERS


def draw_view_prompts(examples: Sequence[Example], labeled: Sequence[Example], task: Task, rng: random.Random,
                      fraction: float, demonstration_count: int, own_demonstration: bool) -> dict[str, dict]:
    """Demonstrations and proposed answers for a drawn ``fraction`` of ``examples``: half of them with
    ``demonstration_count`` labeled items as demonstrations, and (closed-form tasks) half with the gold answer and
    another option as proposed answers, in a drawn order. ``own_demonstration`` False: an item is never its own
    demonstration (the labeled split)."""
    chosen = rng.sample(list(examples), round(fraction * len(examples)))
    with_candidates = chosen[len(chosen) // 2:] if task.closed_form else []
    demonstrations = {}
    for example in chosen[:len(chosen) - len(with_candidates)]:
        others = [other for other in rng.sample(list(labeled), min(len(labeled), demonstration_count + 1))
                  if own_demonstration or other.id != example.id]
        demonstrations[example.id] = others[:demonstration_count]
    candidates = {}
    for example in with_candidates:
        other = rng.choice([letter for letter in LETTERS[:len(example.options)] if letter != example.answer])
        candidates[example.id] = [task.proposed_answer(example, answer)
                                  for answer in rng.sample((example.answer, other), 2)]
    return {"demonstrations": demonstrations, "candidates": candidates}
