"""Input noise for a student that learns from a teacher's labels: words dropped from the text it reads."""

from __future__ import annotations

import random


def drop_words(text: str, fraction: float, rng: random.Random) -> str:
    """``text`` with each word dropped with probability ``fraction`` (at least one word stays)."""
    words = text.split()
    kept = [word for word in words if rng.random() >= fraction]
    return " ".join(kept or words[:1])
