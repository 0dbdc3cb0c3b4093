"""What a step is worth: nanoGPT's FLOPs per module-token pass, MFU, and the device's peak."""

from __future__ import annotations

import time

import torch

from brainnet.bench.timing import sync


def flops_per_module_token(params: int, n_layer: int, n_head: int, head_dim: int, T: int) -> int:
    """nanoGPT's estimate of training FLOPs (forward + backward) per token of one module:
    6 per parameter (2 forward, 4 backward) plus the attention scores, 12·L·H·Q·T."""
    return 6 * params + 12 * n_layer * n_head * head_dim * T


def mfu(flops_per_token: float, module_tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak (a fraction)."""
    return flops_per_token * module_tokens_per_s / peak_flops


def bank_module_tokens(n: int, batch_size: int, block_size: int) -> int:
    """Module-token passes of one step in which every one of ``n`` modules reads the whole
    batch once (the loop and the bank): N·B·T. The society counts its own
    (``Simulation.module_tokens_per_step``: rounds, router capacity)."""
    return n * batch_size * block_size


#: dense bf16 tensor-core peaks; first substring match of torch.cuda.get_device_name wins
CUDA_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # and GH200
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def measure_matmul_flops(device: torch.device, n: int = 1024, seconds: float = 0.5) -> float:
    """Sustained FLOP/s of square matmuls (fp32 on the CPU, bf16 on a GPU): the best of a few
    timed bursts, about ``seconds`` in all. The CPU's peak for MFU (no vendor table there)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync(device)
    t0 = time.perf_counter()
    a @ b
    sync(device)
    reps = max(1, int(seconds / 4 / max(time.perf_counter() - t0, 1e-6)))
    best = 0.0
    for _ in range(4):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def detect_peak_flops(device: torch.device, quick: bool = False) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) for ``device``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in CUDA_PEAK_FLOPS:
            if key in name:
                return peak, f"table: {name} bf16 dense"
        return measure_matmul_flops(device, 4096), f"measured: {name} bf16 matmul 4096²"
    n, s = (256, 0.05) if quick else (1024, 0.5)
    threads = torch.get_num_threads()
    return measure_matmul_flops(device, n, s), f"measured: fp32 matmul {n}², {threads} threads"
