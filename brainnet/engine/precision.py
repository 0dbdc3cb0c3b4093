"""Precision: which autocast dtype a scenario's ``precision`` means on a device, and the
context that applies it (the Simulation, the teacher passes and the bench share these)."""

from __future__ import annotations

import contextlib

import torch


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``bf16`` -> bfloat16 anywhere; ``auto`` -> bfloat16 on CUDA, fp32 (None) elsewhere."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast at ``dtype`` on ``device``, or nothing for fp32 (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
