"""The base of every SemiEvol stage callback, the checks a round's stages share, and ``run_round``: a round without
a Trainer."""

from __future__ import annotations

import time
from typing import Any, ClassVar, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from semift_lightning.arguments import bound_arguments, raise_problems
from semift_lightning.semievol.context import RoundContext
from semift_lightning.semievol.contract import RoundData, missing
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.semievol.schedule import Schedule, as_schedule
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task


class SemiEvolStage(L.Callback):
    """One stage of the SemiEvol round, done at the epoch boundaries ``schedule`` names: reads the store's records
    of the round, does its part, and writes them back (``run``). The callbacks of a fit share one schedule and run
    in ``trainer.callbacks`` order, by ``position`` (propagation, voting, selection, restart). A new stage is a
    subclass with its own ``stage`` name and ``position``.

    Args:
        schedule: when the rounds run (one for every SemiEvol callback of a fit; ``semievol.*`` on the command line).
    """

    stage: ClassVar[str] = ""  # the stage's name in metrics (``semievol/<stage>_seconds``) and in the store
    position: ClassVar[int] = 0  # where the stage runs in a round, before stages of a larger position (the shipped
    # stages stand at 0, 10, 20, 30, 40, leaving room between them)
    selects: ClassVar[bool] = False  # the stage decides which records train (without one, every answered one does)
    labels_pool: ClassVar[bool] = False  # the stage answers every pool item with an option distribution (voting)

    def __init__(self, schedule: Optional[Schedule] = None, **arguments: Any) -> None:
        self.schedule = as_schedule(schedule)
        raise_problems(f"invalid {type(self).__name__} arguments",
                       type(self).argument_problems(schedule=self.schedule, **arguments))
        vars(self).update(arguments)  # each argument becomes the attribute of its name
        self.history: list[dict] = []  # this stage's metrics, one entry per round
        self.peers: list[SemiEvolStage] = [self]  # the stages of the round, this one among them

    @classmethod
    def argument_problems(cls, **given: Any) -> list[str]:
        """Every problem with the arguments, each naming its argument; empty when all are fine."""
        return [f"schedule.{problem}" for problem in as_schedule(given.get("schedule")).problems()]

    @classmethod
    def arguments(cls, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` completed with ``__init__``'s defaults (the one place they are stated)."""
        return bound_arguments(cls.__init__, given)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        stages = [cb for cb in trainer.callbacks if isinstance(cb, SemiEvolStage)]
        check_round(stages, pl_module, trainer.datamodule)
        if trainer.reload_dataloaders_every_n_epochs != 1:
            trainer.reload_dataloaders_every_n_epochs = 1  # the training set changes after each round
        warmup = self.schedule.warmup_epochs
        if stages[0] is self and trainer.max_epochs is not None and 0 < trainer.max_epochs <= warmup:
            rank_zero_warn(f"{type(self).__name__}: warmup_epochs={warmup} is not below trainer.max_epochs="
                           f"{trainer.max_epochs}: no epoch will train on pseudo-labels")

    def check(self, datamodule: RoundData, stages: Sequence[SemiEvolStage]) -> None:
        """Stage-specific checks on the data and the other stages, before the round runs (``SemiFTError`` or
        ``ValueError`` naming the argument)."""

    def module_needs(self, task: Task, stages: Sequence[SemiEvolStage] = ()) -> list[type]:
        """The protocols (``semift_lightning.semievol.contract``) this callback calls on the LightningModule, for
        ``task``, beside the other SemiEvol callbacks ``stages``."""
        return []

    def datamodule_needs(self) -> list[type]:
        """The protocols this callback calls on the DataModule beyond ``RoundData``."""
        return []

    def run(self, context: RoundContext, module: L.LightningModule, data: RoundData, index: int,
            epoch: int = -1) -> dict:
        """Do this stage of round ``index`` (ending epoch ``epoch``; -1: the fit's start) on the store's records and
        write them back; returns the stage's metrics, its wall time as ``<stage>_seconds``."""
        start, store = time.perf_counter(), data.store
        pool = data.load_split("unlabeled")
        if not pool:
            rank_zero_warn("no unlabeled data: the pseudo-labeling round is skipped and training uses labeled data "
                           "only")
            store.write([], index, self.stage, epoch)
            return {"round": index, "pool": 0}
        records, metrics = self.process(context, module, data, pool, index)
        fingerprints = {example.id: example.fingerprint for example in pool}
        for record in records:
            record.round, record.item = index, fingerprints[record.id]
        store.write(records, index, self.stage, epoch)
        if self is self.peers[-1] and not any(stage.selects for stage in self.peers):
            store.keep_answered()
        metrics = {"round": index, **metrics, f"{self.stage}_seconds": time.perf_counter() - start}
        context.publish(module, store.records, metrics, epoch)
        self.history.append(metrics)
        return metrics

    def process(self, context: RoundContext, module: L.LightningModule, data: RoundData, pool: Sequence[Example],
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
        # (a resumed run has its round: the DataModule's state is restored before this hook, and its records are
        # checked against the pool as it is now)
        if self is self.peers[0] and trainer.datamodule.store.records:
            trainer.datamodule.store.bind(trainer.datamodule.load_split("unlabeled"))
        self._run_if_due(trainer, pl_module, epoch=-1)

    def _run_if_due(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: Optional[int] = None) -> None:
        epoch = trainer.current_epoch if epoch is None else epoch
        index = self.schedule.round_due(epoch)
        if index is None or trainer.datamodule.store.done(self.stage) >= index:  # a finished stage is never redone
            return
        self.run(RoundContext.of(trainer), pl_module, trainer.datamodule, index, epoch)
        through = epoch + 2  # epochs to complete: the round's and the one that trains on it
        if trainer.fit_loop.min_epochs is None or trainer.fit_loop.min_epochs < through:
            trainer.fit_loop.min_epochs = through  # early stopping then waits for that epoch (Lightning's min_epochs)
            if any(isinstance(cb, EarlyStopping) for cb in trainer.callbacks):
                rank_zero_info(f"pseudo-labeling round {index}: early stopping waits until epoch {through - 1} has "
                               f"trained on this round's pseudo-labels")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def stage_kinds() -> list[type[SemiEvolStage]]:
    """Every stage class defined so far, in round order."""
    found, queue = [], list(SemiEvolStage.__subclasses__())
    while queue:
        kind = queue.pop(0)
        found.append(kind)
        queue += kind.__subclasses__()
    return sorted(dict.fromkeys(found), key=lambda kind: kind.position)


def check_round(stages: Sequence[SemiEvolStage], module: L.LightningModule, data: RoundData) -> None:
    """Refuse stages out of round order, two of a kind, differing schedules, a module or DataModule that lacks what
    they call, or a stage's own misfit with the data; every stage learns its peers."""
    protocols = [RoundData, *(p for s in stages for p in s.datamodule_needs())]
    absent = [f"datamodule.{name}" for protocol in protocols for name in missing(data, protocol)]
    if getattr(type(data), "state_dict", None) is L.LightningDataModule.state_dict:
        absent.append("datamodule.state_dict / load_state_dict (the pseudo-labels must live in checkpoints, "
                      "or a resumed run trains on none)")
    if hasattr(data, "task"):
        needed = list(dict.fromkeys(p for s in stages for p in s.module_needs(data.task, stages)))
        protocols += needed
        absent += [f"module.{name}" for protocol in needed for name in missing(module, protocol)]
    if absent:
        raise AttributeError(f"{type(stages[0]).__name__} needs {', '.join(dict.fromkeys(absent))}; see the plug-in "
                             f"contract in docs/plugin.md and semift_lightning.semievol.contract "
                             f"({', '.join(dict.fromkeys(p.__name__ for p in protocols))})")
    positions = [stage.position for stage in stages]
    if positions != sorted(set(positions)):
        order = {}  # position -> the kinds that stand there (alternatives: one of them per round)
        for kind in stage_kinds():
            order.setdefault(kind.position, []).append(kind.__name__)
        raise ValueError(f"the SemiEvol callbacks run in trainer.callbacks order, at most one of each: "
                         f"{' before '.join(' or '.join(sorted(names)) for names in order.values())}; got "
                         f"{', '.join(type(s).__name__ for s in stages)}")
    for stage in stages:
        if stage.schedule != stages[0].schedule:
            raise ValueError(f"{type(stages[0]).__name__} and {type(stage).__name__} need the same schedule: "
                             f"{stages[0].schedule} != {stage.schedule}")
    for stage in stages:
        stage.peers = list(stages)
        stage.check(data, stages)


def run_round(module: L.LightningModule, data: RoundData, stages: Sequence[SemiEvolStage], index: int = 1,
              context: Optional[RoundContext] = None, epoch: int = -1) -> dict:
    """Run ``stages`` (SemiEvol callbacks, in round order) as round ``index`` on ``module`` and ``data`` without a
    Trainer, after the checks a fit makes: the records land in the DataModule's store, as in a fit. ``context``:
    where it runs (default: one process on the module's device, records and metrics not written). Returns the
    stages' metrics together, each stage's wall time as ``<stage>_seconds``."""
    check_round(stages, module, data)
    context = context or RoundContext(module.device)
    metrics: dict[str, Any] = {}
    for stage in stages:
        metrics.update(stage.run(context, module, data, index, epoch))
    return metrics
