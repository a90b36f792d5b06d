"""FPB learning curve: SFT against semi-supervised recipes at labeled budgets, every choice made on validation.

    python benchmarks/experiments/learning_curve.py --data-root ../shared/data/semievol --budgets 45 --seeds 0 1 2 \
        [--methods sft sft_equal_steps self_training semievol] [--out benchmarks/results/validation_chosen]

For each budget N and data seed S: ``--data.sizes.labeled N --data.seed S`` draws N items of ``fpb/labeled.csv``
(the seeded subsample of ``SemiFTDataModule``), ``--data.val_fraction`` carves a validation split out of them
(within each answer, seeded by S), the rest trains; the pool is all of ``fpb/unlabeled.csv``, the test set all of
``fpb/test.csv``; ``--seed_everything S`` seeds the adapter and the batch order. Methods:

- ``sft``: LoRA SFT, validated every epoch; the epoch with the best validation accuracy (ties: lower validation
  loss, then earlier) is tested.
- each recipe in ``RECIPES``: runs one pseudo-labeling round when the fit starts, with that SFT adapter as it is
  (``--semievol.warmup_epochs 0 --model.adapter``), then trains ``--post-round-epochs`` epochs on labeled +
  selected (continuing that adapter, or a fresh one where the recipe restarts the student); the best-on-validation
  epoch is tested.
- ``semievol``: of the recipes run, the one with the best validation accuracy at its chosen epoch, averaged over
  the budget's seeds (ties: the earlier in ``RECIPES``): chosen before any test number is read.
- ``sft_equal_steps``: SFT from scratch for as many optimizer steps as the chosen recipe took in all (the SFT
  steps it started from plus its own), its last epoch tested.

Each run's test predictions (and a round's pseudo-labels) are copied to ``--out`` as
``fpb_{pct}pct_seed{S}_{method}.*``; ``summary.json`` there keeps every run's validation curve, chosen epoch,
steps, seconds and round diagnostics. ``benchmarks/experiments/learning_curve_report.py`` prints the table and draws
the figure
from those files. A finished run (in ``summary.json``) is not run again: rerun the command to continue.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LABELED_TOTAL = 452  # fpb/labeled.csv
LP = str(REPO / "callbacks" / "label_propagation.yaml")
RECIPES = {  # method name -> recipe and extra fit arguments
    "self_training": ["-c", str(REPO / "callbacks" / "self_training_selected.yaml")],
    "lp_mean_restart": ["-c", LP],
    "lp_mean_continue": ["-c", LP, "--restart", "null"],
    "student_restart": ["-c", LP, "--propagation", "null", "--voting.init_args.views", '[{"adapter": "student"}]'],
    "lp_pool_mix": ["-c", LP, "--selection.init_args.answer_mix", "pool"],
    "lp_mean_restart_soft": ["-c", LP, "--data.soft_pseudo_labels", "true"],
    "lp_justified_restart": ["-c", LP, "--voting.init_args.combine", "vote", "--voting.init_args.self_justification",
                             "true"],
    # per-view accuracies of one round: the student alone, with its 2 nearest labeled demonstrations, and label
    # propagation (the round's semievol/view{1,2,3}_accuracy), combined by their mean distribution
    "three_views": ["-c", LP, "--voting.init_args.views", '[{"adapter": "student", "k": 0}, '
                    '{"adapter": "student", "k": 2}, {"kind": "label_propagation", "k": 5}]'],
}
CHOSEN = "semievol"


def semift(*args: str) -> None:
    print("+ semift", " ".join(args), flush=True)
    subprocess.run(["semift", *args], check=True)


def val_curve(run: Path) -> list[dict]:
    """Per validation epoch: optimizer steps done (as the checkpoint names count them: TensorBoard logs an epoch's
    metrics at its last step's index, one less), accuracy and loss, from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "logs")).Reload()
    acc = {e.step + 1: e.value for e in events.Scalars("val/fpb/acc")}
    loss = {e.step + 1: e.value for e in events.Scalars("val/fpb/loss")}
    return [{"step": step, "acc": acc[step], "loss": loss.get(step, math.nan)} for step in sorted(acc)]


def epoch_checkpoints(run: Path) -> dict[int, Path]:
    """Step -> the checkpoint saved at that step (``every-epoch=E-step=S.ckpt``)."""
    found = {}
    for path in (run / "logs" / "checkpoints").glob("every-*.ckpt"):
        found[int(re.search(r"step=(\d+)", path.name).group(1))] = path
    return found


def best_epoch(curve: list[dict]) -> dict:
    """The best validation epoch: highest accuracy, then lower loss, then earlier."""
    return min(curve, key=lambda p: (-p["acc"], p["loss"], p["step"]))


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.summary_path = self.out / "summary.json"
        self.summary = json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}

    def save(self, **entries) -> None:
        """Adds ``entries`` to ``summary.json``, re-read first: runs of other budgets may write it meanwhile."""
        if self.summary_path.exists():
            self.summary = json.loads(self.summary_path.read_text())
        self.summary.update(entries)
        tmp = self.summary_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.summary, indent=1, sort_keys=True))
        tmp.replace(self.summary_path)

    def tag(self, budget: int, seed: int) -> str:
        return f"fpb_{round(100 * budget / LABELED_TOTAL)}pct_seed{seed}"

    def common(self, budget: int, seed: int) -> list[str]:
        extra = ["--model.model", self.args.model] if self.args.model else []
        extra += ["--trainer.precision", self.args.precision] if self.args.precision else []
        return ["-c", str(REPO / "configs" / "fpb.yaml"), *extra, "--data.root", self.args.data_root,
                "--data.sizes.labeled", str(budget),
                "--data.seed", str(seed), "--data.val_fraction", str(self.args.val_fraction),
                "--seed_everything", str(seed), "--data.eval_batch_size", "64",
                "--data.question_last", "true" if self.args.question_last else "false"]

    def fit(self, name: str, common: list[str], *extra: str, every_epoch: bool = True) -> Path:
        run = Path(self.args.runs) / name
        shutil.rmtree(run, ignore_errors=True)
        keep = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_top_k", "-1",
                "--trainer.callbacks.filename", "every-{epoch}-{step}", "--trainer.callbacks.monitor", "val/fpb/acc",
                "--trainer.callbacks.mode", "max"] if every_epoch else []
        semift("fit", *common, "--trainer.logger.init_args.save_dir", str(run), *keep, *extra)
        return run

    def test(self, name: str, run: Path, common: list[str], ckpt: Path) -> dict:
        semift("test", *common, "--trainer.logger.init_args.save_dir", str(run), "--ckpt_path", str(ckpt))
        shutil.copy(run / "logs" / "test_predictions.jsonl", self.out / f"{name}.test_predictions.jsonl")
        return json.loads((run / "logs" / "test_summary.json").read_text())

    def record(self, name: str, **values) -> None:
        self.save(**{name: values})

    def sft(self, budget: int, seed: int) -> dict:
        name = f"{self.tag(budget, seed)}_sft"
        if name in self.summary and Path(self.summary[name]["adapter"]).exists():
            return self.summary[name]  # (a recipe needs the adapter: without it, SFT runs again)
        common, start = self.common(budget, seed), time.time()
        train = budget - round(self.args.val_fraction * budget)
        epochs = min(40, max(4, math.ceil(self.args.sft_steps / math.ceil(train / 8))))
        run = self.fit(name, common, "--trainer.max_epochs", str(epochs))
        curve = val_curve(run)
        chosen = best_epoch(curve)
        ckpt = epoch_checkpoints(run)[chosen["step"]]
        adapter = Path(self.args.runs) / f"{name}_adapter"
        export_adapter(ckpt, adapter)
        summary = self.test(name, run, common, ckpt)
        self.record(name, curve=curve, chosen=chosen, steps=chosen["step"], epochs=epochs, adapter=str(adapter),
                    accuracy=summary["accuracy"], seconds=round(time.time() - start))
        remove_checkpoints(run)
        return self.summary[name]

    def recipe(self, method: str, budget: int, seed: int) -> dict:
        name = f"{self.tag(budget, seed)}_{method}"
        if name in self.summary:
            return self.summary[name]
        sft = self.sft(budget, seed)
        common, start = self.common(budget, seed), time.time()
        run = self.fit(name, common, *RECIPES[method], "--model.adapter", sft["adapter"], "--semievol.warmup_epochs",
                       "0", "--trainer.max_epochs", str(self.args.post_round_epochs))
        curve = val_curve(run)
        chosen = best_epoch(curve)
        summary = self.test(name, run, common, epoch_checkpoints(run)[chosen["step"]])
        rounds = sorted((run / "logs").glob("pseudo_labels_round*.jsonl"))
        for path in rounds:
            shutil.copy(path, self.out / f"{name}.{path.stem}.jsonl")
        self.record(name, curve=curve, chosen=chosen, steps=sft["steps"] + chosen["step"],
                    accuracy=summary["accuracy"], round=round_diagnostics(run),
                    seconds=round(time.time() - start))
        remove_checkpoints(run)
        return self.summary[name]

    def chosen_recipe(self, budget: int, seeds: list[int], recipes: list[str]) -> str:
        """The recipe with the best mean validation accuracy over the seeds (ties: the earlier one)."""
        mean = {m: sum(self.recipe(m, budget, s)["chosen"]["acc"] for s in seeds) / len(seeds) for m in recipes}
        return max(recipes, key=lambda m: (mean[m], -recipes.index(m)))

    def equal_steps(self, budget: int, seed: int, steps: int) -> dict:
        name = f"{self.tag(budget, seed)}_sft_equal_steps"
        if name in self.summary and self.summary[name]["steps"] == steps:
            return self.summary[name]
        common, start = self.common(budget, seed), time.time()
        run = self.fit(name, common, "--trainer.max_epochs", "-1", "--trainer.max_steps", str(steps),
                       "--trainer.limit_val_batches", "0", every_epoch=False)  # tested at its end: no validation
        summary = self.test(name, run, common, run / "logs" / "checkpoints" / "last.ckpt")
        self.record(name, steps=steps, accuracy=summary["accuracy"], seconds=round(time.time() - start))
        remove_checkpoints(run)
        return self.summary[name]


