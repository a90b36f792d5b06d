"""The committee recipe against SFT on FPB's reported data seeds: the learning curve of the committee issue.

    python benchmarks/experiments/committee_curve.py --data-root ../shared/data/semievol --budgets 45 --seeds 0 1 2 3 4
    python benchmarks/experiments/committee_curve.py --report

Every setting is the one fixed on the development seeds (``committee_dev.py``, docs/benchmarks/committee-dev.md);
nothing here is chosen on a test number. For budget N and data seed S, N items of ``fpb/labeled.csv`` drawn with S
(as ``committee_dev.py`` draws) train every model with a fixed schedule; the pool is all of ``fpb/unlabeled.csv``,
the test set all of ``fpb/test.csv``. Methods, each a ``fpb_{pct}pct_seed{S}_{method}.test_predictions.jsonl`` in
``--results``:

- ``sft``: the default pattern, 150 steps (seed 11), as on the development seeds.
- ``distilled``: ``callbacks/committee.yaml``, its members trained inside the fit and saved in the run's ``members``.
- ``member<i>``: each member's saved adapter tested in its own pattern (``semift test --model.adapter``);
  ``member_best``: the member with the highest test accuracy (an oracle, as PET's "best pattern" row).
- ``committee``: the members' test distributions combined as the recipe combines the pool's (the mean of their
  log-probabilities, equal weights), before any distillation.
- ``sft_equal_steps``: SFT for as many optimizer steps as the recipe took in all (its members' and the student's).
- ``self_training``: ``callbacks/self_training_selected.yaml`` on the same budget and pool.

A finished method (its predictions in ``--results``) is not run again: rerun the command to continue. The report
prints each method's accuracy per budget (the mean over seeds) and the paired differences pooled over the seeds'
test items.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from committee_dev import (
    RECIPE,
    RECIPE_COMMITTEE,
    RECIPE_MEMBERS,
    REPO,
    STEPS,
    committee_vote,
    fit_and_test,
    fixed_schedule,
    semift,
    write_split,
)

from semift_lightning.analysis.stats import correctness, paired, read_predictions
from semift_lightning.files import atomic_write_json, atomic_write_text

PATTERN_ARGUMENTS = {"prompt_format": "--data.prompt_format", "question_last": "--data.question_last",
                     "verbalizer": "--data.verbalizer"}  # the pattern fields a member's test asks in
LABELED_TOTAL = 452  # fpb/labeled.csv
REPORTED = ("sft", "sft_equal_steps", "member_best", "committee", "distilled", "self_training")
DIFFERENCES = (("distilled", "sft"), ("distilled", "sft_equal_steps"), ("distilled", "member_best"),
               ("committee", "member_best"), ("distilled", "committee"))


def name(budget: int, seed: int) -> str:
    return f"fpb_{round(100 * budget / LABELED_TOTAL)}pct_seed{seed}"


def keep(results: Path, point: str, method: str, predictions: list[dict]) -> None:
    """A method's test predictions in ``results``, in the compact columnar form (probabilities to 4 digits)."""
    def rounded(value):
        return [round(v, 4) for v in value] if isinstance(value, list) else value
    columns = {key: [rounded(row.get(key)) for row in predictions] for key in predictions[0]}
    atomic_write_text(results / f"{point}_{method}.test_predictions.jsonl",
                      json.dumps({"columns": columns}, separators=(",", ":")) + "\n")


def member_arguments(member: dict, folder: Path, index: int) -> list[str]:
    """``semift test`` arguments that ask member ``index`` (1-based) in its pattern, from its saved adapter."""
    pattern = member["pattern"]
    if pattern.get("instruction"):
        raise SystemExit(f"committee_curve: member {index}'s pattern sets an instruction, which a student's own "
                         f"prompts do not take; its test row cannot be scored")
    saved = sorted(folder.glob(f"member{index}-{pattern['name']}-seed{member.get('seed', 0)}-round1-*"))
    if len(saved) != 1:
        raise SystemExit(f"committee_curve: expected one saved adapter of member {index} in {folder}, found "
                         f"{len(saved)}")
    arguments = ["--model.adapter", str(saved[0])]
    for field, flag in PATTERN_ARGUMENTS.items():
        if pattern.get(field) is not None:
            arguments += [flag, json.dumps(pattern[field]).strip('"')]
    return arguments


def committee_rows(members: list[list[dict]]) -> list[dict]:
    """The members' test rows combined as the recipe combines them (the mean of their option log-probabilities)."""
    rows = []
    for same_item in zip(*members):
        vote = committee_vote(same_item)
        first = same_item[0]
        rows.append({"id": first["id"], "gold": first["gold"], "prediction": vote.answer, "option_probs": vote.probs,
                     "correct": vote.answer == first["gold"]})
    return rows


