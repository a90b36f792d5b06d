"""The ``Example`` record: one task item as every part of the product sees it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Example:
    """One task item. ``answer`` is canonical (a letter for multiple choice) or None when unknown."""

    id: str
    question: str
    answer: Optional[str] = None
    options: Optional[tuple[str, ...]] = None
    category: Optional[str] = None
    row: Optional[int] = field(default=None, compare=False, repr=False)  # 1-based row in its file, for messages

    @property
    def fingerprint(self) -> str:
        """A hash of the question and the options: what a pseudo-label made for this item is bound to, so that it
        never trains another question that took the item's id or row."""
        text = json.dumps([self.question, list(self.options or ())], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
