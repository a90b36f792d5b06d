"""semift-lightning: semi-supervised fine-tuning of LLMs (SemiEvol) on Lightning."""

from semift_lightning.datamodule import SemiFTDataModule
from semift_lightning.module import SemiFTModule
from semift_lightning.records import DataError, Example
from semift_lightning.errors import SemiFTError
from semift_lightning.tasks import ColumnOverrides, Columns, Task, get_preset

__all__ = ["ColumnOverrides", "Columns", "DataError", "Example", "SemiFTDataModule", "SemiFTError", "SemiFTModule", "Task", "get_preset"]
__version__ = "0.1.0"
