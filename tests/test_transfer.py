"""ScaLearn and AdapterFusion over frozen Pfeiffer source adapters: parameter counts, frozen sources and
backbone, equivalence to a single source, batched evaluation against a per-source loop, and bad input."""

import pytest
import torch

from tiny_models import HIDDEN, LAYERS, tiny_batch, tiny_model
from unipetl import PetlConfig, get_petl_model
from unipetl.errors import ConfigError, ModuleFormatError
from unipetl.transfer import AdapterFusion, ScaledMixture, get_transfer_model, load_source

N_SOURCES = 3


def make_source(directory, seed, **overrides):
    backbone = tiny_model("bert", seed=0)  # (seeds the global generator itself)
    torch.manual_seed(100 + seed)
    petl = get_petl_model(backbone, PetlConfig.from_preset("pfeiffer", **overrides))
    with torch.no_grad():  # a trained-looking adapter: non-zero everywhere
        for param in petl.methods.parameters():
            param.normal_(0, 0.2)
    petl.save(directory)
    return petl


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    for i in range(N_SOURCES):
        make_source(root / f"task{i}", i)
    return [root / f"task{i}" for i in range(N_SOURCES)]


def hidden_states(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("method, formula", [
    ("scalearn", lambda L, N, d: L * N * d),
    ("scalearn_uniform", lambda L, N, d: L * N),
    ("scalearn_pp", lambda L, N, d: N * d),
    ("scalearn_uniform_pp", lambda L, N, d: N),
    ("adapterfusion", lambda L, N, d: 3 * L * d * d + 2 * L * d),  # Q, K with bias, V without, per layer
])
def test_trainable_parameters_follow_the_closed_forms(sources, method, formula):
    petl = get_transfer_model(tiny_model("bert", seed=0), sources, method)
    assert petl.report()["trainable_params"] == formula(LAYERS, N_SOURCES, HIDDEN)
    trainable = {n for n, p in petl.named_parameters() if p.requires_grad}
    # the head: the classifier, and BERT's pooler under it (train_pooler, on by default)
    assert trainable - {n for n in trainable if n.startswith("methods.")} == {f"model.{n}" for n in petl.head_names}
    assert {"model.classifier.weight", "model.classifier.bias"} <= trainable


@pytest.mark.parametrize("method", ["scalearn", "adapterfusion"])
def test_sources_and_backbone_stay_bit_identical_through_training(sources, method):
    model = tiny_model("bert", seed=0)
    petl = get_transfer_model(model, sources, method)
    backbone_before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in petl.head_names}
    source_buffers = {n: b.detach().clone() for n, b in petl.named_buffers() if ".sources." in n}
    assert source_buffers
    optimizer = torch.optim.AdamW(petl.parameter_groups(1e-2, 0.01))
    batch = tiny_batch("bert")
    petl.train()
    for _ in range(3):
        loss = petl(**batch).loss
        extra = petl.extra_loss()
        loss = loss + extra if extra is not None else loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, value in petl.named_buffers():
        if name in source_buffers:
            assert torch.equal(value, source_buffers[name]), name
    for name, param in model.named_parameters():
        if name in backbone_before:
            assert torch.equal(param, backbone_before[name]), name
    with open(sources[0] / "weights.safetensors", "rb") as handle:  # the source files themselves are untouched
        assert handle.read()


def test_one_hot_omega_equals_the_backbone_with_that_source_alone(sources):
    batch = tiny_batch("bert")
    outputs = [hidden_states(make_source(sources[0].parent / f"probe{k}", k).eval(), batch) for k in range(N_SOURCES)]
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)  # the sources differ, so the check below can fail
    for k in range(N_SOURCES):
        alone = make_source(sources[0].parent / f"copy{k}", k)  # the same weights as source k
        alone.eval()
        expected = hidden_states(alone, batch)
        for method in ("scalearn", "scalearn_uniform", "scalearn_pp", "scalearn_uniform_pp"):
            petl = get_transfer_model(tiny_model("bert", seed=0), sources, method, omega_dropout=0.0)
            with torch.no_grad():
                for scales in {id(m.scales): m.scales for m in petl.methods.values() if isinstance(m, ScaledMixture)}.values():
                    scales.omega.zero_()
                    scales.omega[k] = 1.0
            petl.eval()
            assert torch.allclose(hidden_states(petl, batch), expected, atol=1e-5), (method, k)


