"""The LightningDataModule: loads and checks the splits, encodes them through the prompt builder, batches them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler

from semift_lightning.errors import ArgumentError
from semift_lightning.parsing import LETTERS
from semift_lightning.prompts import PROMPT_FORMATS, PromptBuilder
from semift_lightning.pseudo_labels import PseudoLabel
from semift_lightning.records import (DataError, Example, check_fractions, read_rows, same_items, split_examples,
                                      subsample, to_examples)
from semift_lightning.tasks import ColumnOverrides, get_preset, override_columns

SPLITS = ("labeled", "unlabeled", "val", "test")
OVERLAP_POLICIES = ("error", "drop", "allow")
IGNORE_INDEX = -100


@dataclass
class SplitSizes:
    """Upper bounds on the items used from each split (a seeded subsample); unset means all.

    Args:
        labeled: labeled training items.
        unlabeled: unlabeled items.
        val: validation items.
        test: test items.
    """

    labeled: Optional[int] = None
    unlabeled: Optional[int] = None
    val: Optional[int] = None
    test: Optional[int] = None


class LengthGroupedSampler(DistributedSampler):
    """Shuffles, then sorts chunks by length so a batch holds similar lengths and little padding.

    Every rank gets the same number of batches; the order changes with ``set_epoch``. It is a
    DistributedSampler so Lightning shards with it as it is instead of wrapping it.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 chunk_batches: int = 32) -> None:
        super().__init__(lengths, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.chunk_batches = chunk_batches
        self.global_batches = math.ceil(len(self.lengths) / (batch_size * num_replicas))

    def __len__(self) -> int:
        return self.global_batches * self.batch_size

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        group = self.batch_size * self.num_replicas
        order += order[:self.global_batches * group - len(order)]  # every rank gets full, equal batches
        chunk = group * self.chunk_batches
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: -self.lengths[i])
            batches += [part[i:i + group] for i in range(0, len(part), group)]
        rng.shuffle(batches)
        for batch in batches:
            yield from batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]


