"""The fast CPU dropout sampler (unipetl.dropout) and the attention that uses it (unipetl.attention):
its distribution, gradients and seeding; attention with its masks equal to an independent computation;
every family routed through it in training, equal to eval mode when nothing is dropped, and unloaded."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unipetl
from tiny_models import FAMILIES, tiny_batch, tiny_model
from unipetl import attention
from unipetl import dropout as fast


def test_keep_fraction_and_scale_match_p():
    x = torch.ones(1000, 1000)
    for p in (0.1, 0.25, 0.5, 0.9):
        torch.manual_seed(0)
        out = fast.dropout(x, p)
        keep = 1 - fast.drop_threshold(p) / 65536
        assert abs(keep - (1 - p)) <= 2 ** -17
        kept = out != 0
        sigma = math.sqrt(keep * (1 - keep) / x.numel())
        assert abs(kept.float().mean().item() - keep) < 5 * sigma, p
        # kept entries are scaled by exactly 1 / P(keep): the output is unbiased
        assert torch.equal(out[kept], torch.full_like(out[kept], 1 / keep))
        assert abs(out.mean().item() - 1) < 5 * sigma / keep


def test_neighbours_and_successive_calls_are_uncorrelated():
    torch.manual_seed(1)
    n = 1 << 20
    a = (fast.dropout(torch.ones(n), 0.5) != 0).float()
    b = (fast.dropout(torch.ones(n), 0.5) != 0).float()
    # the four 16-bit lanes of one 64-bit draw, the next draw, and the next call
    pairs = [(a[0::4], a[1::4]), (a[1::4], a[2::4]), (a[2::4], a[3::4]), (a[:-4], a[4:]), (a, b)]
    for u, v in pairs:
        corr = torch.corrcoef(torch.stack([u, v]))[0, 1].item()
        assert abs(corr) < 5 / math.sqrt(u.numel())


def test_backward_is_the_forward_mask_times_the_scale():
    torch.manual_seed(2)
    x = (torch.rand(64, 33) + 0.5).requires_grad_()  # no zeros, so out == 0 marks the dropped entries
    out = fast.dropout(x, 0.3)
    grad = torch.randn_like(out)
    out.backward(grad)
    keep = (out != 0).float()
    scale = 65536 / (65536 - fast.drop_threshold(0.3))
    torch.testing.assert_close(out, x.detach() * keep * scale, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, grad * keep * scale, rtol=0, atol=0)


def test_seeded_like_torch_and_off_outside_cpu_training():
    x = torch.randn(50, 50)
    torch.manual_seed(5)
    first = fast.dropout(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(fast.dropout(x, 0.2), first)
    assert not torch.equal(fast.dropout(x, 0.2), first)  # the generator moved on
    assert torch.equal(fast.dropout(x, 0.2, training=False), x)
    assert torch.equal(fast.dropout(x, 0.0), x)
    assert torch.equal(fast.dropout(x, 1.0), torch.zeros_like(x))
    leaf = x.clone().requires_grad_()
    fast.dropout(leaf, 1.0).sum().backward()
    assert torch.equal(leaf.grad, torch.zeros_like(x))  # as torch's dropout at p = 1
    assert not fast.uses_fast_path(torch.empty(2, device="meta"), 0.2, True)


def test_module_switches_class_and_back():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Sequential(nn.Dropout(0.1, inplace=True)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    switched = fast.enable_fast_dropout(model)
    assert [type(m) for m in switched] == [fast.FastDropout, fast.FastDropout] and switched[0].p == 0.3
    assert fast.enable_fast_dropout(model) == []  # already switched
    torch.manual_seed(0)
    x = torch.ones(8, 4) + torch.rand(8, 4)
    y = model[2](x.clone())  # the in-place module writes into its input and returns it
    assert ((y == 0) | (y > 1)).all() and (y == 0).any()
    fast.disable_fast_dropout(switched)
    assert [type(m) for m in (model[1], model[2][0])] == [nn.Dropout, nn.Dropout]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def reference_attention(q, k, v, bias, p, scaling, seed):
    """softmax(q k^T s + bias) with the same dropout draw (same seed, same shape), times v."""
    probs = (q @ k.transpose(-1, -2) * scaling + bias).softmax(-1)
    torch.manual_seed(seed)
    return fast.dropout(probs, p) @ v


def test_attend_equals_an_independent_computation_with_gradients():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g).requires_grad_() for _ in range(3))
    bias = torch.zeros(2, 1, 5, 5)
    bias[0, ..., -2:] = torch.finfo(torch.float32).min  # two padded keys in the first row
    torch.manual_seed(9)
    out = attention.attend(q, k, v, bias, 0.3, 0.5, True)
    ref = reference_attention(q, k, v, bias, 0.3, 0.5, seed=9)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    # without dropout, or without the fast sampler at p = 0, it is SDPA
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
    torch.testing.assert_close(attention.attend(q, k, v, bias, 0.0, 0.5, True), sdpa)


def test_dropout_attention_reads_sdpa_masks():
    module = nn.Module()
    module.is_causal = False
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    allowed = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    allowed[1, ..., 3:] = False
    bias = torch.zeros(2, 1, 5, 5).masked_fill(~allowed, torch.finfo(torch.float32).min)
    torch.manual_seed(7)
    out, _ = attention.dropout_attention(module, q, k, v, allowed, dropout=0.25, scaling=0.5)
    ref = reference_attention(q, k, v, bias, 0.25, 0.5, seed=7).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    # evaluation and causal attention keep SDPA
    module.eval()
    out, _ = attention.dropout_attention(module, q, k, v, allowed, dropout=0.0, scaling=0.5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=0.5).transpose(1, 2))
    module.train()
    module.is_causal = True
    out, _ = attention.dropout_attention(module, q, k, v, None, dropout=1e-6, scaling=0.5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5).transpose(1, 2))


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout probability of a transformers model: nn.Dropout modules and BART's/T5's float fields."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)


def train_and_eval_logits(petl, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels" or v.dim() == 2}
    petl.train()
    torch.manual_seed(0)
    trained = petl(**inputs).logits
    petl.eval()
    with torch.no_grad():
        return trained, petl(**inputs).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", ["full", "pfeiffer", "prefix", "mam"])
def test_training_mode_goes_through_the_fast_sampler_and_equals_eval_when_nothing_drops(family, preset, monkeypatch):
    model = tiny_model(family)
    # p > 0 takes the fast path, but round(p * 2^16) = 0 levels drop: the training forward must equal eval
    set_dropout(model, 1e-6)
    petl = unipetl.get_petl_model(model, preset)
    if family != "bart":  # BART's hidden-state dropout is functional (F.dropout), only its attention is ours
        assert any(type(m) is fast.FastDropout for m in petl.modules())
    calls = []
    real = fast._FastDropout.apply
    monkeypatch.setattr(fast._FastDropout, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    trained, evaluated = train_and_eval_logits(petl, tiny_batch(family))
    assert calls, "no dropout went through the fast sampler"
    if family != "t5":  # attention probabilities too (T5's position bias and decoders keep SDPA's)
        assert any(len(shape) == 4 for shape in calls)
    torch.testing.assert_close(trained, evaluated, rtol=1e-5, atol=1e-5)
    base = petl.unload()
    assert not any(type(m) is fast.FastDropout for m in base.modules())
    assert base.config._attn_implementation in ("sdpa", "eager")


def test_fast_and_torch_dropout_give_the_same_output_distribution():
    batch = tiny_batch("bert")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    samples = {}
    for fast_cpu_dropout in (True, False):
        model = tiny_model("bert")
        set_dropout(model, 0.3)
        with torch.no_grad():  # large enough weights that dropout moves the logits
            for param in model.parameters():
                param.mul_(20 if param.dim() > 1 else 1)
        petl = unipetl.get_petl_model(model, "full", fast_cpu_dropout=fast_cpu_dropout).train()
        torch.manual_seed(1)
        with torch.no_grad():
            samples[fast_cpu_dropout] = torch.stack([petl(**inputs).logits for _ in range(400)])
    a, b = samples[True], samples[False]
    assert a.std(0).min() > 0.05  # dropout does move them
    standard_error = torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    assert ((a.mean(0) - b.mean(0)).abs() < 5 * standard_error).all()
    assert ((a.std(0) / b.std(0) - 1).abs() < 0.25).all()
