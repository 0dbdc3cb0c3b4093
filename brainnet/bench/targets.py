"""The issue's performance targets, and the ratios of one run checked against them."""

from __future__ import annotations

from typing import Any

#: the issue's targets: name -> (minimum or maximum, bound); shape-specific ones by (name, shape)
TARGETS: dict[tuple[str, str | None], tuple[str, float]] = {
    ("bank / loop", "baby"): (">=", 1.0),
    ("bank / loop", "small"): (">=", 1.3),
    # the same targets for the compiled bank (compile: true is a CPU path too)
    ("bank_compiled / loop", "baby"): (">=", 1.0),
    ("bank_compiled / loop", "small"): (">=", 1.3),
    ("brain / bank", None): (">=", 0.5),
    ("brain_compiled / bank_compiled", None): (">=", 0.5),
    ("EMA + distill share", None): ("<=", 0.10),
    ("scaling max / min", "small"): ("<=", 1.3),
    ("reorganize s", None): ("<=", 1.0),
}

#: (ratio name, numerator case, denominator case), on module-token throughput
RATIOS = (
    ("bank / loop", "bank", "loop"),
    ("bank_compiled / loop", "bank_compiled", "loop"),
    ("bank_compiled / bank", "bank_compiled", "bank"),
    ("brain / bank", "brain", "bank"),
    ("brain_compiled / bank_compiled", "brain_compiled", "bank_compiled"),
    ("brain_compiled / brain", "brain_compiled", "brain"),
)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparisons of one run, each with its target (None when the issue sets none) and
    ``ok``: bank / loop, compiled / eager, brain / bank (module-token throughput at the same
    shape and N), the EMA + distillation share of a brain step, and the scaling spread."""
    done = [r for r in rows if not r.get("skipped")]
    by = {(r["case"], r["shape"], r["n_modules"]): r for r in done if r["case"] != "scaling"}
    points = sorted({(r["shape"], r["n_modules"]) for r in done if r["case"] != "scaling"})
    out = []
    for shape, n in points:
        for name, num, den in RATIOS:
            a, b = by.get((num, shape, n)), by.get((den, shape, n))
            if a and b:
                value = a["module_tokens_per_s"] / b["module_tokens_per_s"]
                out.append(check(name, shape, n, value))
        brain = by.get(("brain", shape, n))
        if brain and brain.get("distill_share") is not None:
            out.append(check("EMA + distill share", shape, n, brain["distill_share"]))
    scaling = [r for r in done if r["case"] == "scaling"]
    if len(scaling) >= 2:
        per = [r["step_ms_per_module"] for r in scaling]
        span = f"{scaling[0]['n_modules']}..{scaling[-1]['n_modules']}"
        out.append(check("scaling max / min", scaling[0]["shape"], span, max(per) / min(per)))
    for r in (r for r in done if r["case"] == "reorganize"):
        out.append(check("reorganize s", r["shape"], r["n_modules"], r["reorganize_ms"] / 1e3))
    return out


def check(name: str, shape: str, n: int | str, value: float) -> dict[str, Any]:
    """One ratio row: its value against the target for (name, shape), else for name alone."""
    target = TARGETS.get((name, shape)) or TARGETS.get((name, None))
    ok = None
    if target is not None:
        op, bound = target
        ok = value >= bound if op == ">=" else value <= bound
    text = None if target is None else f"{target[0]} {target[1]:g}"
    return {"name": name, "shape": shape, "n": n, "value": value, "target": text, "ok": ok}
