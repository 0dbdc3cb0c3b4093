"""Character-level corpus from a UTF-8 text file (tinyshakespeare ships with brainnet)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from brainnet.config import CorpusConfig
from brainnet.config_errors import Problems, check, problem
from brainnet.data.base import Batch, Corpus, Split
from brainnet.registry import CORPORA

#: Text files shipped inside the package, usable by name as ``corpus.path``.
BUILTIN_TEXTS = {"tinyshakespeare": "tinyshakespeare.txt"}


def resolve_text_path(path: str) -> Path:
    """A built-in text name or a file path -> an existing, non-empty, UTF-8 text file."""
    if path in BUILTIN_TEXTS:
        return Path(str(resources.files("brainnet.data") / BUILTIN_TEXTS[path]))
    allowed = f"a UTF-8 text file or a built-in ({', '.join(BUILTIN_TEXTS)})"
    try:
        p = Path(path).expanduser()
        if not p.exists():
            raise ValueError(f"no such file; allowed: {allowed}")
        if not p.is_file():
            raise ValueError(f"not a file; allowed: {allowed}")
        data = p.read_bytes()  # the whole file: a NUL or a bad byte may come late
    except (OSError, RuntimeError) as e:  # name too long, unreadable, ~user without a home
        reason = getattr(e, "strerror", None) or e
        raise ValueError(f"cannot open ({reason}); allowed: {allowed}") from None
    if not data.strip():
        raise ValueError(f"file is empty; allowed: {allowed}")
    if (nul := data.find(b"\x00")) >= 0:
        raise ValueError(f"looks binary (a NUL byte at byte {nul}); allowed: {allowed}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start}); allowed: {allowed}") from None
    return p


@CORPORA.register("text")
class TextCorpus(Corpus):
    """nanoGPT's shakespeare_char recipe: vocabulary = the file's characters, the first
    ``1 - val_fraction`` of the file is train, the rest val (contiguous, so they never overlap)."""

    class Config(CorpusConfig):
        kind: Literal["text"] = "text"
        path: str = Field("tinyshakespeare", description="built-in text name or UTF-8 file")
        val_fraction: float = Field(0.1, gt=0, lt=1, description="tail of the file used for val")

        @field_validator("path")
        @classmethod
        def _exists(cls, v: str) -> str:
            resolve_text_path(v)
            return v

        @check("path", "val_fraction", "block_size")
        def _long_enough(self) -> Problems:
            n = len(resolve_text_path(self.path).read_text(encoding="utf-8"))
            n_train = int(n * (1 - self.val_fraction))
            for split, size in (("train", n_train), ("val", n - n_train)):
                if size < self.block_size + 1:
                    yield problem(
                        "path",
                        self.path,
                        f"the {split} split has {size} characters; allowed: at least "
                        f"block_size + 1 = {self.block_size + 1}",
                    )
                    return

    def __init__(self, cfg: Config) -> None:
        text = resolve_text_path(cfg.path).read_text(encoding="utf-8")
        chars = sorted(set(text))
        self.itos = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)
        self.block_size = cfg.block_size
        self.domains = ["text"]
        data = torch.tensor(
            [self.stoi[c] for c in text], dtype=torch.int16 if len(chars) < 2**15 else torch.int32
        )
        n = int(len(data) * (1 - cfg.val_fraction))
        self.splits = {"train": data[:n], "val": data[n:]}  # each >= block_size + 1 (Config)

    @classmethod
    def build(cls, cfg: Config, seed: int) -> TextCorpus:
        return cls(cfg)

    def batch(self, split: Split, batch_size: int, generator: torch.Generator) -> Batch:
        data = self.splits[split]
        T = self.block_size
        ix = torch.randint(len(data) - T, (batch_size,), generator=generator)  # x = data[i : i+T]
        offsets = ix[:, None] + torch.arange(T + 1)  # [B, T+1]
        seq = data[offsets].long()
        return Batch(seq[:, :-1], seq[:, 1:], torch.zeros(batch_size, dtype=torch.long))

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def vocab(self) -> dict[str, Any]:
        return {"kind": "char", "itos": self.itos}
