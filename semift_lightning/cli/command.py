"""The ``semift`` command: LightningCLI with fit / validate / test / predict and up-front argument checks."""

from __future__ import annotations

import atexit
import copy
import importlib
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from semift_lightning.console import evaluation_only_checkpoint_warnings, quiet_library_noise
from semift_lightning.data.datamodule import SemiFTDataModule
from semift_lightning.errors import ArgumentError, CheckpointError, OutputError, SemiFTError
from semift_lightning.files import AtomicCheckpointIO, RunLock, read_checkpoint
from semift_lightning.semievol.alignment import PriorAlignment
from semift_lightning.semievol.committee import CommitteeVoting
from semift_lightning.semievol.propagation import InContextPropagation
from semift_lightning.semievol.restart import RestartStudent
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.selection import EntropySelection
from semift_lightning.semievol.stage import SemiEvolStage
from semift_lightning.semievol.voting import CollaborativeVoting
from semift_lightning.shipped import check_config_files, with_shipped_paths
from semift_lightning.student.loading import as_stored
from semift_lightning.student.module import SemiFTModule
from semift_lightning.student.outputs import check_outputs, checkpoint_folders


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
    """Checks every model and data argument before anything loads and reports all problems in one error.

    The SemiEvol callbacks have their own keys (``propagation``, ``voting`` or ``committee``, ``alignment``,
    ``selection``, ``restart``) so that a recipe in ``callbacks/`` composes with any config without replacing its
    ``trainer.callbacks`` list; ``semievol.*`` is their one schedule, set in each of them at instantiation.
    """

    SEMIEVOL_KEYS = {"propagation": InContextPropagation, "voting": CollaborativeVoting, "committee": CommitteeVoting,
                     "alignment": PriorAlignment, "selection": EntropySelection, "restart": RestartStudent}
    CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")  # what Lightning resolves itself

    @property
    def command_config(self) -> Namespace:
        """The parsed configuration of the subcommand that runs."""
        return self.config[self.config.subcommand] if self.config.get("subcommand") else self.config

    def parse_arguments(self, parser, args) -> None:
        """Parse, then read a ``ckpt_path`` file with ``read_checkpoint``'s checks and keep the model arguments as
        the command line and config files give them: LightningCLI next merges the checkpoint's hyper-parameters into
        them, and a checkpoint must never choose what model (or code) loads. ``--print_config`` prints the configuration
        that runs, the ``semievol`` schedule set in every callback, and exits."""
        given = sys.argv[1:] if args is None else args
        printing = [arg for arg in given if str(arg).split("=")[0] == "--print_config"] \
            if isinstance(given, list) else []
        if printing:
            self.config = parser.parse_args([arg for arg in given if arg not in printing])
        else:
            super().parse_arguments(parser, args)
        config = self.command_config
        if printing:  # the configuration that runs: the shared schedule in each callback, as instantiation sets it
            self.apply_schedule(config)
            print(yaml.safe_dump(strip_config_paths(config).as_dict(), sort_keys=False), end="")
            sys.exit(0)
        path = config.get("ckpt_path")
        self.checkpoint = read_checkpoint(path) if path and path not in self.CHECKPOINT_NAMES else None
        self.user_model = copy.deepcopy(config.get("model"))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI would merge the checkpoint's hyper-parameters into the configuration (a parse that fails, and
        dumps the usage, on a key it does not know); ``semift`` keeps the model arguments you give (see
        ``parse_arguments``), so it does not read them at all."""

    def apply_schedule(self, config: Namespace) -> list[str]:
        """Set the ``semievol`` schedule in every configured SemiEvol callback's arguments; returns the problems (a
        callback given a schedule of its own: the schedule is stated once)."""
        problems = []
        for key in self.SEMIEVOL_KEYS:
            chosen = config.get(key)
            if chosen is None:
                continue
            if chosen.get("init_args") is None:
                chosen.init_args = Namespace()
            own = chosen.init_args.get("schedule")
            if own is not None and own != config.semievol:
                problems.append(f"{key}.init_args.schedule: the schedule is set once, for every SemiEvol callback, "
                                f"with semievol.* (semievol: {{warmup_epochs: ..., refresh_every_n_epochs: ..., "
                                f"rounds: ...}}); remove it here")
            chosen.init_args.schedule = config.semievol.clone()
        return problems

    def add_arguments_to_parser(self, parser) -> None:
        for key, callback in self.SEMIEVOL_KEYS.items():
            parser.add_subclass_arguments(callback, key, required=False)
        parser.add_class_arguments(Schedule, "semievol")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: replace what an earlier fit left in the log and checkpoint folders")

    def instantiate_trainer(self, **kwargs):
        if self.subcommand not in (None, "fit"):  # a test into a fit's folder keeps the fit's config.yaml
            evaluation_only_checkpoint_warnings()
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"{self.subcommand}_config.yaml"}
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        configured = config.trainer.get("callbacks") or []
        ours = [config[key] for key in self.SEMIEVOL_KEYS if config.get(key) is not None]
        given = [configured] if isinstance(configured, L.Callback) else list(configured)
        kinds = [type(callback) for callback in [*given, *ours] if isinstance(callback, SemiEvolStage)]
        twice = sorted({kind.__name__ for kind in kinds if kinds.count(kind) > 1})
        if twice:
            raise ArgumentError(f"trainer.callbacks: {', '.join(twice)} is configured twice (a round has one stage of "
                                f"each kind; a recipe's own keys {', '.join(self.SEMIEVOL_KEYS)} add them already)")
        trainer = super().instantiate_trainer(callbacks=[*given, *ours], **kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:  # before the logger creates its folder
        check_outputs(self.trainer, fitting=True)
        self.lock_log_folder()
        self.refuse_an_earlier_fit()
        self.datamodule.connect(self.model.tokenizer, self.model.max_context_length)
        self.model.connect(self.datamodule.task)

    def refuse_an_earlier_fit(self) -> None:
        """A new fit (no ``--ckpt_path``) where another fit left checkpoints would mix with them (its config.yaml
        replaced, ``--ckpt_path last`` then taking either run's last checkpoint): refused, unless ``--overwrite
        true`` removes that fit's checkpoints, config and event files first."""
        if self.command_config.get("ckpt_path"):
            return
        log = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        folders = checkpoint_folders(self.trainer) | {log / "checkpoints"}
        checkpoints = sorted(path for folder in folders for path in folder.glob("*.ckpt"))
        if checkpoints and not self.command_config.get("overwrite"):
            raise OutputError(f"{checkpoints[0].parent}: an earlier fit left its checkpoints here "
                              f"({', '.join(p.name for p in checkpoints[:3])}); resume it with --ckpt_path last, log "
                              f"to another folder (--trainer.logger.init_args.version NAME or another save_dir), or "
                              f"pass --overwrite true to replace them")
        if checkpoints and self.trainer.is_global_zero:
            for path in [*checkpoints, log / "config.yaml", *log.glob("events.out.tfevents.*")]:
                path.unlink(missing_ok=True)
        self.trainer.strategy.barrier()

    def lock_log_folder(self) -> None:
        """Refuse a log folder that a live run writes into (rank zero holds the lock until the command ends)."""
        self.lock = RunLock(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero:
            self.lock.acquire()
            atexit.register(self.lock.release)

    def after_fit(self) -> None:
        self.lock.release()

    after_test = after_predict = after_validate = after_fit

    def before_test(self) -> None:
        check_outputs(self.trainer, fitting=False)
        self.lock_log_folder()
        self.datamodule.connect(self.model.tokenizer, self.model.max_context_length)
        self.model.connect(self.datamodule.task)
        if self.command_config.get("ckpt_path") == "best":  # Lightning knows a best checkpoint only in a fit's process
            raise CheckpointError("ckpt_path=best: a separate test, validate or predict run has no fit whose best "
                                  "checkpoint it could take; pass the checkpoint file")
        if self.command_config.get("ckpt_path") == "last":  # Lightning would test the untrained model with a warning
            folder = self.trainer.checkpoint_callback.dirpath if self.trainer.checkpoint_callback else None
            folder = Path(folder or self.lock.path.parent / "checkpoints")  # the log folder, as Lightning's default
            if not list(folder.glob("last*.ckpt")):
                raise CheckpointError(f"ckpt_path=last: there is no last checkpoint in {folder}; fit first, or pass "
                                      f"a checkpoint file (without ckpt_path the untrained model is tested)")

    before_predict = before_validate = before_test

    def before_instantiate_classes(self) -> None:
        config = self.command_config
        if self.user_model is not None:
            config.model = self.user_model  # not the checkpoint's hyper-parameters (see parse_arguments)
        problems = SemiFTModule.argument_problems(**vars(config.model)) + \
            SemiFTDataModule.argument_problems(**vars(config.data)) + \
            checkpoint_conflicts(self.checkpoint, config.model, config.get("ckpt_path"))
        chosen_keys = [key for key in self.SEMIEVOL_KEYS if config.get(key) is not None]
        if chosen_keys and self.subcommand == "fit" and not (config.data.unlabeled or config.data.source):
            problems.append(f"data.unlabeled: a SemiEvol recipe is configured ({', '.join(chosen_keys)}) but there is "
                            f"no unlabeled data; set data.unlabeled, or drop the recipe to train on labeled data only")
        problems += self.apply_schedule(config)
        schedule = Schedule(**vars(config.semievol))
        changed = [field.name for field in fields(Schedule) if getattr(schedule, field.name) != field.default]
        if changed and not chosen_keys:
            problems.append(f"semievol: sets {', '.join(changed)} but no SemiEvol callback is configured "
                            f"({', '.join(self.SEMIEVOL_KEYS)}); add a recipe from callbacks/")
        problems += [f"semievol.{problem}" for problem in schedule.problems()]
        for key in chosen_keys:
            chosen = config[key]
            module_name, _, class_name = chosen.class_path.rpartition(".")
            callback = getattr(importlib.import_module(module_name), class_name)
            problems += [f"{key}.init_args.{problem}"  # the schedule's problems are reported once, as semievol.*
                         for problem in callback.argument_problems(**vars(chosen.init_args))
                         if not problem.startswith("schedule.")]
        if problems:
            raise ArgumentError("invalid arguments:\n- " + "\n- ".join(problems))


def strip_config_paths(config: Namespace) -> Namespace:
    """A copy of ``config`` without the ``config`` entries (the files it was read from), as ``--print_config``
    leaves them out."""
    config = config.clone()
    if "config" in config:
        del config["config"]
    return config


ADAPTER_SHAPE = ("r", "alpha", "target_modules")  # LoRA settings a trained adapter's tensors depend on


def checkpoint_conflicts(checkpoint: Optional[dict], model: Namespace, path: Optional[str]) -> list[str]:
    """Where a checkpoint's adapter was made with other LoRA settings than this run's (each an error naming both
    values); a checkpoint of another base model is loaded onto this run's model, with a warning."""
    if not checkpoint:
        return []
    saved = checkpoint.get("hyper_parameters", {})
    now = vars(model.lora) if isinstance(model.lora, Namespace) else dict(model.lora or {})
    comparable = lambda value: sorted(value) if isinstance(value, (list, tuple)) else value  # noqa: E731
    problems = [f"model.lora.{key}: {path} holds an adapter made with {saved['lora'][key]!r}, this run has "
                f"{now.get(key)!r}; pass --model.lora.{key} with the checkpoint's value"
                for key in ADAPTER_SHAPE if key in saved.get("lora", {})
                and comparable(saved["lora"][key]) != comparable(now.get(key))]
    if saved.get("model") not in (None, model.model, as_stored(model.model)):
        rank_zero_warn(f"{path} was trained on model {saved['model']!r}; this run loads its adapter onto "
                       f"{model.model!r}, as model.model says")
    return problems


TOOLS = {"demo": "semift_lightning.cli.demo", "compare": "semift_lightning.analysis.compare",
         "report": "semift_lightning.analysis.report"}  # subcommands of their own beside LightningCLI's


def run(args=None) -> SemiFTCLI:
    """The ``semift`` command, raising every error (``main`` prints them)."""
    return SemiFTCLI(SemiFTModule, SemiFTDataModule, trainer_defaults={"precision": default_precision()},
                     seed_everything_default=42, save_config_kwargs={"overwrite": True}, args=args,
                     auto_configure_optimizers=False)  # --model.optimizer: LightningCLI's would see no LoRA parameters


def main(args=None) -> None:
    """``semift`` (``semift demo|compare|report ...`` run the ``TOOLS``' ``main``): an error in what the user gave
    prints its message alone and exits with status 2 (set ``SEMIFT_TRACEBACK=1`` to see the traceback); a fit
    stopped by SIGTERM exits with status 143, so that ``semift fit ... && semift test ...`` does not test a
    half-trained model."""
    quiet_library_noise()
    given = with_shipped_paths(sys.argv[1:] if args is None else list(args))
    if args is None:  # LightningCLI reads sys.argv itself (and warns when handed arguments beside it)
        sys.argv[1:] = given
    try:
        check_config_files(given)
        if given[:1] and given[0] in TOOLS:
            importlib.import_module(TOOLS[given[0]]).main(given[1:])
        else:
            run(None if args is None else given)
    except SIGTERMException:  # Lightning's is a SystemExit with status 0
        sys.stderr.write("semift: stopped by SIGTERM before the end; the last checkpoint holds the state so far "
                         "(resume with --ckpt_path last)\n")
        sys.exit(143)
    except SemiFTError as err:
        if os.environ.get("SEMIFT_TRACEBACK"):
            raise
        sys.stderr.write(f"semift: error: {err}\n")
        sys.exit(2)
