"""Which columns of a data file hold the id, question, options, answer and category."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional


@dataclass(frozen=True)
class Columns:
    """Which field of a row holds what.

    Args:
        question: the question text.
        options: one field holding a list (or its JSON string), or a list of fields, one per option.
        answer: the gold answer (a letter or an option's text for multiple choice).
        id: a unique id per row; row numbers are used when unset.
        category: a topic or category used to break accuracy down.
    """

    question: str = "question"
    options: Optional[str | list[str]] = "options"
    answer: Optional[str] = "answer"
    id: Optional[str] = None
    category: Optional[str] = None


@dataclass
class ColumnOverrides:
    """Fields of the task preset's column mapping (``Columns``) to replace; an unset field keeps the preset's.

    Args:
        question: the question text.
        options: one field holding a list (or its JSON string), or a list of fields, one per option.
        answer: the gold answer (a letter or an option's text for multiple choice).
        id: a unique id per row.
        category: a topic or category used to break accuracy down.
    """

    question: Optional[str] = None
    options: Optional[str | list[str]] = None
    answer: Optional[str] = None
    id: Optional[str] = None
    category: Optional[str] = None


def override_columns(columns: Columns, overrides: Optional[ColumnOverrides | Columns]) -> Columns:
    """``columns`` with every field that ``overrides`` sets (not None) replaced."""
    if overrides is None:
        return columns
    return replace(columns, **{f.name: getattr(overrides, f.name) for f in fields(Columns)
                               if getattr(overrides, f.name, None) is not None})
