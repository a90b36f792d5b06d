"""Loading a DataModule's splits from its files: relative paths under ``root``, a source split by fractions, the
seeded subsample, the validation carve, and the checks against test leakage."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from lightning.pytorch.utilities import rank_zero_warn

from semift_lightning.data.readers import read_rows, to_examples
from semift_lightning.data.splits import carve_validation, same_items, split_examples, subsample
from semift_lightning.errors import DataError
from semift_lightning.tasks.example import Example


class SplitFiles:
    """The split loading of ``SemiFTDataModule``, as a mixin: it needs ``paths``, ``root``, ``source``,
    ``split_fractions``, ``sizes``, ``seed``, ``val_fraction``, ``task``, ``columns``, ``cache_dir``,
    ``test_overlap``, ``answers_optional``, ``examples``, ``split_names`` and ``store``."""

    def _path(self, split: str) -> Optional[str]:
        return self._rooted(self.paths[split])

    def _rooted(self, path: Optional[str]) -> Optional[str]:
        """``path`` under ``root`` when it is relative (a ``pypi:`` or ``hf:`` source stays as it is)."""
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
        from_source = split in ("labeled", "unlabeled") or split == "test" and not self._path(split)
        if self.source and from_source:
            source = self._rooted(self.source)
            examples = to_examples(read_rows(source, self.cache_dir), self.task, self.columns, source)
            parts = split_examples(examples, self.split_fractions, self.seed)
            examples = dict(zip(("labeled", "unlabeled", "test"), parts))[split]
            name = f"{source} ({split} part)"
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
            self.store.pool_gold = {example.id: example.answer for example in examples}
            examples = [replace(example, answer=None) for example in examples]
        if split == "labeled" and self.val_fraction:
            examples, self.examples["val"] = carve_validation(examples, self.val_fraction, self.seed,
                                                              self.task.closed_form)
            self.split_names["val"] = f"{name} (validation part)"
            if not self.examples["val"]:
                raise DataError(f"data.val_fraction: {self.val_fraction} of {name}'s {len(examples)} items carves an "
                                f"empty validation split; raise it or label more items")
        self.examples[split] = examples
        self.split_names[split] = name
        return examples

    def check_test_overlap(self) -> None:
        """Refuse validation items that are test items; apply ``test_overlap`` to labeled and unlabeled items that
        equal a test item."""
        test = self.load_split("test")
        chosen_on_test = same_items(self.load_split("val"), test)
        if chosen_on_test:
            example, twin = chosen_on_test[0]
            raise DataError(f"{len(chosen_on_test)} validation item(s) are test items ({self.split_names['val']}: row "
                            f"{example.row} is {self.split_names['test']} row {twin.row}): what validation chooses "
                            f"would be chosen on the test set; use another data.val")
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
        self.store.pool_gold = {e.id: self.store.pool_gold[e.id] for e in self.examples["unlabeled"]}

    def _require(self, split: str) -> list[Example]:
        examples = self.load_split(split)
        if not examples:
            raise DataError(f"no {split} data: set data.{split} (with data.root for relative paths) or data.source")
        return examples

