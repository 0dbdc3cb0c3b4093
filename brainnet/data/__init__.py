"""Corpora: a seeded multi-domain task corpus (the default), binding tasks with fields for views,
and character-level text files."""

from brainnet.data.base import Batch, Corpus
from brainnet.data.binding import BindingCorpus
from brainnet.data.tasks import TaskCorpus
from brainnet.data.text import TextCorpus
from brainnet.registry import CORPORA

__all__ = [
    "CORPORA",
    "Batch",
    "BindingCorpus",
    "Corpus",
    "TaskCorpus",
    "TextCorpus",
    "build_corpus",
]


def build_corpus(cfg, seed: int) -> Corpus:
    """Build the corpus that ``cfg.kind`` names (a registered corpus kind)."""
    return CORPORA.get(cfg.kind).build(cfg, seed)
