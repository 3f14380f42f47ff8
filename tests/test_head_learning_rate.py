"""--head-learning-rate: the task head (and a trained BERT pooler) in an optimizer group of its own rate,
the method's parameters at --learning-rate; refused where it cannot apply."""

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, TrainerCallback

import unipetl
from test_propetl import GLUE
from test_run_folders import data, options, train  # noqa: F401 - data is a fixture
from test_training import run_cli, tiny_bert  # noqa: F401 - tiny_bert is a fixture
from tiny_models import tiny_model
from unipetl.errors import ConfigError
from unipetl.multitask import MultiTaskModel, share_backbone
from unipetl.presets import default_head_learning_rate
from unipetl.training import train_multitask


@pytest.mark.parametrize("preset", ["prefix", "prolora"])
def test_the_head_is_one_group_at_its_rate_and_method_rules_keep_theirs(preset):
    petl = unipetl.get_petl_model(tiny_model("bert"), unipetl.PetlConfig.from_preset(preset, attn_bn=4, mid_dim=8)
                                  if preset == "prefix" else preset)
    head = {id(p) for p in petl.head_parameters().values()}
    assert any(".pooler." in name for name in petl.head_names)  # the pooler trains with the head here
    plain = petl.parameter_groups(1e-3, 0.01)
    groups = petl.parameter_groups(1e-3, 0.01, head_learning_rate=5e-2)
    trainable = {id(p) for p in petl.parameters() if p.requires_grad}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(trainable)  # each parameter once
    at_head_rate = {id(p) for g in groups if g["lr"] == 5e-2 for p in g["params"]}
    assert at_head_rate == head
    # the rest keep the rates (and weight decay) they have without the option: mask scores their own 3e-2
    rates = {id(p): (g["lr"], g["weight_decay"]) for g in plain for p in g["params"]}
    assert all(rates[id(p)] == (g["lr"], g["weight_decay"]) for g in groups for p in g["params"] if id(p) not in head)


def test_training_moves_the_head_at_its_rate_and_the_method_at_its_own(tiny_bert, data, tmp_path):
    results = train(tiny_bert, tmp_path / "run", data, opts=options(learning_rate=1e-9, head_learning_rate=1e-2))
    assert results["options"]["head_learning_rate"] == 1e-2
    trained = load_file(str(tmp_path / "run" / "module" / "weights.safetensors"))
    backbone = dict(AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).named_parameters())
    pooler = [name for name in trained if ".pooler." in name]
    deltas = [name for name in trained if name.startswith("methods.bitfit.")]  # BitFit's bias deltas start at 0
    assert pooler and deltas
    assert min((trained[n] - backbone[n.removeprefix("head.")]).abs().max() for n in pooler) > 1e-4  # ~1e-2 a step
    assert max(trained[n].abs().max() for n in deltas) < 1e-6  # at 1e-9 a step


def test_a_head_rate_that_is_not_positive_is_refused(tiny_bert, data, tmp_path, capsys):
    code = run_cli("train", "--train-file", data["train_file"], "--text-columns", "review", "--label-column", "stars",
                   "--model", tiny_bert, "--max-steps", 1, "--no-progress", "--output-dir", tmp_path / "run",
                   "--head-learning-rate", "0")
    assert code == 2 and "--head-learning-rate=0.0 must be positive" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="--head-learning-rate=-0.001 must be positive"):
        train_multitask(["rte", "mrpc"], "lora", tiny_bert, None, str(tmp_path / "multi"),
                        options(head_learning_rate=-1e-3))
    assert not (tmp_path / "multi").exists()


