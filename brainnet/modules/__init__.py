"""Module types. Each type is a Bank (stacked parameters, one batched call for all modules)."""

from brainnet.modules.bank import Bank, BankOutput
from brainnet.modules.recurrent_lm import RecurrentBank, RecurrentConfig, TinyGRU
from brainnet.modules.tiny_lm import TinyLM, TransformerBank, TransformerConfig
from brainnet.registry import MODULE_TYPES

__all__ = [
    "MODULE_TYPES",
    "Bank",
    "BankOutput",
    "RecurrentBank",
    "RecurrentConfig",
    "TinyGRU",
    "TinyLM",
    "TransformerBank",
    "TransformerConfig",
    "build_bank",
]


def build_bank(cfg, vocab_size: int, block_size: int) -> Bank:
    """Build the bank of the module type ``cfg.type`` names."""
    return MODULE_TYPES.get(cfg.type)(cfg, vocab_size, block_size)
