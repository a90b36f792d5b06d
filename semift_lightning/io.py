"""Atomic file writes: a reader never sees a half-written file, and a process killed while writing leaves the
previous version intact plus a temporary file that ``remove_interrupted_writes`` clears."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

TEMPORARY_SUFFIX = ".semift-tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, sync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def remove_interrupted_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``folder``; returns them."""
    folder = Path(folder)
    stale = sorted(folder.glob(f".*{TEMPORARY_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_writable(folder: str | os.PathLike, needed_bytes: int = 0) -> Optional[str]:
    """Why ``folder`` cannot take ``needed_bytes`` of new files (None when it can): not creatable, not writable,
    or short of space."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / ".semift-write-check", "ok\n").unlink()
    except OSError as err:
        return f"{folder}: cannot write there ({err.strerror or err})"
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        return f"{folder}: {free / 2**20:.1f} MiB free, about {needed_bytes / 2**20:.1f} MiB needed"
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written through ``atomic_write`` (remote paths go to Lightning's own writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda handle: torch.save(checkpoint, handle), binary=True)
