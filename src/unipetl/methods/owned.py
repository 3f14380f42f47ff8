"""Owned parameters: every layer holds its own (plain adapter, LoRA, prefix)."""

from __future__ import annotations

from ..forms import OwnedParams
from ..registry import register_source
from .base import ParameterSource


@register_source("owned")
class OwnedSource(ParameterSource):
    def params(self, group, make_tensors, masked):
        return OwnedParams(make_tensors())

    def prefix(self, make_prototype, make_owned, n_sites: int):
        return make_owned(n_sites)
