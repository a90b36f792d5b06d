"""Committee members: LoRA adapters beside the student's, each fine-tuned on the labeled items in its own prompt
pattern with a fixed schedule, saved in the run folder and reused when a killed round runs again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from itertools import count
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tqdm.auto import tqdm

from semift_lightning.data.patterns import PromptPattern, as_pattern
from semift_lightning.semievol.context import RoundContext
from semift_lightning.semievol.contract import CommitteeData
from semift_lightning.semievol.views import BASE, student_accuracy, use_adapter
from semift_lightning.student.settings import warmup_then_linear_decay
from semift_lightning.tasks.example import Example


class MemberWeighting:
    """How much a member's distribution counts in the committee's mean. A new way is a subclass with its own
    ``name``, listed in ``WEIGHTINGS`` (``CommitteeVoting(weighting=NAME)``)."""

    name: ClassVar[str] = ""

    def weight(self, context: RoundContext, module: L.LightningModule, asked: CommitteeData,
               adapter: str) -> Optional[float]:
        """The weight of the member named ``adapter`` (not yet trained), asked in its pattern; None: equal weights."""
        raise NotImplementedError


class UniformWeighting(MemberWeighting):
    """Every member counts the same."""

    name = "uniform"

    def weight(self, context, module, asked, adapter) -> Optional[float]:
        return None


class LabeledAccuracyWeighting(MemberWeighting):
    """A member's weight is its pattern's accuracy on the labeled items before training: the base model asked in
    that pattern (PET's weighting)."""

    name = "labeled_accuracy"

    def weight(self, context, module, asked, adapter) -> Optional[float]:
        with use_adapter(module, BASE, adapter):
            return student_accuracy(context, module, asked, "labeled")


WEIGHTINGS: dict[str, type[MemberWeighting]] = {kind.name: kind for kind in (UniformWeighting,
                                                                            LabeledAccuracyWeighting)}


@dataclass
class Member:
    """One committee member.

    Args:
        pattern: how the member is asked, in its training and when it labels the pool.
        seed: its adapter's initialisation and its batch order.
        adapter: a saved adapter folder to use as the member instead of training one.
    """

    pattern: PromptPattern = field(default_factory=PromptPattern)
    seed: int = 0
    adapter: Optional[str] = None

    def __post_init__(self) -> None:
        self.pattern = as_pattern(self.pattern)

    def folder_name(self, index: int, round_index: int, shape: dict) -> str:
        """Its folder under the members' folder: position, pattern, seed, round and a hash of all that shapes it
        (``shape``: the base model, the training settings and data), so that a member configured or taught otherwise
        never reuses another's adapter."""
        digest = hashlib.sha256(json.dumps([asdict(self), shape], sort_keys=True).encode()).hexdigest()[:8]
        return f"member{index}-{self.pattern.name}-seed{self.seed}-round{round_index}-{digest}"


def as_members(members: Optional[list]) -> list[Member]:
    """Members from Member objects, mappings or parsed-config namespaces."""
    return [member if isinstance(member, Member) else
            Member(**(member if isinstance(member, dict) else vars(member))) for member in members or []]


def trained_member(context: RoundContext, module: L.LightningModule, data: CommitteeData, member: Member, name: str,
                   steps: int, folder: Optional[Path], pseudo: Sequence[Example] = ()) -> str:
    """The member's adapter, loaded into ``module.model`` as ``name`` (not active): the saved one it names, the one an
    earlier run left in ``folder / name``, or one trained now on the labeled items and ``pseudo`` ones (and saved
    there, rank zero, then a barrier). Returns where it lies ("" where it is kept in memory only)."""
    saved = member.adapter or (str(folder / name) if folder and (folder / name / "adapter_config.json").is_file()
                               else None)
    with context.training(module):
        if saved:
            rank_zero_info(f"committee: {name} from {saved}")
            module.model.load_adapter(saved, adapter_name=name, is_trainable=False)
            return saved
        student = module.model.active_adapter
        accelerators = [module.device.index or 0] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=accelerators):  # the fit's own random state goes on untouched
            torch.manual_seed(member.seed)
            module.model.add_adapter(name, module.lora_config())
            module.model.set_adapter(name)  # only the member's weights train
            try:
                train(context, module, data.labeled_loader(member.seed, pseudo), steps, name)
            finally:
                module.model.set_adapter(student)  # the student's weights train again, the member's are frozen
    if folder is None:
        return ""
    if context.is_main:
        save_adapter(module.model, name, folder)
    if context.trainer:
        context.trainer.strategy.barrier()
    return str(folder / name)


def train(context: RoundContext, module: L.LightningModule, loader, steps: int, name: str) -> None:
    """``steps`` AdamW steps of the module's ``answer_loss`` on the loader's batches (epoch after epoch), with the
    module's optimizer settings and schedule shape; the active adapter's weights are what train."""
    settings = module.optim_args
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    batches = cycled(loader)
    for step in tqdm(range(steps), desc=f"committee: training {name}", disable=not context.is_main, leave=False):
        if context.stop_requested():
            raise SIGTERMException
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * warmup_then_linear_decay(max(step, 1) / steps, settings.warmup_ratio)
        loss = module.answer_loss(move_data_to_device(next(batches), context.device or module.device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    rank_zero_info(f"committee: {name} trained for {steps} steps (last loss {loss.item():.4f})")


def cycled(loader):
    """The loader's batches, epoch after epoch, each epoch in its sampler's order for that epoch."""
    for epoch in count():
        loader.sampler.set_epoch(epoch)
        yield from loader


def save_adapter(model, name: str, folder: Path) -> None:
    """Save adapter ``name`` of a peft model as ``folder / name``, whole or not at all (a save that a kill
    interrupted leaves a ``.saving-*`` folder, cleared by the next save)."""
    folder.mkdir(parents=True, exist_ok=True)
    for interrupted in folder.glob(".saving-*"):
        shutil.rmtree(interrupted, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        model.save_pretrained(staging, selected_adapters=[name])  # a named adapter lands in its own sub-folder
        os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
