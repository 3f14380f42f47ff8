"""Training, evaluation and the command line on a tiny BERT with MiniLM's tokenizer (fast), plus the
SST-2 quality check on the real MiniLM (slow)."""

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from transformers import TrainerCallback

import unipetl
from unipetl.cli import main
from unipetl.defaults import default_model_path
from unipetl.tasks import get_task, make_splits
from unipetl.training import TrainOptions, train_task

GLUE = Path(os.environ.get("UNIPETL_GLUE_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"))
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data directory not available: {GLUE}")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A random-initialised 2-layer BERT saved with the real MiniLM tokenizer, so the CLI can load it by path."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    T.set_seed(0)
    config = T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=128)
    T.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_cli(*args):
    return main([str(a) for a in args])


def quick(**kw):
    return TrainOptions(**{"max_train_samples": 48, "epochs": 2, "batch_size": 16, "max_length": 48, "progress": False, **kw})


@needs_glue
def test_train_writes_module_and_results_and_evaluate_agrees(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("train", "--task", "cb", "--method", "pfeiffer", "--model", tiny_bert, "--data-dir", GLUE,
                   "--output-dir", out, "--epochs", 1, "--max-train-samples", 32, "--max-length", 48, "--no-progress")
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "trainable parameters" in printed and "full model" in printed
    results = json.loads((out / "results.json").read_text())
    for key in ("task", "method", "model", "metrics", "trainable_params", "head_params", "stored_bytes", "train_seconds"):
        assert key in results
    assert results["task"] == "cb" and results["method"] == "pfeiffer"
    assert set(results["metrics"]) >= {"accuracy", "macro_f1", "combined_score"}
    assert results["stored_bytes"] == sum(p.stat().st_size for p in (out / "module").iterdir())
    assert run_cli("evaluate", "--module", out / "module", "--data-dir", GLUE) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for name in ("accuracy", "macro_f1"):
        assert evaluated[name] == pytest.approx(results["metrics"][name], abs=1e-9)


@needs_glue
@pytest.mark.parametrize("flag", [[], ["--torch-dropout"]])
def test_torch_dropout_flag_keeps_torchs_sampler(flag, tiny_bert, tmp_path, monkeypatch):
    import unipetl.model

    switched = []  # the modules each PetlModel moved to unipetl.dropout's sampler
    real = unipetl.model.enable_fast_dropout

    def spy(model):
        modules = real(model)
        switched.extend(modules)
        return modules

    monkeypatch.setattr(unipetl.model, "enable_fast_dropout", spy)
    out = tmp_path / "run"
    code = run_cli("train", "--task", "cb", "--method", "lora", "--model", tiny_bert, "--data-dir", GLUE, "--output-dir", out,
                   "--max-steps", 1, "--max-train-samples", 8, "--max-length", 16, "--no-progress", *flag)
    assert code == 0
    assert json.loads((out / "results.json").read_text())["options"]["fast_cpu_dropout"] is not bool(flag)
    assert (len(switched) > 0) is not bool(flag)


@needs_glue
def test_predict_gives_one_line_per_input(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    train_task("sst2", "lora", tiny_bert, str(GLUE), str(out), quick(), log=lambda m: None)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a wonderful film"}\n{"sentence": "dull and slow"}\n{"texts": ["fine"]}\n')
    capsys.readouterr()  # drop the training logs
    assert run_cli("predict", "--module", out / "module", "--input", inputs) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["prediction"] in ("negative", "positive") for line in lines)


@needs_glue
@pytest.mark.parametrize("task,method", [("stsb", "lora"), ("copa", "houlsby"), ("copa", "prompt_tuning"), ("wsc", "prefix"),
                                         ("cola", "bitfit")])
def test_every_task_kind_trains(tiny_bert, tmp_path, task, method):
    overrides = {"attn_bn": 4, "mid_dim": 16} if method == "prefix" else {"attn_bn": 4} if method == "prompt_tuning" else {}
    results = train_task(task, method, tiny_bert, str(GLUE), str(tmp_path / "r"), quick(max_train_samples=32, epochs=1),
                         overrides=overrides, log=lambda m: None)
    assert results["metrics"]
    assert -1.0 <= results["main_score"] <= 1.0


class Interrupt(TrainerCallback):
    """Stops the process-like run at a given step, after the step's checkpoint logic ran."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt


@needs_glue
def test_a_killed_run_resumed_from_its_checkpoint_ends_like_an_uninterrupted_one(tiny_bert, tmp_path):
    options = quick(max_train_samples=64, epochs=3)  # 4 steps per epoch, checkpoints at 4, 8, 12
    full = train_task("sst2", "pfeiffer", tiny_bert, str(GLUE), str(tmp_path / "a"), options, log=lambda m: None)
    with pytest.raises(KeyboardInterrupt):
        train_task("sst2", "pfeiffer", tiny_bert, str(GLUE), str(tmp_path / "b"), quick(max_train_samples=64, epochs=3),
                   log=lambda m: None, callbacks=[Interrupt(6)])
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "b" / "results.json").exists()
    resumed = train_task("sst2", "pfeiffer", tiny_bert, str(GLUE), str(tmp_path / "b"), quick(max_train_samples=64, epochs=3),
                         resume=True, log=lambda m: None)
    assert resumed["metrics"] == full["metrics"]
    assert resumed["validation_metrics"]["main_score"] == full["validation_metrics"]["main_score"]
    # every epoch's evaluation is recorded, the interrupted run's first one included, and the best of
    # them is the checkpoint the run kept
    assert [h["epoch"] for h in full["validation_history"]] == [1, 2, 3]
    assert resumed["validation_history"] == full["validation_history"]
    assert max(h["main_score"] for h in full["validation_history"]) == full["validation_metrics"]["main_score"]


# ------------------------------------------------------------------ bad input through the CLI
@needs_glue
@pytest.mark.parametrize("args,message", [
    (["train", "--task", "sst3"], "unknown task 'sst3'; valid task names: cola, sst2"),
    (["train", "--task", "sst2", "--method", "lorra"], "unknown preset 'lorra'; known presets: adapterfusion, bitfit, diffprune, diffprune_short, full"),
    (["train", "--task", "sst2", "--set", "rank=8"], "unknown config field 'rank'"),
    (["train", "--task", "sst2", "--set", "attn_bn"], "expected key=value"),
    (["train", "--task", "sst2", "--set", "attn_option=parallel"], "attn_option='parallel' is impossible with attn_mode='lora'"),
    (["train", "--task", "sst2", "--precision", "fp16"], "needs a GPU"),
    (["train", "--task", "sst2", "--protocol", "random"], "unknown split protocol 'random'"),
])
def test_bad_arguments_exit_non_zero_with_a_clear_message_and_no_output(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(*args, "--output-dir", out, "--data-dir", GLUE)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@needs_glue
def test_missing_data_file_is_named(tiny_bert, tmp_path, capsys):
    (tmp_path / "data" / "CB").mkdir(parents=True)
    (tmp_path / "data" / "CB" / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "entailment"}\n')
    code = run_cli("train", "--task", "cb", "--model", tiny_bert, "--data-dir", tmp_path / "data", "--output-dir", tmp_path / "o")
    assert code == 2
    assert "val.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@needs_glue
def test_bad_label_in_a_data_file_names_file_line_and_field(tiny_bert, tmp_path, capsys):
    shutil.copytree(GLUE / "CB", tmp_path / "data" / "CB")
    lines = (tmp_path / "data" / "CB" / "train.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"label": "entailment"', '"label": "maybe"')
    (tmp_path / "data" / "CB" / "train.jsonl").write_text("\n".join(lines) + "\n")
    code = run_cli("train", "--task", "cb", "--model", tiny_bert, "--data-dir", tmp_path / "data", "--output-dir", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2 and "train.jsonl" in err and "line 3" in err and "'maybe'" in err
    assert not (tmp_path / "o").exists()


@needs_glue
def test_unsupported_model_is_refused_before_training(tmp_path, capsys):
    path = tmp_path / "neox"
    T.GPTNeoXModel(T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                   vocab_size=50)).save_pretrained(path)
    code = run_cli("train", "--task", "sst2", "--model", path, "--data-dir", GLUE, "--output-dir", tmp_path / "o")
    assert code == 2 and "'gpt_neox'" in capsys.readouterr().err and not (tmp_path / "o").exists()


@needs_glue
def test_non_empty_output_dir_needs_overwrite_or_resume(tiny_bert, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    code = run_cli("train", "--task", "cb", "--model", tiny_bert, "--data-dir", GLUE, "--output-dir", tmp_path / "o")
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o" / "keep.txt").exists()


def test_tasks_and_help_commands(capsys):
    assert run_cli("tasks", "--json") == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "boolq", "cb", "copa", "multirc",
            "record", "rte_superglue", "wic", "wsc"} <= names
    proc = subprocess.run([sys.executable, "-m", "unipetl.cli", "train", "--task", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown task 'nope'" in proc.stderr


# ------------------------------------------------------------------ quality on the real MiniLM (slow)
@pytest.mark.slow
@needs_glue
def test_sst2_lora_and_pfeiffer_within_three_points_of_full(tmp_path):
    """MiniLM, SST-2 (4,000 training examples), 2 epochs, sequence length 64, official dev set as test."""
    scores = {}
    for method in ("full", "lora", "pfeiffer"):
        options = TrainOptions(epochs=2, max_train_samples=4000, max_length=64, batch_size=16, progress=False)
        scores[method] = train_task("sst2", method, None, str(GLUE), str(tmp_path / method), options,
                                    log=lambda m: None)["metrics"]["accuracy"]
    print("SST-2 accuracy:", scores)
    assert all(score > 0.80 for score in scores.values()), scores
    assert scores["lora"] >= scores["full"] - 0.03 and scores["pfeiffer"] >= scores["full"] - 0.03, scores


# ------------------------------------------------------------------ users' own data
def _write_csv(path, rows, header="review,stars"):
    path.write_text(header + "\n" + "".join(f'"{t}",{y}\n' for t, y in rows))


def test_own_csv_trains_and_the_module_predicts(tiny_bert, tmp_path, capsys):
    rows = [(f"good movie number {i}", "pos") if i % 2 else (f"bad movie number {i}", "neg") for i in range(40)]
    _write_csv(tmp_path / "train.csv", rows)
    _write_csv(tmp_path / "test.csv", rows[:10])
    out = tmp_path / "run"
    code = run_cli("train", "--train-file", tmp_path / "train.csv", "--test-file", tmp_path / "test.csv",
                   "--text-columns", "review", "--label-column", "stars", "--method", "bitfit", "--model", tiny_bert,
                   "--epochs", 1, "--output-dir", out, "--no-progress")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "custom" and results["train_examples"] == 36  # 10 % held out for validation
    (tmp_path / "in.jsonl").write_text('{"text": "good film"}\n')
    capsys.readouterr()
    assert run_cli("predict", "--module", out / "module", "--input", tmp_path / "in.jsonl") == 0
    assert json.loads(capsys.readouterr().out)["prediction"] in ("neg", "pos")


@pytest.mark.parametrize("rows,header,extra,message", [
    ([("fine", "pos")] * 20, "review,score", [], "missing column 'stars'"),
    ([("fine", "pos")] * 20, "review,stars", ["--task-kind", "regression"], "expected a number for a regression target, got 'pos'"),
    ([], "review,stars", [], "no data rows"),
])
def test_own_data_errors_name_the_file_and_field(tiny_bert, tmp_path, capsys, rows, header, extra, message):
    _write_csv(tmp_path / "train.csv", rows, header)
    code = run_cli("train", "--train-file", tmp_path / "train.csv", "--test-file", tmp_path / "train.csv",
                   "--text-columns", "review", "--label-column", "stars", "--model", tiny_bert,
                   "--output-dir", tmp_path / "o", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "train.csv" in err
    assert not (tmp_path / "o").exists()


def test_unknown_label_in_own_test_file_is_named(tiny_bert, tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", [("a", "pos"), ("b", "neg")] * 10)
    _write_csv(tmp_path / "test.csv", [("a", "pos"), ("b", "meh")])
    code = run_cli("train", "--train-file", tmp_path / "train.csv", "--test-file", tmp_path / "test.csv",
                   "--text-columns", "review", "--label-column", "stars", "--model", tiny_bert, "--output-dir", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2 and "test.csv: line 3" in err and "unknown label 'meh'" in err


# ------------------------------------------------------------------ multi-task
def test_temperature_sampler_draws_tasks_with_the_right_probabilities():
    from unipetl.multitask import TaskBatchSampler

    sampler = TaskBatchSampler([900, 100], batch_size=10, temperature=2.0, seed=0)
    expected = [30 / 40, 10 / 40]  # sqrt(900) : sqrt(100)
    assert sampler.probabilities.tolist() == pytest.approx(expected)
    counts = [0, 0]
    for epoch in range(40):
        sampler.set_epoch(epoch)
        for batch in sampler:
            task = 0 if batch[0] < 900 else 1
            assert all((i < 900) == (task == 0) for i in batch)  # one task per batch
            counts[task] += 1
    assert counts[0] / sum(counts) == pytest.approx(expected[0], abs=0.03)
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first  # reproducible per epoch (resume relies on it)


@needs_glue
def test_multitask_shares_the_method_and_saves_a_loadable_module_per_task(tiny_bert, tmp_path, capsys):
    from unipetl.training import load_module

    out = tmp_path / "mt"
    code = run_cli("train", "--task", "cb,stsb", "--multitask", "--method", "pfeiffer", "--model", tiny_bert,
                   "--data-dir", GLUE, "--output-dir", out, "--epochs", 1, "--max-train-samples", 32,
                   "--max-length", 48, "--temperature", 2, "--no-progress")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["cb", "stsb"] and results["multitask"] is True
    assert set(results["per_task"]["stsb"]["metrics"]) >= {"pearson", "spearmanr"}
    assert set(results["per_task"]["cb"]["metrics"]) >= {"accuracy", "macro_f1"}
    stsb_train = make_splits(get_task("stsb"), str(GLUE), "dev_as_test", 42, 32, None)["train"]
    assert results["per_task"]["stsb"]["regression_bias_start"] == pytest.approx(statistics.mean(e.label for e in stsb_train))
    assert results["per_task"]["cb"]["regression_bias_start"] is None
    for task in ("cb", "stsb"):
        petl, backbone, spec, info = load_module(str(out / "module" / task))
        assert spec.name == task
        capsys.readouterr()
        assert run_cli("evaluate", "--module", out / "module" / task, "--data-dir", GLUE) == 0
        evaluated = json.loads(capsys.readouterr().out)
        for name, value in results["per_task"][task]["metrics"].items():
            assert evaluated[name] == pytest.approx(value, abs=1e-6)
    # the two modules hold the same method tensors (one shared adapter), different heads
    from safetensors.torch import load_file
    a, b = (load_file(str(out / "module" / t / "weights.safetensors")) for t in ("cb", "stsb"))
    shared = [k for k in a if k.startswith("methods.")]
    assert shared and all(torch.equal(a[k], b[k]) for k in shared)
    assert a["head.classifier.weight"].shape[0] == 3 and b["head.classifier.weight"].shape[0] == 1


def test_several_tasks_without_multitask_flag_are_refused(capsys, tmp_path):
    assert run_cli("train", "--task", "cb,rte", "--output-dir", tmp_path / "o") == 2
    assert "--multitask" in capsys.readouterr().err


def test_methods_lists_every_preset_with_counts(tiny_bert, capsys):
    assert run_cli("methods", "--model", tiny_bert, "--json") == 0
    rows = {row["preset"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(unipetl.list_presets())
    assert rows["full"]["trainable_params"] == rows["full"]["backbone_params"]
    assert rows["lora"]["trainable_params"] == 2 * 4 * 16 * 32  # 2 layers x 4rd, r = 16, d = 32
    assert all(row["stored_bytes"] > 0 for row in rows.values())


@needs_glue
def test_the_same_seed_gives_the_same_run(tiny_bert, tmp_path):
    """Head and method initialisation are seeded too: two runs in one process agree exactly."""
    torch.manual_seed(123)
    a = train_task("cb", "proadapter", tiny_bert, str(GLUE), str(tmp_path / "a"), quick(max_train_samples=32, epochs=1),
                   log=lambda m: None)
    torch.rand(7)  # disturb the global generator between the runs
    b = train_task("cb", "proadapter", tiny_bert, str(GLUE), str(tmp_path / "b"), quick(max_train_samples=32, epochs=1),
                   log=lambda m: None)
    assert a["metrics"] == b["metrics"]
    assert (tmp_path / "a" / "module" / "weights.safetensors").read_bytes() == (tmp_path / "b" / "module" / "weights.safetensors").read_bytes()
