"""Does a member on another backbone widen the all-words committee? One Gemma-3-270m member (the base model, plain
prompts, answers said as words) beside the three SmolLM2 word members of ``committee_dev.py``'s
``committee_allwords`` run, on one development seed's pool (its gold column as the diagnostic).

    python benchmarks/experiments/committee_dev.py --recipe --data-root ../shared/data/semievol --seeds 100 \
        --variants committee_allwords
    python benchmarks/experiments/committee_backbone.py --seed 100 [--out runs/committee_dev]

The member is fitted on the seed's 45 budget items for the members' fixed 150 steps (seed 14), then scored on the
development set (``dev_predictions.jsonl``) and on the pool (``pool_predictions.jsonl``). The round's records hold
the three-member committee's distribution at temperature T (the softmax of the mean log-probabilities over T), so
the four-member committee's answer is the argmax of ``3 T log p + w log q``, q the Gemma member's distribution and w
its weight relative to one SmolLM2 member (in double precision: the product's combiners work in single precision,
which flips near-ties). A finished member is not run again.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import yaml
from committee_dev import RECIPE_COMMITTEE, REPO, STEPS, fit_and_test, fixed_schedule, read, semift

GEMMA = yaml.safe_load((REPO / "configs" / "gemma3_270m.yaml").read_text())["model"]["model"]
MEMBER = "gemma_plain_qfirst_words"
MEMBER_ARGUMENTS = ["--model.model", GEMMA, "--data.prompt_format", "plain", "--data.verbalizer", "word"]
WEIGHTS = (1.0, 0.5, 0.25)  # the Gemma member's weight relative to one SmolLM2 member


def run_member(folder: Path) -> None:
    run = folder / MEMBER
    if (run / "pool_predictions.jsonl").exists():
        return
    fit_and_test(run, [*MEMBER_ARGUMENTS, *fixed_schedule(STEPS, 14)])
    shutil.copyfile(run / "logs" / "test_predictions.jsonl", run / "dev_predictions.jsonl")
    semift("test", run, "unlabeled.csv",
           [*MEMBER_ARGUMENTS, "--ckpt_path", str(run / "logs" / "checkpoints" / "last.ckpt")])
    shutil.copyfile(run / "logs" / "test_predictions.jsonl", run / "pool_predictions.jsonl")


def report(folder: Path) -> None:
    rounds = folder / "committee_allwords" / "logs" / "pseudo_labels_round1.jsonl"
    records = {row["id"]: row for row in map(json.loads, rounds.read_text().splitlines())}
    member = read(folder / MEMBER / "pool_predictions.jsonl")
    ids = [key for key in records if key in member]
    gold = {key: member[key]["gold"] for key in ids}

    def accuracy(answers: dict[str, str]) -> str:
        return f"{100 * sum(answers[key] == gold[key] for key in ids) / len(ids):.2f}"

    members = len(records[ids[0]]["view_answers"])
    for index in range(members):
        print(f"SmolLM2 member {index + 1}: {accuracy({key: records[key]['view_answers'][index] for key in ids})}")
    print(f"committee of {members}: {accuracy({key: records[key]['answer'] for key in ids})}")
    print(f"Gemma member: {accuracy({key: member[key]['prediction'] for key in ids})}, answers "
          f"{dict(sorted(Counter(member[key]['prediction'] for key in ids).items()))}, gold "
          f"{dict(sorted(Counter(gold.values()).items()))}")
    scale = members * RECIPE_COMMITTEE["temperature"]
    for weight in WEIGHTS:
        answers = {}
        for key in ids:
            logits = [scale * math.log(max(p, 1e-12)) + weight * math.log(max(q, 1e-12))
                      for p, q in zip(records[key]["probs"], member[key]["option_probs"])]
            answers[key] = "ABC"[logits.index(max(logits))]
        print(f"committee with the Gemma member at weight {weight}: {accuracy(answers)}")
    right = Counter((records[key]["answer"] == gold[key], member[key]["prediction"] == gold[key]) for key in ids)
    print(f"items the committee misses that the Gemma member gets right: {right[(False, True)]}; the reverse: "
          f"{right[(True, False)]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--out", default="runs/committee_dev")
    args = parser.parse_args()
    folder = Path(args.out) / f"seed{args.seed}"
    run_member(folder)
    report(folder)


if __name__ == "__main__":
    main()
