"""The host allocator setting: on Linux / glibc freed activations are reused, not re-faulted."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from brainnet.engine import allocator
from brainnet.modules.tiny_lm import TransformerBank, TransformerConfig


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_keep_freed_memory_stops_page_faults_of_training_passes():
    """Without the setting this pass costs 2,000-4,000 minor page faults every time (its
    megabyte activations come from fresh mmaps); with it, none once the heap has grown."""
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True  # once per process, idempotent
    bank = TransformerBank(TransformerConfig(count=4, n_layer=1, n_head=2, d_model=64), 65, 64)
    tokens = torch.randint(0, 65, (4, 16, 64), generator=torch.Generator().manual_seed(0))

    def faults_of_one_pass() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        bank(tokens).logits.logsumexp(-1).mean().backward()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(4):  # the heap grows to the pass's peak
        faults_of_one_pass()
    assert min(faults_of_one_pass() for _ in range(3)) < 100


def test_opt_out_by_environment(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setenv("BRAINNET_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator, "_done", None)  # the next caller sets it again
