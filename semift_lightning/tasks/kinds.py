"""Task kinds: how a question is asked, what the target text is, and how an answer is parsed and scored.

A new kind of task is one ``Task`` subclass; prompts, parsing, scoring and data validation all read from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from semift_lightning.tasks.example import Example
from semift_lightning.tasks.parsing import (
    LETTERS,
    MAX_OPTIONS,
    MIN_OPTIONS,
    is_number_text,
    normalize_text,
    number_span,
    numbers_match,
    parse_choice,
    parse_number,
    texts_match,
)


@dataclass(frozen=True)
class Task:
    """Base class. ``closed_form`` tasks are scored by option log-probabilities, the others by generation.
    ``question_last`` moves the question after the options and the instruction (see ``user_content``)."""

    name: str
    instruction: str
    question_last: bool = field(default=False, kw_only=True)
    closed_form = False

    def options_text(self, example: "Example") -> str:
        """The options block of the prompt; empty for tasks without options."""
        return ""

    def user_content(self, example: "Example", candidates: Sequence[str] = ()) -> str:
        """The question, the options, (for self-justification) the answers proposed by disagreeing views, then
        the instruction. With ``question_last``: the options, the instruction, the question, the proposed answers,
        so that where every item has the same options, every prompt opens with the same tokens (which training
        and option scoring then compute once per batch, see ``SemiFTModule.share_prompt_prefix``)."""
        proposed = ("Proposed answers (they disagree; pick the correct one):\n"
                    + "\n".join(f"- {c}" for c in candidates)) if candidates else ""
        question, options = example.question.strip(), self.options_text(example)
        parts = ([options, self.instruction, question, proposed] if self.question_last
                 else [question, options, proposed, self.instruction])
        return "\n\n".join(part for part in parts if part)

    def target_text(self, example: "Example") -> str:
        return str(example.answer)

    def proposed_answer(self, example: "Example", answer: str, reasoning: Optional[str] = None) -> str:
        """One answer as self-justification lists it among the disagreeing views' answers."""
        return f"{answer} (reasoning: {reasoning.strip()})" if reasoning else answer

    def canonical_answer(self, raw: str, options: Optional[Sequence[str]]) -> str:
        """The gold answer as the task stores it; raises ValueError when ``raw`` is not a valid answer."""
        if not str(raw).strip():
            raise ValueError("is empty")
        return str(raw).strip()

    def parse(self, text: str, example: "Example") -> Optional[str]:
        raise NotImplementedError

    def is_correct(self, prediction: Optional[str], example: "Example") -> bool:
        raise NotImplementedError

    def answer_span(self, text: str, example: "Example") -> Optional[tuple[int, int]]:
        """Where in a generated ``text`` its parsed answer stands (character offsets), or None (not found): a free-
        form view's uncertainty is the NLL of those tokens, so a terse and a verbose answer compare."""
        answer = self.parse(text, example)
        start = text.find(answer) if answer else -1
        return (start, start + len(answer)) if start >= 0 else None

    def answer_key(self, answer: str) -> str:
        """What answers that mean the same share (per-answer selection groups by it): the answer itself here."""
        return answer


