"""Two CPU processes under torchrun (gloo): data-parallel training, evaluation gathered across processes
with uneven shards, and one process writing. Evaluated single-process, the saved module must score exactly
what the distributed run reported, which fails if gathered predictions are padded, duplicated or reordered."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from test_training import GLUE, needs_glue, run_cli, tiny_bert  # noqa: F401  (fixture)

needs_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun is not installed")


def torchrun(*args, processes=2):
    launcher = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # must work without it
    return subprocess.run([launcher, "--standalone", f"--nproc_per_node={processes}", "-m", "unipetl.cli",
                           *[str(a) for a in args]], capture_output=True, text=True, env=env, timeout=600)


@needs_glue
@needs_torchrun
def test_two_processes_train_one_module_whose_metrics_match_a_single_process_evaluation(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    # CB's 56 dev examples in batches of 8 over 2 processes: 7 batches, so the second process's last batch is padding.
    done = torchrun("train", "--task", "cb", "--method", "lora", "--model", tiny_bert, "--data-dir", GLUE,
                    "--output-dir", out, "--max-steps", 6, "--batch-size", 4, "--eval-batch-size", 8,
                    "--max-length", 48, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # one process reports
    assert done.stderr.count("cb: lora on") == 1
    results = json.loads((out / "results.json").read_text())
    assert results["train_examples"] == 250
    assert run_cli("evaluate", "--module", out / "module", "--data-dir", GLUE, "--task", "cb") == 0
    evaluated = json.loads(capsys.readouterr().out)
    for name in ("accuracy", "macro_f1"):
        assert evaluated[name] == pytest.approx(results["metrics"][name], abs=1e-12)


@needs_glue
@needs_torchrun
def test_two_processes_train_a_multitask_run(tiny_bert, tmp_path, capsys):
    out = tmp_path / "multi"
    done = torchrun("train", "--task", "cb,cola", "--multitask", "--method", "pfeiffer", "--model", tiny_bert,
                    "--data-dir", GLUE, "--output-dir", out, "--max-steps", 4, "--batch-size", 4,
                    "--eval-batch-size", 16, "--max-length", 48, "--max-train-samples", 40, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for task in ("cb", "cola"):
        assert run_cli("evaluate", "--module", out / "module" / task, "--data-dir", GLUE, "--task", task) == 0
        evaluated = json.loads(capsys.readouterr().out)
        metric = "accuracy" if task == "cb" else "matthews_correlation"
        assert evaluated[metric] == pytest.approx(results["per_task"][task]["metrics"][metric], abs=1e-12)
