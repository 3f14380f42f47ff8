"""The last layer's FFN runs at the first position only where the head reads nothing else
(unipetl.first_position): the same logits and gradients as running it everywhere, and no slice where
another position is read."""

import pytest
import torch
import transformers as T

import unipetl
from unipetl import PetlConfig
from test_equivalence import randomize
from tiny_models import ENCODERS, FFN, HEADS, HIDDEN, LAYERS, VOCAB, tiny_batch, tiny_model

PRESETS = unipetl.list_presets()


def tiny_bert_config(**extra) -> T.BertConfig:
    return T.BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN, vocab_size=VOCAB, **extra)


def last_ffn_lengths(petl) -> list[int]:
    """Spy: the sequence length at the last layer's output LN, one entry per forward."""
    lengths = []
    petl.sites.layers[-1].ffn_layernorm.register_forward_hook(lambda m, args, out: lengths.append(out.shape[1]))
    return lengths


def logits_and_grads(petl, batch):
    petl.zero_grad(set_to_none=True)
    out = petl(**batch)
    out.loss.backward()
    named = [(n, p) for n, p in petl.named_parameters() if p.requires_grad]
    return out.logits.detach(), {n: p.grad.clone() for n, p in named if p.grad is not None}, [n for n, _ in named]


def assert_same_logits_and_grads(sliced, every):
    torch.testing.assert_close(sliced[0], every[0], atol=1e-6, rtol=1e-5)
    for name in every[1]:
        torch.testing.assert_close(sliced[1][name], every[1][name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", ENCODERS)
@pytest.mark.parametrize("preset", PRESETS)
def test_same_logits_and_gradients_with_the_last_ffn_at_the_first_position(family, preset):
    batch = tiny_batch(family)
    petl = unipetl.get_petl_model(tiny_model(family), PetlConfig.from_preset(preset)).eval()  # eval: no dropout
    randomize(petl)
    lengths = last_ffn_lengths(petl)
    sliced = logits_and_grads(petl, batch)
    sliced_lengths, lengths[:] = set(lengths), []
    petl.first_position_only = False
    every = logits_and_grads(petl, batch)
    assert sliced_lengths == {1}
    assert set(lengths) == {batch["input_ids"].shape[1] + (petl.config.attn_bn if preset == "prompt_tuning" else 0)}
    assert sliced[1].keys() == every[1].keys()
    if not preset.startswith("diffprune"):  # in eval mode the diff is its evaluation gate's constant (trained below)
        assert len(sliced[1]) == len(sliced[2])  # every trained tensor has a gradient
    assert_same_logits_and_grads(sliced, every)


def test_diff_pruning_in_training_gets_the_same_gradients():
    """Diff pruning runs the backbone through torch.func.functional_call with sampled gates: in training
    (dropout off, the same gate draw) its diff and gate logits get the same gradients either way."""
    config = tiny_bert_config(num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    petl = unipetl.get_petl_model(T.BertForSequenceClassification(config), "diffprune").train()
    randomize(petl)
    batch = tiny_batch("bert")
    torch.manual_seed(7)
    sliced = logits_and_grads(petl, batch)
    petl.first_position_only = False
    torch.manual_seed(7)
    every = logits_and_grads(petl, batch)
    assert {"methods.diff.weight", "methods.diff.gate_logits"} <= sliced[1].keys()
    assert sliced[1].keys() == every[1].keys()
    assert_same_logits_and_grads(sliced, every)


def test_multiple_choice_heads_read_the_first_position_too():
    torch.manual_seed(0)
    petl = unipetl.get_petl_model(T.BertForMultipleChoice(tiny_bert_config()).eval(), "pfeiffer")
    randomize(petl)
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, VOCAB, (2, 3, 6), generator=g), "labels": torch.tensor([0, 2])}
    lengths = last_ffn_lengths(petl)
    sliced = logits_and_grads(petl, batch)
    sliced_lengths, lengths[:] = set(lengths), []
    petl.first_position_only = False
    every = logits_and_grads(petl, batch)
    assert sliced_lengths == {1} and set(lengths) == {6}
    assert_same_logits_and_grads(sliced, every)


@pytest.mark.parametrize("family", ENCODERS)
def test_hidden_states_asked_for_keep_every_position(family):
    batch = tiny_batch(family)
    petl = unipetl.get_petl_model(tiny_model(family), "lora").eval()
    lengths = last_ffn_lengths(petl)
    with torch.no_grad():
        out = petl(**batch, output_hidden_states=True)
    assert lengths == [batch["input_ids"].shape[1]]
    assert out.hidden_states[-1].shape[1] == batch["input_ids"].shape[1]


def test_token_level_heads_keep_every_position():
    torch.manual_seed(0)
    petl = unipetl.get_petl_model(T.BertForTokenClassification(tiny_bert_config(num_labels=4)).eval(), "lora")
    batch = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    with torch.no_grad():
        assert petl(**batch).logits.shape == (3, 7, 4)


def test_gradient_checkpointing_keeps_every_position():
    """A checkpointed layer is recomputed in the backward pass, after the forward's slice is gone."""
    petl = unipetl.get_petl_model(tiny_model("bert"), "full").train()
    enable = getattr(petl.model, "activation_checkpointing_enable", None) or petl.model.gradient_checkpointing_enable
    enable()
    lengths = last_ffn_lengths(petl)
    batch = tiny_batch("bert")
    petl(**batch).loss.backward()
    assert set(lengths) == {batch["input_ids"].shape[1]}


def test_the_backbone_called_directly_keeps_every_position():
    petl = unipetl.get_petl_model(tiny_model("bert"), "lora").eval()
    lengths = last_ffn_lengths(petl)
    with torch.no_grad():
        petl.model(**tiny_batch("bert"))
        petl(**tiny_batch("bert"))
        petl.model(**tiny_batch("bert"))
    assert lengths == [7, 1, 7]  # the slice lives only inside PetlModel.forward


def test_multi_task_batches_run_the_last_ffn_at_the_first_position():
    """MultiTaskModel calls each task's model itself (one shared backbone, a head per task)."""
    from unipetl.multitask import MultiTaskModel, share_backbone

    models = [tiny_model("bert", num_labels=3), tiny_model("bert", num_labels=2, seed=5)]
    share_backbone(models)
    petl = unipetl.PetlModel(models[0], PetlConfig.from_preset("proadapter", mask_keep=0.3), tasks=["a", "b"])
    randomize(petl)
    joint = MultiTaskModel(petl, ["a", "b"], models).eval()
    lengths = last_ffn_lengths(petl)
    batch = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    with torch.no_grad():
        sliced = [joint(task=torch.tensor(i), **batch).logits for i in (0, 1)]
        sliced_lengths, lengths[:] = set(lengths), []
        petl.first_position_only = False
        every = [joint(task=torch.tensor(i), **batch).logits for i in (0, 1)]
    assert sliced_lengths == {1} and set(lengths) == {7}
    for a, b in zip(sliced, every):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
