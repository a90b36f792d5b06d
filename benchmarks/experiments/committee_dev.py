"""Committee members on FPB's development seeds: is a committee of separately fine-tuned students above its best
member, before any committee recipe is built into the product?

    python benchmarks/experiments/committee_dev.py --data-root ../shared/data/semievol --seeds 100 101 102 103 104 \
        [--out runs/committee_dev]
    python benchmarks/experiments/committee_dev.py --report --out runs/committee_dev
    python benchmarks/experiments/committee_dev.py --recipe --data-root ../shared/data/semievol --seeds 100 \
        [--variants committee committee_aligned]

``--recipe`` runs, per development seed and in one command, SFT (the default pattern, 150 steps) and the shipped
committee recipe (``callbacks/committee.yaml``: members trained inside the fit, distilled into the student over FPB's
1359-item unlabeled pool), each scored on the development set, and prints their accuracies and wall times. Each of
``--variants`` is the recipe with a change (``VARIANTS``); the variants of a seed share one members folder, so the
members train once per seed and later variants reuse them.

For each development seed S (100-104, never reported as results): 45 items of ``fpb/labeled.csv`` drawn with S are
the budget, the other 407 labeled items the development set (no test item is read). One member per prompt pattern
(chat or plain format, question first or last), each trained with ``semift fit`` on the 45 items for a fixed 150
steps with its own seed, then scored on the development set with ``semift test``. ``--report`` prints each member's
development accuracy, the committee's (the mean of the members' log-probabilities, uniform weights), and the
committee after class-prior alignment to the budget's answer shares (a few EM steps), per seed and pooled.
A finished member (its predictions exist) is not run again: rerun the command to continue.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
import yaml

from semift_lightning.analysis.stats import correctness, paired, read_predictions
from semift_lightning.distributions import align_to_prior
from semift_lightning.files import atomic_write_json
from semift_lightning.semievol.combine import MeanLogProbs
from semift_lightning.semievol.records import Vote

REPO = Path(__file__).resolve().parents[2]
BUDGET = 45
STEPS = 150
PATTERNS = {  # name -> (the member's semift arguments, its seed)
    "chat_qfirst": ([], 11),
    "chat_qlast": (["--data.question_last", "true"], 10),
    "plain_qlast": (["--data.prompt_format", "plain", "--data.question_last", "true"], 12),
    "plain_qfirst": (["--data.prompt_format", "plain"], 13),
    "chat_qfirst_words": (["--data.verbalizer", "word"], 11),  # the answer said as its word, "positive"
}
BASELINES = {"sft": "chat_qfirst", "sft_words": "chat_qfirst_words"}  # --recipe's SFT runs and their patterns
RECIPE = REPO / "callbacks" / "committee.yaml"
RECIPE_COMMITTEE = yaml.safe_load(RECIPE.read_text())["committee"]["init_args"]  # the recipe's committee, parsed once
RECIPE_MEMBERS = RECIPE_COMMITTEE["members"]
WORD_MEMBER = {"pattern": {"name": "chat_qfirst_words", "verbalizer": "word"}, "seed": 13}  # answers "positive"...
WORD_MEMBERS = [{**m, "pattern": {**m["pattern"], "name": f"{m['pattern']['name']}_words", "verbalizer": "word"}}
                for m in RECIPE_MEMBERS]  # the recipe's members, each saying its answers as words
IPET_POOL_FRACTION = 0.13  # PET's growth factor d=5: 4 x 45 committee-labelled items join the 45 labels, of 1359
VARIANTS = {  # run name -> the arguments it adds to the committee recipe
    "committee": [],
    "committee_aligned": ["--alignment", "semift_lightning.semievol.PriorAlignment"],  # class-prior alignment
    "committee_words": ["--committee.init_args.members", json.dumps([*RECIPE_MEMBERS, WORD_MEMBER])],  # a 4th member
    "committee_allwords": ["--committee.init_args.members", json.dumps(WORD_MEMBERS), "--data.verbalizer", "word"],
    "committee_allwords_ipet": [  # iPET's next generation of the all-words committee, distilled by a fresh student
        "--committee.init_args.members", json.dumps(WORD_MEMBERS), "--data.verbalizer", "word",
        "--semievol.rounds", "2", "--committee.init_args.previous_labels", str(IPET_POOL_FRACTION),
        "--restart", "semift_lightning.semievol.RestartStudent", "--trainer.max_epochs", "3"],
}
COMPARED_TO = {"committee_allwords": "sft_words", "committee_allwords_ipet": "sft_words"}  # baselines other than "sft"


def write_split(labeled: Path, seed: int, folder: Path, budget: int = BUDGET) -> None:
    """``budget`` items of ``labeled`` drawn with ``seed`` (``budget.csv``), the labeled items outside them
    (``dev.csv``: a development seed's development set) and the unlabeled pool beside them."""
    with open(labeled, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("budget.csv", order[:budget]), ("dev.csv", order[budget:])):
        with open(folder / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[i] for i in sorted(part))
    shutil.copyfile(labeled.parent / "unlabeled.csv", folder / "unlabeled.csv")


def fixed_schedule(steps: int, seed: int) -> list[str]:
    """``semift fit`` arguments that train for exactly ``steps`` optimizer steps with ``seed``."""
    return ["--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--seed_everything", str(seed)]


def run_member(folder: Path, pattern: str, run: str = "") -> float:
    """Fit and score one member in ``folder / run`` (default: the pattern's name); returns the seconds its fit and
    test took."""
    extra, seed = PATTERNS[pattern]
    return fit_and_test(folder / (run or pattern), [*extra, *fixed_schedule(STEPS, seed)])


def run_recipe(folder: Path, variant: str) -> float:
    """Fit the committee recipe (with ``variant``'s change) on the budget and the pool, and score the student on the
    development set."""
    return fit_and_test(folder / variant, ["-c", str(RECIPE),
                                           "--data.unlabeled", "unlabeled.csv",
                                           "--committee.init_args.members_dir", str(folder / "members"),
                                           *VARIANTS[variant]])


def fit_and_test(run: Path, extra: list[str], test: str = "dev.csv") -> float:
    """``semift fit`` on the budget in ``run``'s parent folder with ``extra`` arguments, then ``semift test`` of its
    last checkpoint on ``test`` (in the prompts the checkpoint records); returns the seconds both took."""
    start = time.perf_counter()
    semift("fit", run, test, extra)
    semift("test", run, test, ["--ckpt_path", str(run / "logs" / "checkpoints" / "last.ckpt")])
    return time.perf_counter() - start


def committee_vote(rows: Sequence[dict]) -> Vote:
    """One item's prediction rows of several members, combined as the recipe combines them."""
    return MeanLogProbs()([Vote(row["prediction"], probs=row["option_probs"]) for row in rows])


def semift(command: str, run: Path, test: str, extra: list[str]) -> None:
    """One ``semift`` command on FPB with the budget in ``run``'s parent folder, logging to ``run``."""
    subprocess.run([sys.executable, "-c", "from semift_lightning.cli import main; main()", command,
                    "-c", str(REPO / "configs" / "fpb.yaml"), "--data.root", str(run.parent),
                    "--data.labeled", "budget.csv", "--data.unlabeled", "null", "--data.test", test,
                    "--data.test_overlap", "allow", f"--trainer.logger.init_args.save_dir={run}", *extra], check=True)


def recipe_report(out: Path) -> None:
    """Each seed's SFT and committee recipes on the development set, with their wall times, and each recipe's paired
    difference to SFT pooled over the seeds' development items where both ran."""
    pooled: dict[str, dict[str, float]] = {name: {} for name in (*BASELINES, *VARIANTS)}
    for folder in sorted(out.glob("seed*")):
        runs = {name: folder / name / "logs" / "test_predictions.jsonl" for name in pooled}
        scores = {name: correctness(read_predictions(path)) for name, path in runs.items() if path.exists()}
        if "sft" not in scores:
            continue
        for name, by_id in scores.items():
            pooled[name].update({f"{folder.name}/{key}": value for key, value in by_id.items()})
        times = json.loads((folder / "recipe_seconds.json").read_text())
        line = ", ".join(f"{name} {100 * sum(by_id.values()) / len(by_id):.2f} in {times[name]:.0f} s"
                         + (f" ({times[name] / times['sft']:.1f}x SFT)" if name in VARIANTS else "")
                         for name, by_id in scores.items())
        print(f"{folder.name}: {line}")
    for name in ("sft_words", *VARIANTS):
        baseline = COMPARED_TO.get(name, "sft")
        both = {key: value for key, value in pooled[baseline].items() if key in pooled[name]}
        if both:
            _, (difference, low, high) = paired(both, {key: pooled[name][key] for key in both})
            print(f"pooled over {len(both)} development items: {name} - {baseline} {100 * difference:+.2f} "
                  f"[{100 * low:+.2f}, {100 * high:+.2f}]")


def read(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_predictions(path)}


def report(out: Path) -> None:
    pooled: dict[str, list[float]] = {}
    for folder in sorted(out.glob("seed*")):
        members = {p.parent.parent.name: read(p) for p in sorted(folder.glob("*/logs/test_predictions.jsonl"))
                   if p.parent.parent.name in PATTERNS}  # not the recipe's runs
        if not members:
            continue
        ids = sorted(set.intersection(*(set(m) for m in members.values())))
        gold = [members[next(iter(members))][i]["gold"] for i in ids]
        with open(folder / "budget.csv", newline="", encoding="utf-8") as handle:
            shares = Counter(row["answer"] for row in csv.DictReader(handle))
        prior = [(shares[letter] + 1) / (BUDGET + 3) for letter in "ABC"]
        scores = {name: [float(m[i]["prediction"] == g) for i, g in zip(ids, gold)] for name, m in members.items()}
        committee = [committee_vote([m[i] for m in members.values()]).probs for i in ids]
        aligned = align_to_prior(torch.tensor(committee, dtype=torch.float64),
                                 torch.tensor(prior, dtype=torch.float64)).tolist()
        for name, rows in (("committee", committee), ("committee, prior-aligned", aligned)):
            scores[name] = [float("ABC"[row.index(max(row))] == g) for row, g in zip(rows, gold)]
        line = ", ".join(f"{name} {100 * sum(s) / len(s):.2f}" for name, s in scores.items())
        print(f"{folder.name} ({len(ids)} development items, {len(members)} members): {line}")
        best = max((n for n in members), key=lambda n: sum(scores[n]))
        for name in ("best member", "committee", "committee, prior-aligned"):
            pooled.setdefault(name, []).extend(scores[best if name == "best member" else name])
    if pooled:
        print("pooled: " + ", ".join(f"{name} {100 * sum(s) / len(s):.2f}" for name, s in pooled.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="the folder holding fpb/labeled.csv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    parser.add_argument("--out", default="runs/committee_dev")
    parser.add_argument("--report", action="store_true", help="print the table of the members run so far")
    parser.add_argument("--recipe", action="store_true", help="run SFT and the committee recipe, timed")
    parser.add_argument("--variants", nargs="+", default=["committee"], choices=[*BASELINES, *VARIANTS],
                        help="with --recipe: the recipes (and SFT runs) to run")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        (recipe_report if args.recipe else report)(out)
        return
    if args.recipe:
        for seed in args.seeds:
            folder = out / f"seed{seed}"
            write_split(Path(args.data_root) / "fpb" / "labeled.csv", seed, folder)
            timings = folder / "recipe_seconds.json"
            times = json.loads(timings.read_text()) if timings.exists() else {}
            for name in dict.fromkeys(("sft", *args.variants)):
                if not (folder / name / "logs" / "test_predictions.jsonl").exists():
                    times[name] = (run_member(folder, BASELINES[name], name) if name in BASELINES
                                   else run_recipe(folder, name))
                    atomic_write_json(timings, times)
        recipe_report(out)
        return
    for seed in args.seeds:
        folder = out / f"seed{seed}"
        write_split(Path(args.data_root) / "fpb" / "labeled.csv", seed, folder)
        for pattern in args.patterns:
            if not (folder / pattern / "logs" / "test_predictions.jsonl").exists():
                run_member(folder, pattern)
    report(out)


if __name__ == "__main__":
    main()
