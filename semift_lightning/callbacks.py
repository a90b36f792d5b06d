"""The SemiEvol loop as Lightning callbacks: in-context propagation, collaborative voting with
self-justification, and entropy selection of pseudo-labels.

A round runs at the end of a training epoch: after ``warmup_epochs`` of labeled-only training, then every
``refresh_every_n_epochs``, for ``rounds`` rounds (one ``Schedule``, shared by the callbacks of a fit). With
``warmup_epochs=0`` the first round runs when the fit starts, before any training, with the adapter the student starts
from (a supervised one given as ``--model.adapter``). Each callback does its own stage at that boundary, in
``trainer.callbacks`` order, and they talk only through the store (the DataModule's pseudo-labels, typed
``PseudoLabel`` records): propagation writes each item's neighbours, voting its answer from the views, selection the
``selected`` flags. Any subset works: voting alone keeps every answered item, selection alone selects over the
student's own answers. ``run_round`` runs the configured stages on a module and a DataModule without a Trainer.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tqdm.auto import tqdm

from semift_lightning import contract
from semift_lightning.contract import PseudoLabelStore
from semift_lightning.errors import ArgumentError
from semift_lightning.io import atomic_write_jsonl
from semift_lightning.module import option_vote
from semift_lightning.parsing import LETTERS
from semift_lightning.pseudo_labels import PseudoLabel, Vote
from semift_lightning.records import Example

STUDENT, BASE = "student", "base"
PROMPT, LABEL_PROPAGATION = "prompt", "label_propagation"
COMBINE_MODES = ("vote", "mean_probs", "mean_log_probs")
VALIDATION = "validation"  # EntropySelection(keep_fraction=...): θ measured on the validation split


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
        kind: "prompt" (a model answers a prompt) or "label_propagation": no model pass; the item's ``k`` nearest
            labeled items (from in-context propagation) vote with their gold answers, weighted by cosine
            similarity, and the weighted answer histogram is the view's distribution. Closed-form tasks whose
            items share their options (sentiment, yes/no/maybe).
    """

    adapter: str = STUDENT
    k: int = 0
    neighbour_offset: int = 0
    temperature: float = 0.0
    seed: int = 0
    kind: str = PROMPT


def normalized_entropy(probs: torch.Tensor) -> float:
    """Shannon entropy over the options divided by log(option count): 0 is certain, 1 is uniform."""
    if probs.numel() < 2:
        return 0.0
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return float(entropy / math.log(probs.numel()))


def quantile_threshold(values: Sequence[float], keep_fraction: float) -> float:
    """The largest value among the ``keep_fraction`` smallest (at least one kept)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(keep_fraction * len(ordered))) - 1]


@dataclass(frozen=True)
class Schedule:
    """When the pseudo-labeling rounds run: one schedule for every SemiEvol callback of a fit.

    Args:
        warmup_epochs: labeled-only epochs before the first round; 0: the first round runs when the fit starts,
            with the adapter the student starts from (train one first, or give one as ``--model.adapter``).
        refresh_every_n_epochs: epochs between rounds.
        rounds: how many pseudo-labeling rounds to run.
    """

    warmup_epochs: int = 1
    refresh_every_n_epochs: int = 1
    rounds: int = 1

    def problems(self) -> list[str]:
        """Every problem with the schedule, each naming its field; empty when all are fine."""
        problems = []
        if self.warmup_epochs < 0:
            problems.append(f"warmup_epochs: must be at least 0 (0: the first round runs when the fit starts), "
                            f"got {self.warmup_epochs}")
        if self.refresh_every_n_epochs < 1:
            problems.append(f"refresh_every_n_epochs: must be at least 1, got {self.refresh_every_n_epochs}")
        if self.rounds < 1:
            problems.append(f"rounds: must be at least 1, got {self.rounds}")
        return problems

    def round_due(self, epoch: int) -> Optional[int]:
        """The 1-based round that ends epoch ``epoch`` (0-based; -1: the fit's start), or None."""
        since = epoch + 1 - self.warmup_epochs
        if since < 0 or since % self.refresh_every_n_epochs:
            return None
        index = since // self.refresh_every_n_epochs + 1
        return index if index <= self.rounds else None


def as_schedule(value: Any) -> Schedule:
    """A Schedule from a Schedule, a mapping or a parsed-config namespace; the default one when None."""
    if value is None or isinstance(value, Schedule):
        return value or Schedule()
    return Schedule(**(value if isinstance(value, dict) else vars(value)))


class RoundContext:
    """Where a round's stages run: this process's rank among ``world_size``, the device, the precision context, and
    where the records and metrics go. ``RoundContext.of(trainer)`` inside a fit (all ranks take part; metrics go to
    the trainer's loggers, records to its log folder); ``RoundContext(device, out_dir, precision)`` runs on one
    process without a Trainer (records to ``out_dir`` when given; ``precision`` as the Trainer's: "bf16-mixed" and
    "16-mixed" autocast, anything else runs in the weights' precision)."""

    def __init__(self, device: Optional[torch.device] = None, out_dir: Optional[str] = None,
                 trainer: Optional[L.Trainer] = None, precision: Optional[str] = None) -> None:
        self.device, self.trainer, self.precision = device, trainer, precision
        self.out_dir = Path(out_dir) if out_dir else None
        self.rank = trainer.global_rank if trainer else 0
        self.world_size = trainer.world_size if trainer else 1

    @classmethod
    def of(cls, trainer: L.Trainer) -> "RoundContext":
        return cls(trainer.strategy.root_device, trainer.log_dir or trainer.default_root_dir, trainer)  # collective

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def stop_requested(self) -> bool:
        """Whether any rank has received SIGTERM (the same answer on every rank, as Lightning's loops ask)."""
        trainer = self.trainer
        return bool(trainer and trainer.strategy.reduce_boolean_decision(trainer.received_sigterm, all=False))

    def gather(self, results: dict[str, Any]) -> dict[str, Any]:
        """Every rank's results, merged."""
        if self.world_size == 1:
            return results
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, results)
        return {key: value for part in parts for key, value in part.items()}

    @contextmanager
    def inference(self, module: L.LightningModule) -> Iterator[None]:
        """Eval mode, no gradients, the trainer's precision; the module's mode comes back afterwards."""
        was_training = module.training
        module.eval()
        if self.trainer:
            precision = self.trainer.precision_plugin.forward_context()
        elif self.precision in ("bf16-mixed", "16-mixed"):
            dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
            precision = torch.autocast(torch.device(self.device or module.device).type, dtype=dtype)
        else:
            precision = nullcontext()
        try:
            with torch.no_grad(), precision:
                yield
        finally:
            module.train(was_training)

    def publish(self, module: L.LightningModule, records: Sequence[PseudoLabel], metrics: dict, epoch: int) -> None:
        """Log a stage's metrics (``semievol/*``) and write the round's records as they stand (rank zero, then a
        barrier)."""
        scalars = {f"semievol/{key}": float(value) for key, value in metrics.items() if key != "round"}
        trainer = self.trainer
        if trainer and epoch >= 0:
            for key, value in scalars.items():
                module.log(key, value, on_epoch=True, sync_dist=False, rank_zero_only=True)
        elif trainer and trainer.is_global_zero:  # Lightning's self.log is not available before the fit loop
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
        if self.is_main:
            if self.out_dir is not None:
                atomic_write_jsonl(self.out_dir / f"pseudo_labels_round{metrics['round']}.jsonl",
                                   [record.as_dict() for record in records])
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
            rank_zero_info(f"pseudo-labeling round {metrics['round']}: {shown}")
        if trainer:
            trainer.strategy.barrier()

    def histogram(self, name: str, values: Sequence[float]) -> None:
        experiment = getattr(self.trainer.logger, "experiment", None) if self.trainer and self.is_main else None
        if values and hasattr(experiment, "add_histogram"):
            experiment.add_histogram(name, torch.tensor(values), self.trainer.global_step)


