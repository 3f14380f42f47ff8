"""Design-config validation and presets: every bad value or impossible combination is refused clearly."""

import pytest

import unipetl
from unipetl import ConfigError, PetlConfig


def test_list_presets_has_every_named_method():
    assert set(unipetl.list_presets()) >= {"houlsby", "pfeiffer", "parallel", "scaled_parallel", "lora", "prefix",
                                           "prompt_tuning", "bitfit", "mam", "mam_glue", "full"}


@pytest.mark.parametrize("name", unipetl.list_presets())
def test_every_preset_builds_and_round_trips_through_dict(name):
    config = PetlConfig.from_preset(name)
    assert config.preset == name
    assert PetlConfig.from_dict(config.to_dict()) == config


def test_preset_defaults_follow_the_papers():
    mam = PetlConfig.from_preset("mam")
    assert (mam.attn_mode, mam.attn_option, mam.attn_bn, mam.mid_dim) == ("prefix", "concat", 30, 800)
    assert (mam.ffn_mode, mam.ffn_option, mam.ffn_bn, mam.ffn_adapter_scalar) == ("adapter", "parallel", 512, 4.0)
    assert (mam.ffn_adapter_init_option, mam.ffn_adapter_layernorm_option) == ("lora", "none")
    glue = PetlConfig.from_preset("mam_glue")
    assert (glue.attn_bn, glue.ffn_bn, glue.ffn_adapter_scalar) == (16, 16, 2.0)
    lora = PetlConfig.from_preset("lora")
    assert (lora.attn_bn, lora.lora_alpha, lora.lora_dropout, lora.lora_targets) == (16, 32.0, 0.1, ("q", "v"))
    pfeiffer = PetlConfig.from_preset("pfeiffer")
    assert (pfeiffer.ffn_option, pfeiffer.reduction_factor, pfeiffer.adapter_act) == ("pfeiffer", 16, "relu")
    assert PetlConfig.from_preset("pfeiffer").resolve_bn("ffn", 768) == 48


def test_overrides_apply_and_are_validated():
    assert PetlConfig.from_preset("lora", attn_bn=8).attn_bn == 8
    with pytest.raises(ConfigError, match="unknown config field.*'rank'"):
        PetlConfig.from_preset("lora", rank=8)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown preset 'lorra'.*houlsby.*pfeiffer"):
        PetlConfig.from_preset("lorra")


@pytest.mark.parametrize("field,value,allowed", [
    ("attn_mode", "adaptor", "none, adapter, lora, prefix, prompt_tuning, bitfit"),
    ("attn_option", "serial", "none, sequential, parallel, concat"),
    ("attn_composition", "mul", "add, gate_add"),
    ("ffn_mode", "prefix", "none, adapter, lora"),
    ("ffn_option", "concat", "none, sequential, parallel, pfeiffer"),
    ("ffn_adapter_layernorm_option", "both", "in, out, none"),
    ("ffn_adapter_init_option", "xavier", "bert, lora"),
    ("lora_init", "zeros", "lora, bert"),
    ("adapter_act", "softmax", "relu, swish"),
])
def test_unknown_values_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as err:
        PetlConfig(**{field: value})
    assert field in str(err.value) and repr(value) in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize("kwargs,message", [
    (dict(attn_mode="lora", attn_option="parallel", attn_bn=8), "attn_option='parallel' is impossible with attn_mode='lora'; allowed: none"),
    (dict(attn_mode="adapter", attn_option="concat", attn_bn=8), "allowed: sequential, parallel"),
    (dict(attn_mode="prefix", attn_option="sequential", attn_bn=8), "allowed: concat, cross_attn"),
    (dict(ffn_mode="adapter", ffn_option="none", ffn_bn=8), "ffn_option='none' is impossible with ffn_mode='adapter'"),
    (dict(ffn_mode="lora", ffn_option="parallel", ffn_bn=8), "impossible with ffn_mode='lora'"),
    (dict(attn_mode="prefix", attn_option="concat", attn_composition="gate_add", attn_bn=8), "gate_add"),
    (dict(attn_mode="prefix", attn_option="cross_attn_relu", attn_composition="gate_add", attn_bn=8), "gate_add"),
    (dict(attn_mode="lora", attn_bn=0), "attn_bn=0 must be a positive integer"),
    (dict(ffn_mode="adapter", ffn_option="sequential"), "ffn_bn=-1 must be a positive integer"),
    (dict(ffn_mode="lora", ffn_bn=-1, reduction_factor=4), "ffn_bn=-1 must be a positive integer"),
    (dict(ffn_mode="adapter", ffn_option="parallel", ffn_bn=8, ffn_adapter_scalar="big"), "ffn_adapter_scalar='big'"),
    (dict(lora_dropout=1.5), "lora_dropout=1.5 must be a probability"),
    (dict(attn_mode="lora", attn_bn=4, lora_targets=("q", "x")), "lora_targets"),
    (dict(full_finetune=True, attn_mode="lora", attn_bn=4), "full_finetune"),
    (dict(ffn_mode="adapter", ffn_option="parallel", reduction_factor=-2), "reduction_factor=-2"),
])
def test_impossible_combinations_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=pytest.importorskip("re").escape(message)):
        PetlConfig(**kwargs)


def test_scalar_accepts_numbers_as_strings_and_learnable():
    assert PetlConfig(ffn_mode="adapter", ffn_option="parallel", ffn_bn=4, ffn_adapter_scalar="4").ffn_adapter_scalar == 4.0
    cfg = PetlConfig(ffn_mode="adapter", ffn_option="parallel", ffn_bn=4, ffn_adapter_scalar="learnable_scalar")
    assert cfg.ffn_adapter_scalar == "learnable_scalar"


def test_prompt_init_vocab_starts_from_token_embeddings_and_bad_values_are_refused():
    import torch

    from tiny_models import tiny_model

    model = tiny_model("bert")
    table = model.get_input_embeddings().weight.detach().clone()
    petl = unipetl.get_petl_model(model, PetlConfig.from_preset("prompt_tuning", attn_bn=6, prompt_init="vocab"))
    prompt = petl.methods["prompt"].embedding.detach()
    assert all(any(torch.equal(row, token) for token in table) for row in prompt)  # each row is a token's embedding
    random = unipetl.get_petl_model(tiny_model("bert"), PetlConfig.from_preset("prompt_tuning", attn_bn=6,
                                                                               prompt_init="random"))
    assert not any(torch.equal(random.methods["prompt"].embedding[0].detach(), token) for token in table)
    with pytest.raises(ConfigError, match="prompt_init"):
        PetlConfig.from_preset("prompt_tuning", prompt_init="words")
