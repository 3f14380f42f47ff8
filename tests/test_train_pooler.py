"""train_pooler: the BERT/MPNet pooler counted as part of the task head (trained, stored, restored)."""

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
    plain = unipetl.get_petl_model(tiny_model(family), "lora")
    pooler_size = sum(p.numel() for n, p in model.named_parameters() if n in pooler)
    assert petl.report()["head_params"] == plain.report()["head_params"] + pooler_size
    assert petl.report()["trainable_params"] == plain.report()["trainable_params"]  # the head is not counted there
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
    with pytest.raises(ConfigError, match="train_pooler='yes' must be true or false"):
        PetlConfig.from_preset("lora", train_pooler="yes")