def test_omega_starts_near_two_over_n_and_dropout_acts_on_omega(sources):
    petl = get_transfer_model(tiny_model("bert", seed=0), sources, "scalearn")
    omegas = torch.cat([m.scales.omega.detach().flatten() for m in petl.methods.values() if isinstance(m, ScaledMixture)])
    assert abs(float(omegas.mean()) - 2 / N_SOURCES) < 1e-3 and float(omegas.std()) < 0.002
    assert PetlConfig.from_dict(petl.config.to_dict()).omega_dropout == 0.3
    assert get_transfer_model(tiny_model("bert", seed=0), sources, "scalearn_uniform_pp").config.omega_dropout == 0.0


def test_batched_mixture_equals_the_sum_of_separate_adapter_calls(sources):
    """The concatenated two-matmul form against N separate adapters computed one by one."""
    petl = get_transfer_model(tiny_model("bert", seed=0), sources, "scalearn", omega_dropout=0.0)
    mixture = next(m for m in petl.methods.values() if isinstance(m, ScaledMixture))
    loaded = [load_source(tiny_model("bert", seed=0), s) for s in sources]
    x = torch.randn(2, 5, HIDDEN)
    expected = 0
    for n, source in enumerate(loaded):
        p = source.layers[0]
        h = torch.relu(x @ p["down_weight"].T + p["down_bias"])
        expected = expected + mixture.scales.omega[n] * (h @ p["up_weight"].T + p["up_bias"])
    assert torch.allclose(mixture(x), expected, atol=1e-6)


def test_fusion_value_starts_at_identity_and_its_regulariser_is_in_the_loss(sources):
    petl = get_transfer_model(tiny_model("bert", seed=0), sources, "adapterfusion")
    fusions = [m for m in petl.methods.values() if isinstance(m, AdapterFusion)]
    assert len(fusions) == LAYERS
    value = fusions[0].value.weight
    assert torch.allclose(torch.diagonal(value), torch.ones(HIDDEN)) and float(value.detach().sum()) == pytest.approx(
        HIDDEN + 1e-6 * (HIDDEN * HIDDEN - HIDDEN), rel=1e-6)
    with torch.no_grad():
        fusions[0].value.weight.add_(0.1)
    petl.train()
    expected = 0.01 * sum(((torch.eye(HIDDEN) - f.value.weight) ** 2).sum() for f in fusions)
    assert float(petl.extra_loss()) == pytest.approx(float(expected), rel=1e-6)


def test_an_empty_source_list_is_refused():
    with pytest.raises(ConfigError, match="empty source list"):
        get_transfer_model(tiny_model("bert", seed=0), [], "scalearn")


def test_sources_from_another_backbone_are_refused(sources):
    with pytest.raises(ModuleFormatError, match="another backbone"):
        get_transfer_model(tiny_model("bert", seed=7), sources, "scalearn")


def test_sources_that_are_not_pfeiffer_adapters_are_refused(sources, tmp_path):
    get_petl_model(tiny_model("bert", seed=0), "lora").save(tmp_path / "lora")
    with pytest.raises(ModuleFormatError, match="plain Pfeiffer adapter"):
        get_transfer_model(tiny_model("bert", seed=0), [*sources, tmp_path / "lora"], "scalearn")


def test_sources_with_mixed_activations_are_refused_but_mixed_sizes_combine(sources, tmp_path):
    make_source(tmp_path / "swish", 9, adapter_act="swish")
    with pytest.raises(ConfigError, match="different adapter activations"):
        get_transfer_model(tiny_model("bert", seed=0), [*sources, tmp_path / "swish"], "scalearn")
    make_source(tmp_path / "wide", 9, reduction_factor=4)  # bottleneck 8 next to 2: one concatenated adapter
    petl = get_transfer_model(tiny_model("bert", seed=0), [*sources, tmp_path / "wide"], "scalearn")
    assert petl.report()["trainable_params"] == LAYERS * (N_SOURCES + 1) * HIDDEN


def test_unknown_method_and_unsupported_family_are_refused(sources):
    with pytest.raises(ConfigError, match="unknown transfer method"):
        get_transfer_model(tiny_model("bert", seed=0), sources, "scalearn_plus")
    with pytest.raises(ConfigError, match="needs its source adapters"):
        get_petl_model(tiny_model("bert", seed=0), PetlConfig(ffn_mode="adapter", ffn_option="pfeiffer", ffn_bn=2,
                                                              param_source="scaled_mixture"))


