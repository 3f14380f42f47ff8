"""Decoder-only language models (issue 23): tiny random Llama and Qwen2 causal LMs, with grouped-query attention.

The contract suite (test_contract.py) runs every method on them; these tests check what is particular to
decoders: generation with a KV cache, a prefix under grouped-query attention against an independent
multi-head model, the LM head staying the backbone's, and LoRA's PEFT export.
"""

import json

import pytest
import torch

import unipetl
from tiny_models import CAUSAL, HEADS, SMALL_PRESET_SIZES as SMALL, tiny_model
from unipetl import PetlConfig

GENERATING = ("lora", "pfeiffer", "houlsby", "parallel", "prefix", "prompt_tuning", "mam", "proadapter", "prolora",
              "proprefix", "diffprune")
PROMPT = torch.tensor([[5, 9, 13, 40, 7], [8, 21, 3, 66, 12]])


def trained_looking(petl, seed=0, scale=0.3):
    """Non-zero method parameters everywhere, so each method changes what the model generates."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in petl.methods.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return petl.eval()


@pytest.mark.parametrize("family", CAUSAL)
@pytest.mark.parametrize("preset", GENERATING)
def test_generation_with_a_kv_cache_equals_generation_without(family, preset):
    petl = trained_looking(unipetl.get_petl_model(tiny_model(family), PetlConfig.from_preset(preset, **SMALL.get(preset, {}))))
    kwargs = dict(input_ids=PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=6, do_sample=False)
    cached = petl.generate(**kwargs, use_cache=True)
    uncached = petl.generate(**kwargs, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :PROMPT.shape[1]], PROMPT)  # the prompt, then the new tokens (prompt tuning too)
    with torch.no_grad():  # the first new token is the forward's argmax at the last position
        first = petl(input_ids=PROMPT, attention_mask=torch.ones_like(PROMPT)).logits[:, -1].argmax(-1)
    assert torch.equal(cached[:, PROMPT.shape[1]], first)


def test_the_prefix_under_grouped_query_attention_equals_a_multi_head_model_with_repeated_heads():
    """Llama with 2 key/value heads for 4 query heads against the same model written with 4 key/value heads
    (each of k_proj's and v_proj's heads, and the prefix's, repeated for its group): the same logits."""
    grouped = tiny_model("llama")
    config = grouped.config.to_dict() | {"num_key_value_heads": HEADS}
    multi_head = type(grouped)(type(grouped.config).from_dict(config)).eval()
    groups, head_dim = HEADS // grouped.config.num_key_value_heads, grouped.config.head_dim

    def repeat_heads(weight):  # (kv_heads * head_dim, ...) -> (heads * head_dim, ...)
        return weight.reshape(-1, head_dim, *weight.shape[1:]).repeat_interleave(groups, 0).flatten(0, 1)

    state = {name: repeat_heads(value) if name.endswith(("k_proj.weight", "v_proj.weight")) else value
             for name, value in grouped.state_dict().items()}
    multi_head.load_state_dict(state)
    inputs = dict(input_ids=PROMPT, attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    with torch.no_grad():
        plain = grouped(**inputs).logits
        torch.testing.assert_close(multi_head(**inputs).logits, plain, atol=1e-5, rtol=1e-5)  # the same model
    preset = PetlConfig.from_preset("prefix", attn_bn=5, prefix_mlp=False)
    ours = trained_looking(unipetl.get_petl_model(grouped, preset), scale=1.0)
    reference = unipetl.get_petl_model(multi_head, preset).eval()
    with torch.no_grad():
        for name, source in ours.methods.named_parameters():
            keys, values = source.chunk(2, dim=-1)  # (sites, l, 2 w): keys then values
            repeated = torch.cat([repeat_heads(keys.movedim(-1, 0)).movedim(0, -1),
                                  repeat_heads(values.movedim(-1, 0)).movedim(0, -1)], dim=-1)
            dict(reference.methods.named_parameters())[name].copy_(repeated)
        expected = reference(**inputs).logits
        got = ours(**inputs).logits
    assert (got - plain).abs().max() > 1e-2  # the prefix changes the output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", [f for f in CAUSAL if f != "gpt2"])  # GPT-2 ties its head to the embeddings
def test_the_lm_head_is_the_backbones_frozen_and_not_stored(family, tmp_path):
    """An untied LM head (as in Llama-2-7B: 131 M parameters) is pretrained, not a task's: it does not train,
    the module holds none of it, and the fingerprint covers it."""
    model = tiny_model(family)
    assert not model.config.tie_word_embeddings
    petl = unipetl.get_petl_model(model, PetlConfig.from_preset("lora"))
    assert petl.head_names == []
    assert not model.lm_head.weight.requires_grad
    petl.save(tmp_path / "task")
    other = tiny_model(family)
    with torch.no_grad():
        other.lm_head.weight.add_(1.0)  # the same backbone body, another LM head
    with pytest.raises(unipetl.errors.ModuleFormatError):
        unipetl.load_petl_model(other, tmp_path / "task")


@pytest.mark.parametrize("family", CAUSAL)
def test_lora_exported_from_a_causal_lm_loads_in_peft_with_the_same_logits(family, tmp_path):
    peft = pytest.importorskip("peft")
    ours = trained_looking(unipetl.get_petl_model(tiny_model(family), PetlConfig.from_preset("lora")))
    ours.export_peft(tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"
    assert config["modules_to_save"] is None  # vLLM refuses adapters with modules_to_save
    theirs = peft.PeftModel.from_pretrained(tiny_model(family), tmp_path / "peft").eval()
    with torch.no_grad():
        expected = theirs(input_ids=PROMPT).logits
        got = ours(input_ids=PROMPT).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_bitfit_on_a_model_without_biases_is_refused_with_the_reason():
    with pytest.raises(unipetl.errors.ConfigError, match="no bias parameters"):
        unipetl.get_petl_model(tiny_model("llama"), PetlConfig.from_preset("bitfit"))
