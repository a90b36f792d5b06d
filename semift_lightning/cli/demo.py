"""``semift demo``: the main job on the embedded default, vanilla → SFT → SemiEvol, ending in one table and a figure.

    semift demo [-c configs/demo.yaml] [--recipe callbacks/self_training_selected.yaml] [--out runs/demo] [-- ARGS]

Five ``semift`` runs in this process, each logging to TensorBoard under ``--out``:
1. test the vanilla student (no adapter);
2. fit LoRA SFT on the labeled items, validated every epoch on the validation items carved from them;
3. test the best-on-validation SFT epoch;
4. fit the semi-supervised recipe from that SFT adapter: its pseudo-labeling round runs when the fit starts (the
   validated SFT student labels the pool), then it trains on labeled + selected pseudo-labeled items;
5. test its best-on-validation epoch.
Then the table (test accuracy with 95% bootstrap intervals, paired differences, the round's numbers, stage times)
and ``demo.png`` (accuracy per stage; the pool's pseudo-label uncertainty, correct against wrong where the pool's
gold answers are known: a diagnostic, never used for training or selection). ARGS after ``--`` go to every run
(``-- --model.model PATH`` for another student).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from semift_lightning.analysis.stats import (
    accuracy_interval,
    correctness,
    most_common_prediction,
    paired,
    read_predictions,
    verdict,
)
from semift_lightning.errors import ArgumentError
from semift_lightning.files import read_checkpoint
from semift_lightning.semievol.records import PseudoLabel, read_round
from semift_lightning.shipped import resolve_shipped

STAGES = ("vanilla", "SFT", "SemiEvol")


@dataclass
class DemoResult:
    """What the demo measured: per stage its test predictions and accuracy interval, and the round's records with
    their gold."""

    predictions: dict[str, list[dict]] = field(default_factory=dict)
    accuracy: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    round_records: list[PseudoLabel] = field(default_factory=list)
    pool_gold: dict[str, Optional[str]] = field(default_factory=dict)
    out: Path = Path("runs/demo")
    figure: Optional[Path] = None


def _semift(*args: str):
    from semift_lightning.cli.command import run
    print(f"\n+ semift {' '.join(args)}", flush=True)
    given, sys.argv[1:] = sys.argv[1:], []  # LightningCLI warns where sys.argv holds arguments too
    try:
        return run(list(args))
    finally:
        sys.argv[1:] = given


def most_common_answer(rows: list[dict]) -> str:
    """The most common prediction and its share: a model that piled onto one answer shows here."""
    answer, count = most_common_prediction(rows)
    return f"{answer} {100 * count / len(rows):.0f}%"


def _best_checkpoint(cli) -> tuple[str, int]:
    """The fit's best-on-validation checkpoint (ties: the earlier epoch), else its last, and its optimizer steps."""
    callback = cli.trainer.checkpoint_callback
    path = callback and (callback.best_model_path or callback.last_model_path)
    if not path:
        raise ArgumentError("semift demo: the fit kept no checkpoint to test and hand on; the config needs a "
                            "ModelCheckpoint in trainer.callbacks (monitoring validation accuracy, as "
                            "configs/demo.yaml's does)")
    return path, int(read_checkpoint(path)["global_step"])


DEMO_OUTPUTS = ("vanilla", "sft", "semievol", "sft_adapter", "demo.png")


