"""Two-stage transfer over frozen source adapters: ScaLearn and AdapterFusion (ALGORITHMS.md §5).

Stage 1 is plain `pfeiffer` task modules; stage 2 is a preset (`scalearn`, `scalearn_uniform`,
`scalearn_pp`, `scalearn_uniform_pp`, `adapterfusion`) attached over those modules. The method
itself is methods/mixture.py; reading the sources is storage's (`storage.load_source`). This module
is the entry point that puts them together.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .config import TRANSFER_METHODS, PetlConfig
from .errors import ConfigError
from .methods.mixture import AdapterFusion, ScaledMixture, SourceAdapter, check_sources
from .model import PetlModel
from .storage import load_petl_model, load_source, sources_for_module

__all__ = ["TRANSFER_METHODS", "get_transfer_model", "load_transfer_model", "load_source", "sources_for_module",
           "SourceAdapter", "ScaledMixture", "AdapterFusion"]


def get_transfer_model(model: nn.Module, sources: list, method: str = "scalearn", *, fast_cpu_dropout: bool = True,
                       **overrides) -> PetlModel:
    """Stage 2 on ``model`` (a fresh backbone with a new head): ``sources`` are task-module directories
    (or `SourceAdapter`s); backbone and sources frozen, the combination layer and head trainable.
    ``overrides``: config fields over the preset's. ``fast_cpu_dropout``: as for PetlModel."""
    if method not in TRANSFER_METHODS:
        raise ConfigError(f"unknown transfer method {method!r}; known: {', '.join(TRANSFER_METHODS)}")
    loaded = [s if isinstance(s, SourceAdapter) else load_source(model, s) for s in sources]
    if not loaded:
        check_sources(loaded, 0, 0)
    paths = [None if isinstance(s, SourceAdapter) else str(Path(s).resolve()) for s in sources]
    records = tuple({"name": s.name, "sha256": s.sha256, "path": path} for s, path in zip(loaded, paths))
    config = PetlConfig.from_preset(method, **{"transfer_sources": records, **overrides, "ffn_bn": loaded[0].rank})
    return PetlModel(model, config, sources=loaded, fast_cpu_dropout=fast_cpu_dropout)


def load_transfer_model(model: nn.Module, directory, sources: list | None = None) -> PetlModel:
    """Rebuild a saved transfer module on ``model`` over its source adapters (see `storage.sources_for_module`)."""
    return load_petl_model(model, directory, sources=sources)