def test_multitask_heads_are_one_group_at_the_head_rate():
    """Every task's head and the shared trained pooler at the head's rate; the method's parameters keep theirs."""
    models = [tiny_model("bert", num_labels=3), tiny_model("bert", num_labels=2, seed=5)]
    share_backbone(models)
    petl = unipetl.PetlModel(models[0], unipetl.PetlConfig.from_preset("prolora"), tasks=["cb", "rte"])
    joint = MultiTaskModel(petl, ["cb", "rte"], models)
    heads = {id(p) for p in joint.heads.parameters()} | {id(p) for p in petl.head_parameters().values()}
    assert any(".pooler." in name for name in petl.head_names)
    plain = joint.parameter_groups(1e-3, 0.01)
    groups = joint.parameter_groups(1e-3, 0.01, head_learning_rate=5e-2)
    trainable = {id(p) for p in joint.parameters() if p.requires_grad}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(trainable)  # each parameter once
    assert {id(p) for g in groups if g["lr"] == 5e-2 for p in g["params"]} == heads
    assert {id(p) for p in models[1].classifier.parameters()} <= heads  # the second task's head too
    rates = {id(p): (g["lr"], g["weight_decay"]) for g in plain for p in g["params"]}
    assert all(rates[id(p)] == (g["lr"], g["weight_decay"]) for g in groups for p in g["params"] if id(p) not in heads)


@pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data directory not available: {GLUE}")
def test_multitask_runs_take_the_presets_head_rate_and_the_option(tiny_bert, tmp_path, monkeypatch):
    asked = []  # the head rate the trainer's optimizer asked the joint model's groups for
    groups = MultiTaskModel.parameter_groups
    monkeypatch.setattr(MultiTaskModel, "parameter_groups",
                        lambda self, lr, wd, head_learning_rate=None: asked.append(head_learning_rate)
                        or groups(self, lr, wd, head_learning_rate))
    for method, head_rate, expected in (("mam_glue", None, 3e-3), ("lora", 2e-3, 2e-3), ("lora", None, None)):
        results = train_multitask(["cb", "copa"], method, tiny_bert, str(GLUE), str(tmp_path / f"{method}{head_rate}"),
                                  options(max_steps=1, max_train_samples=8, head_learning_rate=head_rate),
                                  log=lambda m: None)
        assert results["options"]["head_learning_rate"] == expected  # recorded as it trained
        assert asked.pop() == expected


class GroupRates(TrainerCallback):
    """Records each optimizer group's rate (its first step's, before the schedule moves it) and size."""

    def __init__(self):
        self.groups = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.groups is None:
            self.groups = [(g["initial_lr"], sum(p.numel() for p in g["params"])) for g in optimizer.param_groups]


@pytest.mark.parametrize("head_rate, expected", [(None, 3e-3), (5e-4, 5e-4)])
def test_a_presets_head_rate_is_the_default_and_the_option_overrides_it(tiny_bert, data, tmp_path, head_rate, expected):
    """`mam_glue` and `prefix_glue` set their heads at 3e-3 (benchmarks/sweep_head_rate.py);
    --head-learning-rate wins over it."""
    assert default_head_learning_rate("mam_glue") == default_head_learning_rate("prefix_glue") == 3e-3
    assert default_head_learning_rate("lora") is None and default_head_learning_rate("prefix") is None
    rates = GroupRates()
    results = train(tiny_bert, tmp_path / "run", data, method="mam_glue", callbacks=[rates],
                    opts=options(max_steps=1, learning_rate=1e-4, head_learning_rate=head_rate))
    assert results["options"]["head_learning_rate"] == expected  # recorded as it trained
    head_size = results["head_params"]
    assert sum(n for rate, n in rates.groups if rate == expected) == head_size  # the head (pooler included) alone
    assert {rate for rate, _ in rates.groups} == {1e-4, expected}


def test_a_preset_without_a_head_rate_trains_its_head_at_the_methods_rate(tiny_bert, data, tmp_path):
    rates = GroupRates()
    results = train(tiny_bert, tmp_path / "run", data, method="lora", callbacks=[rates],
                    opts=options(max_steps=1, learning_rate=1e-4))
    assert results["options"]["head_learning_rate"] is None
    assert {rate for rate, _ in rates.groups} == {1e-4}
