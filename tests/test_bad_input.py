"""Bad input on the core: unsupported architectures and damaged or mismatched task modules are
refused with a clear error before the backbone is touched."""

import json

import pytest
import torch
import transformers as T

import unipetl
from tiny_models import tiny_batch, tiny_model
from unipetl import ModuleFormatError, PetlConfig, UnsupportedModelError
from unipetl.storage import HEADER_FILE, WEIGHTS_FILE


@pytest.fixture
def saved(tmp_path):
    petl = unipetl.get_petl_model(tiny_model("bert"), PetlConfig.from_preset("lora", attn_bn=4))
    petl.save(tmp_path / "module", task={"name": "toy"})
    return tmp_path / "module"


def snapshot(model):
    return ([type(m) for m in model.modules()], {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
            model.config._attn_implementation)


def assert_untouched(model, before):
    types, params, attn = snapshot(model)
    assert types == before[0]
    assert attn == before[2]
    for name, (value, requires_grad) in before[1].items():
        assert torch.equal(params[name][0], value) and params[name][1] == requires_grad


def refuse(model, directory, match):
    before = snapshot(model)
    with pytest.raises(ModuleFormatError, match=match):
        unipetl.load_petl_model(model, directory)
    assert_untouched(model, before)


def test_unsupported_architecture_lists_the_supported_ones():
    neox = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                intermediate_size=64, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="'gpt_neox'.*supported model types: bart, bert, gpt2, llama, mbart, "
                                                   "mistral, mpnet, mt5, qwen2, qwen3, roberta, t5, xlm-roberta"):
        unipetl.get_petl_model(neox, "lora")


def test_loading_onto_another_checkpoint_is_refused(saved):
    refuse(tiny_model("bert", seed=1), saved, "another backbone checkpoint")


def test_loading_onto_another_architecture_is_refused(saved):
    refuse(tiny_model("roberta"), saved, "trained on a 'bert' backbone, got 'roberta'")


def test_truncated_weights_are_refused(saved):
    data = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).write_bytes(data[:-10])
    refuse(tiny_model("bert"), saved, "truncated")


def test_altered_weights_are_refused(saved):
    data = bytearray((saved / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0xFF
    (saved / WEIGHTS_FILE).write_bytes(bytes(data))
    refuse(tiny_model("bert"), saved, "does not match the SHA-256")


def test_unknown_format_version_is_refused(saved):
    header = json.loads((saved / HEADER_FILE).read_text())
    header["format_version"] = 99
    (saved / HEADER_FILE).write_text(json.dumps(header))
    refuse(tiny_model("bert"), saved, "unknown format_version 99; this unipetl reads versions 1")


def test_truncated_header_is_refused(saved):
    text = (saved / HEADER_FILE).read_text()
    (saved / HEADER_FILE).write_text(text[: len(text) // 2])
    refuse(tiny_model("bert"), saved, "not valid JSON")


def test_missing_module_directory_is_refused(tmp_path):
    refuse(tiny_model("bert"), tmp_path / "nothing", "is not a unipetl task module")


def test_altered_config_in_the_header_is_refused(saved):
    header = json.loads((saved / HEADER_FILE).read_text())
    header["config"]["attn_mode"] = "lorax"
    (saved / HEADER_FILE).write_text(json.dumps(header))
    refuse(tiny_model("bert"), saved, "invalid config: attn_mode='lorax'")


def test_head_with_another_number_of_labels_is_refused_and_backbone_restored(saved):
    model = tiny_model("bert", num_labels=3)
    torch.manual_seed(0)
    model.classifier = torch.nn.Linear(32, 5)  # same backbone, a 5-label head
    before = snapshot(model)
    with pytest.raises(ModuleFormatError, match="another number of labels"):
        unipetl.load_petl_model(model, saved)
    types, params, _ = snapshot(model)
    assert types == before[0]
    assert all(torch.equal(params[n][0], v) for n, (v, _) in before[1].items())


def test_config_must_be_a_petl_config():
    with pytest.raises(unipetl.ConfigError, match="config must be a PetlConfig"):
        unipetl.PetlModel(tiny_model("bert"), {"attn_mode": "lora"})


def test_prompt_tuning_refuses_position_ids():
    petl = unipetl.get_petl_model(tiny_model("bert"), PetlConfig(attn_mode="prompt_tuning", attn_bn=3))
    batch = tiny_batch("bert")
    with pytest.raises(ValueError, match="position_ids"):
        petl(**batch, position_ids=torch.arange(7).expand(3, -1))


def test_attaching_twice_to_one_backbone_is_refused():
    model = tiny_model("bert")
    petl = unipetl.get_petl_model(model, "lora")
    with pytest.raises(unipetl.ConfigError, match="already has a unipetl method attached"):
        unipetl.get_petl_model(model, "pfeiffer")
    unipetl.get_petl_model(petl.unload(), "pfeiffer")  # fine after unload
