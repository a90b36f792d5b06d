"""The configs and recipes the wheel carries: ``configs/NAME.yaml`` and ``callbacks/NAME.yaml`` resolve to the shipped
file when no such path exists in the working folder, so that ``semift demo`` and ``-c configs/fpb.yaml`` work from any
folder after ``pip install``."""

from __future__ import annotations

from pathlib import Path

SHIPPED_FOLDERS = {"configs": "configs", "callbacks": "recipes"}  # repository folder -> its folder in the wheel
CONFIG_FLAGS = ("-c", "--config", "--recipe")


def resolve_shipped(path: str) -> str:
    """``path`` itself where it exists (or is not one of ours), else the shipped file of the same name."""
    parts = Path(path).parts
    if Path(path).exists() or len(parts) != 2 or parts[0] not in SHIPPED_FOLDERS:
        return path
    shipped = shipped_folder(parts[0]) / parts[1]
    return str(shipped) if shipped.is_file() else path


def shipped_folder(name: str) -> Path:
    """Where the installed package keeps the repository folder ``name``: inside the package in a wheel, the
    repository's own folder in a checkout (an editable install)."""
    package = Path(__file__).resolve().parent
    inside = package / SHIPPED_FOLDERS[name]
    return inside if inside.is_dir() else package.parent / name


def with_shipped_paths(args: list[str]) -> list[str]:
    """Command-line arguments with every config or recipe path (``-c X``, ``--config=X``, ``--recipe X``)
    resolved by ``resolve_shipped``."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        flag, equals, value = arg.partition("=")
        if equals and flag in CONFIG_FLAGS:
            resolved[i] = f"{flag}={resolve_shipped(value)}"
        elif i > 0 and resolved[i - 1] in CONFIG_FLAGS:
            resolved[i] = resolve_shipped(arg)
    return resolved
