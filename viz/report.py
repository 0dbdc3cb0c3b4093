"""``brainnet report RUN_DIR`` and ``brainnet compare RUN_DIR...``: self-contained HTML pages.

Every image is embedded (base64 PNG), so a report is one file that can be mailed or archived.
A plot whose data the run lacks is replaced by a one-line note, never drawn empty.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from brainnet.metrics import Run, open_run
from brainnet.viz import plots

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; }
td:first-child { color: #555; } img { max-width: 100%; } .note { color: #777; font-style: italic; }
"""
# Marks the page once every image has decoded (used by the browser test, harmless elsewhere).
CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesOk = imgs.every(i => i.complete && i.naturalWidth > 0);
});
</script>"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _section(title: str, plot: plots.Plot) -> str:
    if isinstance(plot, str):
        return f"<h2>{html.escape(title)}</h2><p class='note'>{html.escape(plot)}</p>"
    src = f"data:image/png;base64,{_png(plot)}"
    return f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{src}'>"


def summary(run: Run) -> dict[str, Any]:
    rows = run.metrics.to_pylist()
    trained = [r for r in rows if r.get("tokens_per_s") is not None]
    start = next((e for e in run.events if e["kind"] == "run_start"), {})
    end = next((e for e in run.events if e["kind"] == "run_end"), {})
    cfg = run.config
    soc = cfg.get("society") or {}

    def mean(key: str) -> float | None:
        vals = [r[key] for r in trained if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    return {
        "scenario": cfg.get("name"),
        "topology": soc.get("topology", "independent modules"),
        "seed": cfg.get("seed"),
        "steps": end.get("steps", rows[-1]["step"] if rows else 0),
        "modules": start.get("n_modules"),
        "parameters": start.get("params_total"),
        "device": start.get("device"),
        "initial val loss": end.get("initial_val_loss"),
        "final val loss": end.get("final_val_loss"),
        "final train loss": end.get("final_train_loss"),
        **answer_summary(run, rows),
        "tokens / s": mean("tokens_per_s"),
        "module-token passes / s": mean("module_tokens_per_s"),
        "messages / step": mean("messages"),
        "bytes / step": mean("bytes"),
        "simulated ms / step": mean("sim_time_ms"),
        "wall time (s)": end.get("wall_s"),
        "torch": start.get("torch"),
    }


#: summary rows a run without answer tokens leaves out of its report (``compare`` keeps them)
ANSWER_KEYS = ("final val answer loss", "final val answer acc", "answer floor (no communication)")


def answer_summary(run: Run, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The last evaluation's answer-token loss and accuracy, and the no-communication floor of
    the answer loss (``vocab.json``), None where the run has none."""
    evals = [r for r in rows if r.get("val_loss") is not None]
    last = evals[-1] if evals else {}
    return {
        ANSWER_KEYS[0]: last.get("val_answer_loss"),
        ANSWER_KEYS[1]: last.get("val_answer_acc"),
        ANSWER_KEYS[2]: plots.vocab(run).get("answer_floor_mean"),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def render(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` and return its path."""
    run = open_run(run_dir)
    items = {k: v for k, v in summary(run).items() if k not in ANSWER_KEYS or v is not None}
    table = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in items.items())
    sections = [_section(t, p) for t, p in plots.society_graphs(run)]
    titles = {
        "losses": "losses (society, per cluster, per domain)",
        "answers": "answer tokens: loss and accuracy per domain (dashed: no-communication floor)",
        "routing": "routing: domain x cluster, load per cluster, specialisation (MI)",
        "blackboard": "blackboard: occupancy and who wrote",
        "arousal": "arousal and focus, and what arousal set (k, rounds, temperature, lr scale)",
        "collapse": "collapse diagnostics per module",
        "distillation": "distillation: loss and teacher statistics",
        "emergence": "Δφ, θ and reorganisation events",
        "communication": "communication cost against loss",
    }
    sections += [_section(titles[f.__name__], f(run)) for f in plots.ALL]
    name = html.escape(str(run.config.get("name")))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>brainnet: {name}</title>"
        f"<style>{STYLE}</style></head><body><h1>{name}</h1>"
        f"<p>{html.escape(str(run.config.get('description', '')))}</p>"
        f"<p class='note'>{html.escape(str(Path(run_dir).resolve()))}</p>"
        f"<table>{table}</table>{''.join(sections)}{CHECK}</body></html>"
    )
    out = Path(run_dir) / "report.html"
    tmp = out.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def compare(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Overlay runs: validation / train loss against steps and against messages sent."""
    runs = [open_run(d) for d in run_dirs]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for run in runs:
        rows = run.metrics.to_pylist()
        label = f"{run.config.get('name')} ({Path(run.path).name})"
        s, v = plots._series(rows, "val_loss")
        axes[0].plot(s, v, "o-", ms=3, label=label)
        pts = [r for r in rows if r.get("train_loss") is not None]
        sent, total, last = [], 0.0, 0
        for r in pts:
            total += (r.get("messages") or 0.0) * (r["step"] - last)
            last = r["step"]
            sent.append(total)
        axes[1].plot(sent, [r["train_loss"] for r in pts], label=label)
    axes[0].set(title="validation loss", xlabel="step", ylabel="CE (nats / token)")
    axes[1].set(title="train loss against messages sent", xlabel="messages (cumulative)")
    axes[1].set_xscale("symlog")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    rows = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in summary(r).values()) + "</tr>" for r in runs
    )
    head = "".join(f"<th>{k}</th>" for k in summary(runs[0]))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>brainnet: compare</title>"
        f"<style>{STYLE}</style></head><body><h1>compare {len(runs)} runs</h1>"
        f"<img alt='compare' src='data:image/png;base64,{_png(fig)}'>"
        f"<table><tr>{head}</tr>{rows}</table>{CHECK}</body></html>"
    )
    out = Path(out)
    out.write_text(page, encoding="utf-8")
    return out
