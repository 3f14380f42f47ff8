"""Two-stage transfer over frozen source adapters: ScaLearn and AdapterFusion (ALGORITHMS.md §5).

Stage 1 is plain `pfeiffer` task modules. Stage 2 puts a combination layer at the Pfeiffer position of
every layer, over the N frozen source adapters A_n:  y = LN(z + C(LN(z))),  with z the FFN output plus
its residual and

- ScaLearn:      C(x) = sum_n omega_n * A_n(x), omega per layer and dimension (L x N x d),
  ScaLearnUniform one scalar per layer and source (L x N), ScaLearn++ one (N x d) shared by all
  layers, ScaLearnUniform++ N scalars; omega ~ N(2 / N, 0.001), dropout on omega itself;
- AdapterFusion: attention over the N outputs with query Q x, keys K A_n(x), values V A_n(x)
  (V initialised to the identity), plus 0.01 * sum_l ||I - V_l||^2 in the loss.

The N source adapters of a layer run as one wide adapter: their down-projections are concatenated
(one matmul), and for ScaLearn the scales are folded into the concatenated up-projection, so the
whole mixture costs two matmuls whatever N is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import SCALEARN_METHODS, TRANSFER_METHODS
from .errors import ConfigError, ModuleFormatError
from .forms import ACTIVATIONS

SCALEARN_VARIANTS = {  # name -> (omega per dimension?, shared across layers?, default omega dropout)
    "scalearn": (True, False, 0.3),
    "scalearn_uniform": (False, False, 0.3),
    "scalearn_pp": (True, True, 0.3),
    "scalearn_uniform_pp": (False, True, 0.0),
}
assert tuple(SCALEARN_VARIANTS) == SCALEARN_METHODS
TRANSFER_LEARNING_RATES = {**{name: 6e-3 for name in SCALEARN_VARIANTS}, "adapterfusion": 5e-5}
TRANSFER_FAMILIES = ("bert", "roberta", "mpnet")  # post-LN encoders: the Pfeiffer position is the FFN output LN


@dataclass
class SourceAdapter:
    """A frozen stage-1 adapter: per layer (down_weight, down_bias, up_weight, up_bias), its activation and identity."""

    name: str
    sha256: str
    activation: str
    layers: list[dict[str, torch.Tensor]]

    @property
    def rank(self) -> int:
        return int(self.layers[0]["down_weight"].shape[0])


def load_source(model: nn.Module, directory, name: str | None = None) -> SourceAdapter:
    """Read a `pfeiffer` task module as a transfer source, refusing other backbones and other methods."""
    from .sites import resolve_sites
    from .storage import WEIGHTS_FILE, check_backbone, read_module

    header, tensors = read_module(directory)
    check_backbone(model, header, directory)
    config = header["config"]
    if not (config.get("ffn_mode") == "adapter" and config.get("ffn_option") == "pfeiffer"
            and config.get("attn_mode") == "none" and config.get("param_source") == "owned"
            and config.get("ffn_adapter_layernorm_option") == "none"):
        raise ModuleFormatError(f"{directory}: a transfer source must be a plain Pfeiffer adapter module "
                                f"(preset 'pfeiffer'); this one is {config.get('preset')!r}")
    sites = resolve_sites(model)
    layers = []
    for layer in sites.layers:
        prefix = f"methods.{layer.stack}{layer.index}_ffn_adapter.source.params."
        try:
            tensors_of_layer = {k: tensors[prefix + k] for k in ("down_weight", "down_bias", "up_weight", "up_bias")}
        except KeyError as missing:
            raise ModuleFormatError(f"{directory}: no adapter tensor {missing} for layer {layer.index}") from None
        scalar = float(config.get("ffn_adapter_scalar", 1.0))
        if scalar != 1.0:  # fold the adapter's output scale into its up-projection
            tensors_of_layer["up_weight"] = tensors_of_layer["up_weight"] * scalar
            tensors_of_layer["up_bias"] = tensors_of_layer["up_bias"] * scalar
        layers.append(tensors_of_layer)
    digest = hashlib.sha256((Path(directory) / WEIGHTS_FILE).read_bytes()).hexdigest()
    task = (header.get("task") or {}).get("name")
    return SourceAdapter(name or task or Path(directory).name, digest, config.get("adapter_act", "relu"), layers)


class MixtureSources(nn.Module):
    """One layer's N source adapters concatenated into one wide adapter (frozen buffers, never saved)."""

    def __init__(self, sources: list[SourceAdapter], index: int):
        super().__init__()
        parts = [s.layers[index] for s in sources]
        self.ranks = [s.rank for s in sources]
        self.act = ACTIVATIONS[sources[0].activation]
        self.register_buffer("down_weight", torch.cat([p["down_weight"] for p in parts]).clone(), persistent=False)
        self.register_buffer("down_bias", torch.cat([p["down_bias"] for p in parts]).clone(), persistent=False)
        self.register_buffer("up_weight", torch.cat([p["up_weight"] for p in parts], dim=1).clone(), persistent=False)
        self.register_buffer("up_bias", torch.stack([p["up_bias"] for p in parts]).clone(), persistent=False)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """All sources' bottleneck activations, (..., sum of ranks)."""
        return self.act(F.linear(x, self.down_weight, self.down_bias))

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Each source's output A_n(x), stacked on a new second-to-last axis: (..., N, d)."""
        h = self.hidden(x)
        outs = [F.linear(part, up, bias) for part, up, bias in
                zip(h.split(self.ranks, -1), self.up_weight.split(self.ranks, 1), self.up_bias)]
        return torch.stack(outs, dim=-2)


