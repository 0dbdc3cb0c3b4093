"""Collapse diagnostics: is a module still a language model, or has it folded onto a few tokens?

Every metric is batched over the module axis (``[M, ...]`` in, ``[M]`` out) and stays on the
device: no ``.item()`` / ``.tolist()`` inside the metric functions, so the simulation can
compute them whenever it likes and read them back once per log interval. Only
``CollapseMonitor.check`` (called at log intervals) works with host values.

Definitions (natural logs; ``p = softmax(logits)`` per position)::

    entropy     H_m   = mean_{b,t} -Σ_v p_v log p_v                       (nats, in [0, log V])
    top-1 mass  top_m = mean_{b,t} max_v p_v                              (in [1/V, 1])
    distinct-n  d_m   = |unique n-grams of module m's samples| / |n-grams|  (pooled over the
                        module's S samples: the corpus-level distinct-n; in (0, 1])
    disagreement D_i  = mean_{j mate of i} mean_{b,t} JS(p_i, p_j),
                        JS(p, q) = H((p+q)/2) - (H(p) + H(q)) / 2          (in [0, log 2])
    ECE_m             = Σ_k (n_k / N) |acc_k - conf_k|   over equal-width confidence bins k

A module has *collapsed* when its entropy falls below ``entropy_floor`` or its distinct-n below
``distinct_floor``; ``CollapseMonitor`` turns the crossing into one event.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from brainnet.config import CollapseConfig  # noqa: F401 (re-exported)
from brainnet.modules.bank import Bank

# --------------------------------------------------------------------------- distribution metrics


def _entropy(p: Tensor, logp: Tensor) -> Tensor:
    """-Σ_v p log p over the last dim, with 0 log 0 = 0 (masked -inf logits)."""
    return -torch.where(p > 0, p * logp, 0.0).sum(-1)


def predictive_entropy(logits: Tensor) -> Tensor:
    """Mean predictive entropy in nats. logits [M, ..., V] (any float dtype) -> [M] fp32."""
    logp = logits.float().log_softmax(-1)  # [M, ..., V]
    return _entropy(logp.exp(), logp).flatten(1).mean(1)  # [M]


def top1_mass(logits: Tensor) -> Tensor:
    """Mean probability of the most likely token. logits [M, ..., V] -> [M] fp32."""
    top = logits.float().log_softmax(-1).amax(-1).exp()  # [M, ...]
    return top.flatten(1).mean(1)


def distinct_n(samples: Tensor, n: int, vocab_size: int | None = None) -> Tensor:
    """Distinct n-grams / all n-grams of each module's samples, pooled over its S samples.

    samples [M, S, L] long (L >= n) -> [M] fp32. n-grams never span two samples. Each n-gram is
    encoded as one integer ``Σ_k x_{i+k} · V^(n-1-k)`` (base ``vocab_size``, or the largest
    token + 1 as a device tensor when None), the codes of each module sorted, and the distinct
    ones counted as 1 + the number of changes between neighbours: no loop over modules, no
    host sync. The codes must fit in int64: V^n < 2^63.
    """
    M, S, L = samples.shape
    if L < n:
        raise ValueError(f"distinct_n: sample length {L} < n = {n}")
    if vocab_size is not None and vocab_size**n >= 2**63:
        raise ValueError(f"distinct_n: vocab_size^n = {vocab_size}^{n} overflows int64")
    x = samples.long()
    base: int | Tensor = vocab_size if vocab_size is not None else x.amax() + 1  # int or []
    G = L - n + 1
    code = torch.zeros(M, S, G, dtype=torch.long, device=samples.device)
    for k in range(n):  # Horner: code = code * V + x_{i+k}
        code = code * base + x[:, :, k : k + G]
    code = code.view(M, S * G).sort(dim=1).values  # [M, N]
    changes = (code[:, 1:] != code[:, :-1]).sum(1)  # [M]
    return (changes + 1).float() / (S * G)


# --------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample(
    bank: Bank,
    prompt: Tensor,
    length: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    idx: Tensor | None = None,
) -> Tensor:
    """Autoregressive samples of every module (modules ``idx`` of the bank when given).

    prompt [M, S, P] long (P >= 1; M = len(idx) or the bank's module count) ->
    [M, S, P + length]; the prompt is kept as is. One bank call per new position for all
    modules and samples at once (the loop runs over positions only); the context is cropped to
    the bank's ``block_size`` last tokens. ``temperature <= 0`` samples greedily (argmax); a
    ``generator`` on the bank's device makes the draw reproducible. Runs the bank in eval mode
    (no dropout) and restores its mode afterwards.
    """
    M, S, P = prompt.shape
    if P < 1:
        raise ValueError("sample: the prompt needs at least one token")
    was_training = bank.training
    bank.eval()
    try:
        tokens = prompt.long()
        for _ in range(length):
            ctx = tokens[:, :, -bank.block_size :]  # [M, S, <=block]
            logits = bank(ctx, idx=idx).logits[:, :, -1, :].float()  # [M, S, V]
            V = logits.shape[-1]
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)  # [M, S, 1]
            else:
                probs = (logits / temperature).softmax(-1).view(M * S, V)  # [M*S, V]
                nxt = torch.multinomial(probs, 1, generator=generator).view(M, S, 1)
            tokens = torch.cat([tokens, nxt], dim=2)
    finally:
        bank.train(was_training)
    return tokens


# --------------------------------------------------------------------------- peers and calibration


def peer_disagreement(probs: Tensor) -> Tensor:
    """Mean pairwise Jensen-Shannon divergence of each module to its cluster mates.

    probs [C, n, ..., V] (C clusters of n modules, probability vectors on the last dim) ->
    [C, n] fp32, in [0, log 2] nats::

        D[c, i] = 1/(n-1) Σ_{j≠i} mean_{positions} JS(p_ci, p_cj)
        JS(p, q) = H((p + q) / 2) - (H(p) + H(q)) / 2

    0 when all mates predict the same distribution; 0 for a cluster of one (no mates).
    The loop runs over the n-1 mate offsets (pair i with (i + k) mod n), each batched over all
    C·n modules, so memory stays O(C·n·positions·V) instead of O(n²).
    """
    C, n = probs.shape[:2]
    p = probs.float()
    h = _entropy(p, p.clamp_min(1e-30).log())  # [C, n, ...]
    total = torch.zeros_like(h)
    for k in range(1, n):
        q = p.roll(-k, dims=1)  # q[:, i] = p[:, (i + k) % n]
        m = 0.5 * (p + q)
        js = _entropy(m, m.clamp_min(1e-30).log()) - 0.5 * (h + h.roll(-k, dims=1))
        total = total + js.clamp_min(0.0)
    return (total / max(n - 1, 1)).reshape(C, n, -1).mean(-1)


def expected_calibration_error(logits: Tensor, targets: Tensor, bins: int = 10) -> Tensor:
    """Top-1 expected calibration error of each module.

    logits [M, B, T, V]; targets [B, T] (shared) or [M, B, T] long -> [M] fp32. Confidence =
    max softmax probability; bin k holds confidences in [k/bins, (k+1)/bins) (1.0 in the last);
    ECE = Σ_k (n_k/N) |acc_k - conf_k| = (1/N) Σ_k |Σ_{i in k} (correct_i - conf_i)|, one
    scatter_add into [M, bins].
    """
    M = logits.shape[0]
    logp = logits.float().log_softmax(-1)
    conf_log, pred = logp.max(-1)  # [M, B, T]
    conf = conf_log.exp().reshape(M, -1)  # [M, N]
    correct = (pred == targets.expand(pred.shape)).float().reshape(M, -1)  # [M, N]
    b = (conf * bins).long().clamp_(0, bins - 1)  # [M, N]
    gap = torch.zeros(M, bins, device=logits.device).scatter_add_(1, b, correct - conf)
    return gap.abs().sum(1) / conf.shape[1]


def diagnose(
    logits: Tensor, targets: Tensor, samples: Tensor | None, cfg: CollapseConfig
) -> dict[str, Tensor]:
    """All per-module diagnostics of one validation batch as device tensors [M] (no sync).

    logits [M, B, T, V] on validation inputs, targets [B, T] or [M, B, T], samples
    [M, S, L] or None (then no ``distinct`` entry).
    """
    out = {
        "entropy": predictive_entropy(logits),
        "top1": top1_mass(logits),
        "ece": expected_calibration_error(logits, targets, cfg.ece_bins),
    }
    if samples is not None:
        out["distinct"] = distinct_n(samples, cfg.n, logits.shape[-1])
    return out


def cluster_probs(logits: Tensor, n_clusters: int) -> Tensor:
    """[M, ..., V] logits of modules laid out cluster-major -> [C, M/C, ..., V] probabilities."""
    M = logits.shape[0]
    if M % n_clusters:
        raise ValueError(f"cluster_probs: {M} modules do not split into {n_clusters} clusters")
    p = F.softmax(logits.float(), dim=-1)
    return p.view(n_clusters, M // n_clusters, *logits.shape[1:])


# --------------------------------------------------------------------------- events


class CollapseMonitor:
    """Turns per-module diagnostics into *collapse events*, once per crossing.

    A module is collapsed while ``entropy < entropy_floor`` or ``distinct < distinct_floor``.
    ``check`` reports the modules that were healthy at the previous check (or never checked)
    and are collapsed now; a collapsed module fires again only after a check where it has
    recovered (both metrics back at or above their floors). Called at log intervals: it reads
    its inputs to the host.
    """

    def __init__(self, cfg: CollapseConfig, n_modules: int) -> None:
        self.cfg = cfg
        self.collapsed = [False] * n_modules

    def check(self, entropy: Tensor | list[float], distinct: Tensor | list[float] | None = None):
        """entropy [M], distinct [M] or None -> list of event dicts for new collapses::

        {"module": 3, "entropy": 0.31, "distinct": 0.5, "cause": "entropy 0.31 < floor 0.5"}
        """
        ent = _host(entropy)
        dist = _host(distinct) if distinct is not None else [None] * len(ent)
        if len(ent) != len(self.collapsed) or len(dist) != len(ent):
            raise ValueError(
                f"CollapseMonitor: {len(ent)} entropies / {len(dist)} distinct-n values for "
                f"{len(self.collapsed)} modules"
            )
        events: list[dict[str, Any]] = []
        for m, (e, d) in enumerate(zip(ent, dist, strict=True)):
            causes = []
            if e < self.cfg.entropy_floor:
                causes.append(f"entropy {e:.3g} < floor {self.cfg.entropy_floor:g}")
            if d is not None and d < self.cfg.distinct_floor:
                causes.append(f"distinct-{self.cfg.n} {d:.3g} < floor {self.cfg.distinct_floor:g}")
            now = bool(causes)
            if now and not self.collapsed[m]:
                events.append(
                    {"module": m, "entropy": e, "distinct": d, "cause": "; ".join(causes)}
                )
            self.collapsed[m] = now
        return events

    def select_rows(self, rows: Tensor | list[int]) -> None:
        """Follow a reorganisation: new module i was old module rows[i]; -1 = new (healthy)."""
        self.collapsed = [r >= 0 and self.collapsed[r] for r in _host(rows)]

    def state_dict(self) -> dict[str, Tensor]:
        return {"collapsed": torch.tensor(self.collapsed, dtype=torch.bool)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        collapsed = state["collapsed"].tolist()
        if len(collapsed) != len(self.collapsed):
            raise ValueError(
                f"collapse monitor state has {len(collapsed)} modules, "
                f"expected {len(self.collapsed)}"
            )
        self.collapsed = [bool(c) for c in collapsed]


def _host(x: Tensor | list) -> list:
    return x.detach().cpu().tolist() if isinstance(x, Tensor) else list(x)
