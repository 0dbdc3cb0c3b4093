"""The loop and bank workloads: N modules trained on the same batches, one after the other
(the naive reference) or stacked in one ``TransformerBank``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from brainnet.bench.accounting import bank_module_tokens
from brainnet.bench.harness import Setting, Workload
from brainnet.config import TrainConfig
from brainnet.data import Batch
from brainnet.data.text import TextCorpus
from brainnet.engine.device import seed_everything
from brainnet.engine.optim import build_optimizer, clip_per_module, param_groups
from brainnet.engine.precision import autocast, autocast_dtype
from brainnet.modules.tiny_lm import TransformerBank
from brainnet.society.independent import independent_step


def bench_data(s: Setting) -> tuple[int, list[Batch]]:
    """(vocab size, a few training batches on the device) of tinyshakespeare, char-level.
    The batches are cycled: data loading is not what the loop and bank cases measure."""
    corpus = TextCorpus(TextCorpus.Config(kind="text", block_size=s.shape.block_size))
    gen = torch.Generator().manual_seed(0)
    return corpus.vocab_size, [
        corpus.batch("train", s.batch_size, gen).to(s.device) for _ in range(4)
    ]


def cycle(items: list[Batch]) -> Iterator[Batch]:
    while True:
        yield from items


def loop_workload(s: Setting) -> Workload:
    """The naive reference: N independent ``TinyLM`` copies (the bank's initial rows), each
    with its own AdamW; forward, backward, clip and step one module after the other."""
    V, batches = bench_data(s)
    dev, N, T = s.device, s.n, s.shape.block_size
    cfg = TrainConfig(batch_size=s.batch_size)
    seed_everything(0)
    bank = TransformerBank(s.shape.config(N), V, T)
    models = [bank.export(m).to(dev).train() for m in range(N)]
    kind = {"fused": True} if dev.type == "cuda" else {"foreach": True}
    opts = [  # one optimiser per module
        torch.optim.AdamW(
            param_groups(model.parameters(), cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, **kind
        )
        for model in models
    ]
    dtype = autocast_dtype("auto", dev)  # the Simulation's ``precision: auto``
    it = cycle(batches)

    def step() -> Tensor:
        b, total = next(it), torch.zeros((), device=dev)
        for model, opt in zip(models, opts, strict=True):  # the Python loop the bank removes
            with autocast(dev, dtype):
                logits = model(b.x)[0]  # [B, T, V]
                loss = F.cross_entropy(logits.reshape(-1, V).float(), b.y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += loss.detach()
        return total / N  # mean module CE, as the bank's row

    B = s.batch_size
    params = bank.num_params_per_module(non_embedding=True)
    return Workload(step, bank_module_tokens(N, B, T), B * T, params)


def bank_loss_fn(bank: TransformerBank) -> Callable[[Batch], Tensor]:
    """Every module on the whole batch (``independent_step``, the Simulation's step without a
    society) -> the sum of the N module CEs: each module's gradient is that of its own mean
    loss."""

    def loss_fn(b: Batch) -> Tensor:
        return independent_step([bank], b).module_terms.sum()  # module_terms [N]

    return loss_fn


def bank_step(
    bank: TransformerBank, cfg: TrainConfig, device: torch.device, compiled: bool
) -> Callable[[Batch], Tensor]:
    """One training step of the bare bank: one batched forward / backward (``torch.compile``
    of the loss function when ``compiled``), per-module clip, one AdamW. Returns the loss."""
    opt = build_optimizer([bank], cfg, device)
    loss_fn = bank_loss_fn(bank)
    if compiled:
        torch._dynamo.reset()  # a fresh cache: earlier banks' guards must not pile up
        loss_fn = torch.compile(loss_fn)
    dtype = autocast_dtype("auto", device)

    def step(b: Batch) -> Tensor:
        bank.train()
        with autocast(device, dtype):
            loss = loss_fn(b)
        loss.backward()
        clip_per_module(bank, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def bank_workload(s: Setting) -> Workload:
    """The bare ``TransformerBank`` with all N modules (build_optimizer's AdamW)."""
    V, batches = bench_data(s)
    T, B = s.shape.block_size, s.batch_size
    seed_everything(0)
    bank = TransformerBank(s.shape.config(s.n), V, T).to(s.device)
    one = bank_step(bank, TrainConfig(batch_size=B), s.device, s.compiled)
    it = cycle(batches)
    return Workload(
        step=lambda: one(next(it)).detach() / s.n,  # mean module CE (the step minimised the sum)
        module_tokens=bank_module_tokens(s.n, B, T),
        corpus_tokens=B * T,
        params=bank.num_params_per_module(non_embedding=True),
    )
