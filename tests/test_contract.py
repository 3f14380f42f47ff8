"""The contract every preset keeps on every family: one optimizer step changes only the method's
parameters and the head; save -> load reproduces the logits; stored_bytes is what save writes."""

import pytest
import torch

import unipetl
from tiny_models import FAMILIES, logits, tiny_batch, tiny_model
from unipetl import PetlConfig

SMALL = {"prefix": dict(attn_bn=5, mid_dim=12), "prompt_tuning": dict(attn_bn=5),
         "mam": dict(attn_bn=4, ffn_bn=16, mid_dim=12), "mam_glue": dict(mid_dim=12), "proprefix": dict(attn_bn=5, mid_dim=12)}
PRESETS = [p for p in unipetl.list_presets()]
CASES = [(f, p) for f in FAMILIES for p in PRESETS if not (f == "t5" and p == "bitfit")]


def build(family, preset):
    return unipetl.get_petl_model(tiny_model(family), PetlConfig.from_preset(preset, **SMALL.get(preset, {})))


def train_one_step(petl, family, lr=1e-2):
    petl.train()
    optimizer = torch.optim.AdamW([p for p in petl.parameters() if p.requires_grad], lr=lr)
    petl(**tiny_batch(family)).loss.backward()
    optimizer.step()
    petl.eval()


@pytest.mark.parametrize("family,preset", [c for c in CASES if c[1] != "full"])
def test_one_step_changes_only_method_and_head(family, preset):
    petl = build(family, preset)
    head = set(petl.head_names)
    backbone = {n: p.detach().clone() for n, p in petl.model.named_parameters() if n not in head}
    ids_before = {n: id(p) for n, p in petl.model.named_parameters() if n not in head}
    methods = {n: p.detach().clone() for n, p in petl.methods.named_parameters()}
    heads = {n: p.detach().clone() for n, p in petl.head_parameters().items()}
    train_one_step(petl, family)
    for name, param in petl.model.named_parameters():
        if name in backbone:
            assert torch.equal(param, backbone[name]), f"backbone tensor {name} changed"
            assert id(param) == ids_before[name]
    changed = [n for n, p in petl.methods.named_parameters() if not torch.equal(p, methods[n])]
    assert changed, "no method parameter changed"
    assert all(not torch.equal(p, heads[n]) for n, p in petl.head_parameters().items())


def test_full_finetuning_trains_the_backbone():
    petl = build("bert", "full")
    before = petl.model.bert.encoder.layer[0].output.dense.weight.detach().clone()
    train_one_step(petl, "bert")
    assert not torch.equal(before, petl.model.bert.encoder.layer[0].output.dense.weight)


def directory_bytes(path):
    return sum(p.stat().st_size for p in path.iterdir())


@pytest.mark.parametrize("family,preset", CASES)
def test_save_load_round_trip_and_byte_exact_accounting(family, preset, tmp_path):
    petl = build(family, preset)
    train_one_step(petl, family)
    batch = tiny_batch(family)
    expected = logits(petl, batch)
    petl.save(tmp_path / "module")
    assert directory_bytes(tmp_path / "module") == petl.report()["stored_bytes"]
    loaded = unipetl.load_petl_model(tiny_model(family), tmp_path / "module").eval()
    torch.testing.assert_close(logits(loaded, batch), expected, atol=1e-6, rtol=1e-6)
    assert loaded.report()["stored_bytes"] == petl.report()["stored_bytes"]


def test_saving_again_replaces_the_module_atomically(tmp_path):
    petl = build("bert", "lora")
    petl.save(tmp_path / "m")
    train_one_step(petl, "bert")
    petl.save(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary or backup directory left
    loaded = unipetl.load_petl_model(tiny_model("bert"), tmp_path / "m").eval()
    torch.testing.assert_close(logits(loaded, tiny_batch("bert")), logits(petl, tiny_batch("bert")))


def test_save_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(unipetl.ModuleFormatError, match="not a module written by unipetl"):
        build("bert", "lora").save(tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


def test_save_after_merge_is_refused(tmp_path):
    petl = build("bert", "lora").merge()
    with pytest.raises(unipetl.ModuleFormatError, match="before merge"):
        petl.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_unload_restores_the_backbone():
    model = tiny_model("bart")
    batch = tiny_batch("bart")
    reference = logits(tiny_model("bart"), batch)
    petl = unipetl.get_petl_model(model, PetlConfig.from_preset("mam", attn_bn=4, ffn_bn=8, mid_dim=12))
    randomize_all = [p.data.add_(0.3) for p in petl.methods.parameters()]
    assert randomize_all and not torch.allclose(logits(petl, batch), reference)
    restored = petl.unload()
    assert torch.equal(logits(restored, batch), reference)
