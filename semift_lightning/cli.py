"""The ``semift`` command: LightningCLI with fit / validate / test / predict and up-front argument checks."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from semift_lightning.datamodule import SemiFTDataModule
from semift_lightning.module import SemiFTModule



def default_precision() -> str:
    """bf16-mixed where bf16 matmuls are fast (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), else 32.

    On a CPU without them bf16 is emulated and runs hundreds of times slower than fp32.
    """
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "bf16-mixed" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "32-true"


class SemiFTCLI(LightningCLI):
    """Checks every model and data argument before anything loads and reports all problems in one error."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        problems = SemiFTModule.argument_problems(**vars(config.model)) + \
            SemiFTDataModule.argument_problems(**vars(config.data))
        if problems:
            raise ValueError("invalid arguments:\n- " + "\n- ".join(problems))


def main(args=None) -> None:
    SemiFTCLI(SemiFTModule, SemiFTDataModule, trainer_defaults={"precision": default_precision()}, seed_everything_default=42,
              save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
