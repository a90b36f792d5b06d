"""Kill a tiny-model SemiEvol run with SIGKILL at several points, resume each with ``--ckpt_path last``, and check
that the final adapter, pseudo-labels and test metrics equal those of an uninterrupted run, with no half-written
files left behind.

    python scripts/fault_injection.py [--out DIR] [--points mid-warmup-epoch,mid-pseudo-labeling,...]

The job is ``semift fit -c <config> -c callbacks/semievol.yaml`` (two labeled epochs, one round with four views,
one epoch on labeled + selected) on a random-init tiny Llama and FPB-like rows, then ``semift test``. Each run is a
separate process; a killed one is armed by ``--child POINT``, which patches one function to SIGKILL the process at
that point (inside a file write, the file is half written first). Prints a table and exits 1 if any row fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "callbacks" / "semievol.yaml"
TEMPORARY_GLOB = "**/.*.semift-tmp"


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _die_halfway_through(write):
    """A ``write(handle)`` that writes half of what ``write`` would, then kills the process."""
    import io

    def half(handle) -> None:
        buffer = io.BytesIO() if "b" in getattr(handle, "mode", "") else io.StringIO()
        write(buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        _die()
    return half


def arm(point: str) -> None:
    """Patch the function where ``point`` happens so that the process dies there."""
    from semift_lightning import files as semift_io
    from semift_lightning.student.module import SemiFTModule

    calls = {"n": 0}

    def count() -> int:
        calls["n"] += 1
        return calls["n"]

    if point in ("mid-warmup-epoch", "mid-epoch-after-round"):
        epoch = 1 if point == "mid-warmup-epoch" else 2
        step = SemiFTModule.training_step

        def training_step(self, batch, batch_idx):
            if self.current_epoch == epoch and batch_idx == 3:
                _die()
            return step(self, batch, batch_idx)
        SemiFTModule.training_step = training_step
    elif point == "mid-pseudo-labeling":
        score = SemiFTModule.option_log_probs

        def option_log_probs(self, batch):
            if count() == 5:  # the second view's pass
                _die()
            return score(self, batch)
        SemiFTModule.option_log_probs = option_log_probs
    elif point in ("writing-round-jsonl", "saving-checkpoint"):
        write_file = semift_io.atomic_write

        def atomic_write(path, write, binary=False):
            name = Path(path).name
            target = name.startswith("pseudo_labels_round") if point == "writing-round-jsonl" else name == "last.ckpt"
            if target and (point == "writing-round-jsonl" or count() == 2):  # the second last.ckpt: epoch 1's
                write = _die_halfway_through(write)
            return write_file(path, write, binary)
        semift_io.atomic_write = atomic_write
    else:
        raise SystemExit(f"unknown injection point {point!r}; known: {', '.join(POINTS)}")


POINTS = ["mid-warmup-epoch", "mid-pseudo-labeling", "writing-round-jsonl", "saving-checkpoint",
          "mid-epoch-after-round"]


def write_config(run: Path, model: str, data: Path) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {"max_epochs": 3, "precision": "32-true", "enable_progress_bar": False, "log_every_n_steps": 2,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(run), "name": "logs", "version": ""}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 1}}]},
        "model": {"model": model, "optimizer": {"lr": 0.01, "warmup_ratio": 0.0}, "lora": {"r": 8}},
        "data": {"task": "fpb", "root": str(data), "labeled": "fpb/labeled.csv", "unlabeled": "fpb/unlabeled.csv",
                 "test": "fpb/test.csv", "batch_size": 4, "eval_batch_size": 8, "max_length": 384},
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def semift(*args: str, child: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(Path(__file__).resolve())] + (["--child", child] if child else ["--semift"])
    return subprocess.run(command + ["--", *args], capture_output=True, text=True, cwd=REPO)


def outcome(run: Path) -> dict:
    """What a finished run produced: adapter tensors, the pseudo-label store, the round file, test results."""
    import torch
    checkpoint = torch.load(run / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    logs = run / "logs"
    return {"adapter": checkpoint["state_dict"], "store": checkpoint["SemiFTDataModule"],
            "round_file": (logs / "pseudo_labels_round1.jsonl").read_text(),
            "test": (logs / "test_summary.json").read_text() + (logs / "test_predictions.jsonl").read_text()}


def same_adapter(a: dict, b: dict) -> bool:
    import torch
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stray_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.glob(TEMPORARY_GLOB))


def fit_and_test(config: Path, *fit_args: str, child: str | None = None) -> tuple[subprocess.CompletedProcess, ...]:
    fit = semift("fit", "-c", str(config), "-c", str(RECIPE), *fit_args, child=child)
    if child:
        return (fit,)
    test = semift("test", "-c", str(config), "-c", str(RECIPE), "--ckpt_path",
                  str(config.parent / "ckpt" / "last.ckpt"))
    return fit, test


def check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="work folder (default: a new temporary folder)")
    parser.add_argument("--points", default=",".join(POINTS), help="comma-separated injection points")
    args = parser.parse_args()
    points = args.points.split(",")
    unknown = [p for p in points if p not in POINTS]
    if unknown:
        parser.error(f"unknown injection points {unknown}; known: {', '.join(POINTS)}")
    out = Path(args.out or tempfile.mkdtemp(prefix="semift-faults-")).resolve()
    sys.path.insert(0, str(REPO))
    from semift_lightning.testing import make_tiny_model, write_fpb_like
    model = str(make_tiny_model(out / "model"))
    data = write_fpb_like(out / "data")

    reference_config = write_config(out / "uninterrupted", model, data)
    for result in fit_and_test(reference_config):
        check(result, "the uninterrupted run")
    reference = outcome(out / "uninterrupted")
    print(f"uninterrupted run in {out / 'uninterrupted'}: "
          f"{sum(r['selected'] for r in reference['store']['pseudo_labels'])} of "
          f"{len(reference['store']['pseudo_labels'])} pseudo-labels selected in round "
          f"{reference['store']['pseudo_round']}")

    rows, failed = [], False
    for point in points:
        run = out / point
        config = write_config(run, model, data)
        (killed,) = fit_and_test(config, child=point)
        left_by_kill = stray_files(run)
        fit, test = fit_and_test(config, "--ckpt_path", "last")
        check(fit, f"resuming after {point}")
        check(test, f"testing after {point}")
        resumed = outcome(run)
        row = {"point": point, "killed": killed.returncode == -signal.SIGKILL,
               "temp files left by the kill": len(left_by_kill),
               "round-1 stages run on resume (of 3)": (fit.stdout + fit.stderr).count("pseudo-labeling round 1:"),
               "same adapter": same_adapter(resumed["adapter"], reference["adapter"]),
               "same pseudo-labels": resumed["store"] == reference["store"]
               and resumed["round_file"] == reference["round_file"],
               "same test metrics": resumed["test"] == reference["test"],
               "stray files after resume": len(stray_files(run))}
        row["ok"] = (row["killed"] and row["same adapter"] and row["same pseudo-labels"] and row["same test metrics"]
                     and row["stray files after resume"] == 0)
        failed |= not row["ok"]
        rows.append(row)

    columns = list(rows[0]) if rows else []
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--child", "--semift"):
        sys.path.insert(0, str(REPO))
        if sys.argv[1] == "--child":
            arm(sys.argv[2])
        from semift_lightning.cli import main as semift_main
        semift_main(sys.argv[sys.argv.index("--") + 1:])
    else:
        sys.exit(main())
