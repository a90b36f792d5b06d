"""What the speed benchmarks share: the machine line, GEMM peaks, model FLOPs of a batch and peak RSS."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from typing import Optional

import torch
from torch import nn

from semift_lightning.cli.command import default_precision


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}, "
            f"precision {default_precision()}")


def gemm_tflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Achieved TFLOP/s of a size x size matmul loop (after one warm-up product)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12


def gemm_peaks() -> dict[str, float]:
    """bf16 and fp32 matmul peaks. Where bf16 is emulated (no AMX / AVX512-BF16 / GPU) a 4096² bf16 product takes
    minutes, so it is measured at 1024² there, once."""
    fast_bf16 = default_precision() == "bf16-mixed"
    bf16_size = 4096 if fast_bf16 else 1024
    return {f"bf16 {bf16_size}²": gemm_tflops(torch.bfloat16, bf16_size, 10 if fast_bf16 else 1),
            "fp32 4096²": gemm_tflops(torch.float32, 4096, 3)}


class ModelFlops:
    """Model FLOPs of what a causal LM computes, counted by hooks while it runs: every linear layer of the decoder
    at every (padded) position of each call, attention scores and mixing over each call's (padded) keys, and the
    output head at every position it is applied to. ``total`` is the forward FLOPs so far; a training step costs
    twice its forward (``training_total``; the backward computes input gradients only: the base weights are frozen,
    and the LoRA weights' own gradients are too small to count)."""

    def __init__(self, causal_lm: nn.Module) -> None:
        decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
        self.linear_per_position = 2 * sum(m.weight.numel() for m in decoder.modules() if isinstance(m, nn.Linear))
        self.attention_per_key = 4 * causal_lm.config.num_hidden_layers * causal_lm.config.hidden_size
        self.head_per_position = 2 * head.weight.numel()
        self.total = 0.0
        decoder.register_forward_pre_hook(self._decoder_call, with_kwargs=True)
        head.register_forward_pre_hook(self._head_call)

    @property
    def training_total(self) -> float:
        """Model FLOPs of the training steps so far: each costs twice its forward (see the class docstring)."""
        return 2 * self.total

    def _decoder_call(self, module, args, kwargs) -> None:
        tokens = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        positions = tokens.shape[0] * tokens.shape[1]
        mask = kwargs.get("attention_mask")
        keys = mask.shape[-1] if isinstance(mask, torch.Tensor) else tokens.shape[1]  # a cache's keys included
        self.total += (self.linear_per_position + self.attention_per_key * keys) * positions

    def _head_call(self, module, args) -> None:
        hidden = args[0]
        self.total += self.head_per_position * hidden.numel() // hidden.shape[-1]


def peak_memory_mib() -> dict[str, Optional[float]]:
    """Peak resident memory of this whole process so far, and the peak GPU memory torch reserved (None without a
    GPU)."""
    gpu = torch.cuda.max_memory_reserved() / 2 ** 20 if torch.cuda.is_available() else None
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_gpu_mib": gpu}


def mib(value: Optional[float]) -> str:
    """A MiB figure for a table; "-" where there is none."""
    return "-" if value is None else f"{value:.0f}"


def run_in_subprocess(script: str, side: str) -> dict:
    """Run ``script`` with this command's arguments plus ``--only SIDE``; the dict it printed after ``RESULT ``.
    Its stderr (progress, warnings, a traceback) goes to this command's stderr."""
    output = subprocess.run([sys.executable, script, *sys.argv[1:], "--only", side], check=True,
                            stdout=subprocess.PIPE, text=True).stdout
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def run_sides(script: str, sides: tuple[str, ...]) -> dict[str, dict]:
    """Print the GEMM peaks, then run each side of ``script`` in its own subprocess, one after the other. Each
    result gains its achieved TFLOP/s (``tflops``) and that as a share of the best peak (``peak_share``)."""
    peaks = gemm_peaks()
    print("GEMM peaks: " + ", ".join(f"{name} {value:.3f} TFLOP/s" for name, value in peaks.items()))
    results = {side: run_in_subprocess(script, side) for side in sides}
    for result in results.values():
        result["tflops"] = result["flops"] / result["seconds"] / 1e12
        result["peak_share"] = result["tflops"] / max(peaks.values())
    return results
