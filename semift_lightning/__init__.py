"""semift-lightning: semi-supervised fine-tuning of LLMs (SemiEvol) on Lightning."""

from semift_lightning.data.datamodule import SemiFTDataModule
from semift_lightning.errors import DataError, SemiFTError
from semift_lightning.student.module import SemiFTModule
from semift_lightning.tasks.columns import ColumnOverrides, Columns
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task
from semift_lightning.tasks.registry import get_preset, register_task

__all__ = ["ColumnOverrides", "Columns", "DataError", "Example", "SemiFTDataModule", "SemiFTError", "SemiFTModule",
           "Task", "get_preset", "register_task"]
__version__ = "0.2.0"
