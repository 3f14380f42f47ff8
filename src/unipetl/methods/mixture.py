"""ScaLearn and AdapterFusion as a method (ALGORITHMS.md §5): a combination of N frozen source adapters
at Pfeiffer's position of every layer (where the sources were trained):  y = LN(z + C(LN(z))),  with z
the FFN output plus its residual (on a pre-LN block: the FFN output plus C(FFN output + FFN input)), and

- ScaLearn:      C(x) = sum_n omega_n * A_n(x), omega per layer and dimension (L x N x d),
  ScaLearnUniform one scalar per layer and source (L x N), ScaLearn++ one (N x d) shared by all
  layers, ScaLearnUniform++ N scalars; omega ~ N(2 / N, 0.001), dropout on omega itself;
- AdapterFusion: attention over the N outputs with query Q x, keys K A_n(x), values V A_n(x)
  (V initialised to the identity), plus 0.01 * sum_l ||I - V_l||^2 in the loss.

The N source adapters of a layer run as one wide adapter: their down-projections are concatenated
(one matmul), and for ScaLearn the scales are folded into the concatenated up-projection, so the
whole mixture costs two matmuls whatever N is. The sources are frozen buffers, never saved with the
task: the module records their names and content hashes (`PetlConfig.transfer_sources`); reading
them from disk is storage's job (storage.load_source).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..forms import ACTIVATIONS
from ..mixing import MixedOp, rows_of
from ..registry import register_method
from .adapter import attach_at_pfeiffer_position
from .base import Method

# name -> (omega per dimension?, shared across layers?); defaults and learning rates are in the preset rows
SCALEARN_VARIANTS = {
    "scalearn": (True, False),
    "scalearn_uniform": (False, False),
    "scalearn_pp": (True, True),
    "scalearn_uniform_pp": (False, True),
}


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
        scaled_up, bias = self.scaled_up()
        return F.linear(self.sources.hidden(x), scaled_up, bias)

    def scaled_up(self) -> tuple[torch.Tensor, torch.Tensor]:
        """diag(omega_n) up_n for every source side by side, (d, sum of ranks), and the scaled bias (d,)."""
        omega = F.dropout(self.scales.omega, self.dropout, self.training)
        if omega.dim() == 1:
            omega = omega[:, None].expand(-1, self.sources.up_bias.shape[1])
        ranks = torch.tensor(self.sources.ranks, device=omega.device)
        return (self.sources.up_weight * torch.repeat_interleave(omega, ranks, dim=0).T,
                (omega * self.sources.up_bias).sum(0))


class ScaledMixtureOp(MixedOp):
    """ScaLearn for many tasks at one layer: the shared source adapters' hidden activations once for the
    whole batch, then each row's up-projection with its task's scales folded in, in one batched matmul.
    Parts batch together when they combine the same sources (the signature: their content hashes),
    which the op then holds once for all its tasks."""

    def add(self, task: str, payload: "ScaledMixture") -> None:
        shared = next(iter(self.parts.values()), payload).sources
        payload.sources = shared  # one copy of the frozen source adapters for every task
        super().add(task, payload)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sources = next(iter(self.parts.values())).sources
        hidden = sources.hidden(rows_of(x, self.routing.rows))  # (rows, tokens, sum of ranks)
        scaled = {t: self.parts[t].scaled_up() for t in self.active_tasks()}  # once per task and forward
        up = self.rows_from({t: value[0] for t, value in scaled.items()})
        bias = self.rows_from({t: value[1] for t, value in scaled.items()})
        return torch.baddbmm(bias[:, None], hidden, up.transpose(1, 2)).view(*x.shape[:-1], up.shape[1])


class FusionOp(MixedOp):
    """AdapterFusion does not batch across tasks here (each row would need its own d x d query, key and
    value projections): the bank serves each AdapterFusion task's rows in a forward of their own, and
    this applies that task's fusion (zero for the rows of a task without one)."""

    batched = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fusion = self.only_task()
        return fusion(x) if fusion is not None else torch.zeros_like(x)


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


@register_method("param_source", "scaled_mixture")
class ScaledMixtureMethod(Method):
    """The combination layer of ``config.mixture`` over ``host.options["sources"]`` (`SourceAdapter`s)."""

    replaces_design = True

    def attach(self) -> None:
        cfg, host = self.config, self.host
        sources = host.options.get("sources")
        if not sources:
            raise ConfigError("param_source='scaled_mixture' needs its source adapters: build it with "
                              "unipetl.transfer.get_transfer_model(model, sources, method)")
        check_sources(sources, len(host.sites.layers), host.sites.hidden_size)
        d, n = host.sites.hidden_size, len(sources)
        shared = None
        if cfg.mixture in SCALEARN_VARIANTS:
            per_dimension, shared_across_layers = SCALEARN_VARIANTS[cfg.mixture]
            if shared_across_layers:
                shared = self.register("scales", Scales(n, d, per_dimension, cfg.omega_init_scale))
        for i, layer in enumerate(host.sites.layers):
            stack = MixtureSources(sources, i)
            if cfg.mixture == "adapterfusion":
                combination = AdapterFusion(stack, d, cfg.fusion_dropout)
            else:
                scales = shared or self.register(f"{layer.stack}{layer.index}_scales",
                                                 Scales(n, d, per_dimension, cfg.omega_init_scale))
                combination = ScaledMixture(stack, scales, cfg.omega_dropout)
            self.register(f"{layer.stack}{layer.index}_{cfg.mixture}", combination)
            op = FusionOp if cfg.mixture == "adapterfusion" else ScaledMixtureOp
            attach_at_pfeiffer_position(self, layer, combination, op, signature=tuple(s.sha256 for s in sources))

    def extra_loss(self):
        """AdapterFusion's 0.01 * sum over layers of ||I - V||_F^2 (none for ScaLearn)."""
        fusions = [m for m in self.modules().values() if isinstance(m, AdapterFusion)]
        if not fusions or not self.host.training:
            return None
        return self.config.fusion_regularization * sum(f.value_regularizer() for f in fusions)
