"""The design-space config of He et al. (ICLR 2022), with the field names of their released options.

A method is a point in this space: where a change attaches (attention or FFN), its functional form
(adapter, LoRA, prefix, prompt, bias), its insertion form (sequential or parallel) and how it is
composed (add, gated add, scaled). Validity is declared as data (`_ALLOWED_*` tables) so that every
refusal can name the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .presets import PRESETS, TRANSFER_PRESETS

# Stage 2 of transfer learning over frozen source adapters (transfer.py): presets whose config is
# completed by their sources. Named here so that the command line checks a name without torch.
TRANSFER_METHODS = TRANSFER_PRESETS
SCALEARN_METHODS = tuple(name for name in TRANSFER_PRESETS if name.startswith("scalearn"))

ATTN_MODES = ("none", "adapter", "lora", "prefix", "prompt_tuning", "bitfit")
PROMPT_INITS = ("random", "vocab")
ATTN_OPTIONS = ("none", "sequential", "parallel", "concat", "cross_attn", "cross_attn_noln", "cross_attn_relu")
ATTN_COMPOSITIONS = ("add", "gate_add")
FFN_MODES = ("none", "adapter", "lora")
FFN_OPTIONS = ("none", "sequential", "parallel", "pfeiffer")
LAYERNORM_OPTIONS = ("in", "out", "none")
INIT_OPTIONS = ("bert", "lora")
ADAPTER_ACTIVATIONS = ("relu", "swish", "gelu", "tanh")
LORA_INITS = ("lora", "bert")
LEARNABLE_SCALAR = "learnable_scalar"
PARAM_SOURCES = ("owned", "masked_prototype", "gated_diff", "scaled_mixture")
DIFF_STAGES = ("l0", "fixed_mask")
GATE_EVAL_OPTIONS = ("deterministic", "sample")
PROJECTION_GATE_OPTIONS = ("sample", "deterministic", "expected")

# Which insertion options each mode accepts (the first is used when the option is left unset).
_ALLOWED_ATTN_OPTIONS = {
    "none": ("none",),
    "adapter": ("sequential", "parallel"),
    "lora": ("none",),
    "prefix": ("concat", "cross_attn", "cross_attn_noln", "cross_attn_relu"),
    "prompt_tuning": ("none",),
    "bitfit": ("none",),
}
_ALLOWED_FFN_OPTIONS = {
    "none": ("none",),
    "adapter": ("sequential", "parallel", "pfeiffer"),
    "lora": ("none",),
}
# gate_add needs the softmax-normalised prefix logits that only these options compute.
_GATE_ADD_OPTIONS = ("cross_attn", "cross_attn_noln")


@dataclass
class PetlConfig:
    """One point of the unified PETL design space.

    Sizes: ``attn_bn`` is the prefix length / attention-adapter bottleneck / attention LoRA rank /
    prompt length; ``ffn_bn`` the FFN adapter bottleneck or FFN LoRA rank. A bottleneck of -1 means
    "hidden size // reduction_factor", resolved on the backbone (the adapter-transformers convention).
    """

    attn_mode: str = "none"
    attn_option: str = "none"
    attn_composition: str = "add"
    attn_bn: int = -1
    ffn_mode: str = "none"
    ffn_option: str = "none"
    ffn_adapter_layernorm_option: str = "none"
    ffn_adapter_init_option: str = "bert"
    ffn_adapter_scalar: float | str = 1.0
    ffn_bn: int = -1
    reduction_factor: float | None = None
    adapter_act: str = "relu"
    adapter_dropout: float = 0.0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_init: str = "lora"
    lora_targets: tuple[str, ...] = ("q", "v")
    mid_dim: int = 800
    prefix_dropout: float = 0.0
    prefix_mlp: bool = True
    # Prompt tuning's initial prompt: small random vectors, or the embeddings of tokens drawn from the
    # vocabulary (Lester et al.'s "sampled vocab" initialisation).
    prompt_init: str = "random"
    full_finetune: bool = False
    # Where each layer's numbers come from: its own ("owned") or a prototype shared by all layers,
    # read through a per-layer binary mask keeping the `mask_keep` fraction (ProPETL).
    param_source: str = "owned"
    mask_keep: float = 0.5
    mask_learning_rate: float | None = None
    mask_weight_decay: float = 0.1
    # Diff pruning (param_source="gated_diff", ALGORITHMS.md §4): a diff on every backbone weight,
    # hard-concrete gates in the L0 stage, then a fixed sparse mask keeping `diff_density` of the entries.
    diff_stage: str = "l0"
    diff_density: float = 0.005
    l0_penalty: float = 1.25e-7
    gate_init: float = 5.0
    gate_limits: tuple[float, float] = (-1.5, 1.5)
    gate_structured: bool = True
    gate_learning_rate: float = 0.1
    gate_eval: str = "deterministic"
    projection_gates: str = "sample"
    diff_l0_fraction: float = 0.5
    fixmask_learning_rate: float = 5e-5
    # Transfer over frozen source adapters (param_source="scaled_mixture", ALGORITHMS.md §5; built by
    # transfer.get_transfer_model): ScaLearn's four variants or AdapterFusion.
    mixture: str = "scalearn"
    omega_init_scale: float = 2.0
    omega_dropout: float = 0.3
    fusion_dropout: float = 0.1
    fusion_regularization: float = 0.01
    transfer_sources: tuple = ()
    train_head: bool = True
    # Count the backbone's pooler (BERT: dense + tanh over [CLS], under the classification head) as part
    # of the head: trained and stored with it, as RoBERTa's and MPNet's heads hold their own dense layer.
    train_pooler: bool | None = None  # None: wherever the head reads a pooler (BERT), except diff pruning and full
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        self.gate_limits = tuple(self.gate_limits)
        self.transfer_sources = tuple(self.transfer_sources)
        self.validate()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "PetlConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        values = dict(PRESETS[name]["config"])
        values["preset"] = name
        unknown = sorted(set(overrides) - cls.field_names())
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {', '.join(map(repr, unknown))}; valid fields: {', '.join(sorted(cls.field_names()))}"
            )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PetlConfig":
        unknown = sorted(set(values) - cls.field_names())
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(map(repr, unknown))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        out["gate_limits"] = list(self.gate_limits)
        out["transfer_sources"] = list(self.transfer_sources)
        return out

    def replace(self, **changes: Any) -> "PetlConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        for name, value in dataclasses.asdict(self).items():  # NaN passes every range check below
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ConfigError(f"{name}={value!r} must be a finite number")
        _choice("attn_mode", self.attn_mode, ATTN_MODES)
        _choice("attn_option", self.attn_option, ATTN_OPTIONS)
        _choice("attn_composition", self.attn_composition, ATTN_COMPOSITIONS)
        _choice("ffn_mode", self.ffn_mode, FFN_MODES)
        _choice("ffn_option", self.ffn_option, FFN_OPTIONS)
        _choice("ffn_adapter_layernorm_option", self.ffn_adapter_layernorm_option, LAYERNORM_OPTIONS)
        _choice("ffn_adapter_init_option", self.ffn_adapter_init_option, INIT_OPTIONS)
        _choice("adapter_act", self.adapter_act, ADAPTER_ACTIVATIONS)
        _choice("lora_init", self.lora_init, LORA_INITS)
        _choice("prompt_init", self.prompt_init, PROMPT_INITS)
        _choice("param_source", self.param_source, PARAM_SOURCES)

        allowed = _ALLOWED_ATTN_OPTIONS[self.attn_mode]
        if self.attn_option not in allowed:
            raise ConfigError(
                f"attn_option={self.attn_option!r} is impossible with attn_mode={self.attn_mode!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        allowed = _ALLOWED_FFN_OPTIONS[self.ffn_mode]
        if self.ffn_option not in allowed:
            raise ConfigError(
                f"ffn_option={self.ffn_option!r} is impossible with ffn_mode={self.ffn_mode!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        if self.attn_composition == "gate_add" and self.attn_option not in _GATE_ADD_OPTIONS:
            raise ConfigError(
                f"attn_composition='gate_add' needs attn_option in {', '.join(_GATE_ADD_OPTIONS)} "
                f"(the gate is a softmax over prefix and token logits); got attn_option={self.attn_option!r}"
            )

        if self.attn_mode != "none" and self.attn_mode != "bitfit":
            needs_size = self.attn_mode != "adapter" or self.reduction_factor is None
            if needs_size:
                _positive_int("attn_bn", self.attn_bn, f"attn_mode={self.attn_mode!r}")
        if self.ffn_mode != "none" and self.param_source != "scaled_mixture":  # a mixture's size is its sources'
            if self.ffn_mode == "lora" or self.reduction_factor is None:
                _positive_int("ffn_bn", self.ffn_bn, f"ffn_mode={self.ffn_mode!r}")
        if self.reduction_factor is not None and not (
            isinstance(self.reduction_factor, (int, float)) and self.reduction_factor > 0
        ):
            raise ConfigError(f"reduction_factor={self.reduction_factor!r} must be a positive number or None")

        scalar = self.ffn_adapter_scalar
        if isinstance(scalar, str) and scalar != LEARNABLE_SCALAR:
            try:
                self.ffn_adapter_scalar = float(scalar)
            except ValueError:
                raise ConfigError(
                    f"ffn_adapter_scalar={scalar!r} must be a number or {LEARNABLE_SCALAR!r}"
                ) from None
        elif not isinstance(scalar, (int, float, str)) or isinstance(scalar, bool):
            raise ConfigError(f"ffn_adapter_scalar={scalar!r} must be a number or {LEARNABLE_SCALAR!r}")

        for name in ("lora_dropout", "prefix_dropout", "adapter_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value!r} must be a probability in [0, 1)")
        if not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha={self.lora_alpha!r} must be a positive number")
        if self.attn_mode == "lora":
            bad = [t for t in self.lora_targets if t not in ("q", "k", "v", "o")]
            if bad or not self.lora_targets:
                raise ConfigError(f"lora_targets={list(self.lora_targets)!r} must be a non-empty subset of q, k, v, o")
        if self.attn_mode == "prefix" and self.prefix_mlp:
            _positive_int("mid_dim", self.mid_dim, "attn_mode='prefix' with prefix_mlp=True")
        if self.param_source == "masked_prototype":
            if self.attn_mode in ("prompt_tuning", "bitfit") or self.full_finetune or (
                    self.attn_mode == "none" and self.ffn_mode == "none"):
                raise ConfigError(
                    "param_source='masked_prototype' shares one adapter, LoRA or prefix across layers; it needs "
                    f"attn_mode in adapter, lora, prefix or ffn_mode in adapter, lora (got attn_mode={self.attn_mode!r}, "
                    f"ffn_mode={self.ffn_mode!r}, full_finetune={self.full_finetune})")
            if not isinstance(self.mask_keep, (int, float)) or not 0.0 < self.mask_keep <= 1.0:
                raise ConfigError(f"mask_keep={self.mask_keep!r} must be the fraction of entries kept, in (0, 1]")
            if self.mask_learning_rate is not None and not self.mask_learning_rate > 0:
                raise ConfigError(f"mask_learning_rate={self.mask_learning_rate!r} must be positive")
        if self.param_source == "gated_diff":
            self._validate_diff()
        if self.param_source == "scaled_mixture":
            _choice("mixture", self.mixture, TRANSFER_METHODS)
            if self.ffn_mode != "adapter" or self.ffn_option != "pfeiffer" or self.attn_mode != "none":
                raise ConfigError("param_source='scaled_mixture' combines Pfeiffer adapters: it needs ffn_mode='adapter', "
                                  "ffn_option='pfeiffer', attn_mode='none'")
            for name in ("omega_dropout", "fusion_dropout"):
                if not isinstance(getattr(self, name), (int, float)) or not 0.0 <= getattr(self, name) < 1.0:
                    raise ConfigError(f"{name}={getattr(self, name)!r} must be a probability in [0, 1)")
        if self.full_finetune and (self.attn_mode != "none" or self.ffn_mode != "none"):
            raise ConfigError("full_finetune=True trains every weight; it cannot be combined with attn_mode/ffn_mode")
        if self.train_pooler is not None and not isinstance(self.train_pooler, bool):
            raise ConfigError(f"train_pooler={self.train_pooler!r} must be true, false or null (automatic)")

    def _validate_diff(self) -> None:
        if self.train_pooler:
            raise ConfigError("train_pooler=True with param_source='gated_diff': the diff already covers the pooler")

        if self.attn_mode != "none" or self.ffn_mode != "none" or self.full_finetune:
            raise ConfigError("param_source='gated_diff' diffs the backbone's own weights; it needs attn_mode='none', "
                              f"ffn_mode='none', full_finetune=False (got {self.attn_mode!r}, {self.ffn_mode!r}, "
                              f"{self.full_finetune})")
        _choice("diff_stage", self.diff_stage, DIFF_STAGES)
        _choice("gate_eval", self.gate_eval, GATE_EVAL_OPTIONS)
        _choice("projection_gates", self.projection_gates, PROJECTION_GATE_OPTIONS)
        check_density(self.diff_density)
        limits = self.gate_limits
        if len(limits) != 2 or not all(isinstance(v, (int, float)) for v in limits) or not limits[0] < 0 < 1 < limits[1]:
            raise ConfigError(f"gate_limits={list(self.gate_limits)!r} must be the stretch interval (l, r) with l < 0 and r > 1")
        if not isinstance(self.l0_penalty, (int, float)) or self.l0_penalty < 0:
            raise ConfigError(f"l0_penalty={self.l0_penalty!r} must be a non-negative number")
        for name in ("gate_learning_rate", "fixmask_learning_rate"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive number")
        if not isinstance(self.diff_l0_fraction, (int, float)) or not 0.0 < self.diff_l0_fraction < 1.0:
            raise ConfigError(f"diff_l0_fraction={self.diff_l0_fraction!r} is the share of the training budget spent "
                              "in the L0 stage (the fixed-mask stage gets the rest); it must be in (0, 1)")

    # ----------------------------------------------------------------- derived sizes
    def resolve_bn(self, which: str, hidden_size: int) -> int:
        """The bottleneck size for ``which`` ('attn' or 'ffn') on a backbone of ``hidden_size``."""
        value = self.attn_bn if which == "attn" else self.ffn_bn
        if value > 0:
            return int(value)
        if self.reduction_factor is None:
            raise ConfigError(f"{which}_bn is {value} and reduction_factor is unset: give one of them")
        return max(1, int(hidden_size // self.reduction_factor))

    @property
    def is_empty(self) -> bool:
        return self.attn_mode == "none" and self.ffn_mode == "none" and not self.full_finetune


def check_density(density) -> None:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ConfigError(f"diff_density={density!r} must be the fraction of parameters kept, in (0, 1]")


def describe_preset(name: str) -> dict[str, Any]:
    config = PetlConfig.from_preset(name)  # validates the name
    row = PRESETS[name]
    return {"name": name, "summary": row["summary"], "source": row["source"], "learning_rate": row["learning_rate"],
            "config": config.to_dict()}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not a valid value; allowed: {', '.join(allowed)}")


def _positive_int(name: str, value: Any, context: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer with {context}")