def run_point(data_root: Path, out: Path, results: Path, budget: int, seed: int) -> None:
    point = name(budget, seed)
    folder = out / point
    write_split(data_root / "fpb" / "labeled.csv", seed, folder, budget)
    shutil.copyfile(data_root / "fpb" / "test.csv", folder / "test.csv")
    timings = results / "committee_curve_seconds.json"
    seconds = json.loads(timings.read_text()) if timings.exists() else {}

    def done(method: str) -> bool:
        return (results / f"{point}_{method}.test_predictions.jsonl").exists()

    def record(method: str, taken: float) -> None:
        keep(results, point, method, read_predictions(folder / method / "logs" / "test_predictions.jsonl"))
        seconds.setdefault(point, {})[method] = round(taken, 1)
        atomic_write_json(timings, seconds)

    if not done("sft"):
        record("sft", fit_and_test(folder / "sft", fixed_schedule(STEPS, 11), "test.csv"))
    if not done("distilled"):
        record("distilled", fit_and_test(folder / "distilled", [
            "-c", str(RECIPE), "--data.unlabeled", "unlabeled.csv",
            "--committee.init_args.members_dir", str(folder / "members")], "test.csv"))
    members = []
    for index, member in enumerate(RECIPE_MEMBERS, 1):
        method = f"member{index}"
        if not done(method):
            start = time.perf_counter()
            semift("test", folder / method, "test.csv", member_arguments(member, folder / "members", index))
            record(method, time.perf_counter() - start)
        members.append(read_predictions(results / f"{point}_{method}.test_predictions.jsonl"))
    keep(results, point, "committee", committee_rows(members))
    accuracy = [sum(correctness(rows).values()) for rows in members]
    keep(results, point, "member_best", members[accuracy.index(max(accuracy))])
    if not done("sft_equal_steps"):
        steps = torch.load(folder / "distilled" / "logs" / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=True)["global_step"] + len(RECIPE_MEMBERS) * RECIPE_COMMITTEE["steps"]
        record("sft_equal_steps", fit_and_test(folder / "sft_equal_steps", fixed_schedule(steps, 11), "test.csv"))
    if not done("self_training"):
        record("self_training", fit_and_test(folder / "self_training", [
            "-c", str(REPO / "callbacks" / "self_training_selected.yaml"), "--data.unlabeled", "unlabeled.csv",
            "--seed_everything", "11"], "test.csv"))


def report(results: Path) -> None:
    points: dict[str, dict[str, dict[str, dict[str, float]]]] = {}  # budget -> method -> seed -> correctness
    for path in sorted(results.glob("fpb_*pct_seed*_*.test_predictions.jsonl")):
        pct, rest = path.name[len("fpb_"):].split("pct_seed", 1)
        seed, method = rest[:-len(".test_predictions.jsonl")].split("_", 1)
        if method in REPORTED:
            points.setdefault(pct, {}).setdefault(method, {})[seed] = correctness(read_predictions(path))
    for pct, methods in sorted(points.items(), key=lambda item: int(item[0])):
        print(f"## {pct}% of FPB's labels")
        print("| method | seeds | accuracy, mean over seeds |\n|---|---|---|")
        for method in REPORTED:
            if method in methods:
                scores = [100 * sum(s.values()) / len(s) for s in methods[method].values()]
                print(f"| {method} | {', '.join(sorted(methods[method]))} | {sum(scores) / len(scores):.2f} |")
        for better, baseline in DIFFERENCES:
            seeds = sorted(set(methods.get(better, {})) & set(methods.get(baseline, {})))
            if seeds:
                pooled = [{f"{seed}/{key}": value for seed in seeds for key, value in methods[m][seed].items()}
                          for m in (baseline, better)]
                _, (difference, low, high) = paired(*pooled)
                print(f"{better} - {baseline}, paired over {len(pooled[0])} test items (seeds {', '.join(seeds)}): "
                      f"{100 * difference:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="the folder holding fpb/labeled.csv, unlabeled.csv and test.csv")
    parser.add_argument("--budgets", type=int, nargs="+", default=[45])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="runs/committee_curve", help="the runs' folders")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "learning_curve"))
    parser.add_argument("--report", action="store_true", help="print the table of the predictions kept so far")
    args = parser.parse_args()
    results = Path(args.results)
    if not args.report:
        results.mkdir(parents=True, exist_ok=True)
        for budget in args.budgets:
            for seed in args.seeds:
                run_point(Path(args.data_root), Path(args.out), results, budget, seed)
    report(results)


if __name__ == "__main__":
    main()