@dataclass(frozen=True)
class MultipleChoiceTask(Task):
    """Options shown as lettered lines; the answer is a letter. ``fixed_options`` serves rows without options;
    ``numbered_keys`` also accepts 1-based option numbers as answers (ARC keys some items 1-4). ``answer_words``
    (a verbalizer): the options are listed as words and the model answers with the option's own word, e.g.
    "positive"; the answer is still stored and scored as its letter."""

    instruction: str = "Answer with the letter of the correct option."
    fixed_options: Optional[tuple[str, ...]] = None
    numbered_keys: bool = False
    answer_words: bool = field(default=False, kw_only=True)
    closed_form = True

    def options_text(self, example: "Example") -> str:
        if self.answer_words:
            return "Options: " + ", ".join(example.options)
        return "Options:\n" + "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(example.options))

    def target_text(self, example: "Example") -> str:
        return example.options[LETTERS.index(example.answer)] if self.answer_words else str(example.answer)

    def canonical_answer(self, raw: str, options: Optional[Sequence[str]]) -> str:
        if not options or not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
            raise ValueError(f"needs {MIN_OPTIONS} to {MAX_OPTIONS} options, got {len(options or [])}")
        text = str(raw).strip()
        if len(text) == 1 and text in LETTERS:
            if LETTERS.index(text) >= len(options):
                raise ValueError(f"{text!r} is not among the {len(options)} options")
            return text
        normalized = [normalize_text(option) for option in options]
        if normalized.count(normalize_text(text)) > 1:
            raise ValueError(f"{text!r} is the text of {normalized.count(normalize_text(text))} options; give the "
                             f"letter")
        if normalize_text(text) in normalized:
            return LETTERS[normalized.index(normalize_text(text))]
        if self.numbered_keys and text.isdigit() and 1 <= int(text) <= len(options):
            return LETTERS[int(text) - 1]
        numbers = f", an option number (1-{len(options)})" if self.numbered_keys else ""
        raise ValueError(f"{text!r} is neither an option letter ({LETTERS[0]}-{LETTERS[len(options) - 1]}){numbers} "
                         f"nor the text of one option")

    def proposed_answer(self, example: "Example", answer: str, reasoning: Optional[str] = None) -> str:
        option = example.options[LETTERS.index(answer)]
        return option if self.answer_words else f"{answer}. {option}"

    def parse(self, text: str, example: "Example") -> Optional[str]:
        index = parse_choice(text, example.options)
        return None if index is None else LETTERS[index]

    def is_correct(self, prediction: Optional[str], example: "Example") -> bool:
        return prediction is not None and prediction == example.answer


@dataclass(frozen=True)
class NumericTask(Task):
    """A number; correct within a relative tolerance, with '%' and thousands separators understood."""

    instruction: str = "Give the final answer as a number."
    rel_tol: float = 1e-2

    def canonical_answer(self, raw: str, options: Optional[Sequence[str]]) -> str:
        text = super().canonical_answer(raw, options)
        if parse_number(text) is None:
            if is_number_text(text):
                raise ValueError(f"{text!r} holds no finite number")
            raise ValueError(f"{text!r} is not a number (digits with one decimal point, an optional exponent, "
                             f"thousands separators in groups of three and a trailing '%'; not a decimal comma, a "
                             f"date or a version)")
        return text

    def parse(self, text: str, example: "Example") -> Optional[str]:
        number = parse_number(text)
        return None if number is None else f"{number[0]:g}{'%' if number[1] else ''}"

    def answer_span(self, text: str, example: "Example") -> Optional[tuple[int, int]]:
        return number_span(text)

    def is_correct(self, prediction: Optional[str], example: "Example") -> bool:
        if prediction is None:
            return False
        pred, gold = parse_number(prediction), parse_number(example.answer)
        return pred is not None and gold is not None and numbers_match(pred, gold, self.rel_tol)

    def answer_key(self, answer: str) -> str:
        """The number in its shortest form ('1.5e3' and '1500' share '1500')."""
        number = parse_number(answer)
        return answer if number is None else f"{number[0]:g}{'%' if number[1] else ''}"


@dataclass(frozen=True)
class FreeTextTask(Task):
    """A short text answer, matched after normalisation with a fuzzy similarity threshold."""

    instruction: str = "Answer briefly."
    threshold: float = 0.8

    def parse(self, text: str, example: "Example") -> Optional[str]:
        answer = text.strip().split("\n")[0].strip()
        lowered = answer.lower()
        for prefix in ("final answer:", "answer:", "the answer is"):
            if lowered.startswith(prefix):
                answer = answer[len(prefix):].strip()
                break
        return answer or None

    def is_correct(self, prediction: Optional[str], example: "Example") -> bool:
        return prediction is not None and texts_match(prediction, example.answer, self.threshold)

    def answer_key(self, answer: str) -> str:
        return normalize_text(answer)
