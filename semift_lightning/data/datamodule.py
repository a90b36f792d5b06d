"""The LightningDataModule: loads and checks the splits, encodes them through the prompt builder, batches them,
and holds the pseudo-label store."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import replace
from typing import Any, Optional, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from semift_lightning.arguments import bound_arguments, raise_problems
from semift_lightning.data.batch import IGNORE_INDEX, Collator
from semift_lightning.data.noise import drop_words
from semift_lightning.data.patterns import VERBALIZERS, PromptPattern
from semift_lightning.data.prompts import PROMPT_FORMATS, PromptBuilder, PromptTooLong
from semift_lightning.data.sampler import LengthGroupedSampler
from semift_lightning.data.split_files import SplitFiles
from semift_lightning.data.splits import (
    SplitSizes,
    check_fractions,
)
from semift_lightning.data.view_prompts import draw_view_prompts
from semift_lightning.errors import ArgumentError, DataError
from semift_lightning.semievol.store import PseudoLabelStore
from semift_lightning.tasks.columns import ColumnOverrides, override_columns
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.parsing import LETTERS
from semift_lightning.tasks.registry import resolve_task

SPLITS = ("labeled", "unlabeled", "val", "test")


OVERLAP_POLICIES = ("error", "drop", "allow")


class SemiFTDataModule(SplitFiles, L.LightningDataModule):
    """Labeled, unlabeled, validation and test data for one task. A checkpoint records how its prompts were built;
    resuming or testing it builds them the same way.

    Args:
        task: a registered task (mmlu, mmlu_pro, arc, fpb, pubmedqa, usmle, convfinqa, multiple_choice,
            sentiment, yes_no_maybe, numeric, free_text, or one of ``register_task``); from Python also a ``Task``.
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
        pseudo_word_dropout: each word of a pseudo-labeled item's question is dropped with this probability in
            training, drawn anew each epoch with the seed (the noised student of Noisy Student: the teacher labelled
            the clean text); 0: off.
        verbalizer: how the student says an answer: "letter" (the option's letter) or "word" (the option's own word,
            e.g. "positive", scored by its first token; tasks whose items share fixed options); unset: the task's.
    """

    def __init__(self, task: str = "multiple_choice", root: Optional[str] = None, labeled: Optional[str] = None,
                 unlabeled: Optional[str] = None, val: Optional[str] = None, test: Optional[str] = None,
                 source: Optional[str] = None, split_fractions: tuple[float, float, float] = (0.2, 0.6, 0.2),
                 columns: Optional[ColumnOverrides] = None, sizes: SplitSizes = SplitSizes(), batch_size: int = 8,
                 eval_batch_size: int = 16, max_length: int = 1024, num_workers: int = 0, seed: int = 0,
                 system_prompt: Optional[str] = None, cache_dir: Optional[str] = None, pseudo_weight: float = 1.0,
                 test_overlap: str = "error", view_prompt_fraction: float = 0.0,
                 view_prompt_demonstrations: int = 2, question_last: bool = False, val_fraction: float = 0.0,
                 soft_pseudo_labels: bool = False, prompt_format: Optional[str] = None,
                 pseudo_word_dropout: float = 0.0, verbalizer: Optional[str] = None) -> None:
        super().__init__()
        raise_problems("invalid data arguments",
                       self.argument_problems(**{k: v for k, v in locals().items() if k not in ("self", "__class__")}))
        preset = resolve_task(task)
        self.preset_task = preset.task  # the task as registered, before this DataModule's pattern
        self.task = PromptPattern("data", question_last=question_last, verbalizer=verbalizer).applied_to(preset.task)
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
        self.pseudo_word_dropout = pseudo_word_dropout
        self.prompts: Optional[PromptBuilder] = None
        self.examples: dict[str, list[Example]] = {}
        self.split_names: dict[str, str] = {}
        self.truncated: dict[str, int] = {}
        self.store = PseudoLabelStore()  # the pseudo-labels, and the pool's gold answers for diagnostics
        self.answers_optional: set[str] = {"unlabeled"}  # splits whose rows may lack a gold answer

    @classmethod
    def argument_problems(cls, **given: Any) -> list[str]:
        """Every problem with the arguments, each naming its argument; empty when all are fine."""
        a = bound_arguments(cls.__init__, given)
        task, labeled, test, source, val = a["task"], a["labeled"], a["test"], a["source"], a["val"]
        split_fractions, num_workers, pseudo_weight = a["split_fractions"], a["num_workers"], a["pseudo_weight"]
        view_prompt_fraction, view_prompt_demonstrations = a["view_prompt_fraction"], a["view_prompt_demonstrations"]
        soft_pseudo_labels, prompt_format, val_fraction = a["soft_pseudo_labels"], a["prompt_format"], a["val_fraction"]
        test_overlap, sizes = a["test_overlap"], a["sizes"]
        problems = []
        try:
            resolve_task(task)
        except ValueError as err:
            problems.append(f"data.task: {err}")
        if source and labeled:
            problems.append("data.source: give either one source file to split or a labeled file, not both")
        if source:
            problems += [f"data.split_fractions: {p}" for p in check_fractions(split_fractions)]
            if len(split_fractions) != 3:
                problems.append(f"data.split_fractions: needs 3 fractions (labeled, unlabeled, test), got "
                                f"{len(split_fractions)}")
            elif test and split_fractions[2] != 0:
                problems.append(f"data.split_fractions: data.test names the test file, so the source's test fraction "
                                f"must be 0, got {split_fractions[2]}")
        for name in ("batch_size", "eval_batch_size", "max_length"):
            if a[name] < 1:
                problems.append(f"data.{name}: must be at least 1, got {a[name]}")
        if num_workers < 0:
            problems.append(f"data.num_workers: must be at least 0, got {num_workers}")
        if not pseudo_weight > 0:
            problems.append(f"data.pseudo_weight: must be positive, got {pseudo_weight}")
        if not 0 <= view_prompt_fraction <= 1:
            problems.append(f"data.view_prompt_fraction: must be in [0, 1], got {view_prompt_fraction}")
        if view_prompt_demonstrations < 1:
            problems.append(f"data.view_prompt_demonstrations: must be at least 1, got {view_prompt_demonstrations}")
        if soft_pseudo_labels and not problems and not resolve_task(task).task.closed_form:
            problems.append(f"data.soft_pseudo_labels: needs a closed-form task (option distributions); {task!r} has "
                            f"free-form answers")
        if prompt_format not in (None, *PROMPT_FORMATS):
            problems.append(f"data.prompt_format: must be {' or '.join(PROMPT_FORMATS)} or unset, got "
                            f"{prompt_format!r}")
        if a["verbalizer"] not in (None, *VERBALIZERS):
            problems.append(f"data.verbalizer: must be {' or '.join(VERBALIZERS)} or unset, got {a['verbalizer']!r}")
        elif a["verbalizer"] and not problems:
            try:
                PromptPattern("data", verbalizer=a["verbalizer"]).applied_to(resolve_task(task).task)
            except ArgumentError as err:
                problems.append(f"data.verbalizer: {str(err).split(': ', 1)[1]}")
        if not 0 <= a["pseudo_word_dropout"] < 1:
            problems.append(f"data.pseudo_word_dropout: must be in [0, 1), got {a['pseudo_word_dropout']}")
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
    def connect(self, tokenizer: Any, max_context_length: Optional[int] = None) -> None:
        """Hand the DataModule what it needs from the model, before ``fit`` / ``test`` / ``predict``: its tokenizer
        (a pad token that is not eos, left padding) and optionally its context length (prompts are cut to the
        smaller of it and ``max_length``). ``semift`` does it; a script of your own calls
        ``datamodule.connect(module.tokenizer, module.max_context_length)``."""
        self.prompts = PromptBuilder(tokenizer, self.task, min(self.max_length, max_context_length or self.max_length),
                                     self.system_prompt, self.prompt_format)

    def in_pattern(self, pattern: PromptPattern) -> "SemiFTDataModule":
        """This DataModule asking in ``pattern``: the same splits and store, prompts built in the pattern."""
        asked = copy.copy(self)
        asked.task = pattern.applied_to(self.task)
        asked.prompts = PromptBuilder(self.prompts.tokenizer, asked.task, self.prompts.max_length, self.system_prompt,
                                      pattern.prompt_format or self.prompts.prompt_format)
        asked.truncated = {}
        return asked

    def labeled_loader(self, seed: int, pseudo: Sequence[Example] = ()) -> DataLoader:
        """The labeled items with their answers, and ``pseudo`` items with theirs, in training batches shuffled with
        ``seed`` (and the sampler's epoch): what a committee member trains on."""
        items = (self.encode("labeled", self._require("labeled"), with_target=True)
                 + self.encode("pseudo", pseudo, with_target=True))
        sampler = LengthGroupedSampler([len(item["input_ids"]) for item in items], self.batch_size, seed)
        return self._loader(items, self.batch_size, sampler)

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
            try:
                encoded = self.prompts.encode(example, (demonstrations or {}).get(example.id, ()), with_target,
                                              (candidates or {}).get(example.id, ()))
            except PromptTooLong as err:
                where = self.split_names.get(split, split)
                raise PromptTooLong(f"{where}: row {example.row}: field {self.columns.question!r}: {err}") from None
            except DataError as err:
                raise DataError(f"{self.split_names.get(split, split)}: row {example.row}: {err}") from None
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
        """Encoded training items: the labeled set and the store's selected pseudo-labeled items. A round's items
        join from the epoch after the one it ended, also when a fit resumes from a checkpoint saved inside that
        epoch."""
        epoch = self.trainer.current_epoch if self.trainer else None
        pseudo = self.pseudo_examples(epoch)
        if self.pseudo_word_dropout:
            rng = random.Random(f"{self.seed}/{epoch}/noise")
            pseudo = [replace(e, question=drop_words(e.question, self.pseudo_word_dropout, rng)) for e in pseudo]
        labeled = self._require("labeled")
        soft = {r.id: r.probs for r in self.store.records if r.probs} if self.soft_pseudo_labels else None
        return (self.encode("labeled", labeled, with_target=True, **self.view_prompts("labeled", labeled))
                + self.encode("pseudo", pseudo, with_target=True, weights=[self.pseudo_weight] * len(pseudo),
                              soft_targets=soft, **self.view_prompts("pseudo", pseudo)))

    def view_prompts(self, split: str, examples: Sequence[Example]) -> dict[str, dict]:
        """Demonstrations and proposed answers for a ``view_prompt_fraction`` of ``examples`` (see the class
        docstring), as ``encode`` takes them; the same on every rank for the same seed, epoch and split."""
        epoch = self.trainer.current_epoch if self.trainer else 0
        return draw_view_prompts(examples, self.load_split("labeled"), self.task, random.Random(
            f"{self.seed}/{epoch}/{split}"), self.view_prompt_fraction, self.view_prompt_demonstrations,
            own_demonstration=split != "labeled")

    # ----- pseudo-labels ---------------------------------------------------------------------------------------------
    def pseudo_examples(self, epoch: Optional[int] = None) -> list[Example]:
        """Unlabeled items whose pseudo-label trains in ``epoch`` (None: whatever the epoch), with that label as
        their answer."""
        pool = {example.id: example for example in self.load_split("unlabeled")}
        return [replace(pool[record.id], answer=record.answer) for record in self.store.selected(epoch)]

    def state_dict(self) -> dict[str, Any]:
        return {**self.store.state_dict(), "prompt_layout": self.prompt_layout}

    @property
    def prompt_layout(self) -> dict[str, Any]:
        """The data arguments that shape every prompt; a checkpoint records them."""
        return {"task": self.task.name, "question_last": self.task.question_last, "system_prompt": self.system_prompt,
                "prompt_format": self.prompts.prompt_format if self.prompts else self.prompt_format or "chat",
                "verbalizer": "word" if getattr(self.task, "answer_words", False) else "letter"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {"prompt_format": "chat", "verbalizer": "letter",  # what older checkpoints used
                 **state_dict.get("prompt_layout", self.prompt_layout)}
        self.adopt_prompt_layout(saved)
        self.store.load_state_dict(state_dict)

    def adopt_prompt_layout(self, saved: dict[str, Any]) -> None:
        """Build every prompt as the checkpoint's fit did (its question order, format, system prompt and
        verbalizer), so that a resumed fit or a test of a checkpoint asks as it was trained; said in one line. A
        checkpoint of another task keeps this run's prompts, with a warning."""
        current = self.prompt_layout
        changed = {key: saved.get(key) for key, value in current.items() if saved.get(key) != value}
        if not changed:
            return
        if "task" in changed:
            rank_zero_warn(f"the checkpoint was trained on task {saved['task']!r}: this run asks {current['task']!r} "
                           f"in its own prompts")
            return
        self.task = PromptPattern("checkpoint", question_last=saved["question_last"],
                                  verbalizer=saved["verbalizer"]).applied_to(self.preset_task)
        self.system_prompt, self.prompt_format = saved["system_prompt"], saved["prompt_format"]
        if self.prompts is not None:
            self.prompts = PromptBuilder(self.prompts.tokenizer, self.task, self.prompts.max_length,
                                         self.system_prompt, self.prompt_format)
        rank_zero_info("prompts built as in the checkpoint's fit: " + ", ".join(
            f"data.{key}={value!r} (given {current[key]!r})" for key, value in changed.items()))

    def pool_loader(self, split: str, examples: Sequence[Example], rank: int = 0, world_size: int = 1,
                    demonstrations: Optional[dict[str, list[Example]]] = None,
                    candidates: Optional[dict[str, list[str]]] = None, embed: bool = False) -> DataLoader:
        """This rank's shard of ``examples`` for an inference pass; every rank gets the same number of batches
        (the last items repeat where needed, so callers keep one result per id). ``embed`` encodes the bare
        questions (for similarity search) instead of prompts."""
        if embed:
            tokenizer = self.prompts.tokenizer
            width = self.prompts.max_length
            items = [{"input_ids": tokenizer(e.question, add_special_tokens=False)["input_ids"][-width:], "example": e}
                     for e in examples]
        else:
            items = self.encode(split, examples, with_target=False, demonstrations=demonstrations,
                                candidates=candidates)
        items.sort(key=lambda item: (-len(item["input_ids"]), item["example"].id))
        per_rank = math.ceil(len(items) / world_size) if items else 0
        items += items[:per_rank * world_size - len(items)]
        return self._loader(items[rank::world_size], self.eval_batch_size)

    def _loader(self, items: list[dict], batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(items, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=self.num_workers,
                          collate_fn=Collator(self.prompts.tokenizer.pad_token_id, self.prompts.option_token_ids))

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
