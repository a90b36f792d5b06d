"""Argument checking shared by every configurable class: defaults stated once (in the signature), every problem
reported at once, each naming its argument."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from semift_lightning.errors import ArgumentError


def bound_arguments(function: Callable, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` completed with ``function``'s defaults for the parameters it leaves out (``self`` aside); names
    ``function`` does not take are kept as given."""
    parameters = inspect.signature(function).parameters
    defaults = {name: p.default for name, p in parameters.items()
                if name != "self" and p.default is not inspect.Parameter.empty}
    return {**defaults, **given}


def as_dataclass(cls: type, value: Any) -> Any:
    """A dataclass instance from an instance, a mapping, a jsonargparse namespace or None (the defaults)."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    return cls(**(value if isinstance(value, dict) else vars(value)))


def raise_problems(title: str, problems: list[str]) -> None:
    """An ``ArgumentError`` listing every problem under ``title``; nothing when there are none."""
    if problems:
        raise ArgumentError(f"{title}:\n- " + "\n- ".join(problems))
