"""train_pooler: the BERT pooler counted as part of the task head (trained, stored, restored), by default
wherever the head reads it; `train_pooler=False` keeps it frozen."""

import pytest
import torch

import unipetl
from tiny_models import logits, tiny_batch, tiny_model
from unipetl import ConfigError, PetlConfig
from unipetl.model import pooler_parameter_names
from unipetl.storage import load_petl_model

peft = pytest.importorskip("peft", reason="PEFT is a test dependency (pip install -e .[test])")


def test_pooler_trains_with_the_head_and_the_rest_of_the_backbone_stays(tmp_path):
    family = "bert"  # RoBERTa's and MPNet's heads hold their own dense layer: no pooler
    model = tiny_model(family)
    pooler = pooler_parameter_names(model)
    assert pooler and all(".pooler." in name for name in pooler)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    petl = unipetl.get_petl_model(model, PetlConfig.from_preset("lora", train_pooler=True))
    assert set(pooler) <= set(petl.head_names)
    plain = unipetl.get_petl_model(tiny_model(family), PetlConfig.from_preset("lora", train_pooler=False))
    pooler_size = sum(p.numel() for n, p in model.named_parameters() if n in pooler)
    assert petl.report()["head_params"] == plain.report()["head_params"] + pooler_size
    assert petl.report()["trainable_params"] == plain.report()["trainable_params"]  # the head is not counted there
    assert petl.report()["stored_breakdown"]["pooler_bytes"] == 4 * pooler_size  # what training it adds
    assert plain.report()["stored_breakdown"]["pooler_bytes"] == 0
    petl.train()
    batch = tiny_batch(family)
    petl(**batch).loss.backward()
    torch.optim.SGD([p for p in petl.parameters() if p.requires_grad], lr=0.5).step()
    params = dict(model.named_parameters())
    for name in pooler:
        assert not torch.equal(params[name], before[name]), f"pooler tensor {name} did not train"
    petl.eval()
    expected = logits(petl, batch)
    petl.save(tmp_path / "module")
    assert petl.report()["stored_bytes"] == sum(f.stat().st_size for f in (tmp_path / "module").iterdir())
    reloaded = load_petl_model(tiny_model(family), tmp_path / "module").eval()  # a pristine backbone
    assert torch.equal(logits(reloaded, batch), expected)
    head = set(petl.head_names) - set(pooler)
    backbone = dict(petl.unload().named_parameters())
    for name, value in before.items():  # the backbone as it was, its own pooler put back
        if name not in head:
            assert torch.equal(backbone[name], value), f"backbone tensor {name} changed"


def test_exported_lora_with_a_trained_pooler_loads_in_peft_to_the_same_logits(tmp_path):
    batch = tiny_batch("bert")
    ours = unipetl.get_petl_model(tiny_model("bert"), PetlConfig(attn_mode="lora", attn_bn=4, lora_alpha=8,
                                                                 train_pooler=True)).eval()
    with torch.no_grad():
        for p in list(ours.methods.parameters()) + list(ours.head_parameters().values()):
            p.add_(0.3)
    ours.export_peft(tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-5, rtol=0)


def test_train_pooler_is_refused_where_it_cannot_apply():
    for family, architecture in (("roberta", "Roberta"), ("mpnet", "MPNet")):
        with pytest.raises(ConfigError, match=f"{architecture}ForSequenceClassification has no pooler"):
            unipetl.get_petl_model(tiny_model(family), PetlConfig.from_preset("pfeiffer", train_pooler=True))
    with pytest.raises(ConfigError, match="train_pooler=True with param_source='gated_diff'"):
        PetlConfig.from_preset("diffprune", train_pooler=True)
    with pytest.raises(ConfigError, match="train_pooler='yes' must be true, false or null"):
        PetlConfig.from_preset("lora", train_pooler="yes")


@pytest.mark.parametrize("family, preset, trains", [
    ("bert", "lora", True), ("bert", "prefix", True), ("bert", "scaled_parallel", True),
    ("bert", "diffprune", False), ("bert", "full", False),  # the diff, or full fine-tuning, trains it already
    ("roberta", "lora", False), ("mpnet", "lora", False), ("t5", "lora", False),  # no pooler under the head
])
def test_the_pooler_trains_by_default_where_the_head_reads_it(family, preset, trains):
    overrides = {"attn_bn": 5, "mid_dim": 12} if preset == "prefix" else {}
    model = tiny_model(family)
    petl = unipetl.get_petl_model(model, PetlConfig.from_preset(preset, **overrides))
    assert bool(petl.pooler_names) == trains
    if trains:
        assert all(dict(model.named_parameters())[n].requires_grad for n in petl.pooler_names)
    frozen = unipetl.get_petl_model(tiny_model(family), PetlConfig.from_preset(preset, train_pooler=False, **overrides)) \
        if preset != "full" else None
    if frozen is not None:
        assert frozen.pooler_names == []
