"""The student's settings as dataclasses (``--model.lora.*``, ``--model.optimizer.*``): each checks itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoRAArgs:
    """LoRA adapter settings (peft).

    Args:
        r: rank of the update matrices.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter input (0 by default: on a CPU its random masks cost up to a fifth of a step).
        target_modules: "all-linear" or a list of module names to adapt.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def problems(self) -> list[str]:
        out = []
        if self.r < 1:
            out.append(f"model.lora.r: must be at least 1, got {self.r}")
        if self.alpha <= 0:
            out.append(f"model.lora.alpha: must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            out.append(f"model.lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            out.append("model.lora.target_modules: must name at least one module or be 'all-linear'")
        return out

    def peft_config(self):
        """The peft ``LoraConfig`` of a fresh adapter with these settings."""
        from peft import LoraConfig
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM")


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


def warmup_then_linear_decay(done: float, warmup: float) -> float:
    """The learning-rate factor at ``done`` (the fraction of training done): rising linearly over the ``warmup``
    fraction, then falling linearly to 0 at the end."""
    if done < warmup:
        return min(1.0, done / warmup)
    return max(0.0, (1 - done) / (1 - warmup))
