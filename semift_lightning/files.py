"""Atomic file writes: a reader never sees a half-written file, and a process killed while writing leaves the
previous version intact plus a temporary file that ``remove_interrupted_writes`` clears."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from semift_lightning.errors import CheckpointError, OutputError

TEMPORARY_SUFFIX = ".semift-tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, sync it, then rename it to ``path``. The file
    gets the permissions a plain ``open`` would give it (0666 less the umask), not the temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"{path}: the disk is full ({err.strerror}); nothing was written there, and the file "
                              f"it would replace is intact") from None
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
        return f"{folder}: {_size(free)} free, about {_size(needed_bytes)} needed"
    return None


class RunLock:
    """A lock file in a run's log folder, held by the process writing there: a second run into the folder is
    refused while the first lives (their logs, configs and checkpoints would mix); a dead holder's lock, or one this
    process took before, is taken over."""

    NAME = ".semift-run.lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / self.NAME
        self.owner = f"{os.getpid()} {socket.gethostname()}"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder and holder != self.owner and _alive(holder):
                    raise OutputError(f"{self.path.parent} is in use by a live run (process {holder}); give this run "
                                      f"its own folder (--trainer.logger.init_args.save_dir or .version), or delete "
                                      f"{self.path} if that run is gone") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.owner + "\n")
            return

    def holder(self) -> str:
        """``"PID HOST"`` of the process holding the lock; empty when none does."""
        return self.path.read_text(encoding="utf-8", errors="replace").strip() if self.path.exists() else ""

    def release(self) -> None:
        if self.holder() == self.owner:
            self.path.unlink(missing_ok=True)


def _alive(holder: str) -> bool:
    """Whether the process ``"PID HOST"`` runs; one on another host counts as running (it cannot be asked)."""
    pid, _, host = holder.partition(" ")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True`` (tensors and plain data; never code). A file that is missing,
    damaged (truncated, empty), of another format or holding other objects raises ``CheckpointError`` naming the
    file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'a folder, not a' if path.is_dir() else 'no such'} checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain data, which "
                                  f"loading would run as code (Weights only load failed)") from None
        raise CheckpointError(f"{path}: damaged or not a checkpoint ({str(err).splitlines()[0]})") from None
    except (OSError, EOFError, RuntimeError, IndexError, ValueError, KeyError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: damaged or not a checkpoint: truncated, empty or another format "
                              f"({type(err).__name__}: {detail})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written through ``atomic_write`` (remote paths go to Lightning's own writer) and read with
    ``read_checkpoint``'s checks."""

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(path)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda handle: torch.save(checkpoint, handle), binary=True)


def _size(count: int) -> str:
    """A byte count people read: kB below a MiB, else MiB or GiB."""
    if count < 2**20:
        return f"{count / 1000:.0f} kB"
    return f"{count / 2**20:.1f} MiB" if count < 2**30 else f"{count / 2**30:.2f} GiB"
