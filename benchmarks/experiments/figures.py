"""Figures for BENCHMARKS.md from files that runs already wrote (no model is loaded).

    python benchmarks/experiments/figures.py --data-root ../shared/data/semievol --out benchmarks/figures \
        --test vanilla=runs/fpb_vanilla/logs/test_predictions.jsonl \
        --test "SFT 313 steps=runs/fpb_sft313/logs/test_predictions.jsonl" \
        --test SemiEvol-light=runs/fpb_semievol3/logs/test_predictions.jsonl \
        --test "self-training + AS=runs/fpb_selftrain_as/logs/test_predictions.jsonl" \
        --round SemiEvol-light=runs/fpb_semievol3/logs/pseudo_labels_round1.jsonl \
        --round "self-training + AS=runs/fpb_selftrain_as/logs/pseudo_labels_round1.jsonl" \
        --theta-test "2 views:0.3=runs/fpb_light_avg_theta0.3/logs/test_predictions.jsonl" \
        --theta-test "2 views:0.5=runs/fpb_light_avg/logs/test_predictions.jsonl" \
        --theta-test "2 views:0.7=runs/fpb_light_avg_theta0.7/logs/test_predictions.jsonl" \
        --theta-test "2 views:1.0=runs/fpb_light_avg_theta1.0/logs/test_predictions.jsonl" \
        --theta-test "1 view:0.3=runs/fpb_n1_theta0.3/logs/test_predictions.jsonl" \
        --theta-test "1 view:0.5=runs/fpb_light_no_cl/logs/test_predictions.jsonl" \
        --theta-reference "SFT 313 steps=runs/fpb_sft313/logs/test_predictions.jsonl" \
        --theta-reference "SFT 398 steps=runs/fpb_sft398/logs/test_predictions.jsonl"

1. test_uncertainty.png: the normalised entropy of each run's option distribution on the test items (the paper's
   Figure 4 idea: does SemiEvol leave the model more certain?), with each run's accuracy.
2. pseudo_label_accuracy_by_uncertainty.png: each round's pseudo-labels in ten uncertainty bins (deciles of the
   pool), the accuracy of each bin against the unlabeled file's gold column (a diagnostic, never used in training).
3. kept_accuracy_vs_theta.png: the accuracy of the pseudo-labels that EntropySelection keeps, against θ, pool-wide,
   per answer option in the pool's mix and per answer option in the labeled set's mix (answer_mix="labeled"; the
   labeled answers); the kept answer mix at θ=0.5 is printed for each.
4. test_accuracy_vs_theta.png (with ``--theta-test θ=PREDICTIONS_JSONL`` or ``SERIES:θ=PREDICTIONS_JSONL``, once
   per run, and optional ``--theta-reference NAME=PREDICTIONS_JSONL`` runs drawn as horizontal lines): test accuracy
   of runs that differ only in θ, one line per series (e.g. per number of views), with 95% bootstrap intervals
   (compare.py's, seed 0).
Each figure's numbers are printed too. ``--config runs/NAME/logs/config.yaml`` instead of ``--data-root`` takes the
splits from a run's saved config (e.g. configs/mmlu.yaml's seeded split of one source).
"""

from __future__ import annotations

import argparse
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from semift_lightning.analysis.report import (  # noqa: E402
    accuracy,
    add_data_arguments,
    benchmark_data,
    unlabeled_gold,
)
from semift_lightning.analysis.stats import interval, read_predictions  # noqa: E402
from semift_lightning.distributions import normalized_entropy  # noqa: E402
from semift_lightning.semievol.records import PseudoLabel  # noqa: E402
from semift_lightning.semievol.selection import EntropySelection

