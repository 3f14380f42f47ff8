"""Diff pruning: hard-concrete gates and the expected-L0 term against independent computations, the
projection, the fixed-mask stage, sparse storage, in-place task switching and bad input."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import load_file, save_file

from tiny_models import FAMILIES, logits, tiny_batch, tiny_model
from unipetl import PetlConfig, get_petl_model
from unipetl.diff import (GatedDiff, decode_indices, diff_layout, encode_indices, magnitude_threshold,
                          project_to_density)
from unipetl.task_diff import TaskDiff
from unipetl import gates
from unipetl.errors import ConfigError, ModuleFormatError
from unipetl.gates import deterministic_gates, expected_l0, gated_diff, sample_gates, uniform_noise
from unipetl.storage import load_petl_model

LIMITS = (-1.5, 1.5)


def reference_gates(alpha, u, low=-1.5, high=1.5):
    """Hard-concrete sample in numpy, written from the formula (temperature 1)."""
    s = 1 / (1 + np.exp(-(np.log(u) - np.log(1 - u) + alpha)))
    return np.minimum(1.0, np.maximum(0.0, s * (high - low) + low))


def torch_reference_gates(alpha, u, low=-1.5, high=1.5):
    """The same formula with out-of-place torch ops, for autograd."""
    s = torch.sigmoid(torch.log(u) - torch.log(1 - u) + alpha)
    return torch.clamp(s * (high - low) + low, 0.0, 1.0)


def state(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def assert_bit_identical(before, model):
    after = model.state_dict()
    assert set(before) == set(after)
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


# ----------------------------------------------------------------------- gates
def test_gate_samples_match_the_hard_concrete_formula_on_fixed_uniforms():
    alpha = torch.linspace(-4, 6, 1000, dtype=torch.float64)
    u = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.998 + 0.001
    expected = reference_gates(alpha.numpy(), u.numpy())
    assert np.allclose(sample_gates(alpha, u, LIMITS).numpy(), expected, atol=1e-12)
    assert np.allclose(deterministic_gates(alpha, LIMITS).numpy(), reference_gates(alpha.numpy(), 0.5), atol=1e-12)


def test_gate_samples_follow_the_hard_concrete_distribution():
    """P(z = 0) = sigmoid(logit(-l / (r - l)) - alpha) and P(z = 1) = 1 - sigmoid(logit((1 - l) / (r - l)) - alpha)."""
    n, alpha = 400_000, 0.7
    z = sample_gates(torch.full((n,), alpha), uniform_noise(n, seed=11), LIMITS)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p_zero = sigmoid(logit(1.5 / 3.0) - alpha)
    p_one = 1 - sigmoid(logit(2.5 / 3.0) - alpha)
    assert float((z == 0).float().mean()) == pytest.approx(p_zero, abs=4e-3)
    assert float((z == 1).float().mean()) == pytest.approx(p_one, abs=4e-3)


def test_hashed_noise_is_uniform_and_independent_across_entries_and_seeds():
    u = uniform_noise(200_000, seed=5).double()
    eps = float(torch.tensor(gates.NOISE_EPS))  # in float32, as drawn
    assert float(u.min()) >= eps and float(u.max()) <= 1 - eps
    assert scipy.stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    other_seed = uniform_noise(200_000, seed=6).double()
    neighbours = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    across_seeds = torch.corrcoef(torch.stack([u, other_seed]))[0, 1]
    assert abs(float(neighbours)) < 0.01 and abs(float(across_seeds)) < 0.01  # 4.5 standard errors
    assert torch.equal(u, uniform_noise(200_000, seed=5).double())  # a pure function of (index, seed)


@pytest.mark.parametrize("chunk", [2**20, 5])  # one chunk, and chunks that cut through the tensors
def test_gated_diff_uses_the_seeded_noise_and_its_hand_gradients_equal_autograd(chunk, monkeypatch):
    """Deltas, the fused expected-L0 penalty and all their gradients against plain autograd on the same noise."""
    monkeypatch.setattr(gates, "CHUNK", chunk)
    torch.manual_seed(0)
    sizes = [5, 7, 4]
    w = torch.randn(16, dtype=torch.float64, requires_grad=True)
    alpha = (torch.randn(16, dtype=torch.float64) * 2).requires_grad_()
    group = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(16, dtype=torch.float64)
    parts, penalty = gated_diff(w, alpha, group, 1234, LIMITS, sizes)
    delta = torch.cat(parts)
    ((delta * upstream).sum() + 0.7 * penalty).backward()
    # The same computation with plain autograd on the same noise.
    u = gates.uniform_noise(16, 1234).double()
    u_group = gates.group_noise(3, 1234).double()
    w2, alpha2, group2 = (t.detach().clone().requires_grad_() for t in (w, alpha, group))
    reference = w2 * torch_reference_gates(alpha2, u) * torch.repeat_interleave(torch_reference_gates(group2, u_group),
                                                                               torch.tensor(sizes))
    sig = torch.sigmoid  # P(z != 0) with l = -r
    reference_penalty = sum(sig(group2[g]) * sig(part).sum() for g, part in enumerate(alpha2.split(sizes)))
    ((reference * upstream).sum() + 0.7 * reference_penalty).backward()
    assert torch.allclose(delta, reference.detach(), atol=1e-12)
    assert float(penalty.detach()) == pytest.approx(float(reference_penalty.detach()), rel=1e-12)
    for ours, theirs in ((w, w2), (alpha, alpha2), (group, group2)):
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-6)


def test_gated_diff_adds_the_delta_to_the_bases_in_their_shapes_and_leaves_them_alone():
    torch.manual_seed(1)
    bases = [torch.randn(2, 3), torch.randn(4)]
    before = [b.clone() for b in bases]
    w, alpha = torch.randn(10, requires_grad=True), torch.randn(10, requires_grad=True)
    with_bases, penalty = gated_diff(w, alpha, None, 77, LIMITS, [6, 4], bases)
    deltas, same_penalty = gated_diff(w, alpha, None, 77, LIMITS, [6, 4])
    for out, delta, base, original in zip(with_bases, deltas, bases, before):
        assert out.shape == base.shape and torch.equal(base, original)
        assert torch.allclose(out, original + delta.view(base.shape))
    assert float(penalty) == float(same_penalty) == pytest.approx(float(torch.sigmoid(alpha).sum()))
    with_bases[0].sum().backward()  # an unused output (the second tensor) contributes no gradient to w
    assert torch.count_nonzero(w.grad[6:]) == 0 and torch.count_nonzero(w.grad[:6]) > 0


def test_expected_l0_equals_its_closed_form_and_the_mean_number_of_non_zeros():
    torch.manual_seed(0)
    alpha = torch.randn(12, dtype=torch.float64)
    group = torch.tensor([0.5, -1.0], dtype=torch.float64)
    sig = torch.sigmoid
    assert float(expected_l0(alpha, LIMITS)) == pytest.approx(float(sig(alpha).sum()), rel=1e-12)  # l = -r
    joint = sig(group[0]) * sig(alpha[:5]).sum() + sig(group[1]) * sig(alpha[5:]).sum()
    assert float(expected_l0(alpha, LIMITS, group, [5, 7])) == pytest.approx(float(joint), rel=1e-12)
    # Monte Carlo: the expected count of non-zero z_i * z_g.
    n = 40_000
    z = sample_gates(alpha.expand(n, 12), torch.rand(n, 12, dtype=torch.float64) * 0.9998 + 1e-4, LIMITS)
    zg = sample_gates(group.expand(n, 2), torch.rand(n, 2, dtype=torch.float64) * 0.9998 + 1e-4, LIMITS)
    nonzero = ((z * torch.repeat_interleave(zg, torch.tensor([5, 7]), dim=1)) != 0).sum(1).double().mean()
    assert float(nonzero) == pytest.approx(float(joint), rel=0.02)
    # Unequal limits: P(z != 0) = sigmoid(alpha - log(-l / r)).
    assert float(expected_l0(alpha, (-0.1, 1.1))) == pytest.approx(float(sig(alpha - math.log(0.1 / 1.1)).sum()))


# ----------------------------------------------------------------------- model and stages
def trained_gated(family="bert", steps=3, seed=0):
    model = tiny_model(family)
    petl = get_petl_model(model, PetlConfig.from_preset("diffprune"))
    optimizer = torch.optim.AdamW(petl.parameter_groups(1e-2, 0.0))
    batch = tiny_batch(family)
    petl.train()
    torch.manual_seed(seed)
    for _ in range(steps):
        loss = petl(**batch).loss + petl.extra_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    petl.eval()
    return model, petl, batch


@pytest.mark.parametrize("family", FAMILIES)
def test_diff_starts_as_the_backbone_and_training_changes_only_diff_gates_and_head(family):
    model = tiny_model(family)
    batch = tiny_batch(family)
    before, reference = state(model), logits(model, batch)
    petl = get_petl_model(model, PetlConfig.from_preset("diffprune"))
    petl.eval()
    assert torch.allclose(logits(petl, batch), reference, atol=1e-6)
    groups = petl.parameter_groups(1e-5, 0.0)
    gate_group = [g for g in groups if g["lr"] == 0.1]
    assert gate_group and all(p.dim() == 1 for p in gate_group[0]["params"])
    petl.train()
    (petl(**batch).loss + petl.extra_loss()).backward()
    torch.optim.SGD(petl.parameters(), lr=0.1).step()
    head = set(petl.head_names)
    after = model.state_dict()
    for name, value in before.items():
        if name not in head:
            assert torch.equal(value, after[name]), f"backbone tensor {name} changed"
    assert bool(petl.diff.weight.detach().any())


def test_training_penalty_comes_from_the_forward_pass_and_is_never_stale():
    """extra_loss() after a training forward returns that pass's fused expected L0 (with gradients to the
    gate logits); after the logits change, or outside training, it is computed afresh."""
    model = tiny_model("bert")
    batch = tiny_batch("bert")
    petl = get_petl_model(model, PetlConfig.from_preset("diffprune"))
    diff = petl.diff
    with torch.no_grad():
        diff.gate_logits.normal_()
    petl.train()
    loss = petl(**batch).loss
    penalty = diff.expected_l0()
    closed_form = expected_l0(diff.gate_logits, diff.limits, diff.group_gate_logits, diff.layout.sizes)
    assert float(penalty) == pytest.approx(float(closed_form), rel=1e-5)
    (loss + penalty).backward()
    assert bool(diff.gate_logits.grad.any()) and bool(diff.group_gate_logits.grad.any())
    petl(**batch)  # a pass whose penalty is not used before the logits change
    with torch.no_grad():
        diff.gate_logits.sub_(1.0)
    fresh = expected_l0(diff.gate_logits, diff.limits, diff.group_gate_logits, diff.layout.sizes)
    assert float(diff.expected_l0()) == pytest.approx(float(fresh), rel=1e-6)
    assert float(fresh) < float(closed_form)


def test_projection_hits_the_target_density_within_one_parameter():
    _, petl, _ = trained_gated()
    total = petl.diff.layout.total
    for density in (0.005, 0.02, 0.3):
        _, stats = project_to_density(petl.diff, density)
        assert abs(stats["kept_entries"] - density * total) <= 1
    magnitudes = torch.tensor([0.5, 0.1, 0.3, 0.3, 0.0, 0.9])
    assert int((magnitudes > magnitude_threshold(magnitudes, 2)).sum()) == 2  # 0.9, 0.5
    assert int((magnitudes > magnitude_threshold(magnitudes, 10)).sum()) == 5  # every non-zero


def test_sampled_projection_reaches_the_target_where_deterministic_gates_are_closed():
    """After a short L0 stage most alpha are <= 0: the test-time gate is then exactly 0, a sampled one is not."""
    _, petl, _ = trained_gated()
    with torch.no_grad():
        petl.diff.weight.normal_()
        petl.diff.gate_logits.fill_(-0.5)
        petl.diff.gate_logits[:50] = 2.0  # only 50 entries open at test time
    total = petl.diff.layout.total
    _, deterministic = project_to_density(petl.diff, 0.01, gates="deterministic")
    assert deterministic["kept_entries"] == deterministic["nonzero_before"] == 50
    _, sampled = project_to_density(petl.diff, 0.01, gates="sample")
    assert abs(sampled["kept_entries"] - 0.01 * total) <= 1
    # sigmoid(-0.5) = 0.38 of the closed entries are open in a sample (P(z > 0) with l = -r).
    assert sampled["nonzero_before"] / total == pytest.approx(float(torch.sigmoid(torch.tensor(-0.5))), abs=0.02)


def test_expected_projection_reaches_the_target_where_a_sample_closes_whole_tensors():
    """A group gate sampled closed zeroes its whole tensor; ranking |w| * P(non-zero) never does."""
    _, petl, _ = trained_gated()
    with torch.no_grad():
        petl.diff.weight.normal_()
        petl.diff.gate_logits.fill_(-20.0)  # after a short L0 stage with the gate lr of 0.1
        petl.diff.group_gate_logits.fill_(-20.0)
        petl.diff.gate_logits[:30] = 3.0
        petl.diff.group_gate_logits[0] = 3.0
    total = petl.diff.layout.total
    _, sampled = project_to_density(petl.diff, 0.01, gates="sample")
    assert sampled["kept_entries"] <= 30
    _, expected = project_to_density(petl.diff, 0.01, gates="expected")
    assert abs(expected["kept_entries"] - 0.01 * total) <= 1
    # the open entries rank first: |w| * P(non-zero) is larger there by a factor of e^23 or so
    sparse, _ = project_to_density(petl.diff, 30 / total, gates="expected")
    assert sparse.indices.tolist() == list(range(30))


def test_fixed_mask_stage_never_changes_a_masked_out_entry():
    model, petl, batch = trained_gated()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in petl.head_names}
    petl.project(0.05)
    mask = torch.zeros(petl.diff.layout.total, dtype=torch.bool)
    mask[petl.diff.indices] = True
    optimizer = torch.optim.AdamW(petl.parameter_groups(1e-2, 0.0))
    petl.train()
    for _ in range(3):
        petl(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    delta = petl.diff.delta().detach()
    assert not bool(delta[~mask].any())
    assert int(mask.sum()) == petl.report()["trainable_params"]
    for name, value in frozen.items():
        assert torch.equal(value, dict(model.named_parameters())[name])


def test_index_encoding_round_trips_with_long_gaps_and_refuses_indices_past_the_end():
    indices = torch.tensor([0, 1, 65535, 65536, 400_000, 400_001, 3_000_000])
    gaps = encode_indices(indices)
    assert gaps.dtype == torch.uint16
    assert torch.equal(decode_indices(gaps, 3_000_001, "m"), indices)
    with pytest.raises(ModuleFormatError, match="runs past the parameter vector"):
        decode_indices(gaps, 3_000_000, "m")


def test_saved_module_size_reload_and_apply_then_remove(tmp_path):
    model, petl, batch = trained_gated()
    petl.project(0.05)
    petl.train()
    optimizer = torch.optim.AdamW(petl.parameter_groups(1e-2, 0.0))
    petl(**batch).loss.backward()
    optimizer.step()
    petl.eval()
    expected = logits(petl, batch)
    petl.save(tmp_path / "task")
    weights = (tmp_path / "task" / "weights.safetensors").stat().st_size
    header = (tmp_path / "task" / "unipetl_module.json").stat().st_size
    nnz, head_bytes = petl.diff.nnz, sum(p.numel() * 4 for p in petl.head_parameters().values())
    formula = nnz * (4 + 2) + head_bytes + header
    assert abs((weights + header) - formula) / formula < 0.05
    assert petl.report()["stored_bytes"] == weights + header

    loaded = load_petl_model(tiny_model("bert", seed=0), tmp_path / "task")
    assert torch.equal(logits(loaded.eval(), batch), expected)

    fresh = tiny_model("bert", seed=0)
    before = state(fresh)
    task = TaskDiff.from_module(fresh, tmp_path / "task")
    task.apply(fresh)
    assert torch.allclose(logits(fresh, batch), expected, atol=1e-5)
    task.remove(fresh)
    assert_bit_identical(before, fresh)


def test_one_backbone_switches_between_diff_pruned_tasks_in_place(tmp_path):
    outputs = {}
    for seed, name in ((0, "a"), (1, "b")):
        _, petl, batch = trained_gated(seed=seed, steps=2 + seed)
        petl.project(0.05)
        outputs[name] = logits(petl, batch)
        petl.save(tmp_path / name)
    backbone = tiny_model("bert", seed=0)
    before = state(backbone)
    tasks = {name: TaskDiff.from_module(backbone, tmp_path / name) for name in outputs}
    for name in ("a", "b", "a"):
        with tasks[name].applied(backbone):
            assert torch.allclose(logits(backbone, batch), outputs[name], atol=1e-5)
        assert_bit_identical(before, backbone)
    assert not torch.allclose(outputs["a"], outputs["b"])


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize("density", [0, -0.1, 1.5, "half", True])
def test_density_outside_zero_one_is_refused(density):
    with pytest.raises(ConfigError, match="diff_density"):
        PetlConfig.from_preset("diffprune", diff_density=density)
    _, petl, _ = trained_gated(steps=1)
    with pytest.raises(ConfigError, match="diff_density"):
        petl.project(density)


def test_diff_cannot_be_combined_with_other_methods():
    with pytest.raises(ConfigError, match="gated_diff"):
        PetlConfig.from_preset("diffprune", ffn_mode="adapter", ffn_option="pfeiffer", ffn_bn=4)


def test_module_from_another_backbone_is_refused_and_the_backbone_untouched(tmp_path):
    _, petl, _ = trained_gated()
    petl.project(0.05)
    petl.save(tmp_path / "task")
    other = tiny_model("bert", seed=5)
    before = state(other)
    with pytest.raises(ModuleFormatError, match="another backbone"):
        TaskDiff.from_module(other, tmp_path / "task")
    with pytest.raises(ModuleFormatError, match="another backbone"):
        load_petl_model(other, tmp_path / "task")
    assert_bit_identical(before, other)


def test_indices_past_the_parameter_vector_are_refused_and_the_backbone_untouched(tmp_path):
    _, petl, _ = trained_gated()
    petl.project(0.05)
    petl.save(tmp_path / "task")
    # Rewrite the module with one more index beyond the end (and a matching header checksum).
    path = tmp_path / "task" / "weights.safetensors"
    tensors = load_file(str(path))
    indices = decode_indices(tensors["methods.diff.index_gaps"], 10**9, "x")
    bad = torch.cat([indices, torch.tensor([petl.diff.layout.total + 3])])
    tensors["methods.diff.index_gaps"] = encode_indices(bad)
    tensors["methods.diff.values"] = torch.cat([tensors["methods.diff.values"], torch.ones(1)])
    save_file(tensors, str(path))
    header_path = tmp_path / "task" / "unipetl_module.json"
    header = json.loads(header_path.read_text())
    import hashlib

    data = path.read_bytes()
    header["weights"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    header_path.write_text(json.dumps(header))
    backbone = tiny_model("bert", seed=0)
    before = state(backbone)
    for load in (lambda: TaskDiff.from_module(backbone, tmp_path / "task"),
                 lambda: load_petl_model(backbone, tmp_path / "task")):
        with pytest.raises(ModuleFormatError, match="runs past the parameter vector"):
            load()
        assert_bit_identical(before, backbone)


def test_layout_covers_every_backbone_parameter_but_the_head():
    model = tiny_model("bert")
    layout = diff_layout(model)
    head = {"classifier.weight", "classifier.bias"}
    assert set(layout.names) == {n for n, _ in model.named_parameters()} - head
    assert layout.total == sum(p.numel() for n, p in model.named_parameters() if n not in head)


def test_projection_refused_outside_the_l0_stage():
    petl = get_petl_model(tiny_model("bert"), PetlConfig.from_preset("diffprune", diff_stage="fixed_mask"))
    with pytest.raises(ConfigError, match="L0 stage"):
        petl.project()
    assert isinstance(get_petl_model(tiny_model("bert"), "diffprune").diff, GatedDiff)


# ----------------------------------------------------------------------- the pipeline from the command line
from test_training import GLUE, needs_glue, run_cli, tiny_bert  # noqa: E402,F401  (fixture)


@needs_glue
def test_diffprune_preset_runs_all_stages_and_its_module_evaluates_the_same(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("train", "--task", "cb", "--method", "diffprune", "--model", tiny_bert, "--data-dir", GLUE,
                   "--output-dir", out, "--max-steps", 6, "--max-train-samples", 32, "--max-length", 32, "--no-progress",
                   "--set", "diff_density=0.01")
    assert code == 0
    assert "projection: kept" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    projection = results["diff_projection"]
    assert abs(projection["kept_entries"] - 0.01 * projection["parameters"]) <= 1
    assert results["trainable_params"] == projection["kept_entries"]
    assert not (out / "l0_stage").exists()
    assert run_cli("evaluate", "--module", out / "module", "--data-dir", GLUE) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(results["metrics"]["accuracy"], abs=1e-12)


def test_diffprune_refuses_resume(tiny_bert, tmp_path, capsys):
    code = run_cli("train", "--task", "cb", "--method", "diffprune", "--model", tiny_bert, "--data-dir", GLUE,
                   "--output-dir", tmp_path / "run", "--resume")
    assert code != 0
    assert "--resume is not available for diff pruning" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_stages_run_one_by_one_through_a_saved_l0_module(tmp_path):
    _, petl, batch = trained_gated()
    petl.save(tmp_path / "l0")  # the dense L0 state: diff, gate logits, head
    reloaded = load_petl_model(tiny_model("bert", seed=0), tmp_path / "l0")
    assert torch.equal(reloaded.diff.gate_logits, petl.diff.gate_logits)
    torch.manual_seed(5)
    stats_a = petl.project(0.02)
    torch.manual_seed(5)  # the projection draws one gate sample
    stats_b = reloaded.project(0.02)
    assert stats_a == stats_b and torch.equal(petl.diff.indices, reloaded.diff.indices)
    assert torch.equal(logits(reloaded.eval(), batch), logits(petl, batch))


def test_compiled_gate_kernels_equal_the_eager_ones(monkeypatch):
    """Large diffs run the chunk math through torch.compile; it must compute exactly what the eager math does."""
    monkeypatch.setattr(gates, "CHUNK", 64)
    torch.manual_seed(3)
    sizes = [40, 100, 60]
    w = torch.randn(200, requires_grad=True)
    alpha = (torch.randn(200) * 2).requires_grad_()
    group = torch.tensor([0.3, -0.2, 1.0], requires_grad=True)
    upstream = torch.randn(200)

    def run():
        for t in (w, alpha, group):
            t.grad = None
        parts, penalty = gated_diff(w, alpha, group, 99, LIMITS, sizes)
        delta = torch.cat(parts)
        ((delta * upstream).sum() + 0.3 * penalty).backward()
        return [delta.detach(), penalty.detach(), w.grad.clone(), alpha.grad.clone(), group.grad.clone()]

    eager = run()
    monkeypatch.setattr(gates, "COMPILE_MIN_ENTRIES", 0)
    monkeypatch.setattr(gates, "_kernels", {})
    compiled = run()
    assert hasattr(gates._kernels["forward"], "compiled")  # the compiled path ran and did not fall back
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
