"""Sensory views: each module receives only some fields of the input; the rest is blank.

    x [B, T], field [B, T] ──▶ tokens [V, B+1, T]: view v's copy of the batch, every token of a
                               field it does not receive replaced by the blank (row B: padding)
    module m reads view ``view_of[m]``'s copy, at its own buffer rows

Targets stay whole: every module still predicts every next token. Views change a module's input
only, so what one view lacks can reach it through messages, the blackboard or top-down links
alone. Field 0 (tags, separators, answers) is in every view. The router reads field 0 only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from brainnet.config import ViewsConfig
from brainnet.society.topology import Topology


class Views(nn.Module):
    """Which view every module of a layout reads, as static (non-persistent) buffers that move
    with the society."""

    def __init__(
        self, cfg: ViewsConfig, topo: Topology, n_fields: int, blank: int, device: torch.device
    ) -> None:
        super().__init__()
        self.blank = blank
        V, F = len(cfg.fields), n_fields
        visible = torch.zeros(V, F, dtype=torch.bool)
        visible[:, 0] = True  # the shared field
        for v, fields in enumerate(cfg.fields):
            visible[v, fields] = True
        self.register_buffer("visible", visible.to(device), persistent=False)  # [V, F]
        N = topo.n_modules
        unit = [topo.cluster_of(m) for m in range(N)] if cfg.per == "cluster" else range(N)
        view = [u % V for u in unit]
        self.register_buffer("view_of", torch.tensor(view, device=device), persistent=False)
        # bank b's module in cluster c, bank slot j -> its view: [C, n_b] per bank
        for b in range(topo.n_banks):
            slots = [
                [
                    view[topo.bank_offset(b) + topo.row_start(b, c) + j]
                    for j in range(topo.sizes[c][b])
                ]
                for c in range(topo.n_clusters)
            ]
            self.register_buffer(f"slot_view_{b}", torch.tensor(slots, device=device),
                                 persistent=False)  # fmt: skip
        self.n_banks = topo.n_banks

    @property
    def slot_view(self) -> list[Tensor]:
        """Per bank [C, n_b] long: the view of its module in cluster c, bank slot j."""
        return [getattr(self, f"slot_view_{b}") for b in range(self.n_banks)]

    def tokens(self, x: Tensor, field: Tensor | None) -> Tensor:
        """x, field [B, T] -> [V, B+1, T]: every view's copy of the batch (+ a padding row)."""
        if field is None:
            raise ValueError("views need a corpus with fields (the batch has none)")
        T = x.shape[1]
        seen = self.visible[:, field]  # [V, B, T]
        out = torch.where(seen, x, self.blank)  # [V, B, T]
        return torch.cat([out, out.new_zeros(out.shape[0], 1, T)], dim=1)

    def shared(self, x: Tensor, field: Tensor | None) -> Tensor:
        """x [B, T] with every field but 0 blanked: what the router reads."""
        assert field is not None
        return torch.where(field == 0, x, self.blank)

    def rows(self, ids: Tensor) -> Tensor:
        """Global module ids [M] -> their views [M]."""
        return self.view_of[ids]
