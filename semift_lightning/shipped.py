"""The configs and recipes the wheel carries: ``configs/NAME.yaml`` and ``callbacks/NAME.yaml`` resolve to the shipped
file when no such path exists in the working folder, so that ``semift demo`` and ``-c configs/fpb.yaml`` work from any
folder after ``pip install``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import yaml

from semift_lightning.errors import ArgumentError

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


def _config_arguments(args: list[str]) -> Iterator[tuple[int, str, str]]:
    """(position, flag prefix, path) of every config or recipe path in ``args``: ``-c X``, ``--config=X``,
    ``--recipe X``."""
    for i, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if equals and flag in CONFIG_FLAGS:
            yield i, f"{flag}=", value
        elif i > 0 and args[i - 1] in CONFIG_FLAGS:
            yield i, "", arg


def with_shipped_paths(args: list[str]) -> list[str]:
    """Command-line arguments with every config or recipe path resolved by ``resolve_shipped``."""
    resolved = list(args)
    for i, prefix, path in _config_arguments(args):
        resolved[i] = prefix + resolve_shipped(path)
    return resolved


def check_config_files(args: list[str]) -> None:
    """Refuse a config or recipe file that is not valid YAML, naming the file, line and column (the parser behind
    LightningCLI would name ``<unicode string>``)."""
    for _, _, path in _config_arguments(args):
        if not Path(path).is_file():
            continue  # the parser names a missing file itself
        try:
            yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ArgumentError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
        except UnicodeDecodeError as err:
            raise ArgumentError(f"{path}: bytes that are not UTF-8 ({err.reason})") from None
