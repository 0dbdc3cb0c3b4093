"""Learning probes: the semantic state φ and its Δφ events (emergence) and the collapse
diagnostics, read on a fixed probe set at log steps only (host reads are fine there).

Every module runs alone (no memory) on the probe set; emergence turns the predictions into φ
and Δφ (``EmergenceTracker``), collapse into entropy, top-1 mass, distinct-n, ECE and the
disagreement with cluster mates (``CollapseMonitor``). Events go to events.jsonl.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from brainnet.config import Scenario
from brainnet.data import Batch, Corpus
from brainnet.learning.collapse import CollapseMonitor, cluster_probs, diagnose, peer_disagreement
from brainnet.learning.collapse import sample as sample_bank
from brainnet.learning.emergence import EmergenceTracker, probe_batch
from brainnet.metrics import RunWriter
from brainnet.society import Society

#: an emergence event the society should answer: (step, probe logits per bank, cause, result)
Event = tuple[int, list[Tensor], str, dict[str, Any]]


class Probes:
    """The probe set and the two monitors that read it (either may be off)."""

    def __init__(
        self,
        sc: Scenario,
        society: Society,
        corpus: Corpus,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        self.sc = sc
        self.society = society
        self.device = device
        self.autocast = autocast
        sizes = [8] + [p.probe_sequences for p in (sc.emergence,) if p is not None]
        sizes += [p.samples for p in (sc.collapse,) if p is not None]
        self.batch = probe_batch(corpus, max(sizes), sc.seed + 3).to(device)
        V = corpus.vocab_size
        self.emergence = None
        if sc.emergence is not None:
            self.emergence = EmergenceTracker(sc.emergence, V, sc.seed, device)
        n = society.n_modules
        self.collapse = None if sc.collapse is None else CollapseMonitor(sc.collapse, n)
        self.arousal_input = 0.0  # E_norm of the last emergence probe, felt by arousal

    @torch.no_grad()
    def standalone_logits(self, batch: Batch) -> list[Tensor]:
        """Every module alone (no memory) on ``batch`` (its view of it): one [M, B, T, V]
        tensor per bank."""
        self.society.eval()
        with self.autocast():
            return [
                bank(self.society.module_inputs(b, batch)).logits.float()
                for b, bank in enumerate(self.society.banks)
            ]

    def select_rows(self, rows: Tensor) -> None:
        """Follow a relayout: new module i was old module ``rows[i]`` (-1: new)."""
        if self.collapse is not None:
            self.collapse.select_rows(rows)
        if self.emergence is not None:
            self.emergence.select_rows(rows)

    def run(self, step: int, w: RunWriter) -> tuple[dict[str, Any], dict[str, list], Event | None]:
        """Emergence and collapse when due: (row columns, per-module columns, the emergence
        event to answer or None)."""
        sc, row, per_module, event = self.sc, {}, {}, None
        due_e = self.emergence is not None and step % sc.emergence.every == 0
        due_c = self.collapse is not None and step % sc.collapse.every == 0
        if not (due_e or due_c):
            return row, per_module, event
        logits = self.standalone_logits(self.batch)  # per bank [M, B, T, V]
        if due_e:
            phi = torch.cat([self.emergence.phi(z) for z in logits])  # [N, S, C]
            res = self.emergence.observe(phi)
            res["phi"] = phi
            self.arousal_input = self.emergence.arousal_input
            row.update(delta_phi=res["delta_phi"], theta=res["theta"], e_pot=res["e_pot"],
                       emergence_event=res["event"])  # fmt: skip
            per_module["delta_phi"] = res["delta_phi_module"]
            if res["event"]:
                cause = f"Δφ {res['delta_phi']:.4g} > θ {res['theta']:.4g}"
                w.event("emergence", step, delta_phi=res["delta_phi"], theta=res["theta"],
                        e_pot=res["e_pot"], cause=cause)  # fmt: skip
                event = (step, logits, cause, res)
        if due_c:
            row["collapsed_modules"] = self._collapse(step, w, logits, per_module)
        return row, per_module, event

    def _collapse(
        self, step: int, w: RunWriter, logits: list[Tensor], per_module: dict[str, list]
    ) -> int:
        cfg, sc = self.sc.collapse, self.sc
        assert cfg is not None and self.collapse is not None
        gen = torch.Generator(device=self.device).manual_seed(sc.seed + step)
        diag: dict[str, list] = {}
        for b, (bank, z) in enumerate(zip(self.society.banks, logits, strict=True)):
            prompt = self.society.module_inputs(b, self.batch)[:, : cfg.samples, :4]  # its view
            samples = sample_bank(bank, prompt, cfg.sample_length, 1.0, gen)
            for k, v in diagnose(z, self.batch.y, samples, cfg).items():
                diag.setdefault(k, []).extend(v.tolist())
        if self.society.topology.merged and self.society.topology.cluster_size > 1:
            diag["disagreement"] = self._disagreement(torch.cat(logits)).tolist()
        per_module.update(entropy=diag["entropy"], top1_mass=diag["top1"],
                          distinct_n=diag["distinct"], ece=diag["ece"])  # fmt: skip
        if "disagreement" in diag:
            per_module["disagreement"] = diag["disagreement"]
        for ev in self.collapse.check(diag["entropy"], diag["distinct"]):
            w.event("collapse", step, **ev)
        return int(sum(self.collapse.collapsed))

    def _disagreement(self, z: Tensor) -> Tensor:
        """JS disagreement of every module with its cluster mates: z [N, B, T, V] -> [N]."""
        soc = self.society
        topo = soc.topology
        out = torch.zeros(z.shape[0])
        if topo.uniform:  # one batched call over all clusters
            ids = soc.module_ids.flatten()
            dis = peer_disagreement(cluster_probs(z[ids], topo.n_clusters)).flatten()
            return out.index_copy_(0, ids.cpu(), dis.cpu())
        for ids in topo.clusters():  # a log-time loop over clusters of different sizes
            dis = peer_disagreement(cluster_probs(z[ids], 1)).flatten()
            out[ids] = dis.cpu()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "emergence": None if self.emergence is None else self.emergence.state_dict(),
            "collapse": None if self.collapse is None else self.collapse.state_dict(),
            "delta_phi_drive": self.arousal_input,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.emergence is not None and state.get("emergence") is not None:
            self.emergence.load_state_dict(state["emergence"])
        if self.collapse is not None and state.get("collapse") is not None:
            self.collapse.load_state_dict(state["collapse"])
        self.arousal_input = float(state.get("delta_phi_drive", 0.0))
