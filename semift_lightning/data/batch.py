"""The typed batch every loader yields and the collator that makes it."""

from __future__ import annotations

from typing import Sequence, TypedDict

import torch

from semift_lightning.tasks.example import Example
from semift_lightning.tasks.parsing import LETTERS

IGNORE_INDEX = -100  # the label of a position that does not train (the prompt, the padding)


class Batch(TypedDict, total=False):
    """What every loader of ``SemiFTDataModule`` yields; a DataModule of your own yields the keys the module's
    methods it calls read.

    Keys:
        input_ids: (batch, length) token ids, padded on the left.
        attention_mask: (batch, length) 1 for tokens, 0 for padding.
        examples: the ``Example`` of each row.
        truncated: whether each row's question was cut to fit ``max_length``.
        option_token_ids: closed-form tasks: the token id of each option letter A, B, ...
        labels: training: the target token ids, ``IGNORE_INDEX`` where nothing trains.
        weight: training: each row's loss weight (pseudo-labeled rows: ``pseudo_weight``).
        pseudo: training: whether each row is pseudo-labeled.
        has_soft_target: training with soft pseudo-labels: whether each row trains on a distribution.
        soft_target: training with soft pseudo-labels: (batch, 10) the distribution over option letters.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    examples: list[Example]
    truncated: list[bool]
    option_token_ids: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    pseudo: torch.Tensor
    has_soft_target: torch.Tensor
    soft_target: torch.Tensor


class Collator:
    """Pads on the left (for batched inference; training does not mind) with a pad id that is not eos. Batches carry
    what the module needs besides the tokens, so it never reads the DataModule: which
    items' questions were cut (``truncated``), and for a closed-form task the option letters' token ids
    (``option_token_ids``)."""

    def __init__(self, pad_id: int, option_token_ids: Sequence[int] = ()) -> None:
        self.pad_id = pad_id
        self.option_token_ids = torch.tensor(list(option_token_ids), dtype=torch.long)

    def __call__(self, items: list[dict]) -> Batch:
        width = max(len(item["input_ids"]) for item in items)
        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([[value] * (width - len(item[key])) + item[key] for item in items], dtype=torch.long)
        batch = {"input_ids": pad("input_ids", self.pad_id),
                 "attention_mask": torch.tensor([[0] * (width - len(item["input_ids"])) + [1] * len(item["input_ids"])
                                                 for item in items], dtype=torch.long),
                 "examples": [item["example"] for item in items],
                 "truncated": [item.get("truncated", False) for item in items]}
        if len(self.option_token_ids):
            batch["option_token_ids"] = self.option_token_ids
        if "labels" in items[0]:
            batch["labels"] = pad("labels", IGNORE_INDEX)
            batch["weight"] = torch.tensor([item["weight"] for item in items], dtype=torch.float32)
            batch["pseudo"] = torch.tensor([item["pseudo"] for item in items])
            if any("soft_target" in item for item in items):  # rows without one train on their letter
                batch["has_soft_target"] = torch.tensor(["soft_target" in item for item in items])
                batch["soft_target"] = torch.tensor([item.get("soft_target", [0.0] * len(LETTERS)) for item in items],
                                                    dtype=torch.float32)
        return batch
