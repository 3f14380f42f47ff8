"""ProPETL: top-k masks with a straight-through gradient over one prototype shared by all layers,
stored as bits."""

import math

import pytest
import torch
import transformers as T

import unipetl
from tiny_models import FAMILIES, logits, tiny_batch, tiny_model
from unipetl import PetlConfig
from unipetl.forms import OwnedParams
from unipetl.masks import kept_count, pack_bits, topk_mask, unpack_bits
from unipetl.sources import MaskedPrototype, MaskedView


@pytest.mark.parametrize("shape", [(7,), (5, 9), (64, 32), (3, 4, 5)])
@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 0.999, 1.0])
def test_mask_keeps_exactly_the_specified_count_and_is_binary(shape, keep):
    scores = torch.randn(shape)
    mask = topk_mask(scores, keep)
    n = scores.numel()
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == n - math.floor((1 - keep) * n) == kept_count(n, keep)
    # the kept entries are those with the largest |score|
    if 0 < mask.sum() < n:
        assert scores.abs()[mask.bool()].min() >= scores.abs()[~mask.bool()].max()


def test_score_gradient_is_the_weight_gradient_times_the_weight():
    torch.manual_seed(0)
    weight = torch.randn(6, 4)
    prototype = OwnedParams({"down_weight": weight.clone(), "down_bias": torch.randn(6)})
    source = MaskedPrototype(prototype, ("down_weight",), keep=0.5)
    coefficients = torch.randn(6, 4)
    masked = source.get("down_weight")
    (masked * coefficients).sum().backward()  # dL/dW~ = coefficients
    scores_grad = source.view.scores["down_weight"].grad
    torch.testing.assert_close(scores_grad, coefficients * weight)  # straight-through: dL/dS = dL/dW~ * W
    mask = topk_mask(source.view.scores["down_weight"], 0.5)
    torch.testing.assert_close(prototype.params["down_weight"].grad, coefficients * mask)
    assert source.get("down_bias") is prototype.params["down_bias"]  # biases: shared, unmasked


