"""What ``semift`` prints: messages from the libraries that say nothing about the user's run are dropped, each
narrowly, by its text and the module that emits it; every other warning stays."""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

NOISE_WARNINGS = (  # (message pattern, category): deprecations inside the libraries, not in what the user wrote
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning),
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    (r"Precision .* is not supported by the model summary", Warning),  # a size estimate in the summary table
)
LIGHTNING_TIP = "💡 Tip: For seamless cloud logging"  # an advertisement Lightning logs on every run


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


def quiet_library_noise() -> None:
    """Drop the known messages that are not about the run (``semift`` calls it once at start)."""
    for message, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTip())


def evaluation_only_checkpoint_warnings() -> None:
    """A test, validate or predict run restores only the adapter: the callbacks a fit's checkpoint names (the
    SemiEvol stages, ModelCheckpoint) do not matter to it, so Lightning's request to add them is dropped."""
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create the "
                                              r"checkpoint need to be provided")


@contextmanager
def without_bitsandbytes() -> Iterator[None]:
    """Import inside without importing bitsandbytes (peft imports it whenever installed, and its CPU backend logs a
    warning about remote kernel code on import); for a base that is not quantized. peft then takes bitsandbytes for
    absent until ``allow_bitsandbytes``."""
    blocked = "bitsandbytes" not in sys.modules
    if blocked:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        yield
    finally:
        if blocked:
            del sys.modules["bitsandbytes"]


def allow_bitsandbytes() -> None:
    """Let peft see bitsandbytes again (a quantized base): its cached answers are cleared."""
    if "peft.import_utils" in sys.modules:
        imports = sys.modules["peft.import_utils"]
        for name in ("is_bnb_available", "is_bnb_4bit_available"):
            getattr(getattr(imports, name, None), "cache_clear", lambda: None)()
