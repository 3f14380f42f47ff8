"""Numerical equivalence: identity at init, PEFT's LoRA, an independent prefix-attention computation,
prompt tuning as prepended embeddings, and merge()."""

import math

import pytest
import torch
import torch.nn.functional as F

import unipetl
from tiny_models import ENCODERS, FAMILIES, logits, tiny_batch, tiny_model
from unipetl import PetlConfig

peft = pytest.importorskip("peft", reason="PEFT is a test dependency (pip install -e .[test])")

PEFT_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "mpnet": ["q", "v"], "t5": ["q", "v"],
                "bart": ["q_proj", "v_proj"]}


def randomize(petl, seed=3, scale=0.1):
    """Give every method parameter a non-trivial value, so identities at init do not hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in petl.methods.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", ["lora", "parallel", "scaled_parallel"])
def test_identity_at_initialisation(family, preset):
    batch = tiny_batch(family)
    reference = logits(tiny_model(family), batch)
    petl = unipetl.get_petl_model(tiny_model(family), preset).eval()
    # bit-exact: the same products on the same rows (the last FFN at [CLS] alone may round differently)
    petl.first_position_only = False
    assert torch.equal(logits(petl, batch), reference)
    petl.first_position_only = True
    torch.testing.assert_close(logits(petl, batch), reference, atol=1e-6, rtol=1e-5)


def lora_twins(family):
    """Our LoRA (r=4 on q,v, random weights) and PEFT's with the same weights copied in, both in eval
    mode, and the (ours, PEFT's) pairs of factor tensors."""
    ours = unipetl.get_petl_model(tiny_model(family), PetlConfig(attn_mode="lora", attn_bn=4, lora_alpha=12)).eval()
    randomize(ours)
    theirs = peft.get_peft_model(tiny_model(family), peft.LoraConfig(r=4, lora_alpha=12, target_modules=PEFT_TARGETS[family]))
    pairs = []
    with torch.no_grad():
        for path, module in theirs.base_model.model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                mine = ours.model.get_submodule(path).lora.source
                module.lora_A["default"].weight.copy_(mine.get("lora_A"))
                module.lora_B["default"].weight.copy_(mine.get("lora_B"))
                pairs += [(mine.get("lora_A"), module.lora_A["default"].weight),
                          (mine.get("lora_B"), module.lora_B["default"].weight)]
    n_attn = 2 if family in ENCODERS else 6
    assert len(pairs) == 2 * 2 * n_attn  # A and B on q and v of every attention
    return ours, theirs.eval(), pairs


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_equals_peft_lora_with_the_same_weights(family):
    batch = tiny_batch(family)
    ours, theirs, _ = lora_twins(family)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_gradients_equal_peft_lora_gradients(family):
    """The fused frozen-linear + low-rank backward (forms._FrozenLinearPlusLowRank) against PEFT's autograd."""
    batch = tiny_batch(family)
    ours, theirs, pairs = lora_twins(family)
    for model in (ours, theirs):
        model(**batch).loss.backward()
    for mine, peers in pairs:
        assert mine.grad is not None and mine.grad.abs().sum() > 0
        torch.testing.assert_close(mine.grad, peers.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("input_grad", [True, False])
def test_fused_lora_linear_equals_the_unfused_composition(bias, dropout, input_grad):
    """Values and gradients of LowRank.add_to against linear(x) + LowRank(x), in float64, same dropout draw."""
    from unipetl.forms import LowRank, OwnedParams

    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 10, bias=bias).double().requires_grad_(False)
    lora = LowRank(OwnedParams({"lora_A": torch.randn(3, 12), "lora_B": torch.randn(10, 3)}), rank=3, alpha=6.0,
                   dropout=dropout).double().train()
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=input_grad)
    upstream = torch.randn(2, 5, 10, dtype=torch.float64)
    results = []
    for fused in (True, False):
        torch.manual_seed(1)
        out = lora.add_to(linear, x) if fused else linear(x) + lora(x)
        grads = torch.autograd.grad(out, [t for t in (x, *lora.parameters()) if t.requires_grad], upstream)
        results.append((out, grads))
    (fused_out, fused_grads), (plain_out, plain_grads) = results
    torch.testing.assert_close(fused_out, plain_out, atol=1e-12, rtol=0)
    assert len(fused_grads) == len(plain_grads) == 2 + input_grad
    for mine, reference in zip(fused_grads, plain_grads):
        torch.testing.assert_close(mine, reference, atol=1e-12, rtol=0)