def clean_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` folder that holds files (an earlier demo's rounds and logs would mix with this one's)
    unless ``overwrite``, which removes what a demo writes there."""
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ArgumentError(f"--out {out}: the folder is not empty (an earlier run's files would mix with this "
                                f"one's); pass --overwrite to replace them, or another --out")
        for name in DEMO_OUTPUTS:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def run_demo(config: str, recipe: str, out: str | Path, extra: list[str], sft_epochs: int,
             semievol_epochs: int) -> DemoResult:
    """Runs the five stages (see the module docstring) and returns what the table and figure need."""
    out = Path(out)
    result = DemoResult(out=out)
    common = ["-c", config, *extra]
    logs = lambda stage: ["--trainer.logger.init_args.save_dir", str(out / stage)]  # noqa: E731

    def timed(stage: str, *args: str):
        start = time.monotonic()
        cli = _semift(*args)
        result.seconds[stage] = result.seconds.get(stage, 0.0) + time.monotonic() - start
        return cli

    def tested(stage: str, folder: str, *ckpt: str) -> None:
        timed(stage, "test", *common, *logs(folder), *ckpt)
        result.predictions[stage] = read_predictions(out / folder / "logs" / "test_predictions.jsonl")
        result.accuracy[stage] = accuracy_interval(correctness(result.predictions[stage]))

    tested("vanilla", "vanilla")
    result.steps["vanilla"] = 0

    cli = timed("SFT", "fit", *common, *logs("sft"), "--trainer.max_epochs", str(sft_epochs))
    best, result.steps["SFT"] = _best_checkpoint(cli)
    adapter = out / "sft_adapter"
    cli.model.load_checkpoint(best)
    cli.model.export_adapter(adapter)
    tested("SFT", "sft", "--ckpt_path", best)

    cli = timed("SemiEvol", "fit", *common, "-c", recipe, *logs("semievol"), "--model.adapter", str(adapter),
                "--semievol.warmup_epochs", "0", "--trainer.max_epochs", str(semievol_epochs))
    result.pool_gold = dict(cli.datamodule.store.pool_gold)
    best, steps = _best_checkpoint(cli)
    result.steps["SemiEvol"] = result.steps["SFT"] + steps
    tested("SemiEvol", "semievol", "--ckpt_path", best)
    made = cli.datamodule.store.round  # this run's own last round, not a file another run left
    path = out / "semievol" / "logs" / f"pseudo_labels_round{made}.jsonl"
    result.round_records = read_round(path) if made and path.exists() else []
    return result


def table(result: DemoResult) -> str:
    """The demo's summary: accuracies with intervals, paired differences, the round, times and where files are."""
    rows = result.predictions
    runs = {stage: correctness(stage_rows) for stage, stage_rows in rows.items()}
    lines = [f"{'stage':<10} {'steps':>5} {'test accuracy [95% CI]':<24} {'vs vanilla [95% CI]':<34} "
             f"{'vs SFT [95% CI]':<34} {'most common':<12} time", "-" * 133]
    for stage in STAGES:
        mean, low, high = result.accuracy[stage]
        cells = [f"{100 * mean:5.1f} [{100 * low:5.1f}, {100 * high:5.1f}]"]
        for baseline in ("vanilla", "SFT"):
            if STAGES.index(baseline) >= STAGES.index(stage):
                cells.append("")
                continue
            _, (diff, dlow, dhigh) = paired(runs[baseline], runs[stage])
            cells.append(f"{100 * diff:+5.1f} [{100 * dlow:+5.1f}, {100 * dhigh:+5.1f}] {verdict(dlow, dhigh)}")
        lines.append(f"{stage:<10} {result.steps[stage]:>5} {cells[0]:<24} {cells[1]:<34} {cells[2]:<34} "
                     f"{most_common_answer(rows[stage]):<12} {result.seconds[stage]:.0f} s")
    lines.append(f"({len(runs['vanilla'])} test items; paired bootstrap, 10000 resamples; steps: optimizer steps of "
                 f"the tested epoch, SemiEvol's counting the SFT it started from; most common: the most common "
                 f"predicted letter and its share of the test items)")
    records = result.round_records
    selected = [r for r in records if r.selected]
    round_line = f"pseudo-labeling round: pool {len(records)}, selected {len(selected)}"
    known = [r for r in records if result.pool_gold.get(r.id) is not None]
    if known:
        right = lambda rows: sum(r.answer == result.pool_gold[r.id] for r in rows)  # noqa: E731
        chosen = [r for r in known if r.selected]
        round_line += (f"; against the pool's gold answers (a diagnostic): all pseudo-labels "
                       f"{100 * right(known) / len(known):.1f}% right, selected "
                       f"{100 * right(chosen) / max(len(chosen), 1):.1f}% right")
    lines += [round_line, f"wall time {sum(result.seconds.values()):.0f} s; TensorBoard logs: tensorboard --logdir "
              f"{result.out}"]
    lines.append(f"figure: {result.figure}" if result.figure else "figure: not drawn (pip install matplotlib)")
    return "\n".join(lines)


def draw(result: DemoResult) -> Optional[Path]:
    """``demo.png``: test accuracy per stage with intervals, and the pool's pseudo-label uncertainty histogram split
    by correct / wrong (where gold is known); None where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for x, stage in enumerate(STAGES):
        mean, low, high = result.accuracy[stage]
        left.bar(x, 100 * mean, yerr=[[100 * (mean - low)], [100 * (high - mean)]], capsize=6)
        left.text(x, 100 * high + 1, f"{100 * mean:.1f}", ha="center")
    left.set_xticks(range(len(STAGES)), STAGES)
    left.set_ylabel("test accuracy (%), 95% CI")
    left.set_ylim(0, 105)
    left.set_title("accuracy per stage")
    scored = [r for r in result.round_records
              if math.isfinite(r.uncertainty) and result.pool_gold.get(r.id) is not None]
    for name, keep in (("correct", True), ("wrong", False)):
        values = [r.uncertainty for r in scored if (r.answer == result.pool_gold[r.id]) == keep]
        right.hist(values, bins=20, range=(0, 1), alpha=0.6, label=f"{name} ({len(values)})")
    right.set_xlabel("pseudo-label uncertainty (normalised entropy)")
    right.set_ylabel("pool items")
    right.set_title("the round's pseudo-labels against the pool's gold")
    right.legend()
    figure.tight_layout()
    path = result.out / "demo.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: Optional[list[str]] = None) -> DemoResult:
    parser = argparse.ArgumentParser(prog="semift demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default="configs/demo.yaml", help="the semift config every run takes")
    parser.add_argument("--recipe", default="callbacks/self_training_selected.yaml",
                        help="the semi-supervised recipe (chosen on validation in BENCHMARKS.md's learning curve)")
    parser.add_argument("--out", default="runs/demo", help="where the runs' logs, the adapter and demo.png go")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what an earlier demo left in --out (otherwise a non-empty --out is refused)")
    parser.add_argument("--sft-epochs", type=int, default=6, help="SFT epochs (the best on validation is kept)")
    parser.add_argument("--semievol-epochs", type=int, default=2,
                        help="epochs on labeled + pseudo-labeled items after the round (the best on validation)")
    parser.add_argument("extra", nargs="*", help="after --: arguments for every semift run")
    args = parser.parse_args(argv)
    args.config, args.recipe = resolve_shipped(args.config), resolve_shipped(args.recipe)
    for name in ("sft_epochs", "semievol_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    start = time.monotonic()
    clean_out(Path(args.out), args.overwrite)
    result = run_demo(args.config, args.recipe, args.out, args.extra, args.sft_epochs, args.semievol_epochs)
    result.figure = draw(result)
    print(f"\nsemift demo: vanilla → SFT → SemiEvol ({args.config}, recipe {args.recipe}; "
          f"{time.monotonic() - start:.0f} s in all)\n" + table(result), flush=True)
    return result
