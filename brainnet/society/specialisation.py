"""Do clusters specialise? Mutual information between a sequence's domain and the clusters the
router sent it to, from the domain x cluster routing counts (``domain_cluster``).

Why: a router that sends every domain everywhere has MI 0; one that gives each domain its own
clusters has MI up to the ceiling. A plug-in estimate from a few hundred assignments is biased
upwards, so the logged value is Miller–Madow corrected, and it is read against the chance level:
the same estimate on tables whose domain labels were shuffled (same marginals, no association).

Counts are of kept router *assignments*: a sequence routed to k clusters counts k times, once
in each (gates are not counted). The ceiling for top-k of C clusters and D live domains is
min(log2 D, log2(C / k)) bits for the plug-in estimate when no assignment is dropped: the
cluster variable has at most log2 C bits, and a domain whose sequences always go to the same k
clusters still leaves log2 k of them. Dropped assignments can lift the plug-in MI past it, and
the correction adds a little on top (both small). Treating the k assignments of one sequence as
independent draws makes the correction and the chance level approximate: they over-correct by
about (1 - 1/C) / (1 - k/C) (1.5 at k = 2, C = 4). Host-side numpy on small tables: no tensors.
"""

from __future__ import annotations

import math

import numpy as np


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def mutual_information(counts: np.ndarray, corrected: bool = True) -> float:
    """I(domain; cluster) in bits from a ``[D, C]`` table of counts. ``corrected``: Miller–Madow
    (each entropy + (m - 1) / (2 N ln 2), m its non-empty cells), clipped at 0; 0 for an empty
    table."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum()
    if n <= 0:
        return 0.0
    rows, cols = counts.sum(1), counts.sum(0)
    mi = _entropy_bits(rows / n) + _entropy_bits(cols / n) - _entropy_bits(counts.ravel() / n)
    if corrected:
        m = lambda x: int((x > 0).sum())  # noqa: E731
        mi += ((m(rows) - 1) + (m(cols) - 1) - (m(counts) - 1)) / (2 * n * math.log(2))
    return max(0.0, mi)


def shuffled_mi(counts: np.ndarray, draws: int = 20, seed: int = 0) -> float:
    """The chance level: the mean corrected MI of ``draws`` tables that keep ``counts``' row
    and column totals but pair domains with clusters at random (the domain labels of the
    assignments shuffled). Counts are rounded to whole assignments."""
    counts = np.rint(np.asarray(counts, dtype=float)).astype(np.int64)
    D, C = counts.shape
    if counts.sum() == 0:
        return 0.0
    domains = np.repeat(np.arange(D), counts.sum(1))  # one entry per assignment
    clusters = np.repeat(np.arange(C), counts.sum(0))
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(draws):
        table = np.zeros((D, C))
        np.add.at(table, (rng.permutation(domains), clusters), 1)
        total += mutual_information(table)
    return total / draws


def mi_ceiling(n_domains: int, n_clusters: int, k: int) -> float:
    """The largest I(domain; cluster) top-k routing over C clusters can reach, in bits."""
    return max(0.0, min(math.log2(max(n_domains, 1)), math.log2(n_clusters / max(k, 1))))


def domain_profile(counts: np.ndarray) -> list[list[float]]:
    """Each cluster's domain mix: ``[C][D]`` shares P(domain | cluster) of its assignments
    (all zeros for a cluster that got none)."""
    counts = np.asarray(counts, dtype=float)
    per = counts.sum(0)  # [C]
    return [(counts[:, c] / per[c]).tolist() if per[c] > 0 else [0.0] * counts.shape[0]
            for c in range(counts.shape[1])]  # fmt: skip


def specialisation_columns(
    mean_table: list[float], n_domains: int, k: int, steps: int, seed: int = 0
) -> dict[str, float]:
    """The metrics columns of one log interval from its per-step mean ``domain_cluster``
    (flat ``[D * C]``) over ``steps`` steps at top-``k``: ``routing_mi`` (bits, corrected),
    ``routing_mi_chance`` (shuffled labels) and ``routing_mi_ceiling``. (The per-cluster domain
    profile is ``domain_profile`` of the same table, which the row keeps as ``domain_cluster``.)"""
    counts = np.asarray(mean_table, dtype=float).reshape(n_domains, -1) * steps  # [D, C]
    live = int((counts.sum(1) > 0).sum())  # domains routed this interval (a shift adds some)
    return {
        "routing_mi": mutual_information(counts),
        "routing_mi_chance": shuffled_mi(counts, seed=seed),
        "routing_mi_ceiling": mi_ceiling(live, counts.shape[1], k),
    }
