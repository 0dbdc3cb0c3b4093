"""Checkpoints: written atomically (temp file + fsync + os.replace), read with weights_only,
and checked on the way in.

A checkpoint records the library versions that wrote it and a SHA-256 digest of its whole
content (every tensor's bytes, every other value's repr), so that a truncated file, a flipped
bit or a file from another brainnet format is refused with one line instead of being loaded
into a run. Format 1 (no digest, written before 0.2) still loads.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

FORMAT = 2
READABLE = (1, 2)  # formats this brainnet reads


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, damaged or not a brainnet checkpoint."""


def versions() -> dict[str, str]:
    """The versions of brainnet and of the libraries whose numbers a run depends on."""
    out = {}
    for name in ("brainnet", "torch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without install
            out[name] = "unknown"
    out["torch"] = str(torch.__version__)  # a str subclass, which weights_only refuses
    return out


def digest(obj: Any) -> str:
    """SHA-256 over a state's content in a fixed order: tensors by dtype, shape and bytes."""
    h = hashlib.sha256()
    _feed(obj, h)
    return h.hexdigest()


def _feed(obj: Any, h: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(v, h)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` so that a crash never leaves a half-written file behind."""
    path = Path(path)
    body = {"format": FORMAT, "versions": versions(), **state}
    body["digest"] = digest(body)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its format and
    digest; one-line ``CheckpointError`` on bad input."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    shown = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{shown}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a corrupt file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{shown}: not a readable checkpoint ({first}); allowed: a checkpoint.pt written "
            "by brainnet"
        ) from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in READABLE:
        by = state.get("versions", {}).get("brainnet") if isinstance(state, dict) else None
        made = f" (written by brainnet {by})" if by else ""
        raise CheckpointError(
            f"{shown}: format = {fmt!r}{made}: not a checkpoint this brainnet reads; allowed: "
            f"format {', '.join(map(str, READABLE))}"
        )
    if fmt >= 2:
        want = state.pop("digest", None)
        if want != digest(state):
            raise CheckpointError(
                f"{shown}: digest does not match its content (damaged or edited after it was "
                "written); allowed: an intact checkpoint"
            )
    return state


def kept(run_dir: str | Path) -> list[Path]:
    """A run directory's checkpoints, newest first: checkpoint.pt, then the kept older ones
    (``checkpoint-<step>.pt``, see ``rotate``)."""
    run_dir = Path(run_dir)
    older = sorted(run_dir.glob("checkpoint-*.pt"), key=lambda p: p.name, reverse=True)
    latest = run_dir / "checkpoint.pt"
    return ([latest] if latest.exists() else []) + older


def newest_intact(run_dir: str | Path) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest checkpoint of ``run_dir`` that loads and passes its checks, with its state
    and one line for each newer one that did not (skipped)."""
    skipped = []
    for path in kept(run_dir):
        try:
            return path, load_checkpoint(path), skipped
        except CheckpointError as e:
            skipped.append(str(e))
    why = f" ({skipped[0]})" if skipped else ""
    raise CheckpointError(
        f"run directory {str(run_dir)!r}: no intact checkpoint{why}; allowed: a run directory "
        "with a checkpoint.pt written by brainnet"
    )


def rotate(run_dir: str | Path, step: int, keep: int) -> None:
    """Before a new checkpoint.pt is written: keep the current one as ``checkpoint-<step>.pt``
    when ``keep`` > 1 (``step``: the step it holds) and drop all but the newest ``keep`` - 1
    older ones. With keep = 1 the new file simply replaces the old one (atomically)."""
    run_dir = Path(run_dir)
    latest = run_dir / "checkpoint.pt"
    if keep > 1 and latest.exists():
        os.replace(latest, run_dir / f"checkpoint-{step:08d}.pt")
    for old in kept(run_dir)[int(latest.exists()) :][max(keep - 1, 0) :]:
        old.unlink(missing_ok=True)