def carve_validation(examples: Sequence[Example], fraction: float, seed: int,
                     by_answer: bool) -> tuple[list[Example], list[Example]]:
    """(train, validation): a seeded ``fraction`` of ``examples`` for validation, in their original order. With
    ``by_answer`` the fraction is taken within each answer, at least one item of an answer that has two or more."""
    groups: dict[Optional[str], list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(example.answer if by_answer else None, []).append(i)
    rng = random.Random(f"{seed}/val")
    chosen: set[int] = set()
    for answer in sorted(groups, key=str):
        members = groups[answer]
        count = round(fraction * len(members))
        count = max(count, 1) if by_answer and len(members) > 1 else count
        chosen.update(rng.sample(members, min(count, len(members) - 1)))
    return ([e for i, e in enumerate(examples) if i not in chosen],
            [e for i, e in enumerate(examples) if i in chosen])


class Collator:
    """Pads on the left (for batched inference; training does not mind) with a pad id that is not eos. Batches carry
    what the module needs besides the tokens, so it never reads the DataModule: the ``task`` preset's name, which
    items' questions were cut (``truncated``), and for a closed-form task the option letters' token ids
    (``option_token_ids``)."""

    def __init__(self, pad_id: int, option_token_ids: Sequence[int] = (), task: Optional[str] = None) -> None:
        self.pad_id = pad_id
        self.option_token_ids = torch.tensor(list(option_token_ids), dtype=torch.long)
        self.task = task

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        width = max(len(item["input_ids"]) for item in items)
        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([[value] * (width - len(item[key])) + item[key] for item in items], dtype=torch.long)
        batch = {"input_ids": pad("input_ids", self.pad_id),
                 "attention_mask": torch.tensor([[0] * (width - len(item["input_ids"])) + [1] * len(item["input_ids"])
                                                 for item in items], dtype=torch.long),
                 "examples": [item["example"] for item in items],
                 "truncated": [item.get("truncated", False) for item in items]}
        if self.task is not None:
            batch["task"] = self.task
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


class SemiFTDataModule(L.LightningDataModule):
    """Labeled, unlabeled, validation and test data for one task.

    Args:
        task: a task preset (mmlu, mmlu_pro, arc, fpb, pubmedqa, usmle, convfinqa, multiple_choice,
            sentiment, yes_no_maybe, numeric, free_text).
        root: folder that relative split paths are read from.
        labeled: labeled training data (file, ``pypi:`` asset or ``hf:NAME[@CONFIG][:SPLIT]``).
        unlabeled: unlabeled data; a gold column there is only used for diagnostics.
        val: validation data (optional).
        test: test data.
        source: one file to split into labeled / unlabeled / test by ``split_fractions`` instead (with ``test``
            set, into labeled / unlabeled, the test fraction 0).
        split_fractions: labeled, unlabeled and test fractions of ``source``; they must sum to 1.
        columns: column mapping: the fields set here replace the task preset's, the others keep it.
        sizes: upper bounds on the items used per split.
        batch_size: training batch size per device.
        eval_batch_size: evaluation batch size per device.
        max_length: longest prompt plus answer in tokens; longer questions are cut from the left.
        num_workers: data loader worker processes.
        seed: seed of splits, subsamples and batch order.
        system_prompt: optional system message for every prompt.
        cache_dir: cache for ``pypi:`` data assets (default ``$SEMIFT_CACHE`` or ~/.cache/semift).
        pseudo_weight: loss weight of a pseudo-labeled item relative to a labeled one.
        test_overlap: what to do with labeled or unlabeled items whose question and options equal a test item's
            (test leakage): error (default), drop (remove them from training data, listing each), or allow.
        view_prompt_fraction: fraction of training items shown in the prompt forms of a pseudo-labeling round
            instead of the plain prompt, so that the student is trained on the prompts its views read: half of them
            with ``view_prompt_demonstrations`` other labeled items as demonstrations, and (closed-form tasks) half
            with proposed answers as self-justification lists them (the gold one and another option, in a drawn
            order: self-justification shows both). Drawn with the seed and the epoch; when on, the train
            dataloader is rebuilt every epoch.
        view_prompt_demonstrations: demonstrations in the demonstration form of ``view_prompt_fraction``.
        soft_pseudo_labels: closed-form tasks: a pseudo-labeled item trains on the round's option distribution for it
            (cross-entropy to it over the option letters as the answer's first token, weighted by ``pseudo_weight``)
            instead of on its selected letter alone; labeled items keep their gold letter.
        val_fraction: carve a validation split of this fraction out of the labeled items (after ``sizes.labeled``
            draws them), seeded by ``seed``; closed-form tasks carve within each answer, at least one item of every
            answer that has two or more; the rest trains. For choosing steps, θ or a recipe on labeled data only.
            0: no carve (``val`` names a validation file instead).
        prompt_format: "chat" (the tokenizer's chat template) or "plain" (plain text ending in "Answer:", for base
            models without one); unset: chat where the tokenizer has a template, else plain.
        question_last: ask each item's options and the instruction first and the question after them (see
            ``Task.user_content``). Where every item has the same options (sentiment, yes/no/maybe), every prompt
            then opens with the same tokens, which training and option scoring run once per batch instead of once
            per item. Off: the question comes first, as in SemiEvol's prompts.
    """

    def __init__(self, task: str = "multiple_choice", root: Optional[str] = None, labeled: Optional[str] = None,
                 unlabeled: Optional[str] = None, val: Optional[str] = None, test: Optional[str] = None,
                 source: Optional[str] = None, split_fractions: tuple[float, float, float] = (0.2, 0.6, 0.2),
                 columns: Optional[ColumnOverrides] = None, sizes: SplitSizes = SplitSizes(), batch_size: int = 8,
                 eval_batch_size: int = 16, max_length: int = 1024, num_workers: int = 0, seed: int = 0,
                 system_prompt: Optional[str] = None, cache_dir: Optional[str] = None, pseudo_weight: float = 1.0,
                 test_overlap: str = "error", view_prompt_fraction: float = 0.0,
                 view_prompt_demonstrations: int = 2, question_last: bool = False, val_fraction: float = 0.0,
                 soft_pseudo_labels: bool = False, prompt_format: Optional[str] = None) -> None:
        super().__init__()
        problems = self.argument_problems(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if problems:
            raise ArgumentError("invalid data arguments:\n- " + "\n- ".join(problems))
        preset = get_preset(task)
        self.task = replace(preset.task, question_last=question_last)
        self.columns = override_columns(preset.columns, columns)
        self.root = root
        self.paths = {"labeled": labeled, "unlabeled": unlabeled, "val": val, "test": test}
        self.source = source
        self.split_fractions = tuple(split_fractions)
        self.sizes = sizes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.num_workers = num_workers
        self.seed = seed
        self.system_prompt = system_prompt
        self.cache_dir = cache_dir
        self.pseudo_weight = pseudo_weight
        self.test_overlap = test_overlap
        self.view_prompt_fraction = view_prompt_fraction
        self.view_prompt_demonstrations = view_prompt_demonstrations
        self.val_fraction = val_fraction
        self.soft_pseudo_labels = soft_pseudo_labels
        self.prompt_format = prompt_format
        self.prompts: Optional[PromptBuilder] = None
        self.examples: dict[str, list[Example]] = {}
        self.split_names: dict[str, str] = {}
        self.truncated: dict[str, int] = {}
        self.unlabeled_gold: dict[str, Optional[str]] = {}  # diagnostics only: never trained on or selected by
        self.pseudo_labels: list[PseudoLabel] = []  # the latest round's records, one per unlabeled item
        self.pseudo_round = 0
        self.pseudo_epoch = -1
        self.answers_optional: set[str] = {"unlabeled"}  # splits whose rows may lack a gold answer

    @staticmethod
    def argument_problems(task: str = "multiple_choice", labeled: Optional[str] = None, test: Optional[str] = None,
                          source: Optional[str] = None, split_fractions: Sequence[float] = (0.2, 0.6, 0.2),
                          sizes: Any = None, batch_size: int = 8, eval_batch_size: int = 16, max_length: int = 1024,
                          num_workers: int = 0, pseudo_weight: float = 1.0,
                          test_overlap: str = "error", view_prompt_fraction: float = 0.0,
                          view_prompt_demonstrations: int = 2, val: Optional[str] = None, val_fraction: float = 0.0,
                          soft_pseudo_labels: bool = False, prompt_format: Optional[str] = None,
                          **_: Any) -> list[str]:
        """Every problem with the arguments, each naming its argument; empty when all are fine."""
        problems = []
        try:
            get_preset(task)
        except ValueError as err:
            problems.append(f"data.task: {err}")
        if source and labeled:
            problems.append("data.source: give either one source file to split or a labeled file, not both")
        if source:
            problems += [f"data.split_fractions: {p}" for p in check_fractions(split_fractions)]
            if len(split_fractions) != 3:
                problems.append(f"data.split_fractions: needs 3 fractions (labeled, unlabeled, test), got {len(split_fractions)}")
            elif test and split_fractions[2] != 0:
                problems.append(f"data.split_fractions: data.test names the test file, so the source's test fraction "
                                f"must be 0, got {split_fractions[2]}")
        for name in ("batch_size", "eval_batch_size", "max_length"):
            if locals()[name] < 1:
                problems.append(f"data.{name}: must be at least 1, got {locals()[name]}")
        if num_workers < 0:
            problems.append(f"data.num_workers: must be at least 0, got {num_workers}")
        if not pseudo_weight > 0:
            problems.append(f"data.pseudo_weight: must be positive, got {pseudo_weight}")
        if not 0 <= view_prompt_fraction <= 1:
            problems.append(f"data.view_prompt_fraction: must be in [0, 1], got {view_prompt_fraction}")
        if view_prompt_demonstrations < 1:
            problems.append(f"data.view_prompt_demonstrations: must be at least 1, got {view_prompt_demonstrations}")
        if soft_pseudo_labels and not problems and not get_preset(task).task.closed_form:
            problems.append(f"data.soft_pseudo_labels: needs a closed-form task (option distributions); {task!r} has "
                            f"free-form answers")
        if prompt_format not in (None, *PROMPT_FORMATS):
            problems.append(f"data.prompt_format: must be {' or '.join(PROMPT_FORMATS)} or unset, got {prompt_format!r}")
        if not 0 <= val_fraction < 1:
            problems.append(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
        elif val_fraction and val:
            problems.append(f"data.val_fraction: carves validation out of the labeled data, but data.val={val!r} "
                            f"names a validation file too; set one of them")
        if test_overlap not in OVERLAP_POLICIES:
            problems.append(f"data.test_overlap: must be one of {', '.join(OVERLAP_POLICIES)}, got {test_overlap!r}")
        for split in SPLITS:
            size = getattr(sizes, split, None)
            if size is not None and size < 1:
                problems.append(f"data.sizes.{split}: must be at least 1 or unset, got {size}")
        return problems

    # ----- loading ---------------------------------------------------------------------------------------------
    def _path(self, split: str) -> Optional[str]:
        path = self.paths[split]
        if path is None or self.root is None or ":" in path.split("/")[0] or Path(path).is_absolute():
            return path
        return str(Path(self.root) / path)

    def labeled_answers(self) -> list[str]:
        """The labeled split's gold answers (what a selection may match its answer mix to)."""
        return [example.answer for example in self.load_split("labeled")]

    def load_split(self, split: str) -> list[Example]:
        """The checked examples of ``split`` (cached); an empty list when the split is not configured."""
        if split in self.examples:
            return self.examples[split]
        if split == "val" and self.val_fraction:
            self.load_split("labeled")
            return self.examples["val"]
        if self.source and split in ("labeled", "unlabeled") or self.source and split == "test" and not self._path(split):
            rows = read_rows(self.source, self.cache_dir)
            parts = split_examples(to_examples(rows, self.task, self.columns, self.source), self.split_fractions, self.seed)
            examples = dict(zip(("labeled", "unlabeled", "test"), parts))[split]
            name = f"{self.source} ({split} part)"
        elif self._path(split):
            name = self._path(split)
            examples = to_examples(read_rows(name, self.cache_dir), self.task, self.columns, name,
                                   require_answer=split not in self.answers_optional)
        else:
            return []
        examples = subsample(examples, getattr(self.sizes, split), self.seed)
        if not examples and split != "unlabeled":
            raise DataError(f"{name}: the {split} split is empty")
        if split == "unlabeled":  # keep gold answers apart, for the diagnostic metric only
            self.unlabeled_gold = {example.id: example.answer for example in examples}
            examples = [replace(example, answer=None) for example in examples]
        if split == "labeled" and self.val_fraction:
            examples, self.examples["val"] = carve_validation(examples, self.val_fraction, self.seed,
                                                              self.task.closed_form)
            self.split_names["val"] = f"{name} (validation part)"
        self.examples[split] = examples
        self.split_names[split] = name
        return examples

    def check_test_overlap(self) -> None:
        """Apply ``test_overlap`` to labeled and unlabeled items that equal a test item."""
        test = self.load_split("test")
        found = [(split, example, twin) for split in ("labeled", "unlabeled")
                 for example, twin in same_items(self.load_split(split), test)]
        if not found or self.test_overlap == "allow":
            if found:
                rank_zero_warn(f"{len(found)} training-side item(s) equal a test item (data.test_overlap=allow)")
            return
        field = self.columns.question
        lines = [f"{self.split_names[split]}: row {example.row}: field {field!r}: the same item as "
                 f"{self.split_names['test']} row {twin.row}" for split, example, twin in found]
        if self.test_overlap == "error":
            raise DataError(f"{len(found)} labeled/unlabeled item(s) also in the test data (test leakage); set "
                            f"data.test_overlap to drop or allow:\n" + "\n".join(lines))
        rank_zero_warn(f"dropped {len(found)} item(s) that are also in the test data:\n" + "\n".join(lines))
        for split in ("labeled", "unlabeled"):
            leaked = {id(example) for name, example, _ in found if name == split}
            self.examples[split] = [e for e in self.load_split(split) if id(e) not in leaked]
        self.unlabeled_gold = {e.id: self.unlabeled_gold[e.id] for e in self.examples["unlabeled"]}

    def _require(self, split: str) -> list[Example]:
        examples = self.load_split(split)
        if not examples:
            raise DataError(f"no {split} data: set data.{split} (with data.root for relative paths) or data.source")
        return examples

    def connect(self, tokenizer: Any, max_context_length: Optional[int] = None) -> None:
        """Hand the DataModule what it needs from the model, before ``fit`` / ``test`` / ``predict``: its tokenizer
        (a pad token that is not eos, left padding) and optionally its context length (prompts are cut to the
        smaller of it and ``max_length``). ``semift`` does it; a script of your own calls
        ``datamodule.connect(module.tokenizer, module.max_context_length)``."""
        self.prompts = PromptBuilder(tokenizer, self.task, min(self.max_length, max_context_length or self.max_length),
                                     self.system_prompt, self.prompt_format)

    def setup(self, stage: str) -> None:
        if self.prompts is None:
            raise ArgumentError("SemiFTDataModule: connect(tokenizer, max_context_length) was not called; call "
                                "datamodule.connect(module.tokenizer, module.max_context_length) before the "
                                "Trainer runs")
        if stage == "predict":
            self.answers_optional.add("test")  # predicting is for data without answers; given ones are still checked
        needed = {"fit": ["labeled"], "validate": ["val"], "test": ["test"], "predict": ["test"]}[stage]
        for split in needed:
            self._require(split)
        if stage == "fit":
            self.load_split("val")
            self.check_test_overlap()
            if self.view_prompt_fraction > 0:
                self.trainer.reload_dataloaders_every_n_epochs = 1  # a new draw of prompt forms each epoch

    # ----- encoding ----------------------------------------------------------------------------------------------
    def encode(self, split: str, examples: Sequence[Example], with_target: bool,
               weights: Optional[Sequence[float]] = None, demonstrations: Optional[dict[str, list[Example]]] = None,
               candidates: Optional[dict[str, list[str]]] = None,
               soft_targets: Optional[dict[str, list[float]]] = None) -> list[dict]:
        """Items for the collator; ``demonstrations`` and ``candidates`` map item ids to what their prompts show,
        ``soft_targets`` to an option distribution the item's answer letter trains on."""
        items, cut = [], 0
        for i, example in enumerate(examples):
            encoded = self.prompts.encode(example, (demonstrations or {}).get(example.id, ()), with_target,
                                          (candidates or {}).get(example.id, ()))
            cut += encoded.truncated
            item = {"input_ids": encoded.prompt_ids + encoded.target_ids, "example": example,
                    "truncated": encoded.truncated}
            if with_target:
                item["labels"] = [IGNORE_INDEX] * len(encoded.prompt_ids) + encoded.target_ids
                item["weight"] = 1.0 if weights is None else float(weights[i])
                item["pseudo"] = split == "pseudo"
                if soft_targets and example.id in soft_targets:
                    distribution = list(soft_targets[example.id])
                    item["soft_target"] = distribution + [0.0] * (len(LETTERS) - len(distribution))
            items.append(item)
        if cut and self.truncated.get(split) != cut:
            rank_zero_warn(f"{split}: {cut} of {len(examples)} prompts were longer than "
                           f"max_length={self.prompts.max_length} tokens; their questions were cut from the left")
        self.truncated[split] = cut
        return items

    def train_items(self) -> list[dict]:
        """Encoded training items: the labeled set and the selected pseudo-labeled items. A round's items join from
        the epoch after the one it ended, also when a fit resumes from a checkpoint saved inside that epoch."""
        joined = self.trainer is None or self.trainer.current_epoch > self.pseudo_epoch
        pseudo = self.pseudo_examples() if joined else []
        labeled = self._require("labeled")
        soft = {r.id: r.probs for r in self.pseudo_labels if r.probs} if self.soft_pseudo_labels else None
        return (self.encode("labeled", labeled, with_target=True, **self.view_prompts("labeled", labeled))
                + self.encode("pseudo", pseudo, with_target=True, weights=[self.pseudo_weight] * len(pseudo),
                              soft_targets=soft, **self.view_prompts("pseudo", pseudo)))

    def view_prompts(self, split: str, examples: Sequence[Example]) -> dict[str, dict]:
        """Demonstrations and proposed answers for a ``view_prompt_fraction`` of ``examples`` (see the class
        docstring), as ``encode`` takes them; the same on every rank for the same seed, epoch and split."""
        labeled = self.load_split("labeled")
        epoch = self.trainer.current_epoch if self.trainer else 0
        rng = random.Random(f"{self.seed}/{epoch}/{split}")
        chosen = rng.sample(list(examples), round(self.view_prompt_fraction * len(examples)))
        with_candidates = chosen[len(chosen) // 2:] if self.task.closed_form else []
        demonstrations = {}
        for example in chosen[:len(chosen) - len(with_candidates)]:
            others = [other for other in rng.sample(labeled, min(len(labeled), self.view_prompt_demonstrations + 1))
                      if split != "labeled" or other.id != example.id]  # never an item's own demonstration
            demonstrations[example.id] = others[:self.view_prompt_demonstrations]
        candidates = {}
        for example in with_candidates:
            other = rng.choice([letter for letter in LETTERS[:len(example.options)] if letter != example.answer])
            candidates[example.id] = [self.task.proposed_answer(example, answer)
                                      for answer in rng.sample((example.answer, other), 2)]
        return {"demonstrations": demonstrations, "candidates": candidates}

    # ----- pseudo-labels ---------------------------------------------------------------------------------------------
    def pseudo_examples(self) -> list[Example]:
        """Unlabeled items whose pseudo-label was selected, with that label as their answer."""
        selected = [record for record in self.pseudo_labels if record.selected]
        pool = {example.id: example for example in self.load_split("unlabeled")}
        return [replace(pool[record.id], answer=record.answer) for record in selected]

    def set_pseudo_labels(self, records: list[PseudoLabel], round_index: int, epoch: Optional[int] = None) -> None:
        """Replace the store with one round's records (one per unlabeled item), made at the end of ``epoch``
        (default: this one; -1: before the first, which then trains on them)."""
        self.pseudo_labels = list(records)
        self.pseudo_round = round_index
        self.pseudo_epoch = epoch if epoch is not None else self.trainer.current_epoch if self.trainer else -1

    def state_dict(self) -> dict[str, Any]:
        return {"pseudo_labels": [record.as_dict() for record in self.pseudo_labels], "pseudo_round": self.pseudo_round,
                "pseudo_epoch": self.pseudo_epoch, "prompt_layout": self.prompt_layout}

    @property
    def prompt_layout(self) -> dict[str, Any]:
        """The data arguments that shape every prompt; a checkpoint records them."""
        return {"task": self.task.name, "question_last": self.task.question_last, "system_prompt": self.system_prompt,
                "prompt_format": self.prompts.prompt_format if self.prompts else self.prompt_format or "chat"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        current = self.prompt_layout
        saved = {"prompt_format": "chat", **state_dict.get("prompt_layout", current)}  # older checkpoints: chat
        changed = [f"{key}={saved.get(key)!r} (now {value!r})" for key, value in current.items()
                   if saved.get(key) != value]
        if changed:
            rank_zero_warn(f"the checkpoint was trained on prompts built with data.{', data.'.join(changed)}: this "
                           f"run builds its prompts differently")
        self.pseudo_labels = [PseudoLabel.from_dict(record, f"the checkpoint's pseudo-label {number}")
                              for number, record in enumerate(state_dict.get("pseudo_labels", []), start=1)]
        self.pseudo_round = int(state_dict.get("pseudo_round", 0))
        self.pseudo_epoch = int(state_dict.get("pseudo_epoch", -1))

    def pool_loader(self, split: str, examples: Sequence[Example], rank: int = 0, world_size: int = 1,
                    demonstrations: Optional[dict[str, list[Example]]] = None,
                    candidates: Optional[dict[str, list[str]]] = None, embed: bool = False) -> DataLoader:
        """This rank's shard of ``examples`` for an inference pass; every rank gets the same number of batches
        (the last items repeat where needed, so callers keep one result per id). ``embed`` encodes the bare
        questions (for similarity search) instead of prompts."""
        if embed:
            tokenizer = self.prompts.tokenizer
            items = [{"input_ids": tokenizer(e.question, add_special_tokens=False)["input_ids"][-self.prompts.max_length:],
                      "example": e} for e in examples]
        else:
            items = self.encode(split, examples, with_target=False, demonstrations=demonstrations,
                                candidates=candidates)
        items.sort(key=lambda item: (-len(item["input_ids"]), item["example"].id))
        per_rank = math.ceil(len(items) / world_size) if items else 0
        items += items[:per_rank * world_size - len(items)]
        return self._loader(items[rank::world_size], self.eval_batch_size)

    def _loader(self, items: list[dict], batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(items, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=self.num_workers,
                          collate_fn=Collator(self.prompts.tokenizer.pad_token_id, self.prompts.option_token_ids,
                                              self.task.name))

    def train_dataloader(self) -> DataLoader:
        items = self.train_items()
        trainer = self.trainer
        sampler = LengthGroupedSampler([len(item["input_ids"]) for item in items], self.batch_size, self.seed,
                                       num_replicas=trainer.world_size if trainer else 1,
                                       rank=trainer.global_rank if trainer else 0)
        return self._loader(items, self.batch_size, sampler)

    def eval_dataloader(self, split: str, examples: Optional[Sequence[Example]] = None) -> DataLoader:
        """Prompts only, longest first, so batches hold similar lengths; the order is deterministic."""
        items = self.encode(split, self._require(split) if examples is None else examples, with_target=False)
        items.sort(key=lambda item: -len(item["input_ids"]))
        return self._loader(items, self.eval_batch_size)

    def val_dataloader(self):
        return self.eval_dataloader("val") if self.load_split("val") else []

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

