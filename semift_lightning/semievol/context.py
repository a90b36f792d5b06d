"""Where a round runs: rank, device, precision, gathering, logging; and mapping a function over the pool."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tqdm.auto import tqdm

from semift_lightning.files import atomic_write_jsonl
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.tasks.example import Example

if TYPE_CHECKING:
    from semift_lightning.data.batch import Batch
    from semift_lightning.semievol.contract import RoundData


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
        try:
            with torch.no_grad(), self._precision(module):
                yield
        finally:
            module.train(was_training)

    @contextmanager
    def training(self, module: L.LightningModule) -> Iterator[None]:
        """Train mode, gradients on (also inside Lightning's validation loop, which runs in inference mode), the
        trainer's precision; the module's mode comes back afterwards."""
        was_training = module.training
        module.train()
        try:
            with torch.inference_mode(False), torch.enable_grad(), self._precision(module):
                yield
        finally:
            module.train(was_training)

    def _precision(self, module: L.LightningModule):
        if self.trainer:
            return self.trainer.precision_plugin.forward_context()
        if self.precision in ("bf16-mixed", "16-mixed"):
            dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
            return torch.autocast(torch.device(self.device or module.device).type, dtype=dtype)
        return nullcontext()

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


def map_pool(context: RoundContext, module: L.LightningModule, datamodule: RoundData, split: str,
             examples: Sequence[Example], fn: Callable[[Batch], Sequence[Any]], description: str,
             **loader_kwargs: Any) -> dict[str, Any]:
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