def remove_checkpoints(run: Path) -> None:
    """A finished run's checkpoints go (the predictions, the summary and an SFT run's adapter stay)."""
    for path in (run / "logs" / "checkpoints").glob("*.ckpt"):
        path.unlink()


def export_adapter(ckpt: Path, path: Path) -> None:
    """The adapter of a ``semift fit`` checkpoint as a peft folder (``--model.adapter`` takes it)."""
    import torch

    from semift_lightning import SemiFTModule
    checkpoint = torch.load(ckpt, weights_only=True, map_location="cpu")
    module = SemiFTModule(**{k: v for k, v in checkpoint["hyper_parameters"].items()
                             if k in ("model", "lora", "adapter")})
    module.configure_model()
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    shutil.rmtree(path, ignore_errors=True)
    module.export_adapter(path)


def round_diagnostics(run: Path) -> dict:
    """The round's logged ``semievol/*`` scalars (pool, selected, and against the pool's gold column the pseudo-
    labels', the selected ones' and each view's accuracy: diagnostics only)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "logs")).Reload()
    return {tag.split("/", 1)[1]: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]
            if tag.startswith("semievol/")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--budgets", type=int, nargs="+", default=[23, 45, 90, 452])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["sft", "self_training", CHOSEN, "sft_equal_steps"])
    parser.add_argument("--recipes", nargs="+", default=["self_training", "lp_mean_restart"],
                        help=f"what semievol chooses among, of {', '.join(RECIPES)}")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--sft-steps", type=int, default=120, help="SFT epochs: about this many steps, 4 to 40")
    parser.add_argument("--post-round-epochs", type=int, default=2)
    parser.add_argument("--question-last", type=int, default=1, help="1: data.question_last (faster on a CPU)")
    parser.add_argument("--out", default="benchmarks/results/validation_chosen")
    parser.add_argument("--runs", default="runs/learning_curve", help="where the runs' logs and adapters go")
    parser.add_argument("--model", help="--model.model of every run (default: the config's)")
    parser.add_argument("--precision", help="--trainer.precision of every run (default: semift's choice)")
    args = parser.parse_args(argv)
    runner = Runner(args)
    for budget in args.budgets:
        seeds = args.seeds if budget < LABELED_TOTAL else args.seeds[:1]
        for seed in seeds:
            for method in args.methods:
                if method == "sft":
                    runner.sft(budget, seed)
                elif method in RECIPES:
                    runner.recipe(method, budget, seed)
        if CHOSEN in args.methods or "sft_equal_steps" in args.methods:
            chosen = runner.chosen_recipe(budget, seeds, args.recipes)
            runner.save(**{f"fpb_{round(100 * budget / LABELED_TOTAL)}pct_chosen": chosen})
            print(f"budget {budget}: validation chose {chosen}", flush=True)
            for seed in seeds:
                picked = runner.summary[f"{runner.tag(budget, seed)}_{chosen}"]
                for suffix in ("test_predictions.jsonl", "pseudo_labels_round1.jsonl"):
                    source = runner.out / f"{runner.tag(budget, seed)}_{chosen}.{suffix}"
                    if source.exists():
                        shutil.copy(source, runner.out / f"{runner.tag(budget, seed)}_{CHOSEN}.{suffix}")
                if "sft_equal_steps" in args.methods:
                    runner.equal_steps(budget, seed, picked["steps"])


if __name__ == "__main__":
    sys.exit(main())