class Scales(nn.Module):
    """omega: (N, d) or (N,), initialised N(init_scale / N, 0.001)."""

    def __init__(self, n_sources: int, hidden: int, per_dimension: bool, init_scale: float):
        super().__init__()
        shape = (n_sources, hidden) if per_dimension else (n_sources,)
        self.omega = nn.Parameter(torch.randn(shape) * 0.001 + init_scale / n_sources)


class ScaledMixture(nn.Module):
    """ScaLearn at one layer: sum_n omega_n * A_n(x), with inverted dropout on omega itself."""

    def __init__(self, sources: MixtureSources, scales: Scales, dropout: float):
        super().__init__()
        self.sources = sources
        object.__setattr__(self, "scales", scales)  # owned by the transfer model (shared across layers for ++)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        omega = F.dropout(self.scales.omega, self.dropout, self.training)
        if omega.dim() == 1:
            omega = omega[:, None].expand(-1, self.sources.up_bias.shape[1])
        ranks = torch.tensor(self.sources.ranks, device=omega.device)
        # diag(omega_n) up_n for every source, side by side: (d, sum of ranks)
        scaled_up = self.sources.up_weight * torch.repeat_interleave(omega, ranks, dim=0).T
        return F.linear(self.sources.hidden(x), scaled_up, (omega * self.sources.up_bias).sum(0))


class AdapterFusion(nn.Module):
    """Pfeiffer et al.'s fusion at one layer: attention of the query Q x over the N source outputs."""

    def __init__(self, sources: MixtureSources, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.sources = sources
        self.query, self.key = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden, bias=False)
        for linear in (self.query, self.key):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        with torch.no_grad():
            self.value.weight.copy_(torch.full((hidden, hidden), 1e-6).fill_diagonal_(1.0))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.sources.outputs(x)  # (..., N, d)
        scores = torch.einsum("...d,...nd->...n", self.query(x), self.key(outputs))
        weights = torch.softmax(self.dropout(scores), dim=-1)
        return torch.einsum("...n,...nd->...d", weights, self.value(outputs))

    def value_regularizer(self) -> torch.Tensor:
        identity = torch.eye(self.value.weight.shape[0], device=self.value.weight.device)
        return ((identity - self.value.weight) ** 2).sum()


def attach_transfer(petl, sources: list[SourceAdapter]) -> None:
    """Put the combination layer of ``petl.config.mixture`` at the Pfeiffer position of every layer."""
    from .insertion import PfeifferLayerNorm, set_module

    cfg, sites = petl.config, petl.sites
    if sites.family.family not in TRANSFER_FAMILIES:
        raise ConfigError(f"transfer methods sit at the post-LN Pfeiffer position; supported families: "
                          f"{', '.join(TRANSFER_FAMILIES)} (got {sites.family.family!r})")
    check_sources(sources, len(sites.layers), sites.hidden_size)
    d, n = sites.hidden_size, len(sources)
    shared = None
    if cfg.mixture in SCALEARN_VARIANTS:
        per_dimension, shared_across_layers, _ = SCALEARN_VARIANTS[cfg.mixture]
        if shared_across_layers:
            shared = petl._register("scales", Scales(n, d, per_dimension, cfg.omega_init_scale))
    for i, layer in enumerate(sites.layers):
        stack = MixtureSources(sources, i)
        if cfg.mixture == "adapterfusion":
            combination = AdapterFusion(stack, d, cfg.fusion_dropout)
        else:
            scales = shared or petl._register(f"{layer.stack}{layer.index}_scales", Scales(n, d, per_dimension,
                                                                                         cfg.omega_init_scale))
            combination = ScaledMixture(stack, scales, cfg.omega_dropout)
        petl._register(f"{layer.stack}{layer.index}_{cfg.mixture}", combination)
        wrapper = PfeifferLayerNorm(layer.ffn_layernorm, combination)
        petl._wrapped[layer.paths["ffn_layernorm"]] = layer.ffn_layernorm
        set_module(petl.model, layer.paths["ffn_layernorm"], wrapper)


