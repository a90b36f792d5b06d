"""Views: the configured models that answer every unlabeled item, and how each one answers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Sequence

import lightning as L
import torch

from semift_lightning.data.batch import Batch
from semift_lightning.distributions import normalized_entropy, option_vote
from semift_lightning.semievol.combine import combine_votes, label_propagation_vote
from semift_lightning.semievol.context import RoundContext, map_pool
from semift_lightning.semievol.contract import Generator, OptionScorer, RoundData
from semift_lightning.semievol.records import PseudoLabel, Vote
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task

STUDENT, BASE = "student", "base"


@dataclass
class View:
    """One configured "model" that answers every unlabeled item.

    Args:
        adapter: "student" (the adapter being trained), "base" (adapters disabled) or a saved adapter folder.
        k: demonstrations in the prompt, from in-context propagation (0 = none); with ``kind:
            label_propagation``, the neighbours that vote.
        neighbour_offset: skip this many nearest neighbours (another view can use the next-nearest ones).
        temperature: 0 decodes greedily; above 0 samples (free-form tasks; closed-form views score options).
        seed: sampling seed.
        kind: how the view answers, a name in ``VIEW_KINDS``: "prompt" (a model answers a prompt) or
            "label_propagation" (no model pass: the item's nearest labeled items vote with their gold answers).
    """

    adapter: str = STUDENT
    k: int = 0
    neighbour_offset: int = 0
    temperature: float = 0.0
    seed: int = 0
    kind: str = "prompt"


# ----- helpers ---------------------------------------------------------------------------------------------------
def as_views(views: Optional[list]) -> list[View]:
    """Views from View objects, mappings or parsed-config namespaces; one student view when unset."""
    if views is None:
        return [View()]
    return [view if isinstance(view, View) else View(**(view if isinstance(view, dict) else vars(view)))
            for view in views]


def scorer_protocol(task: Task) -> type:
    """The protocol a view answers with: option scoring (closed-form) or generation (free-form)."""
    return OptionScorer if task.closed_form else Generator


class use_adapter:
    """Context: run with the student's adapter, adapters disabled ("base"), or a saved adapter."""

    def __init__(self, module: L.LightningModule, adapter: str, name: str) -> None:
        self.module, self.adapter, self.name = module, adapter, name
        self.context = None

    def __enter__(self):
        model = self.module.model
        if self.adapter == BASE:
            self.context = model.disable_adapter()
            self.context.__enter__()
        elif self.adapter != STUDENT:
            self.active = model.active_adapter
            if self.name not in model.peft_config:
                model.load_adapter(self.adapter, adapter_name=self.name, is_trainable=False)
            model.set_adapter(self.name)

    def __exit__(self, *exc):
        if self.context is not None:
            self.context.__exit__(*exc)
        elif self.adapter != STUDENT:
            self.module.model.set_adapter(self.active)  # also makes the student's adapter trainable again


def answerer(module: L.LightningModule, task: Task, view: View) -> Callable[[Batch], list[Vote]]:
    """A function from a batch to one vote per item: answer, option distribution or text, uncertainty."""
    if task.closed_form:
        def closed(batch: Batch) -> list[Vote]:
            votes = []
            for example, row in zip(batch["examples"], module.option_log_probs(batch)):
                answer, probs = option_vote(row, len(example.options))
                votes.append(Vote(answer, normalized_entropy(probs) if answer else math.inf, probs.tolist()))
            return votes
        return closed

    def free(batch: Batch) -> list[Vote]:
        if view.temperature > 0:
            torch.manual_seed(view.seed)
        examples = batch["examples"]
        texts, nll = module.generate_with_nll(batch, lambda text, row: task.answer_span(text, examples[row]),
                                              do_sample=view.temperature > 0, temperature=view.temperature or None)
        return [Vote(task.parse(text, example), loss, text=text) for example, text, loss in zip(examples, texts, nll)]
    return free


def set_agreement(records: Sequence[PseudoLabel]) -> None:
    """Each record's share of answering views that gave its answer (None where none answered)."""
    for record in records:
        answered = [v for v in record.view_answers if v is not None]
        record.agreement = (sum(v == record.answer for v in answered) / len(answered)
                            if answered and record.answer is not None else None)


def student_answers(context: RoundContext, module: L.LightningModule, data: RoundData,
                    pool: Sequence[Example]) -> list[PseudoLabel]:
    """One record per pool item from the student's own answer (one view, no demonstrations): what selection ranks
    in a round without a voting stage."""
    votes = map_pool(context, module, data, "unlabeled", pool, answerer(module, data.task, View()), "view 1/1")
    records = [combine_votes(data.task, example, [votes[example.id]]) for example in pool]
    set_agreement(records)
    return records


def student_accuracy(context: RoundContext, module: L.LightningModule, data: RoundData, split: str) -> float:
    """The student's accuracy on ``split`` (at least one item's worth), as a round measures it."""
    examples = data.load_split(split)
    with context.inference(module):
        votes = map_pool(context, module, data, split, examples, answerer(module, data.task, View()),
                         f"student accuracy on {split}")
    right = sum(data.task.is_correct(votes[e.id].answer, e) for e in examples if votes[e.id].answer)
    return max(right, 1) / len(examples)


class ViewKind:
    """How a view answers every pool item. A new kind is a subclass with its own ``name``, listed in
    ``VIEW_KINDS`` (``View(kind=NAME)``)."""

    name: ClassVar[str] = ""
    closed_form_only: ClassVar[bool] = False
    min_k: ClassVar[int] = 0  # neighbours it needs at the least

    def votes(self, view: View, index: int, context: RoundContext, module: L.LightningModule, data: RoundData,
              pool: Sequence[Example], nearest: dict[str, list[tuple[Example, float]]], of: int) -> dict[str, Vote]:
        """One vote per pool item id; ``nearest``: each item's neighbours for this view; ``index`` of ``of``
        views."""
        raise NotImplementedError


class PromptView(ViewKind):
    """A model (the student, the base model or a saved adapter) answers a prompt, with the item's ``k`` nearest
    labeled items as demonstrations when ``k > 0``."""

    name = "prompt"

    def votes(self, view, index, context, module, data, pool, nearest, of) -> dict[str, Vote]:
        demos = {key: [example for example, _ in row] for key, row in nearest.items()} if view.k else None
        with use_adapter(module, view.adapter, f"view{index}"):
            return map_pool(context, module, data, "unlabeled", pool, answerer(module, data.task, view),
                            f"view {index + 1}/{of}", demonstrations=demos)


class LabelPropagationView(ViewKind):
    """No model pass: the item's ``k`` nearest labeled items (from in-context propagation) vote with their gold
    answers, weighted by cosine similarity, and the weighted answer histogram is the view's distribution.
    Closed-form tasks whose items share their options (sentiment, yes/no/maybe)."""

    name = "label_propagation"
    closed_form_only = True
    min_k = 1

    def votes(self, view, index, context, module, data, pool, nearest, of) -> dict[str, Vote]:
        return {e.id: label_propagation_vote(nearest.get(e.id, []), len(e.options)) for e in pool}


VIEW_KINDS: dict[str, type[ViewKind]] = {kind.name: kind for kind in (PromptView, LabelPropagationView)}