def test_fused_lora_linear_falls_back_where_the_linear_is_trained_or_hooked():
    """A trained base weight needs its own gradient, and a hook (BitFit's BiasDelta) must still run."""
    from unipetl.forms import LowRank, OwnedParams

    torch.manual_seed(0)
    lora = LowRank(OwnedParams({"lora_A": torch.randn(3, 12), "lora_B": torch.randn(10, 3)}), rank=3, alpha=6.0)
    x = torch.randn(4, 12)
    trained = torch.nn.Linear(12, 10)
    lora.add_to(trained, x).sum().backward()
    assert trained.weight.grad is not None and trained.bias.grad is not None
    hooked = torch.nn.Linear(12, 10).requires_grad_(False)
    hooked.register_forward_hook(lambda module, args, output: output + 100.0)
    torch.testing.assert_close(lora.add_to(hooked, x), hooked(x) + lora(x))
    assert lora.add_to(hooked, x).min() > 50


@pytest.mark.parametrize("family", ["bert", "bart"])
def test_exported_lora_loads_in_peft_to_the_same_logits(family, tmp_path):
    batch = tiny_batch(family)
    ours = unipetl.get_petl_model(tiny_model(family), PetlConfig(attn_mode="lora", attn_bn=4, lora_alpha=8)).eval()
    randomize(ours)
    if ours.head_names:
        with torch.no_grad():
            for p in ours.head_parameters().values():
                p.add_(0.5)  # a trained head must travel with the export
    ours.export_peft(tmp_path / "peft")
    assert {p.name for p in (tmp_path / "peft").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    theirs = peft.PeftModel.from_pretrained(tiny_model(family), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-5, rtol=0)


def test_peft_export_refuses_non_lora(tmp_path):
    petl = unipetl.get_petl_model(tiny_model("bert"), "pfeiffer")
    with pytest.raises(unipetl.ModuleFormatError, match="LoRA only.*ffn_mode='adapter'"):
        petl.export_peft(tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- prefix tuning, computed by hand
def _attend_with_prefix(q, k, v, prefix, pad_bias, heads, scaling):
    """softmax(q [P_k; K]^T * scaling + [0; mask]) [P_v; V] per head, from plain tensor algebra."""
    b, s, d = q.shape
    dh = d // heads
    pk, pv = prefix[:, :d], prefix[:, d:]
    keys = torch.cat([pk.expand(b, -1, -1), k], dim=1)
    values = torch.cat([pv.expand(b, -1, -1), v], dim=1)
    split = lambda t: t.view(b, t.shape[1], heads, dh).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(keys).transpose(-1, -2) * scaling
    bias = torch.cat([torch.zeros(b, prefix.shape[0]), pad_bias], dim=1)[:, None, None, :]
    out = (scores + bias).softmax(-1) @ split(values)
    return out.transpose(1, 2).reshape(b, s, d)


def _pad_bias(mask):
    return (1.0 - mask.float()) * torch.finfo(torch.float32).min


@pytest.mark.parametrize("family", ["bert", "bart"])
def test_prefix_mlp_runs_once_per_forward_with_the_per_site_values_and_gradients(family):
    """PetlModel.forward shares one pass of each prefix MLP among its sites (PrefixGenerator.one_pass);
    the backbone called directly computes each site's rows on its own. Same logits, same gradients."""
    batch = tiny_batch(family)
    petl = unipetl.get_petl_model(tiny_model(family), PetlConfig(attn_mode="prefix", attn_option="concat", attn_bn=3,
                                                                            mid_dim=8)).eval()
    randomize(petl)
    generators = [m for m in petl.methods.values() if isinstance(m, unipetl.forms.PrefixGenerator)]
    calls = []
    for generator in generators:
        generator.mlp_out.register_forward_hook(lambda *args: calls.append(1))
    results = []
    for forward in (petl, petl.model):  # shared pass; per-site rows
        calls.clear()
        out = forward(**batch)
        grads = torch.autograd.grad(out.loss, list(petl.methods.parameters()))
        results.append((out.logits, grads, len(calls)))
    (shared_logits, shared_grads, shared_calls), (site_logits, site_grads, site_calls) = results
    assert shared_calls == len(generators) == (1 if family == "bert" else 3)  # BART: encoder, decoder, cross
    assert site_calls == 0  # the per-site path slices mlp_out's weight instead of calling it
    torch.testing.assert_close(shared_logits, site_logits, atol=1e-6, rtol=0)
    for shared, per_site in zip(shared_grads, site_grads):
        torch.testing.assert_close(shared, per_site, atol=1e-6, rtol=1e-5)
    assert all(not g._in_pass and g._all_sites is None for g in generators)  # nothing kept after the forward


def test_prefix_equals_hand_computed_attention_on_bert():
    batch = tiny_batch("bert")
    petl = unipetl.get_petl_model(tiny_model("bert"), PetlConfig.from_preset("prefix", attn_bn=5, mid_dim=12)).eval()
    randomize(petl)
    source = petl.methods["prefix_encoder_self"]
    bert = petl.model.bert
    with torch.no_grad():
        h = bert.embeddings(input_ids=batch["input_ids"])
        for i, layer in enumerate(bert.encoder.layer):
            att = layer.attention.self
            ctx = _attend_with_prefix(att.query(h), att.key(h), att.value(h), source.site_prefix(i),
                                      _pad_bias(batch["attention_mask"]), 4, 1 / math.sqrt(8))
            a = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + h)
            h = layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(a))) + a)
        expected = petl.model.classifier(torch.tanh(bert.pooler.dense(h[:, 0])))
    torch.testing.assert_close(logits(petl, batch), expected, atol=1e-5, rtol=1e-5)


