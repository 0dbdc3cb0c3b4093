"""Domain x cluster mutual information: hand computations, the chance level, the ceiling, and
the columns a routed run logs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import brainnet
from brainnet.society.specialisation import (
    domain_profile,
    mi_ceiling,
    mutual_information,
    shuffled_mi,
)


def test_a_hand_computed_table():
    """[[30, 10], [10, 30]], N = 80: H(domain) = H(cluster) = 1 bit, H(joint) = 2 cells of
    3/8 and 2 of 1/8; Miller–Madow adds (1 + 1 - 3) / (2 · 80 · ln 2)."""
    t = np.array([[30, 10], [10, 30]])
    joint = -(2 * 0.375 * math.log2(0.375) + 2 * 0.125 * math.log2(0.125))
    plug_in = 1 + 1 - joint  # 0.18872...
    assert mutual_information(t, corrected=False) == pytest.approx(plug_in, abs=1e-12)
    assert mutual_information(t) == pytest.approx(plug_in - 1 / (160 * math.log(2)), abs=1e-12)


def test_independent_tables_give_about_zero_and_a_diagonal_log2_c():
    outer = np.outer([10, 20, 30], [5, 5, 10, 20])  # exactly independent: plug-in 0
    assert mutual_information(outer, corrected=False) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(outer) == 0.0  # the correction is negative: clipped
    diag = np.eye(4) * 1000  # each domain to its own cluster
    n = 4000
    assert mutual_information(diag, corrected=False) == pytest.approx(2.0, abs=1e-12)
    assert mutual_information(diag) == pytest.approx(2.0 + 3 / (2 * n * math.log(2)), abs=1e-12)
    assert mutual_information(np.zeros((3, 4))) == 0.0


def test_the_correction_removes_most_of_the_small_sample_bias():
    """Tables sampled from an independent model: the plug-in MI is biased up by about
    (D-1)(C-1) / (2 N ln 2); the corrected mean is close to 0."""
    rng = np.random.default_rng(0)
    plug, mm = [], []
    for _ in range(400):
        t = rng.multinomial(200, np.full(12, 1 / 12)).reshape(3, 4)
        plug.append(mutual_information(t, corrected=False))
        mm.append(mutual_information(t))
    bias = 2 * 3 / (2 * 200 * math.log(2))  # 0.0216
    assert np.mean(plug) == pytest.approx(bias, rel=0.25)
    assert np.mean(mm) < 0.3 * np.mean(plug)


def test_the_chance_level_keeps_the_marginals_and_is_near_zero():
    diag = np.eye(4) * 50
    chance = shuffled_mi(diag, draws=50, seed=1)
    assert 0 <= chance < 0.1 < mutual_information(diag)
    assert shuffled_mi(diag, draws=50, seed=1) == chance  # seeded


def test_the_ceiling_for_top_k():
    assert mi_ceiling(7, 4, 2) == pytest.approx(1.0)  # log2(4 / 2)
    assert mi_ceiling(7, 4, 1) == pytest.approx(2.0)
    assert mi_ceiling(2, 8, 1) == pytest.approx(1.0)  # the domains' entropy binds
    assert mi_ceiling(3, 4, 4) == 0.0  # every sequence everywhere


def test_the_domain_profile_is_each_clusters_mix():
    t = np.array([[3, 0], [1, 0]])  # [D, C]
    assert domain_profile(t) == [[0.75, 0.25], [0.0, 0.0]]


@pytest.mark.parametrize("untagged", [False, True])
def test_a_routed_run_logs_the_mi_against_chance_and_ceiling(tmp_path, untagged):
    """(untagged: the corpus without domain tags, a router that reads 8 tokens)"""
    extra = {"corpus.tags": False, "society.router.context": 8} if untagged else {}
    sc = brainnet.load_scenario("routing", {
        "train.steps": 6, "train.batch_size": 8, "train.eval_every": 6, "train.eval_batches": 1,
        "log.every": 3, "modules.0.d_model": 16, "modules.0.n_layer": 1, "corpus.block_size": 16,
        **extra,
    })  # fmt: skip
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.run()
    rows = [r for r in sim.writer.rows if r.get("routing_mi") is not None]
    assert [r["step"] for r in rows] == [3, 6]
    k, C, D = sc.society.router.top_k, sc.society.clusters, len(sim.corpus.domains)
    for r in rows:
        counts = np.array(r["domain_cluster"]).reshape(D, C) * 3  # 3 steps per interval
        assert 0 < counts.sum() <= 3 * 8 * k + 1e-3  # k assignments per sequence, less drops
        assert r["routing_mi"] == pytest.approx(mutual_information(counts), abs=1e-9)
        live = int((counts.sum(1) > 0).sum())
        assert r["routing_mi_ceiling"] == pytest.approx(mi_ceiling(live, C, k))
        assert r["routing_mi_chance"] == shuffled_mi(counts, seed=sc.seed + r["step"])
