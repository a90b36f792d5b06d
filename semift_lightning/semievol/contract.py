"""What the SemiEvol callbacks need from a LightningModule and a DataModule, as ``typing.Protocol`` classes.

Each callback names the protocols its configuration uses (``SemiEvolStage.module_needs`` / ``datamodule_needs``), and
its ``setup()`` checks them with ``missing``, naming every absent member. A module or DataModule of your own needs
only the protocols of the callbacks you configure; ``SemiFTModule`` and ``SemiFTDataModule`` offer all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence

import torch
from torch.utils.data import DataLoader

from semift_lightning.data.batch import Batch
from semift_lightning.semievol.store import PseudoLabelStore
from semift_lightning.tasks.example import Example

if TYPE_CHECKING:
    from semift_lightning.tasks.kinds import Task


class RoundData(Protocol):
    """The DataModule every round needs: it loads the splits, serves inference batches and holds the pseudo-label
    ``store`` (a ``PseudoLabelStore``), whose ``state_dict`` must reach checkpoints through its own ``state_dict`` /
    ``load_state_dict`` (or a resumed run trains on none). Its train dataloader serves ``store.selected(epoch)``
    beside the labeled items. ``pool_loader`` batches carry ``examples`` (the ``Example`` of each row) beside what
    the module reads."""

    task: "Task"
    store: PseudoLabelStore

    def load_split(self, name: str) -> list[Example]: ...

    def pool_loader(self, split: str, examples: Sequence[Example], rank: int = 0, world_size: int = 1,
                    demonstrations: Optional[dict] = None, candidates: Optional[dict] = None,
                    embed: bool = False) -> DataLoader: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class LabeledAnswers(Protocol):
    """A DataModule that gives its labeled split's gold answers (``EntropySelection(answer_mix: labeled)``)."""

    def labeled_answers(self) -> list[str]: ...


class CommitteeData(Protocol):
    """A DataModule that asks its task in other prompt patterns and serves its labeled items for training
    (``CommitteeVoting``)."""

    def in_pattern(self, pattern: Any) -> "RoundData": ...

    def labeled_loader(self, seed: int, pseudo: Sequence[Example] = ()) -> DataLoader: ...


class OptionScorer(Protocol):
    """A module that scores closed-form options: (batch, 10) log-probabilities of the option letters as the answer's
    first token, -inf past an item's option count."""

    def option_log_probs(self, batch: Batch) -> torch.Tensor: ...


class Generator(Protocol):
    """A module that answers free-form items: texts and the mean NLL of each one's answer tokens (``answer_span(text,
    row)`` gives the parsed answer's character span; it may be ignored)."""

    def generate_with_nll(self, batch: Batch, answer_span: Optional[Callable] = None,
                          **generate_kwargs: Any) -> tuple[list[str], list[float]]: ...


class HiddenStates(Protocol):
    """A module that embeds left-padded input: last hidden states (batch, length, width) (``InContextPropagation``
    with ``k > 0``)."""

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


class PeftStudent(Protocol):
    """A module whose ``model`` is a peft model (a view with the ``base`` model or a saved adapter)."""

    model: Any


class MemberStudent(Protocol):
    """A module that trains committee members beside its own adapter (``CommitteeVoting``): a peft ``model``, the
    ``LoraConfig`` of a fresh adapter, its optimizer settings and the loss of a training batch."""

    model: Any
    optim_args: Any

    def lora_config(self) -> Any: ...

    def answer_loss(self, batch: Batch) -> torch.Tensor: ...


class RestartableStudent(Protocol):
    """A module that restarts from a fresh adapter, optimizer state and schedule (``RestartStudent``)."""

    def restart_adapter(self) -> None: ...


def members(protocol: type) -> list[str]:
    """The attributes and methods ``protocol`` declares, in declaration order."""
    names = list(getattr(protocol, "__annotations__", {}))
    names += [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]
    return list(dict.fromkeys(names))


def missing(obj: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks."""
    return [name for name in members(protocol) if not hasattr(obj, name)]
