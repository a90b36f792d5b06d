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
        item: the fingerprint of the item's question and options (``Example.fingerprint``): the record belongs to
            that content, not to whatever item has its id later.
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
    item: Optional[str] = None

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
    def from_dict(cls, data: Any, where: str = "pseudo-label record") -> "PseudoLabel":
        """A record from plain data, also one saved before a field existed (it takes the default); anything else
        (not a mapping, a field this version does not know, no id, a value of the wrong type or range) is a
        CheckpointError naming ``where`` and the field."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: not a pseudo-label record (a JSON object), got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or "id" not in data:
            problem = f"unknown field(s) {', '.join(unknown)}" if unknown else "no 'id'"
            raise CheckpointError(f"{where}: {problem}; it was written by another version of semift-lightning")
        problems = [f"field {name!r}: {problem}" for name, value in data.items()
                    if (problem := _field_problem(name, value))]
        if problems:
            raise CheckpointError(f"{where}: " + "; ".join(problems))
        record = cls(**data)
        record.neighbours = [(str(key), float(similarity)) for key, similarity in record.neighbours]
        return record


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with a record's field ``name`` holding ``value``, or None."""
    optional_text = value is None or isinstance(value, str)
    checks = {
        "id": (isinstance(value, str) and value != "", "must be a non-empty string"),
        "item": (optional_text, "must be a fingerprint string or null"),
        "round": (isinstance(value, int) and not isinstance(value, bool) and value >= 0, "must be a whole number >= 0"),
        "answer": (optional_text, "must be a string or null"),
        "uncertainty": (_is_number(value) and (value >= 0 or math.isnan(value)), "must be a number >= 0"),
        "probs": (isinstance(value, list) and all(_is_number(p) and 0 <= p <= 1 for p in value),
                  "must be a list of probabilities"),
        "neighbours": (isinstance(value, list) and all(isinstance(pair, (list, tuple)) and len(pair) == 2
                                                       and isinstance(pair[0], str) and _is_number(pair[1])
                                                       for pair in value), "must be a list of [id, similarity] pairs"),
        "view_answers": (isinstance(value, list) and all(v is None or isinstance(v, str) for v in value),
                         "must be a list of strings or nulls"),
        "view_texts": (isinstance(value, list) and all(isinstance(v, str) for v in value), "must be a list of strings"),
        "agreement": (value is None or (_is_number(value) and 0 <= value <= 1), "must be a number in [0, 1] or null"),
    }
    valid, problem = checks.get(name, (isinstance(value, bool), "must be true or false"))
    return None if valid else f"{problem}, got {value!r}"


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