def check_sources(sources: list[SourceAdapter], n_layers: int, hidden: int) -> None:
    if not sources:
        raise ConfigError("a transfer method needs at least one source adapter; got an empty source list")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"source names must be unique, got {names}")
    for source in sources:
        if len(source.layers) != n_layers or source.layers[0]["up_weight"].shape[0] != hidden:
            raise ConfigError(f"source {source.name!r} does not fit this backbone ({len(source.layers)} layers)")
    activations = {s.activation for s in sources}
    if len(activations) > 1:  # one concatenated adapter applies one activation
        raise ConfigError(f"sources use different adapter activations {sorted(activations)}; they cannot be combined")


def transfer_regularizer(petl) -> torch.Tensor | None:
    """AdapterFusion's 0.01 * sum over layers of ||I - V||_F^2 (None for ScaLearn)."""
    fusions = [m for m in petl.methods.values() if isinstance(m, AdapterFusion)]
    if not fusions:
        return None
    return petl.config.fusion_regularization * sum(f.value_regularizer() for f in fusions)


def get_transfer_model(model: nn.Module, sources: list, method: str = "scalearn", *, fast_cpu_dropout: bool = True,
                       **overrides):
    """Stage 2 on ``model`` (a fresh backbone with a new head): ``sources`` are task-module directories
    (or `SourceAdapter`s); backbone and sources frozen, the combination layer and head trainable.
    ``fast_cpu_dropout``: as for PetlModel."""
    from .config import PetlConfig
    from .model import PetlModel

    if method not in TRANSFER_METHODS:
        raise ConfigError(f"unknown transfer method {method!r}; known: {', '.join(TRANSFER_METHODS)}")
    loaded = [s if isinstance(s, SourceAdapter) else load_source(model, s) for s in sources]
    paths = [None if isinstance(s, SourceAdapter) else str(Path(s).resolve()) for s in sources]
    values = dict(ffn_mode="adapter", ffn_option="pfeiffer", param_source="scaled_mixture", mixture=method,
                  preset=method, transfer_sources=tuple({"name": s.name, "sha256": s.sha256, "path": path}
                                                        for s, path in zip(loaded, paths)))
    if method in SCALEARN_VARIANTS:
        values["omega_dropout"] = SCALEARN_VARIANTS[method][2]
    values.update(overrides)
    if not loaded:
        check_sources(loaded, 0, 0)
    values["ffn_bn"] = loaded[0].rank
    return PetlModel(model, PetlConfig(**values), sources=loaded, fast_cpu_dropout=fast_cpu_dropout)


def sources_for_module(model: nn.Module, config, directory, sources: list | None = None) -> list[SourceAdapter]:
    """The source adapters a saved transfer module was trained over: ``sources`` (directories, in the
    recorded order) or the paths recorded in its header. Each must have the recorded content hash."""
    recorded = list(config.transfer_sources)
    if sources is not None and len(sources) != len(recorded):
        raise ModuleFormatError(f"{directory} was trained over {len(recorded)} sources "
                                f"({', '.join(r['name'] for r in recorded)}); got {len(sources)}")
    loaded = []
    for i, record in enumerate(recorded):
        path = sources[i] if sources is not None else record.get("path")
        if path is None or not Path(path).is_dir():
            raise ModuleFormatError(f"{directory}: source {record['name']!r} is missing (expected at {path}); "
                                    "pass the source directories explicitly")
        source = load_source(model, path, name=record["name"])
        if source.sha256 != record["sha256"]:
            raise ModuleFormatError(f"{directory}: source {record['name']!r} at {path} is not the adapter this module "
                                    f"was trained over (content hash {source.sha256[:12]}..., recorded "
                                    f"{record['sha256'][:12]}...)")
        loaded.append(source)
    return loaded


def load_transfer_model(model: nn.Module, directory, sources: list | None = None):
    """Rebuild a saved transfer module on ``model`` over its source adapters (see `sources_for_module`)."""
    from .storage import load_petl_model

    return load_petl_model(model, directory, sources=sources)