def test_prefix_equals_hand_computed_attention_on_bart_encoder():
    batch = tiny_batch("bart")
    petl = unipetl.get_petl_model(tiny_model("bart"), PetlConfig.from_preset("prefix", attn_bn=5, mid_dim=12)).eval()
    randomize(petl)
    source = petl.methods["prefix_encoder_self"]
    enc = petl.model.model.encoder
    with torch.no_grad():
        h = enc.embed_tokens(batch["input_ids"]) + enc.embed_positions(batch["input_ids"])
        h = enc.layernorm_embedding(h)
        for i, layer in enumerate(enc.layers):
            att = layer.self_attn
            ctx = _attend_with_prefix(att.q_proj(h), att.k_proj(h), att.v_proj(h), source.site_prefix(i),
                                      _pad_bias(batch["attention_mask"]), 4, 1 / math.sqrt(8))
            h = layer.self_attn_layer_norm(h + att.out_proj(ctx))
            h = layer.final_layer_norm(h + layer.fc2(F.gelu(layer.fc1(h))))
        out = petl.model.model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(out.last_hidden_state, h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_concat_prefix_equals_gated_cross_attention_without_ln(family):
    """He et al.: prefix tuning == cross_attn_noln with gate_add (the gate is the prefix's softmax mass)."""
    batch = tiny_batch(family)
    outs = []
    for option, comp in (("concat", "add"), ("cross_attn_noln", "gate_add")):
        petl = unipetl.get_petl_model(tiny_model(family), PetlConfig(attn_mode="prefix", attn_option=option,
                                                                     attn_composition=comp, attn_bn=5, mid_dim=12))
        torch.manual_seed(0)
        randomize(petl.eval())
        outs.append(logits(petl, batch))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("option,composition", [("cross_attn", "add"), ("cross_attn", "gate_add"),
                                                ("cross_attn_noln", "add"), ("cross_attn_relu", "add")])
def test_every_prefix_option_changes_the_output_and_trains(option, composition):
    batch = tiny_batch("roberta")
    petl = unipetl.get_petl_model(tiny_model("roberta"), PetlConfig(attn_mode="prefix", attn_option=option,
                                                                    attn_composition=composition, attn_bn=5, mid_dim=12))
    base = logits(tiny_model("roberta"), batch)
    assert not torch.allclose(logits(petl.eval(), batch), base)
    petl.train()
    petl(**batch).loss.backward()
    assert petl.methods["prefix_encoder_self"].embedding.grad.abs().sum() > 0


# ---------------------------------------------------------------- prompt tuning
@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_tuning_equals_backbone_on_prepended_embeddings(family):
    batch = tiny_batch(family)
    petl = unipetl.get_petl_model(tiny_model(family), PetlConfig(attn_mode="prompt_tuning", attn_bn=4)).eval()
    reference = tiny_model(family)
    prompt = petl.methods["prompt"].embedding
    with torch.no_grad():
        embeds = reference.get_input_embeddings()(batch["input_ids"])
        embeds = torch.cat([prompt.expand(len(embeds), -1, -1), embeds], dim=1)
        mask = torch.cat([torch.ones(len(embeds), 4, dtype=torch.long), batch["attention_mask"]], dim=1)
        extra = {"labels": batch["labels"]} if family in ("t5", "bart") else {}
        expected = reference(inputs_embeds=embeds, attention_mask=mask, **extra).logits
    torch.testing.assert_close(logits(petl, batch), expected, atol=1e-6, rtol=0)


def test_prompt_tuning_on_multiple_choice_scores_each_choice_with_the_prompt_in_front():
    """COPA-style (batch, choices, length) inputs: each choice's score equals the classifier on the pooled
    output of [prompt, that choice's tokens], computed choice by choice on the plain model."""
    import transformers as T

    from tiny_models import HEADS, HIDDEN, LAYERS, VOCAB

    config = T.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          intermediate_size=4 * HIDDEN, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    reference = T.BertForMultipleChoice(config).eval()
    model = T.BertForMultipleChoice(config).eval()
    model.load_state_dict(reference.state_dict())
    petl = unipetl.get_petl_model(model, PetlConfig(attn_mode="prompt_tuning", attn_bn=3)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (2, 3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 2, 4:] = 0  # a padded choice
    types = torch.zeros_like(ids)
    types[..., 3:] = 1
    prompt = petl.methods["prompt"].embedding
    with torch.no_grad():
        got = petl(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        expected = torch.empty(2, 3)
        for b in range(2):
            for c in range(3):
                embeds = torch.cat([prompt, reference.bert.embeddings.word_embeddings(ids[b, c])])[None]
                pooled = reference.bert(inputs_embeds=embeds, attention_mask=torch.cat([torch.ones(3), mask[b, c]])[None],
                                        token_type_ids=torch.cat([torch.zeros(3, dtype=torch.long), types[b, c]])[None]
                                        ).pooler_output
                expected[b, c] = reference.classifier(pooled)[0, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    petl(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=torch.tensor([0, 2])).loss.backward()
    assert prompt.grad.abs().sum() > 0


# ---------------------------------------------------------------- merge
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("config", [PetlConfig(attn_mode="lora", attn_bn=4), PetlConfig(ffn_mode="lora", ffn_bn=4),
                                    PetlConfig(attn_mode="bitfit")], ids=["lora_attn", "lora_ffn", "bitfit"])
def test_merge_gives_the_same_logits(family, config):
    if config.attn_mode == "bitfit" and family == "t5":
        pytest.skip("bias parameters are absent on T5, so BitFit does not apply")
    batch = tiny_batch(family)
    petl = unipetl.get_petl_model(tiny_model(family), config).eval()
    randomize(petl)
    before = logits(petl, batch)
    petl.merge()
    assert not any(type(m).__name__ == "LinearWithChanges" for m in petl.model.modules())
    assert len(petl.methods) == 0
    torch.testing.assert_close(logits(petl, batch), before, atol=1e-5, rtol=0)
    assert not torch.allclose(logits(tiny_model(family), batch), before)  # the merge changed the weights
