"""The committee: separately fine-tuned members, one per prompt pattern and seed, whose option distributions over
the whole pool, weighted and softened, become the pseudo-labels a fresh student distils (PET's recipe)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

from semift_lightning.semievol.combine import COMBINERS, distribution_record
from semift_lightning.semievol.context import map_pool
from semift_lightning.semievol.contract import CommitteeData, MemberStudent, OptionScorer, PeftStudent, RoundData
from semift_lightning.semievol.members import WEIGHTINGS, Member, as_members, trained_member
from semift_lightning.semievol.metrics import voted_metrics
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.stage import SemiEvolStage
from semift_lightning.semievol.views import View, answerer, set_agreement, use_adapter
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task


class CommitteeVoting(SemiEvolStage):
    """Committee members (LoRA adapters beside the student's, the base model loaded once) each train on the labeled
    items in their own prompt pattern for ``steps`` steps, then answer every pool item in that pattern; their option
    distributions, weighted and softened by ``temperature``, are each item's pseudo-label, its entropy the
    uncertainty. With ``data.soft_pseudo_labels`` and ``RestartStudent`` the student then distils the whole pool's
    distributions from a fresh adapter (PET, Schick & Schütze 2021). A member's adapter is saved under
    ``members_dir`` and reused when a killed round runs again; the student's checkpoints never hold it.
    Closed-form tasks. It takes the place of ``CollaborativeVoting`` in a round (the same position).

    Args:
        members: the members, each a prompt pattern, a seed, or a saved adapter folder.
        steps: optimizer steps each member trains for (the module's learning rate, decay and schedule shape).
        weighting: a name in ``WEIGHTINGS`` (``members.py``): "uniform", or "labeled_accuracy": each member's weight
            is its pattern's accuracy on the labeled items before training (PET's weighting); logged.
        temperature: above 1 softens the combined distribution (PET: 2).
        combine: "mean_log_probs" (PET's) or "mean_probs", from ``COMBINERS``.
        members_dir: where the members' adapters are saved (default: ``members`` in the run's log folder).
        previous_labels: from the second round on, each member (a new adapter) also trains on this fraction of the
            pool as the previous round's committee labelled it: iPET's next generation. The items are the most
            confident of each answer, in the labeled items' answer shares (add-one smoothed); 0: labeled items only.
        schedule: when the rounds run (the same in every SemiEvol callback).
    """

    stage = "committee"
    position = 10
    labels_pool = True

    def __init__(self, members: Optional[list[Member]] = None, steps: int = 150, weighting: str = "uniform",
                 temperature: float = 2.0, combine: str = "mean_log_probs", members_dir: Optional[str] = None,
                 previous_labels: float = 0.0, schedule: Optional[Schedule] = None) -> None:
        super().__init__(schedule, members=as_members(members), steps=steps, weighting=weighting,
                         temperature=temperature, combine=combine, members_dir=members_dir,
                         previous_labels=previous_labels)

    @classmethod
    def argument_problems(cls, **given: Any) -> list[str]:
        arguments = cls.arguments(given)
        members, combine = as_members(arguments["members"]), arguments["combine"]
        problems = super().argument_problems(**given)
        if not members:
            problems.append("members: needs at least one member")
        for i, member in enumerate(members):
            problems += member.pattern.problems(f"members[{i}].pattern")
            if member.adapter is not None and not (Path(member.adapter) / "adapter_config.json").is_file():
                problems.append(f"members[{i}].adapter: {member.adapter!r} is not a saved adapter folder (no "
                                f"adapter_config.json)")
        if arguments["steps"] < 1:
            problems.append(f"steps: must be at least 1, got {arguments['steps']}")
        if arguments["weighting"] not in WEIGHTINGS:
            problems.append(f"weighting: must be one of {', '.join(WEIGHTINGS)}, got {arguments['weighting']!r}")
        if not 0 <= arguments["previous_labels"] <= 1:
            problems.append(f"previous_labels: must be in [0, 1], got {arguments['previous_labels']}")
        if not arguments["temperature"] > 0:
            problems.append(f"temperature: must be positive, got {arguments['temperature']}")
        if combine not in COMBINERS or not COMBINERS[combine].settles_disputes:
            problems.append(f"combine: must be a distribution combiner "
                            f"({', '.join(n for n, c in COMBINERS.items() if c.settles_disputes)}), got {combine!r}")
        return problems

    def module_needs(self, task: Task, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        return [OptionScorer, PeftStudent, MemberStudent]

    def datamodule_needs(self) -> list[type]:
        return [CommitteeData]

    def check(self, datamodule: RoundData, stages: Sequence[SemiEvolStage]) -> None:
        if not datamodule.task.closed_form:
            raise ValueError(f"CommitteeVoting: needs a closed-form task (option distributions); "
                             f"{datamodule.task.name!r} has free-form answers")
        for member in self.members:
            datamodule.in_pattern(member.pattern)  # a pattern the tokenizer cannot render fails now, not mid-round

    def process(self, context, module, data, pool, index) -> tuple[list[PseudoLabel], dict]:
        folder = Path(self.members_dir) if self.members_dir else (context.out_dir / "members" if context.out_dir
                                                                  else None)
        pseudo = previous_generation(data, index, self.previous_labels, pool)
        trained_on = [(e.fingerprint, e.answer) for e in [*data.load_split("labeled"), *pseudo]]
        shape = {"steps": self.steps, "optimizer": vars(module.optim_args), "model": module.hparams.get("model"),
                 "trained_on": hashlib.sha256(json.dumps(trained_on).encode()).hexdigest()}
        answers, weights, metrics = [], [], {"previous_labels": len(pseudo)}
        weighting = WEIGHTINGS[self.weighting]()
        for i, member in enumerate(self.members):
            asked, name = data.in_pattern(member.pattern), member.folder_name(i + 1, index, shape)
            weight = weighting.weight(context, module, asked, name)
            if weight is not None:
                weights.append(weight)
                metrics[f"member{i + 1}_weight"] = weight
            where = trained_member(context, module, asked, member, name, self.steps, folder, pseudo)
            with context.inference(module), use_adapter(module, where, name):
                answers.append(map_pool(context, module, asked, "unlabeled", pool,
                                        answerer(module, data.task, View()),
                                        f"member {i + 1}/{len(self.members)} ({member.pattern.name})"))
            module.model.delete_adapter(name)
        combiner = COMBINERS[self.combine]()
        records = [distribution_record(data.task, example, [votes[example.id] for votes in answers], combiner,
                                       weights or None, self.temperature) for example in pool]
        set_agreement(records)
        return records, {**voted_metrics(context, records, data, index), **metrics}


def previous_generation(data: RoundData, index: int, fraction: float, pool: Sequence[Example]) -> list[Example]:
    """``fraction`` of the pool with the answers round ``index - 1`` gave them (still in the store), the least
    uncertain of each answer first, in the labeled items' answer shares (add-one smoothed)."""
    records = [record for record in data.store.records_of(index - 1) if record.answer is not None]
    if not fraction or not records:
        return []
    labeled = Counter(example.answer for example in data.load_split("labeled"))
    answers = sorted(set(labeled) | {record.answer for record in records})
    total = sum(labeled[answer] + 1 for answer in answers)
    wanted = round(fraction * len(pool))
    by_id = {example.id: example for example in pool}
    chosen = []
    for answer in answers:
        ranked = sorted((r for r in records if r.answer == answer), key=lambda r: (r.uncertainty, r.id))
        chosen += ranked[:round(wanted * (labeled[answer] + 1) / total)]
    return [replace(by_id[record.id], answer=record.answer) for record in chosen]
