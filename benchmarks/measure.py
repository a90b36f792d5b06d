"""What the speed benchmarks share: the machine line, GEMM peaks, model FLOPs of a batch and peak RSS."""

from __future__ import annotations

import platform
import resource
import time

import torch
from torch import nn

from semift_lightning.cli import default_precision


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}, precision {default_precision()}"


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
    """Forward FLOPs of a decoder batch: every linear layer of the decoder at every (padded) position, attention
    scores and mixing over the full (padded) square, and the output head where logits are computed."""

    def __init__(self, causal_lm: nn.Module) -> None:
        decoder = causal_lm.get_decoder()
        self.linear_per_position = 2 * sum(m.weight.numel() for m in decoder.modules() if isinstance(m, nn.Linear))
        config = causal_lm.config
        self.layers, self.hidden = config.num_hidden_layers, config.hidden_size
        self.head_per_position = 2 * causal_lm.get_output_embeddings().weight.numel()

    def forward(self, batch_size: int, length: int, logit_positions: int) -> float:
        attention = 4 * self.layers * self.hidden * batch_size * length ** 2
        return self.linear_per_position * batch_size * length + attention + self.head_per_position * logit_positions

    def training(self, batch_size: int, length: int, logit_positions: int) -> float:
        """Forward plus a backward that computes input gradients only (the base weights are frozen; the LoRA
        weights' own gradients are too small to count): twice the forward."""
        return 2 * self.forward(batch_size, length, logit_positions)


def peak_rss_mib() -> float:
    """Peak resident memory of this whole process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
