"""Run folders (issue 20): only a unipetl run is replaced, and only once the new run succeeds; one run at a
time per folder; --resume from the newest complete checkpoint with the recorded arguments; non-finite and
impossible values refused in one line."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from test_training import run_cli, tiny_bert  # noqa: F401 - tiny_bert is a fixture
from unipetl.errors import ConfigError, DataError
from unipetl.options import TrainOptions
from unipetl.training import train_task


def _rows(n=40):
    return [(f"good movie number {i}", "pos") if i % 2 else (f"bad movie number {i}", "neg") for i in range(n)]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("review,stars\n" + "".join(f'"{t}",{y}\n' for t, y in _rows()))
    return {"train_file": str(path), "validation_file": None, "test_file": None, "text_columns": ["review"],
            "label_column": "stars", "kind": "classification", "name": "reviews"}


def options(**kw):
    return TrainOptions(**{"epochs": 3, "batch_size": 8, "max_length": 32, "progress": False, **kw})


def train(model, out, custom, method="bitfit", **kw):
    opts = kw.pop("opts", None) or options()
    return train_task("reviews", method, model, None, str(out), opts, custom=custom, log=kw.pop("log", lambda m: None), **kw)


class Fail(TrainerCallback):
    def __init__(self, at_step, error=RuntimeError):
        self.at_step, self.error = at_step, error

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise self.error("stopped by the test")


# ------------------------------------------------------------------------------------------ 1. --overwrite
def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_bert, data, tmp_path, capsys):
    (tmp_path / "victim" / "thesis").mkdir(parents=True)
    (tmp_path / "victim" / "thesis" / "a.tex").write_text("x")
    code = run_cli("train", "--train-file", data["train_file"], "--text-columns", "review", "--label-column", "stars",
                   "--model", tiny_bert, "--max-steps", 1, "--output-dir", tmp_path / "victim", "--overwrite",
                   "--no-progress")
    assert code == 2 and "not a unipetl run folder" in capsys.readouterr().err
    assert (tmp_path / "victim" / "thesis" / "a.tex").read_text() == "x"


def test_overwrite_keeps_the_old_run_until_the_new_one_succeeds(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    first = train(tiny_bert, out, data)
    record = (out / "results.json").read_text()
    with pytest.raises(RuntimeError, match="stopped by the test"):
        train(tiny_bert, out, data, method="lora", overwrite=True, callbacks=[Fail(1)])
    assert (out / "results.json").read_text() == record  # the old run is whole, its module loads
    assert json.loads((out / "module" / "unipetl_module.json").read_text())["config"]["preset"] == first["method"]
    assert not any(p.name.startswith(".run.") and p.is_dir() for p in tmp_path.iterdir())
    second = train(tiny_bert, out, data, method="lora", overwrite=True)
    assert json.loads((out / "results.json").read_text())["method"] == second["method"] == "lora"
    assert not any(p.name.startswith(".run.") and p.is_dir() for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ 2. one run at a time
def test_a_run_into_a_held_folder_is_refused_naming_the_process(tiny_bert, data, tmp_path, capsys):
    from unipetl.runfolder import RunFolder

    out = tmp_path / "run"
    with RunFolder(out, resume=False, overwrite=False, arguments={}):
        code = run_cli("train", "--train-file", data["train_file"], "--text-columns", "review", "--label-column",
                       "stars", "--model", tiny_bert, "--max-steps", 1, "--output-dir", out, "--resume", "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and f"process {os.getpid()}" in err and "in use" in err


def _cli(*args):
    return [sys.executable, "-m", "unipetl.cli", *map(str, args)]


def test_two_runs_into_one_folder_one_wins_whole(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    common = ("--train-file", data["train_file"], "--text-columns", "review", "--label-column", "stars",
              "--model", tiny_bert, "--epochs", 2, "--batch-size", 8, "--max-length", 32, "--no-progress",
              "--output-dir", out)
    runs = {method: subprocess.Popen(_cli("train", "--method", method, *common), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for method in ("bitfit", "lora")}
    results = {method: (p.wait(timeout=300), p.stderr.read()) for method, p in runs.items()}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], results
    winner = next(m for m, (code, _) in results.items() if code == 0)
    loser_err = next(err for code, err in results.values() if code == 2)
    assert "in use" in loser_err or "not empty" in loser_err
    assert json.loads((out / "results.json").read_text())["method"] == winner
    assert json.loads((out / "module" / "unipetl_module.json").read_text())["config"]["preset"] == winner


# ------------------------------------------------------------------------------------------ 3. and 4. --resume
def test_resume_skips_a_half_written_checkpoint_and_names_it(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_bert, out, data, callbacks=[Fail(6, KeyboardInterrupt)])
    good = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert good
    partial = out / "checkpoints" / "checkpoint-99"  # a kill while the Trainer was writing it
    partial.mkdir()
    (partial / "model.safetensors").write_bytes((good[-1] / "model.safetensors").read_bytes())
    lines = []
    train(tiny_bert, out, data, resume=True, log=lines.append)
    assert any("skipping checkpoint-99" in line and "trainer_state.json" not in line or "missing" in line
               for line in lines), lines
    assert any(f"continuing from {good[-1].name}" in line for line in lines), lines
    assert (out / "results.json").is_file()


def test_resume_refuses_other_arguments_and_records_the_total_time(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_bert, out, data, callbacks=[Fail(6, KeyboardInterrupt)])
    with pytest.raises(ConfigError, match="learning_rate"):
        train(tiny_bert, out, data, resume=True, opts=options(learning_rate=0.5))
    with pytest.raises(ConfigError, match="seed"):
        train(tiny_bert, out, data, resume=True, opts=options(seed=7))
    checkpoint = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    before = json.loads((checkpoint / "unipetl_elapsed.json").read_text())["train_seconds"]
    assert before > 0
    started = time.perf_counter()
    results = train(tiny_bert, out, data, resume=True)
    assert results["train_seconds"] > before  # the earlier process's seconds are counted
    assert results["train_seconds"] < before + (time.perf_counter() - started) + 1e-6
    with pytest.raises(ConfigError, match="has finished"):
        train(tiny_bert, out, data, resume=True, opts=options(learning_rate=0.5))


def test_a_damaged_checkpoint_is_a_data_error_naming_it(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_bert, out, data, callbacks=[Fail(6, KeyboardInterrupt)])
    checkpoint = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=f"checkpoint .*{checkpoint.name} is damaged"):  # the CLI: one line, exit 2
        train(tiny_bert, out, data, resume=True)
    assert checkpoint.is_dir()  # kept: the user decides


# ------------------------------------------------------------------------------------------ 5. and 7. values
@pytest.mark.parametrize("args, message", [
    (["--max-steps", "1", "--set", "lora_alpha=NaN"], "lora_alpha=nan must be a finite number"),
    (["--max-steps", "1", "--learning-rate", "inf"], "--learning-rate=inf must be a finite number"),
    (["--max-steps", "1", "--weight-decay", "nan"], "--weight-decay=nan must be a finite number"),
    (["--epochs", "inf"], "--epochs=inf must be a finite number"),
    (["--max-steps", "1", "--max-length", "1000"], "--max-length 1000 is more than this bert backbone's 128 positions"),
    (["--max-steps", "1", "--max-length", "100", "--method", "prompt_tuning", "--set", "attn_bn=40"],
     "--max-length 100 plus prompt tuning's 40 prompt positions is more than this bert backbone's 128 positions; "
     "give --max-length 88 or less"),
])
def test_impossible_values_are_one_line_and_exit_2(tiny_bert, data, tmp_path, capsys, args, message):
    code = run_cli("train", "--train-file", data["train_file"], "--text-columns", "review", "--label-column", "stars",
                   "--method", "lora", "--model", tiny_bert, "--no-progress", "--output-dir", tmp_path / "run", *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_is_a_file_is_one_line(tiny_bert, data, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    code = run_cli("train", "--train-file", data["train_file"], "--text-columns", "review", "--label-column", "stars",
                   "--model", tiny_bert, "--max-steps", 1, "--no-progress", "--output-dir", tmp_path / "out")
    assert code == 2 and "is a file" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "a file"


# ------------------------------------------------------------------------------------------ kills
@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(tiny_bert, data, tmp_path):
    """kill -9 at random moments of a run (starting, between and during checkpoint writes, the final save),
    ten kills in all, each followed by --resume to the end: every finished module holds the weights of a
    run never killed. (Slow: python -m pytest -m slow tests/test_run_folders.py)"""
    common = ("--train-file", data["train_file"], "--text-columns", "review", "--label-column", "stars",
              "--method", "lora", "--model", tiny_bert, "--epochs", 6, "--batch-size", 4, "--max-length", 32,
              "--no-progress")
    reference = tmp_path / "reference"
    started = time.perf_counter()
    assert subprocess.run(_cli("train", *common, "--output-dir", reference), capture_output=True, timeout=600).returncode == 0
    duration = time.perf_counter() - started
    theirs = load_file(str(reference / "module" / "weights.safetensors"))
    rng, kills, trial = random.Random(0), 0, 0
    while kills < 10:
        trial += 1
        assert trial <= 30, f"only {kills} of 30 trials were killed before the run ended"
        out = tmp_path / f"killed{trial}"
        process = subprocess.Popen(_cli("train", *common, "--output-dir", out), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.0) * duration)
        if process.poll() is not None:
            continue  # finished before the kill: no kill to recover from
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        if (out / "results.json").exists():  # killed while deleting its checkpoints: the run is done
            continue
        resumed = subprocess.run(_cli("train", *common, "--output-dir", out, *(["--resume"] if out.exists() else [])),
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        ours = load_file(str(out / "module" / "weights.safetensors"))
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), f"trial {trial}: {name}"


def test_a_model_with_another_label_count_gets_a_new_head_and_says_so(tiny_bert, data, tmp_path, capsys):
    """A checkpoint fine-tuned on 3 labels, trained on a 2-label task: transformers' size-mismatch traceback
    before; now a warning and a fresh 2-label head."""
    import transformers as T

    three = tmp_path / "three-labels"
    model = T.BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    model.save_pretrained(three)
    T.AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(three)
    code = run_cli("train", "--train-file", data["train_file"], "--text-columns", "review", "--label-column", "stars",
                   "--method", "lora", "--model", three, "--max-steps", 1, "--no-progress", "--output-dir", tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 0 and "3-label classification head" in err and "Traceback" not in err
    header = json.loads((tmp_path / "run" / "module" / "unipetl_module.json").read_text())
    assert header["backbone"]["num_labels"] == 2
