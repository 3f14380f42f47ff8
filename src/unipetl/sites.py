"""Where changes attach in each backbone family: the only module in the library that knows module names.

A site table names, per layer stack, the attention projections, the FFN input/output linears, the
layer norm after the FFN residual and whether the family is pre-LN. `resolve_sites` turns a loaded
transformers model into a flat list of `LayerSites` holding the actual modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class AttentionTable:
    kind: str  # "self" (encoder or decoder self-attention) or "cross" (decoder over encoder output)
    module: str  # the module whose forward input is the sub-layer input x and that computes attention
    q: str
    k: str
    v: str
    o: str


@dataclass(frozen=True)
class StackTable:
    name: str  # "encoder" or "decoder"
    layers: str  # path (relative to `model.base_model`) of the ModuleList of layers
    attention: tuple[AttentionTable, ...]
    ffn_in: tuple[str, ...]  # first FFN linear(s); T5 v1.1 has two (gated)
    ffn_out: str
    ffn_layernorm: str | None  # post-LN models: the LN after the FFN residual
    # The attention sub-layer whose output (after its residual and LN) is the FFN's input, for running the
    # last layer's FFN at the first position only (first_position.py); None where that is not used.
    attention_block: str | None = None


@dataclass(frozen=True)
class FamilyTable:
    family: str
    model_types: tuple[str, ...]
    stacks: tuple[StackTable, ...]
    pre_layernorm: bool = False
    # Families whose attention does not go through transformers' attention interface need their
    # attention forward replaced for prefix tuning (see attention.py).
    manual_attention: bool = False
    # Model classes whose head reads the last layer at the first position only ([CLS] / <s>, directly or
    # through the pooler): their last layer's FFN need not run elsewhere (first_position.py).
    first_position_heads: tuple[str, ...] = ()
    # Text-to-text families read a task prefix before the input ("summarize: ", "translate ... : ").
    task_prefix: bool = False
    # Positions reserved out of config.max_position_embeddings (RoBERTa and MPNet count from the padding
    # index + 1); None where positions are relative and the input length has no such limit (T5).
    reserved_positions: int | None = 0
    # Decoder-only language models: classification tasks train through the LM head (label_words.py).
    causal_lm: bool = False
    # Modules computing q, k and v in one product (GPT-2's c_attn): seen as three linears while a method is
    # attached (linear_views.py), named <path>.q, <path>.k and <path>.v here.
    fused_qkv: tuple[str, ...] = ()


_BERT_LIKE_ATTENTION = (
    AttentionTable("self", "attention.self", "attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense"),
)

_BART_SELF_ATTENTION = AttentionTable("self", "self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                      "self_attn.out_proj")
_BART_ENCODER_ATTENTION = (_BART_SELF_ATTENTION,)
_BART_DECODER_ATTENTION = (_BART_SELF_ATTENTION,
                           AttentionTable("cross", "encoder_attn", "encoder_attn.q_proj", "encoder_attn.k_proj",
                                          "encoder_attn.v_proj", "encoder_attn.out_proj"))

FAMILIES: tuple[FamilyTable, ...] = (
    FamilyTable(
        family="bert",
        model_types=("bert",),
        stacks=(StackTable("encoder", "encoder.layer", _BERT_LIKE_ATTENTION, ("intermediate.dense",), "output.dense",
                           "output.LayerNorm", "attention"),),
        first_position_heads=("BertForSequenceClassification", "BertForMultipleChoice"),
    ),
    FamilyTable(
        family="roberta",
        model_types=("roberta", "xlm-roberta"),
        stacks=(StackTable("encoder", "encoder.layer", _BERT_LIKE_ATTENTION, ("intermediate.dense",), "output.dense",
                           "output.LayerNorm", "attention"),),
        reserved_positions=2,
        first_position_heads=("RobertaForSequenceClassification", "RobertaForMultipleChoice",
                              "XLMRobertaForSequenceClassification", "XLMRobertaForMultipleChoice"),
    ),
    FamilyTable(
        family="mpnet",
        model_types=("mpnet",),
        stacks=(StackTable(
            "encoder", "encoder.layer",
            (AttentionTable("self", "attention.attn", "attention.attn.q", "attention.attn.k", "attention.attn.v",
                            "attention.attn.o"),),
            ("intermediate.dense",), "output.dense", "output.LayerNorm", "attention"),),
        manual_attention=True,
        reserved_positions=2,
        first_position_heads=("MPNetForSequenceClassification", "MPNetForMultipleChoice"),
    ),
    FamilyTable(
        family="t5",
        model_types=("t5", "mt5"),
        stacks=(
            StackTable("encoder", "encoder.block",
                       (AttentionTable("self", "layer.0.SelfAttention", "layer.0.SelfAttention.q",
                                       "layer.0.SelfAttention.k", "layer.0.SelfAttention.v",
                                       "layer.0.SelfAttention.o"),),
                       ("layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wi_0", "layer.1.DenseReluDense.wi_1"),
                       "layer.1.DenseReluDense.wo", None),
            StackTable("decoder", "decoder.block",
                       (AttentionTable("self", "layer.0.SelfAttention", "layer.0.SelfAttention.q",
                                       "layer.0.SelfAttention.k", "layer.0.SelfAttention.v",
                                       "layer.0.SelfAttention.o"),
                        AttentionTable("cross", "layer.1.EncDecAttention", "layer.1.EncDecAttention.q",
                                       "layer.1.EncDecAttention.k", "layer.1.EncDecAttention.v",
                                       "layer.1.EncDecAttention.o")),
                       ("layer.2.DenseReluDense.wi", "layer.2.DenseReluDense.wi_0", "layer.2.DenseReluDense.wi_1"),
                       "layer.2.DenseReluDense.wo", None),
        ),
        pre_layernorm=True,
        task_prefix=True,
        reserved_positions=None,
    ),
    FamilyTable(
        family="bart",
        model_types=("bart",),
        stacks=(
            StackTable("encoder", "encoder.layers", _BART_ENCODER_ATTENTION, ("fc1",), "fc2", "final_layer_norm"),
            StackTable("decoder", "decoder.layers", _BART_DECODER_ATTENTION, ("fc1",), "fc2", "final_layer_norm"),
        ),
    ),
    FamilyTable(
        family="mbart",
        model_types=("mbart",),
        stacks=(
            StackTable("encoder", "encoder.layers", _BART_ENCODER_ATTENTION, ("fc1",), "fc2", None),
            StackTable("decoder", "decoder.layers", _BART_DECODER_ATTENTION, ("fc1",), "fc2", None),
        ),
        pre_layernorm=True,  # unlike BART, mBART normalises before each sub-layer (final_layer_norm is the FFN's input LN)
    ),
    FamilyTable(
        # Decoder-only, pre-RMSNorm; grouped-query attention (k_proj and v_proj narrower than q_proj) and a
        # gated FFN: down_proj(act(gate_proj(x)) * up_proj(x)). ffn_in lists the gate first.
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        stacks=(StackTable(
            "decoder", "layers",
            (AttentionTable("self", "self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                            "self_attn.o_proj"),),
            ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", None),),
        pre_layernorm=True,
        causal_lm=True,
        reserved_positions=None,  # rotary positions: the model's own limit is a training length, not a table size
    ),
    FamilyTable(
        # Decoder-only, pre-LN; its projections are Conv1D (weights stored transposed) and q, k and v one fused
        # Conv1D: methods see them as linear views (linear_views.py).
        family="gpt2",
        model_types=("gpt2",),
        stacks=(StackTable(
            "decoder", "h",
            (AttentionTable("self", "attn", "attn.c_attn.q", "attn.c_attn.k", "attn.c_attn.v", "attn.c_proj"),),
            ("mlp.c_fc",), "mlp.c_proj", None),),
        pre_layernorm=True,
        causal_lm=True,
        fused_qkv=("attn.c_attn",),
    ),
)


@dataclass(frozen=True)
class HeadTable:
    """What the task head of a transformers model class (known by its name's suffix) reads and returns."""

    suffix: str
    peft_task_type: str  # PEFT's TaskType for a LoRA module exported with this head
    has_pooler: bool = True  # extractive-QA models are built without the pooler
    per_position_outputs: tuple[str, ...] = ()  # outputs with one value per input position
    # A causal LM's head is the pretrained vocabulary projection, not a task's: it stays frozen with the
    # backbone and is not stored with a task module (an untied Llama head would be 131 M parameters a task).
    pretrained: bool = False


HEADS: tuple[HeadTable, ...] = (
    HeadTable("ForSequenceClassification", "SEQ_CLS"),
    HeadTable("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
    HeadTable("ForQuestionAnswering", "QUESTION_ANS", has_pooler=False,
              per_position_outputs=("start_logits", "end_logits")),
    HeadTable("ForTokenClassification", "TOKEN_CLS", per_position_outputs=("logits",)),
    HeadTable("ForCausalLM", "CAUSAL_LM", has_pooler=False, per_position_outputs=("logits",), pretrained=True),
    HeadTable("LMHeadModel", "CAUSAL_LM", has_pooler=False, per_position_outputs=("logits",), pretrained=True),  # GPT-2
)
OTHER_HEAD = HeadTable("", "FEATURE_EXTRACTION")


def max_positions(model: nn.Module) -> int | None:
    """The longest input the backbone's position embeddings take (None: no limit, relative positions)."""
    family = family_for(model)
    total = getattr(model.config, "max_position_embeddings", None)
    if family.reserved_positions is None or total is None:
        return None
    return int(total) - family.reserved_positions


def head_table_for(architecture: str) -> HeadTable:
    """The head table of a transformers class name (e.g. 'BertForQuestionAnswering')."""
    return next((table for table in HEADS if architecture.endswith(table.suffix)), OTHER_HEAD)


def head_table(model: nn.Module) -> HeadTable:
    return head_table_for(type(model).__name__)


def supported_model_types() -> list[str]:
    return sorted(t for fam in FAMILIES for t in fam.model_types)


def family_for(model: nn.Module) -> FamilyTable:
    return family_for_config(getattr(model, "config", None), type(model).__name__)


def family_for_config(config, what: str = "model") -> FamilyTable:
    model_type = getattr(config, "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UnsupportedModelError(
        f"unsupported architecture {model_type!r} ({what}); supported model types: "
        f"{', '.join(supported_model_types())}"
    )


# --------------------------------------------------------------------------- resolved sites
@dataclass
class AttentionSites:
    kind: str
    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    paths: dict[str, str]  # projection name -> full module path from the top-level model


@dataclass
class LayerSites:
    stack: str
    index: int  # index within its stack
    attention: list[AttentionSites]
    ffn_in: list[nn.Linear]
    ffn_out: nn.Linear
    ffn_layernorm: nn.Module | None
    paths: dict[str, str] = field(default_factory=dict)  # "ffn_in.i", "ffn_out", "ffn_layernorm" -> full path
    attention_block: nn.Module | None = None  # the module at StackTable.attention_block


@dataclass
class BackboneSites:
    family: FamilyTable
    layers: list[LayerSites]
    base_prefix: str  # path of `model.base_model` inside the top-level model ("" when it is the model)

    @property
    def hidden_size(self) -> int:
        return self.layers[0].ffn_out.out_features

    def stack_layers(self, stack: str) -> list[LayerSites]:
        return [layer for layer in self.layers if layer.stack == stack]


def _get(root: nn.Module, path: str) -> nn.Module | None:
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            return None
        module = getattr(module, part)
    return module


def resolve_sites(model: nn.Module) -> BackboneSites:
    family = family_for(model)
    base = model.base_model
    base_prefix = next((name for name, mod in model.named_modules() if mod is base), "")
    join = (lambda p: f"{base_prefix}.{p}") if base_prefix else (lambda p: p)
    layers: list[LayerSites] = []
    for stack in family.stacks:
        layer_list = _get(base, stack.layers)
        if layer_list is None:
            continue  # e.g. an encoder-only T5 model has no decoder stack
        for index, layer in enumerate(layer_list):
            prefix = f"{stack.layers}.{index}"
            attention = []
            for table in stack.attention:
                paths = {name: join(f"{prefix}.{getattr(table, name)}") for name in ("q", "k", "v", "o", "module")}
                attention.append(AttentionSites(
                    table.kind, _get(layer, table.module), _get(layer, table.q), _get(layer, table.k),
                    _get(layer, table.v), _get(layer, table.o), paths))
            ffn_in = [(_get(layer, p), p) for p in stack.ffn_in if _get(layer, p) is not None]
            paths = {f"ffn_in.{i}": join(f"{prefix}.{p}") for i, (_, p) in enumerate(ffn_in)}
            paths["ffn_out"] = join(f"{prefix}.{stack.ffn_out}")
            if stack.ffn_layernorm:
                paths["ffn_layernorm"] = join(f"{prefix}.{stack.ffn_layernorm}")
            layers.append(LayerSites(
                stack.name, index, attention, [m for m, _ in ffn_in], _get(layer, stack.ffn_out),
                _get(layer, stack.ffn_layernorm) if stack.ffn_layernorm else None, paths,
                _get(layer, stack.attention_block) if stack.attention_block else None))
    if not layers:
        raise UnsupportedModelError(f"no transformer layers found in {type(model).__name__} at the expected paths")
    return BackboneSites(family, layers, base_prefix)
