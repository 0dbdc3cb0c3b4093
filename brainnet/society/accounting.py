"""What a society's step costs: module-token passes, messages, bytes and simulated time.

Counted per step from the plan and the step's message counters (device tensors summed over a
log interval, read on the host once per interval). Costs are charged at the knobs the interval
ran with, not the ones arousal sets for the next interval.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from brainnet.society.clock import Plan

#: message kinds counted by the society's step (``messages_<kind>`` stats): mates inside a
#: cluster, serial (bottom-up) and top-down links between clusters, attention reads of other
#: clusters' modules, blackboard reads and writes
KINDS = ("mate", "bottom_up", "top_down", "attend", "board_read", "board_write")


def module_tokens(plan: Plan, cluster_sizes: list[int], cap: int, block_size: int) -> float:
    """Module-token passes of one step: a token processed by one module in one firing."""
    return sum(cluster_sizes[f.cluster] for _, fs in plan.waves for f in fs) * cap * block_size


def communication(
    stats: dict[str, Any], plan: Plan, block_size: int, message_dim: int, slots: int
) -> dict[str, Any]:
    """Messages (by kind), bytes and simulated time per step from an interval's mean stats
    (pops the ``messages_*`` entries). A message is one stream of T fp32 vectors of width Dm; a
    board read carries all S slots."""
    msgs = {k: float(stats.pop(f"messages_{k}")) for k in KINDS}
    stream = block_size * message_dim * 4  # bytes of one message stream (fp32)
    bytes_ = (sum(msgs.values()) - msgs["board_read"]) * stream
    bytes_ += msgs["board_read"] * stream * slots
    return {
        "messages": sum(msgs.values()),
        **{f"messages_{k}": v for k, v in msgs.items()},
        "bytes": bytes_,
        "sim_time_ms": plan.makespan,
    }


def by_domain(stats: dict[str, Any]) -> list[float]:
    """Mean loss per domain from the summed ``domain_loss_sum`` / ``domain_count`` (pops both)."""
    dl: Tensor = stats.pop("domain_loss_sum")
    dc: Tensor = stats.pop("domain_count")
    return (dl / dc.clamp(min=1e-9)).tolist()


def answers(stats: dict[str, Any]) -> dict[str, Any]:
    """Answer-token loss and accuracy, overall and per domain, from the summed
    ``answer_*`` stats (pops them); {} when the corpus has no answers. A domain without
    answer tokens gets None."""
    if "answer_count" not in stats:
        return {}
    loss: Tensor = stats.pop("answer_loss_sum")
    hits: Tensor = stats.pop("answer_correct")
    count: Tensor = stats.pop("answer_count")
    total = float(count.sum())
    per = lambda v: [float(x / c) if c > 0 else None for x, c in zip(v, count, strict=True)]  # noqa: E731
    return {
        "answer_loss": float(loss.sum()) / total if total else None,
        "answer_acc": float(hits.sum()) / total if total else None,
        "domain_answer_loss": per(loss),
        "domain_answer_acc": per(hits),
    }
