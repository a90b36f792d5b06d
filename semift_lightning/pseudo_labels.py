"""Typed records of a pseudo-labeling round: one view's ``Vote`` on an item, and the item's ``PseudoLabel``, which the
SemiEvol callbacks fill stage by stage in the store (the DataModule). Checkpoints and the round's JSONL hold them as
plain dicts (``as_dict`` / ``PseudoLabel.from_dict``)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from semift_lightning.errors import CheckpointError


@dataclass
class Vote:
    """One view's answer to one item.

    Args:
        answer: the canonical answer (an option letter for closed-form tasks), or None when the view gave none.
        uncertainty: normalised entropy of ``probs`` (closed-form) or the answer's mean NLL (free-form); inf without
            an answer.
        probs: closed-form tasks: the distribution over the item's options.
        text: free-form tasks: the generated text the answer was parsed from.
    """

    answer: Optional[str]
    uncertainty: float = math.inf
    probs: list[float] = field(default_factory=list)
    text: Optional[str] = None


@dataclass
class PseudoLabel:
    """One unlabeled item's state in a round. In-context propagation sets ``neighbours``; collaborative voting the
    answer, its uncertainty and the views' answers; selection the ``selected`` flag, the only thing training reads
    besides the answer (and ``probs`` for soft targets).

    Args:
        id: the item's id in the unlabeled split.
        round: the 1-based round that made the record.
        answer: the pseudo-label (canonical answer), or None.
        uncertainty: the answer's uncertainty (lower is surer); inf without an answer.
        probs: closed-form tasks: the option distribution behind the answer (soft targets train on it).
        neighbours: the nearest labeled items as (id, cosine similarity), nearest first.
        view_answers: each view's answer, in the configured order.
        view_texts: free-form tasks: each view's generated text, cut to ``CollaborativeVoting.text_chars``.
        agreement: the share of answering views that gave the final answer.
        unanimous: every view answered, and all the same.
        disputed: the views gave different answers.
        justified: self-justification chose the answer.
        selected: the item trains with its pseudo-label.
        capped: selection kept it, then ``max_pseudo_ratio`` dropped it.
    """

    id: str
    round: int = 0
    answer: Optional[str] = None
    uncertainty: float = math.inf
    probs: list[float] = field(default_factory=list)
    neighbours: list[tuple[str, float]] = field(default_factory=list)
    view_answers: list[Optional[str]] = field(default_factory=list)
    view_texts: list[str] = field(default_factory=list)
    agreement: Optional[float] = None
    unanimous: bool = False
    disputed: bool = False
    justified: bool = False
    selected: bool = False
    capped: bool = False

    @property
    def voted(self) -> bool:
        """Whether views have answered this item in its round."""
        return bool(self.view_answers)

    @property
    def selectable(self) -> bool:
        """Whether the record can be selected at all: it has an answer and a finite uncertainty."""
        return self.answer is not None and math.isfinite(self.uncertainty)

    def as_dict(self) -> dict[str, Any]:
        """The record as plain data (what checkpoints and the round's JSONL hold)."""
        data = asdict(self)
        data["neighbours"] = [list(pair) for pair in self.neighbours]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "pseudo-label record") -> "PseudoLabel":
        """A record from plain data, also one saved before a field existed (it takes the default); a field this
        version does not know, or a record without an id, is a CheckpointError naming ``where``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or "id" not in data:
            problem = f"unknown field(s) {', '.join(unknown)}" if unknown else "no 'id'"
            raise CheckpointError(f"{where}: {problem}; it was written by another version of semift-lightning")
        record = cls(**data)
        record.neighbours = [(str(key), float(similarity)) for key, similarity in record.neighbours]
        return record


def read_round(path: str | Path) -> list[PseudoLabel]:
    """The records of a round's ``pseudo_labels_round<N>.jsonl``; a line that is not one is a CheckpointError naming
    the file and the line."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
        records.append(PseudoLabel.from_dict(data, f"{path}: line {number}"))
    return records
