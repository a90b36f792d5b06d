"""The pseudo-label store: the one owner of a fit's pseudo-labels, which any DataModule can hold and delegate its
state to."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from lightning.pytorch.utilities import rank_zero_warn

from semift_lightning.errors import CheckpointError
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.parsing import LETTERS


class PseudoLabelStore:
    """The records of the latest round (one ``PseudoLabel`` per unlabeled item), which round and which of its stages
    are done, the epoch the round ended (its items train from the next one), and the pool's gold answers where known
    (diagnostics only: never trained on or selected by). A DataModule holds one as ``store`` and puts
    ``state_dict()`` in its own, so that a resumed fit has the same pseudo-labels and never redoes a finished stage.
    """

    def __init__(self) -> None:
        self.records: list[PseudoLabel] = []
        self.round = 0  # the round whose records the store holds (0: none)
        self.epoch = -1  # the epoch that round ended (-1: before the first, which then trains on them)
        self.stages_done: dict[str, int] = {}  # stage name -> the last round it finished
        self.pool_gold: dict[str, Optional[str]] = {}
        self.legacy = False  # restored from a checkpoint that predates per-stage bookkeeping

    def records_of(self, round_index: int) -> list[PseudoLabel]:
        """The records of round ``round_index``: what the stages before have written in it, or none."""
        return self.records if self.round == round_index else []

    def write(self, records: list[PseudoLabel], round_index: int, stage: str, epoch: int = -1) -> None:
        """Replace the records with round ``round_index``'s, as stage ``stage`` leaves them at the end of ``epoch``."""
        if round_index != self.round:
            self.stages_done = {name: done for name, done in self.stages_done.items() if done >= round_index}
        self.records, self.round, self.epoch = list(records), round_index, epoch
        self.stages_done[stage] = round_index

    def done(self, stage: str) -> int:
        """The last round stage ``stage`` finished (a checkpoint from before stages were recorded: the store's
        round)."""
        return self.stages_done.get(stage, self.round if self.legacy else 0)

    def bind(self, pool: Sequence[Example]) -> int:
        """Attach every record to the pool item whose question and options it was made for (its fingerprint), under
        that item's id now; drop, with one warning that counts them, the records whose item is gone or changed (or
        that carry no fingerprint, or answer with an option the item lacks). Returns how many were dropped."""
        by_content: dict[str, Example] = {}
        for example in pool:
            by_content.setdefault(example.fingerprint, example)
        kept, moved, taken = [], 0, set()
        for record in self.records:
            example = by_content.get(record.item) if record.item else None
            if example is None or example.id in taken or not _answer_fits(record.answer, example.options):
                continue
            moved += record.id != example.id
            record.id = example.id
            taken.add(example.id)
            kept.append(record)
        dropped = len(self.records) - len(kept)
        if dropped or moved:
            rank_zero_warn(f"stored pseudo-labels against the unlabeled data as it is now: {moved} of "
                           f"{len(self.records)} found their item under another id (the rows moved), {dropped} "
                           f"belong to items that are gone or changed (or answer with an option the item lacks) and "
                           f"are dropped, never trained on")
        self.records = kept
        return dropped

    def keep_answered(self) -> None:
        """A round without a selection stage: every record with an answer trains."""
        for record in self.records:
            record.selected = record.selectable

    def selected(self, epoch: Optional[int] = None) -> list[PseudoLabel]:
        """The records that train, from the epoch after the round's (``epoch`` None: regardless of the epoch)."""
        if epoch is not None and epoch <= self.epoch:
            return []
        return [record for record in self.records if record.selected]

    def state_dict(self) -> dict[str, Any]:
        return {"pseudo_labels": [record.as_dict() for record in self.records], "pseudo_round": self.round,
                "pseudo_epoch": self.epoch, "stages_done": dict(self.stages_done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The store as a checkpoint holds it; a field of the wrong type is a ``CheckpointError`` naming it."""
        records, stages = state_dict.get("pseudo_labels", []), state_dict.get("stages_done", {})
        whole = {"pseudo_round": (0, None), "pseudo_epoch": (-1, -1)}
        problems = [f"{key}: must be a whole number >= {low}, got {state_dict[key]!r}"
                    for key, (_, low) in whole.items() if key in state_dict and not _whole(state_dict[key], low)]
        if not isinstance(records, list):
            problems.append(f"pseudo_labels: must be a list of records, got {type(records).__name__}")
        if not isinstance(stages, dict) or not all(isinstance(k, str) and _whole(v, 0) for k, v in stages.items()):
            problems.append(f"stages_done: must map stage names to rounds, got {stages!r}")
        if problems:
            raise CheckpointError("the checkpoint's pseudo-label store: " + "; ".join(problems))
        self.records = [PseudoLabel.from_dict(record, f"the checkpoint's pseudo-label {number}")
                        for number, record in enumerate(records, start=1)]
        self.round = state_dict.get("pseudo_round", 0)
        self.epoch = state_dict.get("pseudo_epoch", -1)
        self.legacy = "stages_done" not in state_dict
        self.stages_done = dict(stages)


def _whole(value: Any, low: Optional[int]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def _answer_fits(answer: Optional[str], options: Optional[tuple[str, ...]]) -> bool:
    """A closed-form item's pseudo-label names one of its option letters (a free-form one may be any text)."""
    return answer is None or options is None or answer in LETTERS[:len(options)]
