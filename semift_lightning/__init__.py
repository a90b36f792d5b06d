"""semift-lightning: semi-supervised fine-tuning of LLMs (SemiEvol) on Lightning."""

from semift_lightning.datamodule import SemiFTDataModule
from semift_lightning.module import SemiFTModule
from semift_lightning.records import DataError, Example
from semift_lightning.tasks import Columns, Task, get_preset

__all__ = ["Columns", "DataError", "Example", "SemiFTDataModule", "SemiFTModule", "Task", "get_preset"]
__version__ = "0.1.0"
