"""The learning curve's table and figure from the files ``benchmarks/experiments/learning_curve.py`` wrote.

    python benchmarks/experiments/learning_curve_report.py [--results benchmarks/results/validation_chosen] \
        [--figure PATH]

Per budget and method: mean test accuracy over the seeds, and for every method against ``sft`` (and against
``sft_equal_steps``) the paired difference with a 95% bootstrap interval over the test items of all seeds pooled
(each (seed, item) pair counts once). From ``summary.json``: the recipe validation chose, and the selected pseudo-
labels' accuracy against the pool's gold column (a diagnostic).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import torch

from semift_lightning.analysis.stats import correctness, interval, read_predictions

NAME = re.compile(r"fpb_(\d+)pct_seed(\d+)_(.+)\.test_predictions\.jsonl")
BASELINES = ("sft", "sft_equal_steps")


def collect(folder: Path) -> dict[int, dict[str, dict[int, dict[str, float]]]]:
    """budget % -> method -> seed -> item id -> 1.0 / 0.0."""
    runs: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted(folder.glob("*.test_predictions.jsonl")):
        match = NAME.fullmatch(path.name)
        if match:
            runs[int(match[1])][match[3]][int(match[2])] = correctness(read_predictions(str(path)))
    return runs


def pooled(method: dict[int, dict[str, float]], seeds: list[int]) -> torch.Tensor:
    return torch.tensor([method[s][i] for s in seeds for i in sorted(method[s])], dtype=torch.float64)


def table(runs, summary: dict, resamples: int) -> tuple[list[str], dict]:
    lines = ["| labels | method | seeds | test acc. (mean) | vs SFT (paired, pooled) | vs SFT equal steps | "
             "selected pseudo-labels right |", "|---|---|---|---|---|---|---|"]
    curves: dict = defaultdict(dict)
    for pct in sorted(runs):
        methods = runs[pct]
        chosen = summary.get(f"fpb_{pct}pct_chosen")
        for name in sorted(methods, key=lambda m: (m not in BASELINES, m != "semievol", m)):
            seeds = sorted(methods[name])
            values = pooled(methods[name], seeds)
            mean, low, high = interval(values, resamples, torch.Generator().manual_seed(0))
            curves[name][pct] = (mean, low, high)
            cells = []
            for baseline in BASELINES:
                base = methods.get(baseline, {})
                if name == baseline or not all(s in base for s in seeds):
                    cells.append("")
                    continue
                diff, dlow, dhigh = interval(values - pooled(base, seeds), resamples, torch.Generator().manual_seed(0))
                cells.append(f"{100 * diff:+.2f} [{100 * dlow:+.2f}, {100 * dhigh:+.2f}]")
            rounds = [summary.get(f"fpb_{pct}pct_seed{s}_{chosen if name == 'semievol' else name}", {}).get("round", {})
                      for s in seeds]
            right = [r["selected_accuracy"] for r in rounds if "selected_accuracy" in r]
            label = f"{name} ({chosen})" if name == "semievol" and chosen else name
            lines.append(f"| {pct}% | {label} | {len(seeds)} | {100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}] | "
                         f"{cells[0]} | {cells[1]} | {f'{100 * sum(right) / len(right):.1f}%' if right else ''} |")
    return lines, curves


def figure(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(curves.items()):
        budgets = sorted(points)
        means = [100 * points[b][0] for b in budgets]
        ax.plot(budgets, means, marker="o", label=name)
        ax.fill_between(budgets, [100 * points[b][1] for b in budgets], [100 * points[b][2] for b in budgets],
                        alpha=0.15)
    ax.set(xlabel="labeled items (% of FPB's 452)", ylabel="test accuracy (%)", xscale="log",
           title="FPB, SmolLM2-135M: accuracy by labeled budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="benchmarks/results/validation_chosen")
    parser.add_argument("--figure", default="benchmarks/figures/learning_curve.png")
    parser.add_argument("--resamples", type=int, default=10000)
    args = parser.parse_args()
    folder = Path(args.results)
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    lines, curves = table(collect(folder), summary, args.resamples)
    print("\n".join(lines))
    if args.figure:
        figure(curves, Path(args.figure))


if __name__ == "__main__":
    main()