THETAS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@contextmanager
def saved_figure(path: Path, legend_size: Optional[int] = None, **axes):
    """Axes to draw on; on exit they get ``axes`` (labels, title, limits) and a legend, and the figure is saved."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    yield ax
    ax.set(**axes)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def test_uncertainty(runs: dict[str, list[dict]], out: Path) -> None:
    with saved_figure(out / "test_uncertainty.png", xlabel="normalised entropy of the option distribution",
                      ylabel="test items", title="Uncertainty on the test set") as ax:
        for name, records in runs.items():
            values = [normalized_entropy(torch.tensor(r["option_probs"])) for r in records]
            correct = sum(bool(r["correct"]) for r in records) / len(records)
            print(f"{name}: test accuracy {correct:.4f}, mean normalised entropy {sum(values) / len(values):.3f}")
            ax.hist(values, bins=20, range=(0, 1), histtype="step", linewidth=1.5, label=f"{name} ({correct:.1%})")


def accuracy_by_uncertainty(rounds: dict[str, list[dict]], gold: dict, out: Path) -> None:
    with saved_figure(out / "pseudo_label_accuracy_by_uncertainty.png", ylim=(0, 1),
                      xlabel="uncertainty percentile of the pool (bin centre)", ylabel="pseudo-label accuracy",
                      title="Is lower uncertainty more accurate?") as ax:
        for name, records in rounds.items():
            ordered = sorted((r for r in records if r["answer"] is not None), key=lambda r: r["uncertainty"])
            bins = [ordered[len(ordered) * i // 10:len(ordered) * (i + 1) // 10] for i in range(10)]
            accuracies = [accuracy(part, gold) for part in bins]
            print(f"{name}: pseudo-label accuracy per uncertainty decile (least uncertain first): "
                  + " ".join(f"{a:.3f}" for a in accuracies))
            ax.plot([10 * i + 5 for i in range(10)], accuracies, marker="o", label=name)


SELECTION_MODES = {"pool-wide": {}, "per answer, pool mix": {"per_answer": True},
                   "per answer, labeled mix": {"per_answer": True, "answer_mix": "labeled"}}


def kept_accuracy_vs_theta(rounds: dict[str, list[dict]], gold: dict, labeled: list[str], out: Path) -> None:
    with saved_figure(out / "kept_accuracy_vs_theta.png", legend_size=6, xlabel="θ (fraction kept)",
                      ylabel="accuracy of the kept pseudo-labels", title="Selection against θ") as ax:
        for name, records in rounds.items():
            for (mode, arguments), linestyle in zip(SELECTION_MODES.items(), ("--", "-", ":")):
                accuracies = []
                for theta in THETAS:
                    trial = [PseudoLabel.from_dict(record, name) for record in records]
                    EntropySelection(keep_fraction=theta, **arguments).select(trial, labeled)
                    kept = [r.as_dict() for r in trial if r.selected]
                    accuracies.append(accuracy(kept, gold))
                    if theta == 0.5:
                        mix = dict(sorted(Counter(r["answer"] for r in kept).items()))
                        print(f"{name}, {mode}, θ=0.5: kept {len(kept)}, answers {mix}")
                print(f"kept pseudo-label accuracy, {name}, {mode}: "
                      + " ".join(f"θ={t}:{a:.3f}" for t, a in zip(THETAS, accuracies)))
                ax.plot(THETAS, accuracies, marker="o", linestyle=linestyle, label=f"{name}, {mode}")


def test_accuracy_vs_theta(runs: dict[str, list[dict]], references: dict[str, list[dict]], out: Path) -> None:
    """``runs`` keys: ``θ`` or ``SERIES:θ``; one line per series."""
    def accuracy_interval(records: list[dict]) -> tuple[float, float, float]:
        correct = torch.tensor([float(bool(r["correct"])) for r in records], dtype=torch.float64)
        return interval(correct, 10000, torch.Generator().manual_seed(0))
    series: dict[str, dict[float, list[dict]]] = {}
    for key, records in runs.items():
        name, _, theta = key.rpartition(":")
        series.setdefault(name or "SemiEvol", {})[float(theta)] = records
    with saved_figure(out / "test_accuracy_vs_theta.png", legend_size=7, xlabel="θ (fraction kept)",
                      ylabel="test accuracy", title="Test accuracy against θ") as ax:
        for name, by_theta in series.items():
            thetas = sorted(by_theta)
            points = [accuracy_interval(by_theta[theta]) for theta in thetas]
            for theta, (mean, low, high) in zip(thetas, points):
                print(f"test accuracy, {name}, θ={theta}: {mean:.4f} [{low:.4f}, {high:.4f}]")
            ax.errorbar(thetas, [m for m, _, _ in points], yerr=[[m - lo for m, lo, _ in points],
                        [hi - m for m, _, hi in points]], marker="o", capsize=3, label=name)
        for name, records in references.items():
            level = accuracy_interval(records)[0]
            ax.axhline(level, linestyle=":", color="grey")
            ax.annotate(name, (0.0, level), xycoords=("axes fraction", "data"), fontsize=7)


def named_files(items: list[str]) -> dict[str, list[dict]]:
    return {name: read_predictions(path) for name, path in (item.split("=", 1) for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--test", action="append", default=[], metavar="NAME=PREDICTIONS_JSONL")
    parser.add_argument("--round", action="append", required=True, metavar="NAME=PSEUDO_LABELS_ROUND_JSONL")
    parser.add_argument("--theta-test", action="append", default=[], metavar="[SERIES:]THETA=PREDICTIONS_JSONL")
    parser.add_argument("--theta-reference", action="append", default=[], metavar="NAME=PREDICTIONS_JSONL")
    parser.add_argument("--out", default="benchmarks/figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.test:
        test_uncertainty(named_files(args.test), out)
    if args.theta_test:
        test_accuracy_vs_theta(named_files(args.theta_test), named_files(args.theta_reference), out)
    data = benchmark_data(args.data_root, args.task, args.config)
    gold = unlabeled_gold(data)
    rounds = named_files(args.round)
    accuracy_by_uncertainty(rounds, gold, out)
    kept_accuracy_vs_theta(rounds, gold, data.labeled_answers(), out)
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
