"""What evaluation writes and checks: accuracy summaries and writable output folders."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from semift_lightning.errors import OutputError
from semift_lightning.files import check_writable, remove_interrupted_writes


def checkpoint_folders(trainer: L.Trainer) -> set[Path]:
    """The folders the trainer's checkpoint callbacks write into (those that name one)."""
    return {Path(callback.dirpath) for callback in trainer.checkpoint_callbacks if callback.dirpath}


def check_outputs(trainer: L.Trainer, fitting: bool, needed_bytes: int = 0, clear_interrupted_writes: bool = False):
    """Raise, on every rank, where the log folder or (when fitting) a checkpoint folder cannot be written or lacks
    ``needed_bytes``. Rank zero checks, and clears temporary files that a killed run's writes left when asked."""
    folders = {Path(trainer.log_dir or trainer.default_root_dir)}  # log_dir is collective: every rank asks
    if fitting:
        folders |= checkpoint_folders(trainer)
    problems = []
    if trainer.is_global_zero:
        problems = [problem for problem in (check_writable(f, needed_bytes) for f in sorted(folders)) if problem]
        if clear_interrupted_writes and not problems:
            for folder in folders:
                remove_interrupted_writes(folder)
    problems = trainer.strategy.broadcast(problems)
    if problems:
        raise OutputError("the run's outputs cannot be written:\n- " + "\n- ".join(problems))


def summarize(records: list[dict], task_name: str) -> dict:
    """Accuracy overall and per category of a list of prediction records."""
    scored = [r for r in records if r["correct"] is not None]
    by_category: dict[str, list[bool]] = {}
    for record in scored:
        if record["category"]:
            by_category.setdefault(record["category"], []).append(record["correct"])
    return {"task": task_name, "count": len(scored),
            "accuracy": sum(r["correct"] for r in scored) / max(1, len(scored)),
            "no_answer": sum(r["prediction"] is None for r in records),
            "per_category": {c: {"count": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(by_category.items())}}
