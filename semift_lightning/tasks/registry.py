"""Named tasks (``data.task``): a task object and its default columns; ``register_task`` adds one."""

from __future__ import annotations

from dataclasses import dataclass, field

from semift_lightning.tasks.columns import Columns
from semift_lightning.tasks.kinds import FreeTextTask, MultipleChoiceTask, NumericTask, Task


@dataclass(frozen=True)
class Preset:
    task: Task
    columns: Columns = field(default_factory=Columns)


SENTIMENT = ("negative", "neutral", "positive")


PRESETS: dict[str, Preset] = {
    "multiple_choice": Preset(MultipleChoiceTask("multiple_choice")),
    "numeric": Preset(NumericTask("numeric"), Columns(options=None)),
    "free_text": Preset(FreeTextTask("free_text"), Columns(options=None)),
    "mmlu": Preset(MultipleChoiceTask("mmlu"), Columns(options=["answer_a", "answer_b", "answer_c", "answer_d"],
                                                        answer="correct_answer", category="topic")),
    "mmlu_pro": Preset(MultipleChoiceTask("mmlu_pro"), Columns(id="question_id", category="category")),
    "arc": Preset(MultipleChoiceTask("arc", numbered_keys=True), Columns(id="id")),
    "fpb": Preset(MultipleChoiceTask("fpb", "Answer with the letter of the sentiment.", SENTIMENT)),
    "sentiment": Preset(MultipleChoiceTask("sentiment", "Answer with the letter of the sentiment.", SENTIMENT)),
    "pubmedqa": Preset(MultipleChoiceTask("pubmedqa", fixed_options=("yes", "no", "maybe"))),
    "yes_no_maybe": Preset(MultipleChoiceTask("yes_no_maybe", fixed_options=("yes", "no", "maybe"))),
    "usmle": Preset(MultipleChoiceTask("usmle")),
    "convfinqa": Preset(NumericTask("convfinqa"), Columns(options=None)),
}


def get_preset(name: str) -> Preset:
    """The registered task ``name`` and its default columns."""
    if name not in PRESETS:
        raise ValueError(f"task {name!r} is unknown; known tasks: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def register_task(task: Task, columns: Columns = Columns()) -> Task:
    """Make ``task`` (a ``Task`` of your own) known by its name, as ``data.task`` and checkpoints name it;
    ``columns``: where its files keep each field. A name registered before is replaced."""
    PRESETS[task.name] = Preset(task, columns)
    return task


def resolve_task(task: str | Task) -> Preset:
    """The preset of a task named or given (a ``Task`` given keeps its registered columns, else the default)."""
    if isinstance(task, Task):
        return Preset(task, PRESETS[task.name].columns if task.name in PRESETS else Columns())
    return get_preset(task)
