"""The one prompt builder: training, pseudo-labeling and evaluation all encode through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from semift_lightning.errors import ArgumentError, DataError
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task
from semift_lightning.tasks.parsing import LETTERS


class PromptTooLong(ArgumentError):
    """A prompt that ``max_length`` cannot hold even with its question cut away."""


@dataclass
class Encoded:
    """Token ids of a prompt and (for training) of its target; ``truncated`` tells if the question was cut."""

    prompt_ids: list[int]
    target_ids: list[int]
    truncated: bool


PROMPT_FORMATS = ("chat", "plain")
PLAIN_ANSWER = "Answer:"


class PromptBuilder:
    """Builds chat messages for a task and encodes them with the tokenizer's chat template, or (``plain``, for base
    models whose tokenizer has none) as plain text: the system text, each turn's user content followed by
    "Answer:" and the answer (after a space where the tokenizer gives " A" ... " J" tokens of their own), blank
    lines between turns, the answer ending with the eos token.

    Demonstrations (in-context examples) become earlier user/assistant turns. A prompt longer than
    ``max_length`` first loses its least similar demonstrations, then the start of its question, never the
    options, instruction or answer.
    """

    def __init__(self, tokenizer, task: Task, max_length: int, system_prompt: Optional[str] = None,
                 prompt_format: Optional[str] = None) -> None:
        prompt_format = prompt_format or ("chat" if tokenizer.chat_template else "plain")
        if prompt_format not in PROMPT_FORMATS:
            raise ArgumentError(f"data.prompt_format: must be one of {', '.join(PROMPT_FORMATS)}, got "
                                f"{prompt_format!r}")
        if prompt_format == "chat" and tokenizer.chat_template is None:
            raise ArgumentError("data.prompt_format: 'chat', but the tokenizer has no chat template; use the plain "
                                "format (data.prompt_format: plain, or unset) or a model whose tokenizer defines one")
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.system_prompt = system_prompt
        self.prompt_format = prompt_format
        spaced = [self._ids(f" {letter}")[0] for letter in LETTERS]
        self.answer_separator = " " if len(set(spaced)) == len(LETTERS) else ""
        self.answer_words = getattr(task, "answer_words", False)  # the options' own words as answers
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
        if self.prompt_format == "plain":
            return self._plain(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _plain(self, messages: list[dict]) -> str:
        """The plain-text rendering of ``messages``, ending with "Answer:" for the next answer."""
        blocks = []
        for message in messages:
            if message["role"] == "assistant":
                blocks[-1] += f"{self.answer_separator}{message['content']}{self.tokenizer.eos_token or ''}"
            elif message["role"] == "user":
                blocks.append(f"{message['content']}\n{PLAIN_ANSWER}")
            else:
                blocks.append(message["content"])
        return "\n\n".join(blocks)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def target_suffix(self, messages: list[dict], target: str) -> str:
        """What the chat template writes for the assistant's answer, end-of-turn tokens included."""
        prompt = self._prompt_text(messages)
        answered = messages + [{"role": "assistant", "content": target}]
        full = self._plain(answered) if self.prompt_format == "plain" else \
            self.tokenizer.apply_chat_template(answered, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the answer turn in a way that does not extend the prompt")
        return full[len(prompt):]

    def encode(self, example: Example, demonstrations: Sequence[Example] = (), with_target: bool = False,
               candidates: Sequence[str] = ()) -> Encoded:
        """Token ids of the prompt (and of the target with ``with_target``). Demonstrations are earlier turns;
        ``candidates`` are answers of disagreeing views, shown for self-justification."""
        if self.answer_words and tuple(example.options) != tuple(self.task.fixed_options):
            raise DataError(f"its options {list(example.options)}: answering with option words needs every item to "
                            f"have the task's options {list(self.task.fixed_options)}")
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
                raise PromptTooLong(f"the prompt without its question takes {len(prompt_ids) - len(question_ids)} "
                                    f"tokens, more than data.max_length={self.max_length} leaves it")
            question_ids = question_ids[excess:]
            prompt_ids = self._ids(self._prompt_text(self.messages(example, demonstrations, candidates,
                                                                   self.tokenizer.decode(question_ids))))
            if len(prompt_ids) <= budget:
                return Encoded(prompt_ids, target_ids, True)
        raise PromptTooLong(f"could not fit the prompt into data.max_length={self.max_length} tokens")

    def _option_token_ids(self) -> list[int]:
        """The first token of each option letter (or, with the task's ``answer_words``, of each of its fixed options'
        words, the first repeated up to ten) as the assistant's answer begins; they must be distinct."""
        answers = list(self.task.fixed_options) if self.answer_words else list(LETTERS)
        messages = self.messages(Example("probe", "probe", "A", tuple(answers)))
        ids = [self._ids(self.target_suffix(messages, answer))[0] for answer in answers]
        if len(set(ids)) != len(ids):
            raise ArgumentError(f"the tokenizer does not give each option {'word' if self.answer_words else 'letter'} "
                                f"({', '.join(answers)}) its own first token; the answers cannot be scored apart")
        return ids + ids[:1] * (len(LETTERS) - len(ids))  # past an item's options: never scored