@pytest.mark.parametrize("method", ["scalearn_pp", "adapterfusion"])
def test_a_saved_transfer_module_holds_only_scales_and_head_and_reloads_over_its_sources(sources, method, tmp_path):
    from unipetl.storage import load_petl_model
    from unipetl.transfer import load_transfer_model

    petl = get_transfer_model(tiny_model("bert", seed=0), sources, method)
    with torch.no_grad():
        for param in petl.methods.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    petl.eval()
    batch = tiny_batch("bert")
    expected = hidden_states(petl, batch)
    petl.save(tmp_path / "transfer")
    stored = petl.stored_tensors()
    head = {f"head.{name}" for name in petl.head_names}
    assert sum(v.numel() for k, v in stored.items() if k not in head) == petl.report()["trainable_params"]
    assert [s["name"] for s in petl.config.transfer_sources] == ["task0", "task1", "task2"]
    reloaded = load_petl_model(tiny_model("bert", seed=0), tmp_path / "transfer")  # sources from the header
    assert torch.equal(hidden_states(reloaded.eval(), batch), expected)
    # Sources passed in another order are refused (content hashes), as is a missing one.
    with pytest.raises(ModuleFormatError, match="not the adapter this module was trained over"):
        load_transfer_model(tiny_model("bert", seed=0), tmp_path / "transfer", sources=[sources[1], sources[0], sources[2]])
    with pytest.raises(ModuleFormatError, match="was trained over 3 sources"):
        load_transfer_model(tiny_model("bert", seed=0), tmp_path / "transfer", sources=sources[:2])
    with pytest.raises(ModuleFormatError, match="is missing"):
        load_transfer_model(tiny_model("bert", seed=0), tmp_path / "transfer",
                            sources=[sources[0], sources[1], tmp_path / "nowhere"])


# ----------------------------------------------------------------------- the command line
import json  # noqa: E402

from test_training import GLUE, needs_glue, run_cli, tiny_bert  # noqa: E402,F401  (fixture)


@needs_glue
def test_transfer_command_trains_stage_two_and_its_module_evaluates_the_same(tiny_bert, tmp_path, capsys):
    common = ["--model", tiny_bert, "--data-dir", GLUE, "--max-steps", 3, "--max-train-samples", 32,
              "--max-length", 32, "--no-progress"]
    # stage 1 in one command: one single-task module per task
    assert run_cli("train", "--task", "cb,cola", "--each", "--method", "pfeiffer", "--output-dir", tmp_path, *common) == 0
    assert "cola" in capsys.readouterr().out
    for task in ("cb", "cola"):
        stage1 = json.loads((tmp_path / task / "results.json").read_text())
        assert stage1["task"] == task and stage1["method"] == "pfeiffer"
    backbone_file = {p: p.read_bytes() for p in (tmp_path / "cb" / "module").iterdir()}
    for method in ("scalearn", "adapterfusion"):
        out = tmp_path / f"transfer-{method}"
        assert run_cli("transfer", "--task", "cb", "--method", method, "--sources", tmp_path / "cb" / "module",
                       tmp_path / "cola" / "module", "--output-dir", out, *common) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["method"] == method and results["learning_rate"] == (6e-3 if method == "scalearn" else 5e-5)
        assert [s["name"] for s in results["config"]["transfer_sources"]] == ["cb", "cola"]
        capsys.readouterr()
        assert run_cli("evaluate", "--module", out / "module", "--data-dir", GLUE) == 0
        evaluated = json.loads(capsys.readouterr().out)
        assert evaluated["accuracy"] == pytest.approx(results["metrics"]["accuracy"], abs=1e-12)
    assert {p: p.read_bytes() for p in (tmp_path / "cb" / "module").iterdir()} == backbone_file  # sources untouched


@needs_glue
def test_transfer_command_refuses_bad_sources_with_no_output(tiny_bert, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli("transfer", "--task", "cb", "--sources", tmp_path / "nowhere", "--model", tiny_bert,
                   "--data-dir", GLUE, "--output-dir", out)
    assert code == 2
    assert "nowhere" in capsys.readouterr().err
    assert not out.exists()


@needs_glue
@pytest.mark.parametrize("tasks, extra, message", [
    ("cb,nope", [], "unknown task 'nope'"),
    ("cb,cb", [], "names a task twice"),
    ("cb,cola", ["--multitask"], "cannot be combined"),
])
def test_training_each_task_refuses_bad_lists_before_writing_anything(tiny_bert, tmp_path, capsys, tasks, extra, message):
    out = tmp_path / "out"
    code = run_cli("train", "--task", tasks, "--each", *extra, "--model", tiny_bert, "--data-dir", GLUE, "--output-dir", out)
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()
