"""The router (thalamus): a learned, noisy, sparse top-k choice of clusters per sequence.

Why: never all-to-all. Each sequence engages only ``k`` of the ``C`` clusters, like a mixture of
experts. The chosen sequences are packed into a static-shape buffer of ``cap`` rows per cluster
(``dispatch``), so the cluster banks run as one batched call whose shapes do not depend on the
data; sequences beyond a cluster's capacity are dropped and counted.

Losses that keep routing healthy:
  * balance (Switch Transformer, generalised to top-k): ``C * sum_i f_i * P_i``, f_i = share of
    assignments to cluster i (not differentiable), P_i = mean gate probability (differentiable).
    It is 1.0 for perfectly uniform routing and grows as routing collapses onto few clusters.
  * z-loss (ST-MoE): ``mean_b logsumexp(logits_b)^2`` keeps the gate logits small.

An optional prior [C] (arousal's focus prior) is added to the gate logits: it biases the choice
towards clusters the society has been using; the balance loss opposes it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainnet.config import RouterConfig  # noqa: F401 (re-exported)
from brainnet.modules.resize import RowPlan, resize_rows


class Dispatch(NamedTuple):
    """Where each (sequence, choice) goes in the static ``[C, cap]`` cluster buffers."""

    slot: Tensor  # [B, k] long: row in the chosen cluster's buffer, -1 if dropped
    kept: Tensor  # [B, k] bool: the assignment fits the cluster's capacity
    seq_index: Tensor  # [C, cap] long: sequence in each buffer row; B (a padding row) if empty
    load: Tensor  # [C] long: sequences assigned to each cluster before dropping
    dropped: Tensor  # [] long: assignments dropped for lack of capacity


class Route(NamedTuple):
    logits: Tensor  # [B, C] gate logits plus the prior, if any (no noise)
    probs: Tensor  # [B, C] softmax(logits / temperature), no noise: balance loss and logging
    chosen: Tensor  # [B, k] long: chosen clusters, best first
    gates: Tensor  # [B, k] mixture weights of the chosen clusters (sum to 1 per sequence)
    dispatch: Dispatch
    balance_loss: Tensor  # [] Switch load-balancing loss (1.0 = uniform)
    z_loss: Tensor  # [] router z-loss


def capacity(k: int, batch: int, clusters: int, factor: float) -> int:
    """Buffer rows per cluster: ``ceil(k * B / C * factor)``, at least 1 and at most B.

    At most B because a sequence goes to a cluster at most once. The product is rounded to 9
    decimals first so that float noise (5.000000001) does not add a row.
    """
    cap = math.ceil(round(k * batch * factor / clusters, 9))
    return max(1, min(batch, cap))


def dispatch(chosen: Tensor, n_clusters: int, cap: int) -> Dispatch:
    """Pack ``chosen`` [B, k] cluster ids into static ``[C, cap]`` buffers (GShard priority).

    All first choices (in batch order) are placed before all second choices, and so on, so a
    sequence loses its first choice only when the cluster is full of other first choices.
    A row of ``chosen`` must hold distinct clusters (top-k does).
    """
    B, k = chosen.shape
    order = chosen.t().reshape(-1)  # [k*B] choice-major: first choices, then second, ...
    hot = F.one_hot(order, n_clusters)  # [k*B, C] long
    pos = (hot.cumsum(0) * hot).sum(-1) - 1  # [k*B] rank of this assignment in its cluster
    pos = pos.view(k, B).t()  # [B, k]
    kept = pos < cap  # [B, k]
    slot = torch.where(kept, pos, -1)  # [B, k]
    load = hot.sum(0)  # [C]
    dropped = (~kept).sum()  # []

    # Scatter sequence ids into a flat [C*cap + 1] buffer; dropped ones land in the extra cell.
    flat = torch.where(kept, chosen * cap + slot, n_clusters * cap)  # [B, k]
    seq = torch.arange(B, device=chosen.device).unsqueeze(1).expand(B, k)  # [B, k]
    seq_index = torch.full((n_clusters * cap + 1,), B, dtype=torch.long, device=chosen.device)
    seq_index = seq_index.scatter(0, flat.reshape(-1), seq.reshape(-1))  # [C*cap + 1]
    seq_index = seq_index[:-1].view(n_clusters, cap)  # [C, cap]
    return Dispatch(slot, kept, seq_index, load, dropped)


def routing_entropy(probs: Tensor) -> Tensor:
    """Mean entropy (nats) of the per-sequence routing distributions ``probs`` [B, C] -> []."""
    return -torch.special.xlogy(probs, probs).sum(-1).mean()


class Router(nn.Module):
    """Scores the C clusters from a sequence's first ``context`` tokens and picks the top k."""

    def __init__(self, cfg: RouterConfig, vocab_size: int, n_clusters: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_clusters = n_clusters
        self.embed = nn.Embedding(vocab_size, cfg.d_router)  # [V, d_router]
        self.gate = nn.Linear(cfg.d_router, n_clusters)  # d_router -> C
        nn.init.normal_(self.embed.weight, std=0.02)
        # Small weights: near-uniform routing at the start, but input-dependent (no exact ties).
        nn.init.normal_(self.gate.weight, std=0.02)
        nn.init.zeros_(self.gate.bias)

    @property
    def k_max(self) -> int:
        """Largest k arousal may ask for."""
        return self.cfg.k_max or self.cfg.top_k

    @torch.no_grad()
    def resize(
        self,
        plan: RowPlan,
        optimizer: torch.optim.Optimizer | None,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        """Give the gate one output row per cluster of a new layout (``plan``: surviving rows
        kept exactly, with their AdamW state; new rows copied from a parent, plus noise)."""
        params = ["weight", "bias"]
        resize_rows(self.gate, params, plan, optimizer, noise=noise, generator=generator)
        self.n_clusters = self.gate.out_features = self.gate.weight.shape[0]

    def forward(
        self,
        x: Tensor,
        k: int,
        temperature: float | Tensor,
        prior: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Route:
        """Route the batch ``x`` [B, T] long to ``k`` clusters per sequence.

        ``prior`` [C] (arousal's focus prior, no gradient) is added to the gate logits before
        the noise, the top-k and the softmax: it tilts every sequence towards the clusters the
        society has been using. The balance loss sees the tilted probabilities, so it pushes
        the gate against the prior; the z-loss sees only the gate's own logits.
        In training, Gaussian noise (std ``cfg.noise``, drawn from ``generator`` when given; it
        must live on x's device) is added to the logits before the top-k and the gates.
        ``temperature`` may be a 0-dim tensor (arousal-driven) to avoid a host sync.
        """
        if not 1 <= k <= self.n_clusters:
            raise ValueError(f"k must be in [1, {self.n_clusters}] (the clusters), got {k}")
        if prior is not None and tuple(prior.shape) != (self.n_clusters,):
            raise ValueError(
                f"prior must have shape ({self.n_clusters},), got {tuple(prior.shape)}"
            )
        B = x.shape[0]
        summary = self.embed(x[:, : self.cfg.context]).mean(1)  # [B, d_router]
        own = self.gate(summary)  # [B, C] the gate's own logits
        logits = own if prior is None else own + prior.detach().to(own.dtype)  # [B, C]
        noisy = logits
        if self.training and self.cfg.noise > 0:
            eps = torch.randn(
                logits.shape, generator=generator, device=logits.device, dtype=logits.dtype
            )  # [B, C]
            noisy = logits + self.cfg.noise * eps
        scaled = noisy / temperature  # [B, C]
        # Stable descending sort: ties go to the lower cluster index on every device.
        top, order = torch.sort(scaled, dim=-1, descending=True, stable=True)  # [B, C] each
        chosen = order[:, :k]  # [B, k]
        gates = top[:, :k].softmax(-1)  # [B, k]
        probs = (logits / temperature).softmax(-1)  # [B, C]

        cap = capacity(k, B, self.n_clusters, self.cfg.capacity_factor)
        disp = dispatch(chosen, self.n_clusters, cap)
        f = disp.load.to(probs.dtype) / (B * k)  # [C] share of assignments (no gradient)
        balance = self.n_clusters * (f * probs.mean(0)).sum()  # []
        z = torch.logsumexp(own, dim=-1).square().mean()  # []
        return Route(logits, probs, chosen, gates, disp, balance, z)

    def aux_loss(self, route: Route) -> Tensor:
        """Weighted sum of the routing losses, to add to the task loss -> []."""
        return self.cfg.balance_weight * route.balance_loss + self.cfg.z_weight * route.z_loss
