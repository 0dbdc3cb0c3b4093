"""Views: which fields of the input each cluster (or module) receives, like sensory areas."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from brainnet.config.base import Strict

FieldId = Annotated[int, Field(ge=1, description="a field id (0, the shared field, is implicit)")]


class ViewsConfig(Strict):
    """Each cluster (``per: cluster``) or module (``per: module``, global module order) gets
    ``fields[i % len(fields)]``: the fields it receives besides field 0, which every view sees.
    Every other input token reaches it as the corpus's blank token; targets stay whole. A
    corpus with fields (``binding``) says what the ids mean."""

    per: Literal["cluster", "module"] = Field(
        "cluster", description="views go to clusters, or to modules one by one"
    )
    fields: list[Annotated[list[FieldId], Field(min_length=1)]] = Field(
        min_length=1, description="the fields of view i; entry i % len applies to unit i"
    )