def test_bits_round_trip():
    mask = torch.rand(13, 7) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(91 / 8)
    assert torch.equal(unpack_bits(packed, (13, 7)), mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_prototype_object_is_shared_by_every_layer(family):
    petl = unipetl.get_petl_model(tiny_model(family), "proadapter")
    sources = [m.source for m in petl.methods.values() if hasattr(m, "source") and isinstance(m.source, MaskedPrototype)]
    assert len(sources) == len(petl.sites.layers)
    assert all(s.prototype is petl.methods["prototype_ffn_adapter"] for s in sources)
    views = [s.view for s in sources]
    masks = [topk_mask(v.scores["down_weight"], 0.5) for v in views]
    assert not all(torch.equal(masks[0], m) for m in masks[1:])  # each layer selects its own sub-network


def test_masks_are_their_own_optimizer_group():
    petl = unipetl.get_petl_model(tiny_model("bert"), "prolora")
    groups = petl.parameter_groups(1e-3, 0.0)
    score_ids = {id(p) for n, p in petl.named_parameters() if ".scores." in n}
    mask_groups = [g for g in groups if {id(p) for p in g["params"]} & score_ids]
    assert len(mask_groups) == 1 and mask_groups[0]["lr"] == 3e-2 and mask_groups[0]["weight_decay"] == 0.1
    assert {id(p) for p in mask_groups[0]["params"]} == score_ids


@pytest.mark.parametrize("preset", ["proadapter", "prolora", "proprefix"])
def test_frozen_masks_give_the_same_logits_and_are_applied_once(preset):
    overrides = dict(attn_bn=5, mid_dim=12) if preset == "proprefix" else {}
    petl = unipetl.get_petl_model(tiny_model("roberta"), PetlConfig.from_preset(preset, **overrides)).eval()
    batch = tiny_batch("roberta")
    before = logits(petl, batch)
    petl.freeze_masks()
    assert not any(".scores." in n for n, _ in petl.named_parameters())
    torch.testing.assert_close(logits(petl, batch), before, atol=1e-6, rtol=0)
    if preset == "proadapter":
        source = petl.methods["encoder0_ffn_adapter"].source
        first = source.get("down_weight")
        assert source.get("down_weight") is first  # computed once, reused by every forward


def test_storage_is_prototype_plus_mask_bits_plus_header(tmp_path):
    petl = unipetl.get_petl_model(tiny_model("bert"), "proadapter")
    report = petl.report()
    d, L, r = 32, 2, 32 // 12
    breakdown = report["stored_breakdown"]
    assert breakdown["prototype_bytes"] == 4 * (2 * r * d + r + d)
    assert breakdown["mask_bytes"] == L * math.ceil(r * d / 8) * 2  # down and up weights, one bit each
    assert report["stored_bytes"] == (breakdown["prototype_bytes"] + breakdown["mask_bytes"] + breakdown["head_bytes"]
                                      + breakdown["pooler_bytes"] + breakdown["header_bytes"])
    petl.save(tmp_path / "m")
    assert sum(p.stat().st_size for p in (tmp_path / "m").iterdir()) == report["stored_bytes"]


def test_base_size_proadapter_costs_a_tenth_of_a_pfeiffer_adapter():
    """roberta-base shape (12 layers, d 768), random weights: ProAdapter against Pfeiffer at the same r = 64."""
    config = T.RobertaConfig(num_labels=2)  # the roberta-base architecture
    pro = unipetl.get_petl_model(T.RobertaForSequenceClassification(config), "proadapter").report(n_tasks=8)
    plain = unipetl.get_petl_model(T.RobertaForSequenceClassification(config),
                                   PetlConfig.from_preset("pfeiffer", reduction_factor=12)).report()
    assert pro["stored_breakdown"]["mask_bytes"] == 12 * 2 * 64 * 768 // 8
    plain_bytes = plain["stored_bytes"] - plain["stored_breakdown"]["head_bytes"]  # heads excluded on both sides
    one_task = pro["stored_bytes"] - pro["stored_breakdown"]["head_bytes"]
    assert one_task <= 0.12 * plain_bytes, (one_task, plain_bytes)
    assert pro["family_bytes_per_task"] <= 0.05 * plain_bytes, (pro["family_bytes_per_task"], plain_bytes)


# ------------------------------------------------------------------ multi-task ProPETL-m
def test_task_and_layer_masks_are_or_combined():
    petl = unipetl.PetlModel(tiny_model("bert"), PetlConfig.from_preset("proadapter", mask_keep=0.3), tasks=["a", "b"])
    source = petl.methods["encoder1_ffn_adapter"].source
    layer = topk_mask(source.view.scores["up_weight"], 0.3)
    for index, task in enumerate(("a", "b")):
        petl.set_task(task)
        task_mask = topk_mask(petl.methods["task_masks_ffn_adapter"][index].scores["up_weight"], 0.3)
        expected = 1 - (1 - layer) * (1 - task_mask)
        torch.testing.assert_close(source.get("up_weight"), source.prototype.get("up_weight") * expected)
    # the task masks are shared by every layer: one bank for the group
    assert petl.methods["encoder0_ffn_adapter"].source.task_bank is petl.methods["task_masks_ffn_adapter"]


def test_task_score_gradient_is_straight_through_the_or():
    petl = unipetl.PetlModel(tiny_model("bert"), PetlConfig.from_preset("proadapter"), tasks=["a", "b"])
    petl.set_task("b")
    source = petl.methods["encoder0_ffn_adapter"].source
    weight = source.prototype.get("down_weight").detach()
    coefficients = torch.randn_like(weight)
    (source.get("down_weight") * coefficients).sum().backward()
    layer = topk_mask(source.view.scores["down_weight"], 0.5)
    task_scores = petl.methods["task_masks_ffn_adapter"][1].scores["down_weight"]
    torch.testing.assert_close(task_scores.grad, coefficients * weight * (1 - layer))  # d(OR)/d(task) = 1 - layer
    assert petl.methods["task_masks_ffn_adapter"][0].scores["down_weight"].grad is None  # task a untouched


GLUE = __import__("pathlib").Path(__import__("os").environ.get("UNIPETL_GLUE_DIR", __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"))


@pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data directory not available: {GLUE}")
def test_multitask_propetl_shares_one_prototype_and_reloads_every_task(tmp_path):
    from safetensors.torch import load_file

    from unipetl.training import TrainOptions, load_module, train_multitask
    from unipetl.predict import predict_examples
    from unipetl.tasks import make_splits

    model_dir = tmp_path / "tiny"
    tokenizer = T.AutoTokenizer.from_pretrained(unipetl.defaults.default_model_path())
    T.set_seed(0)
    T.BertModel(T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "mt"
    options = TrainOptions(epochs=1, max_train_samples=32, max_length=48, progress=False)
    results = train_multitask(["cb", "rte_superglue"] if (GLUE / "RTE").is_dir() else ["cb", "wic"], "proadapter",
                              str(model_dir), str(GLUE), str(out), options, log=lambda m: None)
    tasks = results["tasks"]
    family = out / "module"
    assert (family / "prototype.safetensors").is_file()
    masks = {t: load_file(str(family / t / "weights.safetensors")) for t in tasks}
    assert not any(k.startswith("methods.prototype_") for m in masks.values() for k in m)  # stored once
    keys = [k for k in masks[tasks[0]] if ".mask_bits." in k]
    assert keys and any(not torch.equal(masks[tasks[0]][k], masks[tasks[1]][k]) for k in keys)  # tasks differ
    assert results["family_prototype_bytes"] == (family / "prototype.safetensors").stat().st_size
    for task in tasks:  # each member reloads alone, beside the others, to its test metrics
        petl, backbone, spec, info = load_module(str(family / task))
        examples = make_splits(task, str(GLUE))["test"][:8]
        assert len(predict_examples(petl, backbone, spec, examples, 48)) == 8
        assert info["test_metrics"] == results["per_task"][task]["metrics"]


def test_a_saved_family_reloads_every_tasks_logits(tmp_path):
    """Two tasks on one backbone and one prototype: each member module, loaded alone onto a fresh
    backbone, reproduces that task's logits of the jointly trained model."""
    from unipetl.multitask import MultiTaskModel, share_backbone
    from unipetl.storage import save_family

    models = [tiny_model("bert", num_labels=3), tiny_model("bert", num_labels=2, seed=5)]
    models[1].bert = models[0].bert  # what share_backbone does
    share_backbone(models)
    petl = unipetl.PetlModel(models[0], PetlConfig.from_preset("proadapter", mask_keep=0.3), tasks=["a", "b"])
    joint = MultiTaskModel(petl, ["a", "b"], models).eval()
    with torch.no_grad():
        for p in petl.methods.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    sources = [m.source for m in petl.methods.values() if isinstance(getattr(m, "source", None), MaskedPrototype)]
    assert len(sources) == 2
    assert all(s.prototype is petl.methods["prototype_ffn_adapter"] for s in sources)  # one prototype object
    batch = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    expected = {}
    with torch.no_grad():
        for index, task in enumerate(("a", "b")):
            expected[task] = joint(task=torch.tensor(index), **batch).logits
    save_family({t: (petl.for_task_model(m, task=t), {"name": t}) for t, m in zip(("a", "b"), models)}, tmp_path / "family")
    assert (tmp_path / "family" / "prototype.safetensors").is_file()
    for task, labels in (("a", 3), ("b", 2)):
        fresh = tiny_model("bert", num_labels=labels)  # the shared backbone's checkpoint; the head comes from the module
        loaded = unipetl.load_petl_model(fresh, tmp_path / "family" / task).eval()
        torch.testing.assert_close(logits(loaded, batch), expected[task], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(expected["a"][:, :2], expected["b"])


def test_family_member_refuses_an_altered_prototype(tmp_path):
    from unipetl.storage import save_family

    models = [tiny_model("bert"), tiny_model("bert")]
    models[1].bert = models[0].bert
    petl = unipetl.PetlModel(models[0], PetlConfig.from_preset("proadapter"), tasks=["a", "b"])
    save_family({t: (petl.for_task_model(m, task=t), {"name": t}) for t, m in zip(("a", "b"), models)}, tmp_path / "f")
    data = bytearray((tmp_path / "f" / "prototype.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "f" / "prototype.safetensors").write_bytes(bytes(data))
    with pytest.raises(unipetl.ModuleFormatError, match="prototype.safetensors does not match"):
        unipetl.load_petl_model(tiny_model("bert"), tmp_path / "f" / "a")