class SemiEvolStage(L.Callback):
    """One stage of the SemiEvol round, done at the epoch boundaries ``schedule`` names: reads the store's records
    of the round, does its part, and writes them back (``run``). The callbacks of a fit share one schedule and run
    in ``trainer.callbacks`` order (propagation, voting, selection).

    Args:
        schedule: when the rounds run (one for every SemiEvol callback of a fit; ``semievol.*`` on the command line).
    """

    stage = ""  # the stage's name in metrics (``semievol/<stage>_seconds``)

    def __init__(self, schedule: Optional[Schedule] = None, **arguments: Any) -> None:
        schedule = as_schedule(schedule)
        problems = type(self).argument_problems(schedule=schedule, **arguments)
        if problems:
            raise ArgumentError(f"invalid {type(self).__name__} arguments:\n- " + "\n- ".join(problems))
        self.schedule = schedule
        self.history: list[dict] = []  # this stage's metrics, one entry per round
        self.last_round: Optional[int] = 0  # None: restored from a checkpoint that predates per-stage state

    @classmethod
    def argument_problems(cls, schedule: Any = None, **_: Any) -> list[str]:
        """Every problem with the arguments, each naming its argument; empty when all are fine."""
        return [f"schedule.{problem}" for problem in as_schedule(schedule).problems()]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        stages = [cb for cb in trainer.callbacks if isinstance(cb, SemiEvolStage)]
        protocols = [PseudoLabelStore, *self.datamodule_needs()]
        absent = [f"datamodule.{name}" for protocol in protocols for name in contract.missing(datamodule, protocol)]
        if type(datamodule).state_dict is L.LightningDataModule.state_dict:
            absent.append("datamodule.state_dict / load_state_dict (the pseudo-labels must live in checkpoints, "
                          "or a resumed run trains on none)")
        if hasattr(datamodule, "task"):
            needed = self.module_needs(datamodule.task, stages)
            protocols += needed
            absent += [f"module.{name}" for protocol in needed for name in contract.missing(pl_module, protocol)]
        if absent:
            raise AttributeError(f"{type(self).__name__} needs {', '.join(dict.fromkeys(absent))}; see the plug-in "
                                 f"contract in the README and semift_lightning.contract "
                                 f"({', '.join(dict.fromkeys(p.__name__ for p in protocols))})")
        order = [next(i for i, kind in enumerate(STAGES) if isinstance(s, kind)) for s in stages
                 if isinstance(s, STAGES)]
        if order != sorted(set(order)):
            raise ValueError(f"the SemiEvol callbacks run in trainer.callbacks order, at most one of each: "
                             f"{' before '.join(kind.__name__ for kind in STAGES)}; got "
                             f"{', '.join(type(s).__name__ for s in stages)}")
        for other in stages:
            if other.schedule != self.schedule:
                raise ValueError(f"{type(self).__name__} and {type(other).__name__} need the same schedule: "
                                 f"{self.schedule} != {other.schedule}")
        if trainer.reload_dataloaders_every_n_epochs != 1:
            trainer.reload_dataloaders_every_n_epochs = 1  # the training set changes after each round
        warmup = self.schedule.warmup_epochs
        if stages[0] is self and trainer.max_epochs is not None and 0 < trainer.max_epochs <= warmup:
            rank_zero_warn(f"{type(self).__name__}: warmup_epochs={warmup} is not below trainer.max_epochs="
                           f"{trainer.max_epochs}: no epoch will train on pseudo-labels")
        self.check(trainer, datamodule, stages)

    def check(self, trainer: L.Trainer, datamodule: Any, stages: list["SemiEvolStage"]) -> None:
        """Callback-specific checks that need the trainer, before training starts."""

    def module_needs(self, task: Any, stages: Sequence["SemiEvolStage"] = ()) -> list[type]:
        """The protocols (``semift_lightning.contract``) this callback calls on the LightningModule, for ``task``,
        beside the other SemiEvol callbacks ``stages``."""
        return []

    def datamodule_needs(self) -> list[type]:
        """The protocols this callback calls on the DataModule beyond ``PseudoLabelStore``."""
        return []

    def run(self, context: RoundContext, module: L.LightningModule, store: Any, index: int, epoch: int = -1) -> dict:
        """Do this stage of round ``index`` (ending epoch ``epoch``; -1: the fit's start) on ``store``'s records and
        write them back; returns the stage's metrics, its wall time as ``<stage>_seconds``."""
        start = time.perf_counter()
        pool = store.load_split("unlabeled")
        if not pool:
            rank_zero_warn("no unlabeled data: the pseudo-labeling round is skipped and training uses labeled data "
                           "only")
            store.set_pseudo_labels([], index, epoch)
            return {"round": index, "pool": 0}
        records, metrics = self.process(context, module, store, pool, index)
        for record in records:
            record.round = index
        store.set_pseudo_labels(records, index, epoch)
        metrics = {"round": index, **metrics, f"{self.stage}_seconds": time.perf_counter() - start}
        context.publish(module, records, metrics, epoch)
        return metrics

    def process(self, context: RoundContext, module: L.LightningModule, store: Any, pool: Sequence[Example],
                index: int) -> tuple[list[PseudoLabel], dict]:
        """This stage's work on the pool in round ``index``: the round's records and the stage's metrics."""
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # With validation at an epoch's end, ModelCheckpoint saves when it ends, before on_train_epoch_end: the
        # round runs first so that the checkpoint of this epoch holds its pseudo-labels.
        if trainer.state.fn == "fit" and not trainer.sanity_checking \
                and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._run_if_due(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run_if_due(trainer, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before the fit loop loads the training data, so that the first epoch already trains on the round's labels
        # (a resumed run has its round: the DataModule's state is restored before this hook)
        self._run_if_due(trainer, pl_module, epoch=-1)

    def _run_if_due(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: Optional[int] = None) -> None:
        epoch = trainer.current_epoch if epoch is None else epoch
        index = self.schedule.round_due(epoch)
        store = trainer.datamodule
        done = store.pseudo_round if self.last_round is None else self.last_round
        if index is None or done >= index:  # a finished stage is never recomputed
            return
        self.history.append(self.run(RoundContext.of(trainer), pl_module, store, index, epoch))
        self.last_round = index
        through = epoch + 2  # epochs to complete: the round's and the one that trains on it
        if trainer.fit_loop.min_epochs is None or trainer.fit_loop.min_epochs < through:
            trainer.fit_loop.min_epochs = through  # early stopping then waits for that epoch (Lightning's min_epochs)
            if any(isinstance(cb, EarlyStopping) for cb in trainer.callbacks):
                rank_zero_info(f"pseudo-labeling round {index}: early stopping waits until epoch {through - 1} has "
                               f"trained on this round's pseudo-labels")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "last_round": self.last_round}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.last_round = state_dict.get("last_round")


class InContextPropagation(SemiEvolStage):
    """Finds, for every unlabeled item, its nearest labeled items in the student's latent space (mean-pooled
    last hidden states, L2-normalised, cosine similarity) and writes them into the item's record (``neighbours``);
    views with ``k > 0`` show them as demonstrations. Alone, it labels nothing.

    Args:
        k: neighbours kept per item (views use up to ``k``; 0 turns propagation off).
        schedule: when the rounds run (the same in every SemiEvol callback).
    """

    stage = "propagation"

    def __init__(self, k: int = 3, schedule: Optional[Schedule] = None) -> None:
        super().__init__(schedule, k=k)
        self.k = k

    @classmethod
    def argument_problems(cls, k: int = 3, **schedule: Any) -> list[str]:
        return super().argument_problems(**schedule) + ([f"k: must be at least 0, got {k}"] if k < 0 else [])

    def module_needs(self, task: Any, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        return [contract.HiddenStates] if self.k else []

    def check(self, trainer, datamodule, stages) -> None:
        labeled = datamodule.load_split("labeled")
        if self.k > len(labeled):
            raise ValueError(f"InContextPropagation: k={self.k} is larger than the labeled set ({len(labeled)} items)")

    def process(self, context, module, store, pool, index) -> tuple[list[PseudoLabel], dict]:
        with context.inference(module):
            found = self.similar(context, module, store, pool)
        records = [PseudoLabel(example.id, neighbours=[(neighbour.id, similarity)
                                                      for neighbour, similarity in found.get(example.id, [])])
                   for example in pool]
        nearest = [record.neighbours[0][1] for record in records if record.neighbours]
        return records, {"nearest_similarity": sum(nearest) / len(nearest) if nearest else float("nan")}

    def similar(self, context: RoundContext, module: L.LightningModule, datamodule: Any,
                pool: Sequence[Example]) -> dict[str, list[tuple[Example, float]]]:
        """Each pool item's ``k`` nearest labeled items with their cosine similarities, nearest first."""
        if self.k == 0 or not pool:
            return {}
        labeled = datamodule.load_split("labeled")
        embed = lambda batch: _mean_pooled(module, batch)  # noqa: E731
        labeled_vectors = _map_pool(context, module, datamodule, "labeled", labeled, embed, "embedding labeled",
                                    embed=True)
        pool_vectors = _map_pool(context, module, datamodule, "unlabeled", pool, embed, "embedding unlabeled",
                                 embed=True)
        keys = torch.stack([labeled_vectors[e.id] for e in labeled])
        queries = torch.stack([pool_vectors[e.id] for e in pool])
        nearest = (queries @ keys.T).topk(self.k, dim=1)
        return {example.id: [(labeled[j], similarity) for j, similarity in zip(rows, values)]
                for example, rows, values in zip(pool, nearest.indices.tolist(), nearest.values.tolist())}


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
        combine: how the views' answers make one (closed-form tasks for the distribution modes). "vote": an
            answer all answering views agree on, else self-justification or the majority. "mean_probs": the most
            likely option of the views' mean option distribution, whose normalised entropy is the uncertainty.
            "mean_log_probs": the same for the normalised mean of their log-probabilities (a product of experts:
            an option any view rules out loses).
        text_chars: free-form tasks: each view's generated text is kept in the round's records (``view_texts``,
            so the JSONL shows why a pseudo-label is what it is), cut to this many characters.
        schedule: when the rounds run (the same in every SemiEvol callback).

    Alone (no selection after it), every answered item trains with its answer.
    """

    stage = "voting"

    def __init__(self, views: Optional[list[View]] = None, self_justification: bool = True,
                 average_candidate_orders: bool = True, combine: str = "vote", text_chars: int = 500,
                 schedule: Optional[Schedule] = None) -> None:
        views = _as_views(views)
        super().__init__(schedule, views=views, self_justification=self_justification, combine=combine,
                         text_chars=text_chars)
        self.text_chars = text_chars
        self.views = views
        self.self_justification = self_justification
        self.average_candidate_orders = average_candidate_orders
        self.combine = combine

    @classmethod
    def argument_problems(cls, views: Optional[list] = None, self_justification: bool = True, combine: str = "vote",
                          text_chars: int = 500, **schedule: Any) -> list[str]:
        problems = super().argument_problems(**schedule)
        if text_chars < 0:
            problems.append(f"text_chars: must be at least 0, got {text_chars}")
        views = _as_views(views)
        if not views:
            problems.append("views: needs at least one view (n >= 1)")
        if combine not in COMBINE_MODES:
            problems.append(f"combine: must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
        elif combine != "vote" and self_justification:
            problems.append(f"combine: {combine!r} decides disputes from the views' distributions; set "
                            f"self_justification: false")
        for i, view in enumerate(views):
            if view.k < 0 or view.neighbour_offset < 0:
                problems.append(f"views[{i}]: k and neighbour_offset must be at least 0, got {view.k}, "
                                f"{view.neighbour_offset}")
            if view.kind not in (PROMPT, LABEL_PROPAGATION):
                problems.append(f"views[{i}].kind: must be {PROMPT!r} or {LABEL_PROPAGATION!r}, got {view.kind!r}")
            elif view.kind == LABEL_PROPAGATION and view.k < 1:
                problems.append(f"views[{i}].k: a label-propagation view needs at least one neighbour, got {view.k}")
            if view.temperature < 0:
                problems.append(f"views[{i}].temperature: must be at least 0, got {view.temperature}")
            if view.adapter not in (STUDENT, BASE) and not (Path(view.adapter) / "adapter_config.json").is_file():
                problems.append(f"views[{i}].adapter: {view.adapter!r} is neither 'student', 'base' nor a saved "
                                f"adapter folder (no adapter_config.json)")
        return problems

    def module_needs(self, task: Any, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        return [_scorer(task)] + ([contract.PeftStudent] if any(view.adapter != STUDENT for view in self.views) else [])

    def check(self, trainer, datamodule, stages) -> None:
        closed_only = [f"views[{i}] (kind {LABEL_PROPAGATION})" for i, view in enumerate(self.views)
                       if view.kind == LABEL_PROPAGATION] + ([f"combine={self.combine!r}"] if self.combine != "vote" else [])
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

    def process(self, context, module, store, pool, index) -> tuple[list[PseudoLabel], dict]:
        with context.inference(module):
            records = self.label(context, module, store, pool, _neighbours(store, index))
        for record in records:  # every answered item, unless a selection after this callback decides otherwise
            record.selected = record.selectable
        if not any(record.selected for record in records):
            rank_zero_warn(f"pseudo-labeling round {index}: no view answered any item; training goes on with "
                           f"labeled data only")
        context.histogram("semievol/uncertainty", [r.uncertainty for r in records if math.isfinite(r.uncertainty)])
        return records, _voting_metrics(records, store.unlabeled_gold, store.task)

    def label(self, context: RoundContext, module: L.LightningModule, datamodule: Any, pool: Sequence[Example],
              neighbours: dict[str, list[tuple[Example, float]]]) -> list[PseudoLabel]:
        """One record per pool item from every view's answers; ``neighbours`` as ``InContextPropagation.similar``
        gives them."""
        task = datamodule.task
        answers = []
        for i, view in enumerate(self.views):
            nearest = {key: row[view.neighbour_offset:view.neighbour_offset + view.k] for key, row in neighbours.items()}
            if view.kind == LABEL_PROPAGATION:
                answers.append({e.id: _label_propagation_vote(nearest.get(e.id, []), len(e.options)) for e in pool})
                continue
            demos = {key: [example for example, _ in row] for key, row in nearest.items()} if view.k else None
            with _adapter(module, view.adapter, f"view{i}"):
                answers.append(_map_pool(context, module, datamodule, "unlabeled", pool, _answerer(module, task, view),
                                         f"view {i + 1}/{len(self.views)}", demonstrations=demos))
        records, disputed = [], {}
        for example in pool:
            votes = [view_answers[example.id] for view_answers in answers]
            record = _combine(task, example, votes)
            record.neighbours = [(other.id, similarity) for other, similarity in neighbours.get(example.id, [])]
            if not task.closed_form:
                record.view_texts = [(vote.text or "")[:self.text_chars] for vote in votes]
            if self.combine != "vote":
                combined = _mean_vote(votes, log=self.combine == "mean_log_probs")
                record.answer, record.uncertainty, record.probs = combined.answer, combined.uncertainty, combined.probs
            elif record.disputed and self.self_justification:
                disputed[example.id] = _candidates(task, example, votes)
            records.append(record)
        if disputed:
            chosen = self.justify(context, module, datamodule, pool, disputed)
            for record in records:
                if record.id in chosen:
                    vote = chosen[record.id]
                    record.answer, record.uncertainty, record.justified = vote.answer, vote.uncertainty, True
                    record.probs = vote.probs if task.closed_form else record.probs
        for record in records:  # over the views that answered; None where none did
            answered = [v for v in record.view_answers if v is not None]
            record.agreement = (sum(v == record.answer for v in answered) / len(answered)
                                if answered and record.answer is not None else None)
        return records

    def justify(self, context: RoundContext, module: L.LightningModule, datamodule: Any, pool: Sequence[Example],
                disputed: dict[str, list[str]]) -> dict[str, Vote]:
        """The student's pick among each disputed item's candidates (listed as given, or averaged over their
        cyclic rotations): one vote per item id."""
        task = datamodule.task
        orders = max(map(len, disputed.values())) if task.closed_form and self.average_candidate_orders else 1
        passes = []
        for shift in range(orders):
            shown = {key: c[shift:] + c[:shift] for key, c in disputed.items() if shift < len(c)}
            description = "self-justification" + (f" {shift + 1}/{orders}" if orders > 1 else "")
            passes.append(_map_pool(context, module, datamodule, "unlabeled", [e for e in pool if e.id in shown],
                                    _answerer(module, task, View()), description, candidates=shown))
        if orders == 1:
            return passes[0]
        return {key: _mean_vote([p[key] for p in passes if key in p]) for key in disputed}


class EntropySelection(SemiEvolStage):
    """Keeps the pseudo-labels whose uncertainty is at or below the θ-quantile of the round's pool.

    Args:
        keep_fraction: θ, the fraction of answered items kept, in (0, 1]; or "validation": θ is the student's
            accuracy on the validation split at the round (STraTA's rule: keep as large a fraction as the student is
            accurate), logged as ``semievol/keep_fraction``.
        always_keep_unanimous: also keep every item all views agreed on.
        per_answer: apply θ within each answer separately, so that the kept items have the answer mix of the pool
            instead of piling up on the answer the student is surest of. Free-form answers group by what they
            mean (``Task.answer_key``: the number, or the normalised text).
        answer_mix: with ``per_answer``, whose answer mix the kept items follow. ``"pool"``: θ of each option's
            items. ``"labeled"``: θ of all answered items, shared among the options in the labeled set's
            proportions, the least uncertain of each option first; an option short of its share keeps all it
            has and the rest is not refilled. This guards against a bias every view shares (the pool piling
            up on one option), at the cost of fewer kept items. Closed-form tasks only.
        restart_student: after the round, the student starts again from a fresh LoRA adapter, optimizer state and
            learning-rate schedule, and the epochs after it train that from the base model on labeled ∪ selected
            (as ReST-EM and Noisy Student do against confirmation bias) instead of continuing the warmed-up
            adapter. The module needs ``restart_adapter()``.
        max_pseudo_ratio: at most this many selected items per labeled item: the least uncertain stay, the rest
            are marked ``capped`` (unset: no cap).
        schedule: when the rounds run (the same in every SemiEvol callback).

    Without a ``CollaborativeVoting`` before it, it selects over the student's own answers (one view, no
    demonstrations).
    """

    stage = "selection"

    def __init__(self, keep_fraction: float | str = 0.5, always_keep_unanimous: bool = False, per_answer: bool = False,
                 answer_mix: str = "pool", restart_student: bool = False, max_pseudo_ratio: Optional[float] = None,
                 schedule: Optional[Schedule] = None) -> None:
        super().__init__(schedule, keep_fraction=keep_fraction, per_answer=per_answer, answer_mix=answer_mix,
                         max_pseudo_ratio=max_pseudo_ratio)
        self.max_pseudo_ratio = max_pseudo_ratio
        self.restart_student = restart_student
        self.keep_fraction = keep_fraction
        self.always_keep_unanimous = always_keep_unanimous
        self.per_answer = per_answer
        self.answer_mix = answer_mix

    @classmethod
    def argument_problems(cls, keep_fraction: float | str = 0.5, per_answer: bool = False, answer_mix: str = "pool",
                          max_pseudo_ratio: Optional[float] = None, **schedule: Any) -> list[str]:
        problems = super().argument_problems(**schedule)
        if max_pseudo_ratio is not None and not max_pseudo_ratio > 0:
            problems.append(f"max_pseudo_ratio: must be positive or unset, got {max_pseudo_ratio}")
        if keep_fraction != VALIDATION and not (isinstance(keep_fraction, (int, float)) and 0 < keep_fraction <= 1):
            problems.append(f"keep_fraction (θ): must be in (0, 1], got {keep_fraction!r} (or {VALIDATION!r}: θ from "
                            f"the student's validation accuracy)")
        if answer_mix not in ("pool", "labeled"):
            problems.append(f"answer_mix: must be 'pool' or 'labeled', got {answer_mix!r}")
        elif answer_mix == "labeled" and not per_answer:
            problems.append("answer_mix: 'labeled' shares θ among answer options, so it needs per_answer=True")
        return problems

    def module_needs(self, task: Any, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        labels_alone = not any(isinstance(stage, CollaborativeVoting) for stage in stages)
        return ([contract.RestartableStudent] if self.restart_student else []) + \
            ([_scorer(task)] if self.keep_fraction == VALIDATION or labels_alone else [])

    def check(self, trainer, datamodule, stages) -> None:
        if self.keep_fraction == VALIDATION and not datamodule.load_split("val"):
            raise ValueError("EntropySelection: keep_fraction='validation' needs validation data (data.val or "
                             "data.val_fraction)")
        if self.answer_mix == "labeled" and not datamodule.task.closed_form:
            raise ValueError(f"EntropySelection: answer_mix='labeled' needs a closed-form task; "
                             f"{datamodule.task.name!r} has free-form answers")

    def process(self, context, module, store, pool, index) -> tuple[list[PseudoLabel], dict]:
        records = store.pseudo_labels if store.pseudo_round == index else []
        metrics: dict[str, Any] = {}
        if not any(record.voted for record in records):  # no voting this round: the student's own answers
            student = CollaborativeVoting(views=[View()], schedule=self.schedule)
            records, metrics = student.process(context, module, store, pool, index)
        keep_fraction = self.validation_keep_fraction(context, module, store) \
            if self.keep_fraction == VALIDATION else None
        labeled_answers = store.labeled_answers() if self.answer_mix == "labeled" else ()
        threshold = self.select(records, labeled_answers, store.task, keep_fraction)
        if self.max_pseudo_ratio is not None:
            limit = int(self.max_pseudo_ratio * len(store.load_split("labeled")))
            selected = sorted((r for r in records if r.selected), key=lambda r: (r.uncertainty, r.id))
            for record in selected[limit:]:
                record.selected, record.capped = False, True
        if self.restart_student:
            module.restart_adapter()
        metrics.update(_selection_metrics(records, store.unlabeled_gold, store.task, threshold))
        if keep_fraction is not None:
            metrics["keep_fraction"] = keep_fraction
        if not metrics["selected"]:
            rank_zero_warn(f"pseudo-labeling round {index}: every candidate was rejected; training goes on with "
                           f"labeled data only")
        return records, metrics

    def validation_keep_fraction(self, context: RoundContext, module: L.LightningModule, datamodule: Any) -> float:
        """θ from the student's accuracy on the validation split (at least one item's worth)."""
        val = datamodule.load_split("val")
        with context.inference(module):
            votes = _map_pool(context, module, datamodule, "val", val, _answerer(module, datamodule.task, View()),
                              "validation accuracy for θ")
        right = sum(datamodule.task.is_correct(votes[e.id].answer, e) for e in val if votes[e.id].answer)
        return max(right, 1) / len(val)

    def datamodule_needs(self) -> list[type]:
        return [contract.LabeledAnswers] if self.answer_mix == "labeled" else []

    def select(self, records: list[PseudoLabel], labeled_answers: Sequence[str] = (), task: Any = None,
               keep_fraction: Optional[float] = None) -> Optional[float]:
        """Sets every record's ``selected`` flag (a record without an answer or with an infinite uncertainty is
        never kept); returns the threshold (with ``per_answer``, the largest of the answers').

        ``labeled_answers``: the labeled set's gold answers, which ``answer_mix="labeled"`` needs. ``task``: its
        ``answer_key`` groups answers that mean the same (unset: the answers as they are). ``keep_fraction``: θ
        when it is ``"validation"`` (the round measures it).
        """
        keep_fraction = self.keep_fraction if keep_fraction is None else keep_fraction
        if not isinstance(keep_fraction, (int, float)):
            raise ValueError("EntropySelection: keep_fraction='validation' needs the round's measured θ")
        key = task.answer_key if task is not None else (lambda answer: answer)
        if self.answer_mix == "labeled" and not labeled_answers:
            raise ValueError("EntropySelection: answer_mix='labeled' needs the labeled set's answers; none given")
        for record in records:
            record.selected = False
        answered = [r for r in records if r.selectable]
        groups: dict[Optional[str], list[PseudoLabel]] = {}
        for record in answered:
            groups.setdefault(key(record.answer) if self.per_answer else None, []).append(record)
        shares = Counter(map(key, labeled_answers))
        thresholds = []
        for answer, group in groups.items():
            if self.answer_mix == "labeled":
                quota = round(keep_fraction * len(answered) * shares[answer] / len(labeled_answers))
                kept = sorted(group, key=lambda r: (r.uncertainty, r.id))[:quota]
            else:
                threshold = quantile_threshold([r.uncertainty for r in group], keep_fraction)
                kept = [r for r in group if r.uncertainty <= threshold]
            thresholds += [max(r.uncertainty for r in kept)] if kept else []
            for record in kept + [r for r in group if self.always_keep_unanimous and r.unanimous]:
                record.selected = True
        return max(thresholds, default=None)




STAGES = (InContextPropagation, CollaborativeVoting, EntropySelection)  # the order a round's stages run in


def run_round(module: L.LightningModule, datamodule: Any, stages: Sequence[SemiEvolStage], index: int = 1,
              context: Optional[RoundContext] = None, epoch: int = -1) -> dict:
    """Run ``stages`` (SemiEvol callbacks, in order) as round ``index`` on ``module`` and ``datamodule`` without a
    Trainer: the records land in the DataModule's store, as in a fit. ``context``: where it runs (default: one
    process on the module's device, records and metrics not written). Returns the stages' metrics together, each
    stage's wall time as ``<stage>_seconds``."""
    context = context or RoundContext(module.device)
    metrics: dict[str, Any] = {}
    for stage in stages:
        metrics.update(stage.run(context, module, datamodule, index, epoch))
    return metrics


# ----- helpers ---------------------------------------------------------------------------------------------------
def _as_views(views: Optional[list]) -> list[View]:
    """Views from View objects, mappings or parsed-config namespaces; one student view when unset."""
    if views is None:
        return [View()]
    return [view if isinstance(view, View) else View(**(view if isinstance(view, dict) else vars(view)))
            for view in views]


def _scorer(task) -> type:
    """The protocol a view answers with: option scoring (closed-form) or generation (free-form)."""
    return contract.OptionScorer if task.closed_form else contract.Generator


def _neighbours(store: Any, index: int) -> dict[str, list[tuple[Example, float]]]:
    """The neighbours in-context propagation wrote into the store's records of round ``index`` (none if it did not
    run), as labeled examples with their similarities."""
    records = [r for r in store.pseudo_labels if r.neighbours] if store.pseudo_round == index else []
    labeled = {example.id: example for example in store.load_split("labeled")} if records else {}
    return {r.id: [(labeled[key], similarity) for key, similarity in r.neighbours] for r in records}


def _mean_pooled(module, batch) -> list[torch.Tensor]:
    hidden = module.hidden_states(batch["input_ids"], batch["attention_mask"]).float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    return list(torch.nn.functional.normalize(pooled, dim=-1).cpu())


def _map_pool(context: RoundContext, module, datamodule, split, examples, fn, description,
              **loader_kwargs) -> dict[str, Any]:
    """Run ``fn`` over this rank's shard of ``examples`` and gather one result per id from every rank. Stops
    before the next batch once any rank has received SIGTERM, as Lightning's own loops do."""
    loader = datamodule.pool_loader(split, examples, context.rank, context.world_size, **loader_kwargs)
    results, start = {}, time.perf_counter()
    for batch in tqdm(loader, desc=f"round: {description}", disable=not context.is_main, leave=False):
        if context.stop_requested():  # the same batch count on every rank
            raise SIGTERMException
        batch = move_data_to_device(batch, context.device or module.device)
        for example, result in zip(batch["examples"], fn(batch)):
            results[example.id] = result
    results = context.gather(results)
    seconds = time.perf_counter() - start
    rank_zero_info(f"round: {description}: {len(results)} items in {seconds:.1f} s ({len(results) / seconds:.2f}/s)")
    return results


class _adapter:
    """Context: run with the student's adapter, adapters disabled ("base"), or a saved adapter."""

    def __init__(self, module, adapter: str, name: str) -> None:
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


def _answerer(module, task, view: View):
    """A function from a batch to one vote per item: answer, option distribution or text, uncertainty."""
    if task.closed_form:
        def closed(batch) -> list[Vote]:
            votes = []
            for example, row in zip(batch["examples"], module.option_log_probs(batch)):
                answer, probs = option_vote(row, len(example.options))
                votes.append(Vote(answer, normalized_entropy(probs) if answer else math.inf, probs.tolist()))
            return votes
        return closed

    def free(batch) -> list[Vote]:
        if view.temperature > 0:
            torch.manual_seed(view.seed)
        examples = batch["examples"]
        texts, nll = module.generate_with_nll(batch, answer_span=lambda text, row: task.answer_span(text, examples[row]),
                                              do_sample=view.temperature > 0, temperature=view.temperature or None)
        return [Vote(task.parse(text, example), loss, text=text) for example, text, loss in zip(examples, texts, nll)]
    return free


def _same(task, a: Optional[str], b: Optional[str], example: Example) -> bool:
    if a is None or b is None:
        return False
    return a == b or task.is_correct(a, Example(example.id, example.question, b, example.options))


def _group_votes(task, example: Example, votes: Sequence[Vote]) -> list[list[Vote]]:
    """The answered votes grouped by the answer they give, groups in order of first appearance."""
    groups: list[list[Vote]] = []
    for vote in votes:
        if vote.answer is None:
            continue
        group = next((g for g in groups if _same(task, g[0].answer, vote.answer, example)), None)
        group.append(vote) if group else groups.append([vote])
    return groups


def _combine(task, example: Example, votes: Sequence[Vote]) -> PseudoLabel:
    """One record from the views' votes: agreed answer with mean uncertainty, or a dispute."""
    answered = [v for v in votes if v.answer is not None]
    groups = _group_votes(task, example, votes)
    record = PseudoLabel(example.id, view_answers=[v.answer for v in votes], disputed=len(groups) > 1,
                         unanimous=len(groups) == 1 and len(answered) == len(votes))
    if not groups:
        return record
    best = max(groups, key=lambda g: (len(g), -sum(v.uncertainty for v in g) / len(g)))
    record.answer = best[0].answer
    if task.closed_form:  # the views' mean option distribution, which soft pseudo-label targets train on
        mean = _mean_vote(answered)
        record.uncertainty, record.probs = mean.uncertainty, mean.probs
    else:
        record.uncertainty = sum(v.uncertainty for v in best) / len(best)
    return record


def _mean_vote(votes: Sequence[Vote], log: bool = False) -> Vote:
    """One closed-form vote from several: the mean option distribution of those that answered (``log``: the
    normalised mean of their log-probabilities), its most likely option and normalised entropy."""
    answered = [v.probs for v in votes if v.answer is not None]
    if not answered:
        return Vote(None)
    probs = torch.tensor(answered)
    probs = probs.clamp_min(1e-12).log().mean(0).softmax(0) if log else probs.mean(0)
    return Vote(LETTERS[int(probs.argmax())], normalized_entropy(probs), probs.tolist())


def _label_propagation_vote(neighbours: Sequence[tuple[Example, float]], option_count: int) -> Vote:
    """The neighbours' gold answers as one closed-form vote: the histogram over options weighted by (non-negative)
    cosine similarity; a neighbour whose answer is not among the item's options does not vote."""
    probs = torch.zeros(option_count, dtype=torch.float64)
    for example, similarity in neighbours:
        if example.answer in LETTERS[:option_count]:
            probs[LETTERS.index(example.answer)] += max(similarity, 0.0)
    if not probs.sum() > 0:
        return Vote(None)
    probs /= probs.sum()
    return Vote(LETTERS[int(probs.argmax())], normalized_entropy(probs), probs.tolist())


def _candidates(task, example: Example, votes: Sequence[Vote]) -> list[str]:
    """The distinct answers of a dispute as self-justification shows them; closed-form ones in option order (the
    order ``CollaborativeVoting.justify`` rotates), so that no view is favoured by being listed first."""
    distinct = [group[0] for group in _group_votes(task, example, votes)]
    if task.closed_form:
        distinct.sort(key=lambda vote: LETTERS.index(vote.answer))
    return [task.proposed_answer(example, vote.answer, vote.text) for vote in distinct]


def _scored(records: Sequence[PseudoLabel], gold: dict[str, Optional[str]]) -> list[tuple[PseudoLabel, str]]:
    """(record, gold answer) where the pool's gold answer is known: diagnostics only, never training or selection."""
    return [(r, gold[r.id]) for r in records if gold.get(r.id) is not None]


def _right(task, answer: Optional[str], record: PseudoLabel, gold: str) -> bool:
    return _same(task, answer, gold, Example(record.id, "", gold))


def _voting_metrics(records: Sequence[PseudoLabel], gold: dict[str, Optional[str]], task) -> dict[str, float]:
    """The pool, how the views agreed, each view's answer mix and (against the gold column) accuracy."""
    finite = [r.uncertainty for r in records if math.isfinite(r.uncertainty)]
    metrics = {"pool": len(records), "agreement_rate": sum(r.unanimous for r in records) / len(records),
               "mean_uncertainty": sum(finite) / len(finite) if finite else float("nan"),
               "no_answer": sum(r.answer is None for r in records)}
    scored = _scored(records, gold)
    if scored:
        metrics["pseudo_label_accuracy"] = sum(_right(task, r.answer, r, g) for r, g in scored) / len(scored)
        for i in range(len(records[0].view_answers)):
            metrics[f"view{i + 1}_accuracy"] = sum(_right(task, r.view_answers[i], r, g) for r, g in scored) / len(scored)
    if task.closed_form:  # each view's answer mix: a view that piles onto one option shows here
        for i in range(len(records[0].view_answers)):
            for answer, count in sorted(Counter(r.view_answers[i] for r in records if r.view_answers[i]).items()):
                metrics[f"view{i + 1}_answer_{answer}"] = count
    return metrics


def _selection_metrics(records: Sequence[PseudoLabel], gold: dict[str, Optional[str]], task,
                       threshold: Optional[float]) -> dict[str, float]:
    """What was kept: how many, below which uncertainty, its answer mix and (against the gold column) accuracy."""
    selected = [r for r in records if r.selected]
    metrics = {"selected": len(selected), "selected_rate": len(selected) / len(records),
               "threshold": threshold if threshold is not None else float("nan"),
               "capped": sum(r.capped for r in records)}
    if task.closed_form:  # the answer mix of the selection: a pile-up on one option shows here
        for answer in sorted({r.answer for r in records if r.answer is not None}):
            metrics[f"selected_answer_{answer}"] = sum(r.answer == answer for r in selected)
    scored = _scored(records, gold)
    if scored:
        chosen = [(r, g) for r, g in scored if r.selected]
        metrics["selected_accuracy"] = (sum(_right(task, r.answer, r, g) for r, g in chosen) / len(chosen)
                                        if chosen else float("nan"))
    return metrics
