"""The ``semift`` command: LightningCLI with fit / validate / test / predict and up-front argument checks."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI

from semift_lightning.callbacks import CollaborativeVoting, EntropySelection, InContextPropagation, SemiEvolStage
from semift_lightning.datamodule import SemiFTDataModule
from semift_lightning.io import AtomicCheckpointIO
from semift_lightning.module import SemiFTModule, check_outputs


def default_precision() -> str:
    """bf16-mixed where bf16 matmuls are fast (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), else 32.

    On a CPU without them bf16 is emulated and runs hundreds of times slower than fp32.
    """
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "bf16-mixed" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "32-true"


@dataclass
class SemiEvolSchedule:
    """One schedule for every SemiEvol callback configured (each keeps its own value where this is unset).

    Args:
        warmup_epochs: labeled-only epochs before the first round.
        refresh_every_n_epochs: epochs between rounds.
        rounds: how many pseudo-labeling rounds to run.
    """

    warmup_epochs: Optional[int] = None
    refresh_every_n_epochs: Optional[int] = None
    rounds: Optional[int] = None


class SemiFTCLI(LightningCLI):
    """Checks every model and data argument before anything loads and reports all problems in one error.

    The SemiEvol callbacks have their own keys (``propagation``, ``voting``, ``selection``) so that a recipe in
    ``callbacks/`` composes with any config without replacing its ``trainer.callbacks`` list; ``semievol.*`` sets
    their shared schedule in one place.
    """

    SEMIEVOL_KEYS = {"propagation": InContextPropagation, "voting": CollaborativeVoting, "selection": EntropySelection}

    def add_arguments_to_parser(self, parser) -> None:
        for key, callback in self.SEMIEVOL_KEYS.items():
            parser.add_lightning_class_args(callback, key, subclass_mode=True, required=False)
        parser.add_class_arguments(SemiEvolSchedule, "semievol")

    def instantiate_trainer(self, **kwargs):
        if self.subcommand not in (None, "fit"):  # a test into a fit's folder keeps the fit's config.yaml
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"{self.subcommand}_config.yaml"}
        keys = self._parser(self.subcommand).callback_keys
        extra = [callback for callback in (self._get(self.config_init, key) for key in keys) if callback is not None]
        trainer = self._instantiate_trainer({**self._get(self.config_init, "trainer", default={}), **kwargs}, extra)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:  # before the logger creates its folder
        check_outputs(self.trainer, fitting=True)

    def before_test(self) -> None:
        check_outputs(self.trainer, fitting=False)

    before_predict = before_test

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        problems = SemiFTModule.argument_problems(**vars(config.model)) + \
            SemiFTDataModule.argument_problems(**vars(config.data))
        chosen_keys = [key for key in self.SEMIEVOL_KEYS if config.get(key) is not None]
        shared = {field.name: config.semievol[field.name] for field in fields(SemiEvolSchedule)
                  if config.semievol[field.name] is not None}
        if shared and not chosen_keys:
            problems.append(f"semievol: sets {', '.join(shared)} but no SemiEvol callback is configured "
                            f"({', '.join(self.SEMIEVOL_KEYS)}); add a recipe from callbacks/")
        problems += [f"semievol.{problem}" for problem in SemiEvolStage.argument_problems(**shared)]
        for key in chosen_keys:
            chosen = config[key]
            if chosen.get("init_args") is None:
                chosen.init_args = Namespace()
            for name, value in shared.items():
                chosen.init_args[name] = value
            module_name, _, class_name = chosen.class_path.rpartition(".")
            callback = getattr(importlib.import_module(module_name), class_name)
            problems += [f"{key}.init_args.{problem}"  # a bad shared value is reported once, as semievol.*
                         for problem in callback.argument_problems(**vars(chosen.init_args))
                         if problem.split(":", 1)[0] not in shared]
        if problems:
            raise ValueError("invalid arguments:\n- " + "\n- ".join(problems))


def main(args=None) -> None:
    SemiFTCLI(SemiFTModule, SemiFTDataModule, trainer_defaults={"precision": default_precision()}, seed_everything_default=42,
              save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
