"""The module shapes the bench trains, and the batch each trains on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from brainnet.modules.tiny_lm import TransformerConfig


@dataclass(frozen=True)
class Shape:
    """A module shape (transformer hyper-parameters) and the batch it trains on."""

    n_layer: int
    n_head: int
    d_model: int
    block_size: int
    batch_cpu: int  # sequences per step on the CPU
    batch_cuda: int  # ... and on a GPU
    bias: bool = True

    def batch_size(self, device: torch.device) -> int:
        return self.batch_cuda if device.type == "cuda" else self.batch_cpu

    def config(self, count: int) -> TransformerConfig:
        return TransformerConfig(
            count=count,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            dropout=0.0,
            bias=self.bias,
            tie_weights=True,
        )


SHAPES: dict[str, Shape] = {
    # nanoGPT's shakespeare-char "baby" (scenarios/nanogpt_baby.yaml)
    "baby": Shape(n_layer=4, n_head=4, d_model=128, block_size=64, batch_cpu=16, batch_cuda=64,
                  bias=False),
    # the modules of scenarios/brain.yaml: 2 layers, d=64
    "small": Shape(n_layer=2, n_head=2, d_model=64, block_size=64, batch_cpu=16, batch_cuda=64),
    # --quick: seconds on 2 CPU cores
    "tiny": Shape(n_layer=1, n_head=2, d_model=32, block_size=32, batch_cpu=4, batch_cuda=8),
}  # fmt: skip

#: the issue's scaling sweep: bank step time per module at these N (``small`` modules)
SCALING_N = (16, 32, 64, 128, 256)
