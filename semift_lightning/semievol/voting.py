"""Collaborative voting: several views answer every pool item; self-justification settles disputes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L

from semift_lightning.semievol.combine import (
    COMBINERS,
    MajorityVote,
    candidates_shown,
    combine_votes,
    distribution_record,
    mean_vote,
)
from semift_lightning.semievol.context import RoundContext, map_pool
from semift_lightning.semievol.contract import PeftStudent, RoundData
from semift_lightning.semievol.metrics import voted_metrics
from semift_lightning.semievol.propagation import InContextPropagation
from semift_lightning.semievol.records import PseudoLabel, Vote
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.stage import SemiEvolStage
from semift_lightning.semievol.views import (
    BASE,
    STUDENT,
    VIEW_KINDS,
    View,
    answerer,
    as_views,
    scorer_protocol,
    set_agreement,
)
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task


class CollaborativeVoting(SemiEvolStage):
    """Several views answer every unlabeled item; where they disagree, the student is shown the question with the
    candidate answers and picks the final one (self-justification).

    Args:
        views: the views; for closed-form tasks each is one forward pass that scores all options.
        self_justification: resolve disagreements with the student; otherwise the majority (ties: least
            uncertain) wins. Only with ``combine: vote``.
        average_candidate_orders: closed-form tasks: show a dispute's candidates once in each cyclic rotation of
            option order (each candidate listed first once) and average the option distributions, so that the
            pick does not hang on which candidate comes first (a small student favours a position). Off: one pass
            in option order. Free-form answers are generated, not scored, so they always take one pass.
        combine: how the views' answers make one, a name in ``COMBINERS`` (``semievol/combine.py``): "vote"
            (an answer all answering views agree on, else self-justification or the majority), "mean_probs" or
            "mean_log_probs" (the views' mean option distribution, closed-form tasks).
        text_chars: free-form tasks: each view's generated text is kept in the round's records (``view_texts``,
            so the JSONL shows why a pseudo-label is what it is), cut to this many characters.
        view_weights: with a distribution combiner, each view's weight in the mean (default: equal), e.g. each
            committee member's accuracy on the labeled items (PET's weighting).
        temperature: with a distribution combiner, above 1 softens the combined distribution, the soft target
            (PET distils with 2).
        schedule: when the rounds run (the same in every SemiEvol callback).

    Voting never selects: without a selection stage in the round, every answered item trains with its answer.
    """

    stage = "voting"
    position = 10
    labels_pool = True

    def __init__(self, views: Optional[list[View]] = None, self_justification: bool = True,
                 average_candidate_orders: bool = True, combine: str = "vote", text_chars: int = 500,
                 view_weights: Optional[list[float]] = None, temperature: float = 1.0,
                 schedule: Optional[Schedule] = None) -> None:
        super().__init__(schedule, views=as_views(views), self_justification=self_justification,
                         average_candidate_orders=average_candidate_orders, combine=combine, text_chars=text_chars,
                         view_weights=view_weights, temperature=temperature)

    @classmethod
    def argument_problems(cls, **given: Any) -> list[str]:
        arguments = cls.arguments(given)
        views, combine, text_chars = arguments["views"], arguments["combine"], arguments["text_chars"]
        self_justification = arguments["self_justification"]
        problems = super().argument_problems(**given)
        weights, temperature = arguments["view_weights"], arguments["temperature"]
        if not temperature > 0:
            problems.append(f"temperature: must be positive, got {temperature}")
        if weights is not None and (len(weights) != len(as_views(views)) or not all(w > 0 for w in weights)):
            problems.append(f"view_weights: needs one positive weight per view ({len(as_views(views))}), got "
                            f"{weights}")
        if (weights is not None or temperature != 1.0) and not COMBINERS.get(combine, MajorityVote).settles_disputes:
            problems.append(f"view_weights / temperature: weigh and soften a distribution combiner's mean; combine "
                            f"is {combine!r}")
        if text_chars < 0:
            problems.append(f"text_chars: must be at least 0, got {text_chars}")
        views = as_views(views)
        if not views:
            problems.append("views: needs at least one view (n >= 1)")
        if combine not in COMBINERS:
            problems.append(f"combine: must be one of {', '.join(COMBINERS)}, got {combine!r}")
        elif COMBINERS[combine].settles_disputes and self_justification:
            problems.append(f"combine: {combine!r} decides disputes from the views' distributions; set "
                            f"self_justification: false")
        for i, view in enumerate(views):
            if view.k < 0 or view.neighbour_offset < 0:
                problems.append(f"views[{i}]: k and neighbour_offset must be at least 0, got {view.k}, "
                                f"{view.neighbour_offset}")
            if view.kind not in VIEW_KINDS:
                problems.append(f"views[{i}].kind: must be {' or '.join(map(repr, VIEW_KINDS))}, got {view.kind!r}")
            elif view.k < VIEW_KINDS[view.kind].min_k:
                least = VIEW_KINDS[view.kind].min_k
                problems.append(f"views[{i}].k: a {view.kind.replace('_', '-')} view needs at least "
                                f"{'one neighbour' if least == 1 else f'{least} neighbours'}, got {view.k}")
            if view.temperature < 0:
                problems.append(f"views[{i}].temperature: must be at least 0, got {view.temperature}")
            if view.adapter not in (STUDENT, BASE) and not (Path(view.adapter) / "adapter_config.json").is_file():
                problems.append(f"views[{i}].adapter: {view.adapter!r} is neither 'student', 'base' nor a saved "
                                f"adapter folder (no adapter_config.json)")
        return problems

    def module_needs(self, task: Task, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        saved = any(view.adapter != STUDENT for view in self.views)
        return [scorer_protocol(task)] + ([PeftStudent] if saved else [])

    def check(self, datamodule: RoundData, stages: Sequence[SemiEvolStage]) -> None:
        closed_only = [f"views[{i}] (kind {view.kind})" for i, view in enumerate(self.views)
                       if VIEW_KINDS[view.kind].closed_form_only]
        closed_only += [f"combine={self.combine!r}"] if COMBINERS[self.combine].closed_form_only else []
        if closed_only and not datamodule.task.closed_form:
            raise ValueError(f"CollaborativeVoting: {', '.join(closed_only)} needs a closed-form task; "
                             f"{datamodule.task.name!r} has free-form answers")
        icp = next((s for s in stages if isinstance(s, InContextPropagation)), None)
        depth = max(view.k + view.neighbour_offset for view in self.views)
        if depth and icp is None:
            raise ValueError("CollaborativeVoting: a view uses demonstrations (k > 0) but there is no "
                             "InContextPropagation callback")
        if depth > (icp.k if icp else 0):
            raise ValueError(f"CollaborativeVoting: a view needs {depth} neighbours (k + neighbour_offset) but "
                             f"InContextPropagation keeps k={icp.k}")

    def process(self, context, module, data, pool, index) -> tuple[list[PseudoLabel], dict]:
        with context.inference(module):
            records = self.label(context, module, data, pool, _neighbours(data, index))
        return records, voted_metrics(context, records, data, index)

    def label(self, context: RoundContext, module: L.LightningModule, datamodule: RoundData, pool: Sequence[Example],
              neighbours: dict[str, list[tuple[Example, float]]]) -> list[PseudoLabel]:
        """One record per pool item from every view's answers; ``neighbours`` as ``InContextPropagation.similar``
        gives them."""
        task, combiner = datamodule.task, COMBINERS[self.combine]()
        answers = []
        for i, view in enumerate(self.views):
            start = view.neighbour_offset
            nearest = {key: row[start:start + view.k] for key, row in neighbours.items()}
            answers.append(VIEW_KINDS[view.kind]().votes(view, i, context, module, datamodule, pool, nearest,
                                                         len(self.views)))
        records, disputed = [], {}
        for example in pool:
            votes = [view_answers[example.id] for view_answers in answers]
            record = (distribution_record(task, example, votes, combiner, self.view_weights, self.temperature)
                      if combiner.settles_disputes else combine_votes(task, example, votes))
            record.neighbours = [(other.id, similarity) for other, similarity in neighbours.get(example.id, [])]
            if not task.closed_form:
                record.view_texts = [(vote.text or "")[:self.text_chars] for vote in votes]
            if not combiner.settles_disputes and record.disputed and self.self_justification:
                disputed[example.id] = candidates_shown(task, example, votes)
            records.append(record)
        if disputed:
            chosen = self.justify(context, module, datamodule, pool, disputed)
            for record in records:
                if record.id in chosen:
                    vote = chosen[record.id]
                    record.answer, record.uncertainty, record.justified = vote.answer, vote.uncertainty, True
                    record.probs = vote.probs if task.closed_form else record.probs
        set_agreement(records)
        return records

    def justify(self, context: RoundContext, module: L.LightningModule, datamodule: RoundData, pool: Sequence[Example],
                disputed: dict[str, list[str]]) -> dict[str, Vote]:
        """The student's pick among each disputed item's candidates (listed as given, or averaged over their
        cyclic rotations): one vote per item id."""
        task = datamodule.task
        orders = max(map(len, disputed.values())) if task.closed_form and self.average_candidate_orders else 1
        passes = []
        for shift in range(orders):
            shown = {key: c[shift:] + c[:shift] for key, c in disputed.items() if shift < len(c)}
            description = "self-justification" + (f" {shift + 1}/{orders}" if orders > 1 else "")
            passes.append(map_pool(context, module, datamodule, "unlabeled", [e for e in pool if e.id in shown],
                                    answerer(module, task, View()), description, candidates=shown))
        if orders == 1:
            return passes[0]
        return {key: mean_vote([p[key] for p in passes if key in p]) for key in disputed}


def _neighbours(data: RoundData, index: int) -> dict[str, list[tuple[Example, float]]]:
    """The neighbours in-context propagation wrote into the store's records of round ``index`` (none if it did not
    run), as labeled examples with their similarities."""
    records = [r for r in data.store.records_of(index) if r.neighbours]
    labeled = {example.id: example for example in data.load_split("labeled")} if records else {}
    return {r.id: [(labeled[key], similarity) for key, similarity in r.neighbours] for r in records}
