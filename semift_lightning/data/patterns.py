"""Prompt patterns: the ways of asking one task that a committee's members differ by."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from semift_lightning.data.prompts import PROMPT_FORMATS
from semift_lightning.errors import ArgumentError
from semift_lightning.tasks.kinds import MultipleChoiceTask, Task

VERBALIZERS = ("letter", "word")
WORD_INSTRUCTION = "Answer with one of the options, as it is written."


@dataclass(frozen=True)
class PromptPattern:
    """One way of asking a task, as data: the prompt builder renders any item in it. A field left unset keeps what
    the DataModule's own prompts use.

    Args:
        name: what logs, metrics and the members' folders call it.
        prompt_format: "chat" (the tokenizer's chat template) or "plain" (text ending in "Answer:").
        question_last: the options and the instruction first, the question after them.
        instruction: the task's instruction replaced by this text.
        verbalizer: how the answer is said: "letter" (the option's letter) or "word" (the option's own word, e.g.
            "positive", scored by the probability of its first token; tasks whose items share fixed options).
            Unset: as the task says it.
    """

    name: str = "default"
    prompt_format: Optional[str] = None
    question_last: Optional[bool] = None
    instruction: Optional[str] = None
    verbalizer: Optional[str] = None

    def problems(self, where: str) -> list[str]:
        """Every problem with the pattern, each naming ``where`` it was given."""
        problems = []
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            problems.append(f"{where}.name: letters, digits, '-' and '_' only (it names a folder), got {self.name!r}")
        if self.prompt_format not in (None, *PROMPT_FORMATS):
            problems.append(f"{where}.prompt_format: must be {' or '.join(PROMPT_FORMATS)} or unset, got "
                            f"{self.prompt_format!r}")
        if self.verbalizer not in (None, *VERBALIZERS):
            problems.append(f"{where}.verbalizer: must be {' or '.join(VERBALIZERS)} or unset, got {self.verbalizer!r}")
        if self.instruction is not None and not self.instruction.strip():
            problems.append(f"{where}.instruction: must not be empty (unset keeps the task's)")
        return problems

    def applied_to(self, task: Task) -> Task:
        """``task`` asked in this pattern (a task that cannot say its answers as words: ``ArgumentError``)."""
        changes = {"question_last": self.question_last, "instruction": self.instruction}
        if self.verbalizer is not None:
            if not isinstance(task, MultipleChoiceTask) or (self.verbalizer == "word" and not task.fixed_options):
                raise ArgumentError(f"pattern {self.name!r}: verbalizer {self.verbalizer!r} needs a multiple-choice "
                                    f"task with fixed options; {task.name!r} has none")
            changes["answer_words"] = self.verbalizer == "word"
            if self.verbalizer == "word" and self.instruction is None:
                changes["instruction"] = WORD_INSTRUCTION
        return replace(task, **{key: value for key, value in changes.items() if value is not None})


def as_pattern(pattern) -> PromptPattern:
    """A pattern from a ``PromptPattern``, a mapping or a parsed-config namespace."""
    if isinstance(pattern, PromptPattern):
        return pattern
    return PromptPattern(**(pattern if isinstance(pattern, dict) else vars(pattern)))
