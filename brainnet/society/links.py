"""Links between clusters: serial and top-down inputs matched by sequence, attention reads.

A cluster's buffer row r holds sequence ``seq_index[c, r]``. Unrouted, every cluster holds the
whole batch in order, so rows line up; routed (brain), a source cluster holds a sequence only if
the router chose it too, and at another row. So inputs are matched by SEQUENCE: the source's
mean message is scattered to ``[C, B+1, ...]`` by sequence (row B: padding) and gathered back at
the reader's rows, with a mask of where the source had that sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from brainnet.society.cluster import take


def inputs_by_sequence(
    cluster_msg: Tensor,
    seq_index: Tensor,
    batch_size: int,
    inputs: Tensor,
    input_ok: Tensor,
    rows: Tensor,
) -> tuple[Tensor, Tensor]:
    """Mean message of each reader's inputs for the sequence in each of its rows.

    cluster_msg [C, cap, T, Dm] every cluster's mean message by buffer row; seq_index [C, cap];
    inputs, input_ok [w, I] the readers' source clusters and whether each has fired; rows
    [w, cap] the readers' sequences -> (mean [w, cap, T, Dm], here [w, I, cap] bool: source i
    had that sequence and may be read)."""
    C, B = seq_index.shape[0], batch_size
    flat = (torch.arange(C, device=rows.device)[:, None] * (B + 1) + seq_index).flatten()
    shape = cluster_msg.shape[2:]
    by_seq = (
        cluster_msg.new_zeros(C * (B + 1), *shape)
        .index_copy(0, flat, cluster_msg.flatten(0, 1))
        .view(C, B + 1, *shape)
    )  # [C, B+1, T, Dm]
    present = torch.zeros(C * (B + 1), dtype=torch.bool, device=rows.device)
    present = present.index_fill(0, flat, True).view(C, B + 1)
    present[:, B] = False  # the padding row holds no sequence
    src_c, at = inputs[:, :, None], rows[:, None, :]  # [w, I, 1], [w, 1, cap]
    src = by_seq[src_c, at]  # [w, I, cap, T, Dm]
    here = input_ok[:, :, None] & present[src_c, at]  # [w, I, cap]
    k = here.sum(1)  # [w, cap]
    src = torch.where(here[:, :, :, None, None], src, 0.0)  # padding rows never leak a NaN
    mean = src.sum(1) / k.clamp(min=1)[:, :, None, None]
    return mean, here


def attention_reads(msgs: Tensor, others: Tensor, member: Tensor) -> tuple[Tensor, Tensor]:
    """Every module of the other clusters, for attention over module outputs (unrouted: rows
    line up). msgs [C, n, cap, T, Dm], others [w, C-1] the other clusters of each reader,
    member [C, n] -> (reads [w, cap, T, (C-1)·n, Dm], ok [w, (C-1)·n]: the slot holds a
    module)."""
    src = take(msgs, others)  # [w, C-1, n, cap, T, Dm]
    src = src.flatten(1, 2).permute(0, 2, 3, 1, 4)  # [w, cap, T, A, Dm]
    return src, take(member, others).flatten(1)
