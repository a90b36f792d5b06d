"""The one prompt builder: training, pseudo-labeling and evaluation all encode through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from semift_lightning.parsing import LETTERS
from semift_lightning.records import Example
from semift_lightning.tasks import Task


@dataclass
class Encoded:
    """Token ids of a prompt and (for training) of its target; ``truncated`` tells if the question was cut."""

    prompt_ids: list[int]
    target_ids: list[int]
    truncated: bool


class PromptBuilder:
    """Builds chat messages for a task and encodes them with the tokenizer's chat template.

    Demonstrations (in-context examples) become earlier user/assistant turns. A prompt longer than
    ``max_length`` first loses its least similar demonstrations, then the start of its question, never the
    options, instruction or answer.
    """

    def __init__(self, tokenizer, task: Task, max_length: int, system_prompt: Optional[str] = None) -> None:
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; pass a model whose tokenizer defines one")
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.system_prompt = system_prompt
        self.option_token_ids = self._option_token_ids() if task.closed_form else []

    def messages(self, example: Example, demonstrations: Sequence[Example] = (), candidates: Sequence[str] = (),
                 question: Optional[str] = None) -> list[dict]:
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for demo in demonstrations:
            turns += [{"role": "user", "content": self.task.user_content(demo)},
                      {"role": "assistant", "content": self.task.target_text(demo)}]
        if question is not None:
            example = Example(example.id, question, example.answer, example.options, example.category)
        turns.append({"role": "user", "content": self.task.user_content(example, candidates)})
        return turns

    def _prompt_text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def target_suffix(self, messages: list[dict], target: str) -> str:
        """What the chat template writes for the assistant's answer, end-of-turn tokens included."""
        prompt = self._prompt_text(messages)
        full = self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the answer turn in a way that does not extend the prompt")
        return full[len(prompt):]

    def encode(self, example: Example, demonstrations: Sequence[Example] = (), with_target: bool = False,
               candidates: Sequence[str] = ()) -> Encoded:
        """Token ids of the prompt (and of the target with ``with_target``). Demonstrations are earlier turns;
        ``candidates`` are answers of disagreeing views, shown for self-justification."""
        messages = self.messages(example, demonstrations, candidates)
        target_ids = self._ids(self.target_suffix(messages, self.task.target_text(example))) if with_target else []
        prompt_ids = self._ids(self._prompt_text(messages))
        budget = self.max_length - len(target_ids)
        if len(prompt_ids) <= budget:
            return Encoded(prompt_ids, target_ids, False)
        if demonstrations:  # the least similar demonstration goes first, before any of the question
            shorter = self.encode(example, demonstrations[:-1], with_target, candidates)
            return Encoded(shorter.prompt_ids, shorter.target_ids, True)
        question_ids = self._ids(example.question)
        for _ in range(4):  # re-tokenising the cut text can shift a token or two
            excess = len(prompt_ids) - budget
            if excess >= len(question_ids):
                raise ValueError(f"item {example.id!r}: the prompt without its question is already longer than "
                                 f"max_length={self.max_length} tokens")
            question_ids = question_ids[excess:]
            prompt_ids = self._ids(self._prompt_text(self.messages(example, demonstrations, candidates,
                                                                   self.tokenizer.decode(question_ids))))
            if len(prompt_ids) <= budget:
                return Encoded(prompt_ids, target_ids, True)
        raise ValueError(f"item {example.id!r}: could not fit the prompt into max_length={self.max_length} tokens")

    def _option_token_ids(self) -> list[int]:
        """The first token of each option letter as the assistant's answer begins; they must be distinct."""
        probe = Example("probe", "probe", "A", tuple(LETTERS))
        messages = self.messages(probe)
        ids = [self._ids(self.target_suffix(messages, letter))[0] for letter in LETTERS]
        if len(set(ids)) != len(ids):
            raise ValueError("the tokenizer does not give each option letter A-J its own first token")
        return ids
