"""Each preset's trainable parameter count equals the closed form of He et al. §3.4 for its config.

The paper's forms (adapter 2rd, LoRA 4rd at attention, prefix 2ld per attention, prompt ld) leave
out biases and layer norms; the formulas here add those terms explicitly.
"""

import pytest

import unipetl
from tiny_models import FAMILIES, FFN, HIDDEN, LAYERS, SMALL_PRESET_SIZES as SMALL, tiny_model
from unipetl import PetlConfig

d, f, L = HIDDEN, FFN, LAYERS


def sublayer_counts(family):
    """(number of attention sub-layers, number of FFN sub-layers): 1 and 1 per layer for encoders,
    3 attentions (encoder self, decoder self, decoder cross) and 2 FFNs per layer for encoder-decoders."""
    return (L, L) if family in ("bert", "roberta", "mpnet") else (3 * L, 2 * L)


def adapter(r, layernorm=False):
    return 2 * r * d + r + d + (2 * d if layernorm else 0)  # down/up weights, biases, optional LN


def prefix_training(l, m, family):
    """Embedding l*d and MLP d->m->(n*2d) per attention group (encoder self, decoder self, decoder cross)."""
    groups = [L] if family in ("bert", "roberta", "mpnet") else [L, L, L]
    return sum(l * d + d * m + m + m * 2 * d * n + 2 * d * n for n in groups)


def expected(preset, family, model):
    n_attn, n_ffn = sublayer_counts(family)
    cfg = PetlConfig.from_preset(preset, **SMALL.get(preset, {}))
    if preset == "houlsby":
        r = d // 16
        return n_attn * adapter(r, layernorm=True) + n_ffn * adapter(r)
    if preset == "pfeiffer":
        return n_ffn * adapter(d // 16)
    if preset in ("parallel", "scaled_parallel"):
        return n_ffn * adapter(d // 2)
    if preset == "lora":
        return n_attn * 4 * cfg.attn_bn * d  # q and v: r(d + d) each
    if preset in ("prefix", "prefix_glue"):
        return prefix_training(cfg.attn_bn, cfg.mid_dim, family)
    if preset == "prompt_tuning":
        return cfg.attn_bn * d
    if preset in ("mam", "mam_glue"):
        return prefix_training(cfg.attn_bn, cfg.mid_dim, family) + n_ffn * adapter(cfg.ffn_bn)
    if preset == "bitfit":  # every bias outside the head (BERT's pooler trains with the head, train_pooler)
        head = {n for n, _ in model.named_parameters() if n.startswith(("classifier", "lm_head", "bert.pooler"))}
        return sum(p.numel() for n, p in model.named_parameters()
                   if n.endswith(".bias") and n not in head and "relative_attention_bias" not in n)
    # ProPETL: one prototype (shared by all layers) plus a float score per masked weight entry per layer.
    if preset == "proadapter":
        r = d // 12
        return adapter(r) + n_ffn * 2 * r * d
    if preset == "prolora":
        r = cfg.attn_bn
        return 2 * (2 * r * d) + n_attn * 2 * (2 * r * d)  # q and v prototypes (A r x d, B d x r) + their scores
    if preset == "proprefix":
        l, m = cfg.attn_bn, cfg.mid_dim
        return (l * d + d * m + m + m * 2 * d + 2 * d) + n_attn * l * 2 * d  # one-site generator + per-site scores
    if preset == "full":
        head = ("classifier",)
        return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(head))
    if preset in ("diffprune", "diffprune_short"):  # L0 stage: a diff w and a gate logit per backbone entry, a group gate per tensor
        backbone = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
        return 2 * sum(p.numel() for p in backbone) + len(backbone)
    raise AssertionError(preset)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", unipetl.list_presets())
def test_trainable_count_matches_closed_form(family, preset):
    if preset == "bitfit" and family == "t5":
        pytest.skip("bias parameters are absent on T5 (bitfit is refused there, see test_bitfit_refused_on_t5)")
    model = tiny_model(family)
    want = expected(preset, family, model)
    petl = unipetl.get_petl_model(model, PetlConfig.from_preset(preset, **SMALL.get(preset, {})))
    report = petl.report()
    assert report["trainable_params"] == want
    trainable = sum(p.numel() for p in petl.parameters() if p.requires_grad)
    assert trainable == want + report["head_params"]


def test_lora_on_the_ffn_is_ten_rd():
    model = tiny_model("bert")
    petl = unipetl.get_petl_model(model, PetlConfig(ffn_mode="lora", ffn_bn=4))
    assert f == 2 * d  # the paper's 10rd assumes f = 4d; in general it is r(d + f) + r(f + d)
    assert petl.report()["trainable_params"] == L * 2 * 4 * (d + f)


def test_prefix_stores_two_l_d_per_attention_after_the_mlp_is_ejected():
    model = tiny_model("bart")
    petl = unipetl.get_petl_model(model, PetlConfig.from_preset("prefix", attn_bn=5, mid_dim=12))
    stored = {k: v.numel() for k, v in petl.stored_tensors().items() if k.startswith("methods.")}
    assert sum(stored.values()) == sublayer_counts("bart")[0] * 2 * 5 * d


def test_bitfit_refused_on_t5():
    with pytest.raises(unipetl.ConfigError, match="no bias parameters"):
        unipetl.get_petl_model(tiny_model("t5"), "bitfit")
