"""The committed reproduction table and plot are what `unipetl report` makes of the committed results.json files."""

import importlib.util
import json
from pathlib import Path

import matplotlib
import pytest

from unipetl.report import build_report

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "benchmarks" / "reproduction"
MPNET_REPORT = REPO / "benchmarks" / "reproduction_mpnet"
MARKERS = ("<!-- reproduction table: start -->", "<!-- reproduction table: end -->")

pytestmark = pytest.mark.skipif(not (REPORT / "report.md").exists(), reason="no reproduction report committed yet")


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    return reproduce


@pytest.mark.parametrize("report", [
    pytest.param(REPORT, id="current"), pytest.param(REPORT / "history" / "v1", id="history-v1"),
    pytest.param(MPNET_REPORT, id="mpnet", marks=pytest.mark.skipif(
        not (MPNET_REPORT / "report.md").exists(), reason="no MPNet reproduction report committed yet"))])
def test_the_committed_report_regenerates_byte_for_byte(report, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the report names its runs by paths relative to the repository
    build_report([(report / "runs").relative_to(REPO)], tmp_path, warn=lambda m: None)
    for name in ("report.md", "report.csv", "report.json"):
        assert (tmp_path / name).read_bytes() == (report / name).read_bytes(), name
    if json.loads((report / "report.json").read_text())["matplotlib"] == matplotlib.__version__:
        assert (tmp_path / "report.png").read_bytes() == (report / "report.png").read_bytes()


def test_the_readme_table_is_the_committed_report_with_its_coverage_line(monkeypatch):
    monkeypatch.chdir(REPO)
    reproduce = load_reproduce()
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(MARKERS[0]) + len(MARKERS[0]):readme.index(MARKERS[1])]
    assert block == reproduce.readme_block()
    assert (REPORT / "report.md").read_text() in block


@pytest.mark.skipif(not (MPNET_REPORT / "report.md").exists(), reason="no MPNet reproduction committed yet")
def test_the_readme_mpnet_block_is_its_committed_report_with_coverage_and_claims(monkeypatch):
    """benchmarks/reproduce_mpnet.py copies its report, claims and one-class line into the README."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("reproduce_mpnet", REPO / "benchmarks" / "reproduce_mpnet.py")
    mpnet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mpnet)
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(mpnet.MARKERS[0]) + len(mpnet.MARKERS[0]):readme.index(mpnet.MARKERS[1])]
    assert block == mpnet.readme_block()
    assert (MPNET_REPORT / "report.md").read_text() in block and "Runs done: " in block


def test_the_readme_scalearn_large_sources_table_is_its_committed_summary(monkeypatch):
    """benchmarks/scalearn_large_sources.py writes summary.md from the committed results.json files and
    copies it into the README: both must be what it makes of them now."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("scalearn_large_sources", REPO / "benchmarks" / "scalearn_large_sources.py")
    large = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(large)
    summary = (REPO / large.OUT / "summary.md").read_text()
    assert summary == large.summary()
    readme = (REPO / "README.md").read_text()
    assert readme[readme.index(large.MARKERS[0]) + len(large.MARKERS[0]):readme.index(large.MARKERS[1])] == "\n" + summary


def test_a_claim_that_fails_names_its_gaps_and_the_tasks_where_a_reference_predicted_one_class(monkeypatch):
    """The measured reasons under a failed claim: each task's gap, and the claim again without a task on
    which the reference scored by predicting one class for every test example."""
    monkeypatch.chdir(REPO)
    reproduce = load_reproduce()
    Run = reproduce.Run
    runs = {("sst2", "new", 42): Run(80.0, 1, None, 872), ("sst2", "old", 42): Run(80.5, 1, None, 872),
            ("wsc", "new", 42): Run(50.0, 1, None, 104), ("wsc", "new", 43): Run(54.0, 1, None, 104),
            ("wsc", "old", 42): Run(63.46, 1, "class 0", 104), ("wsc", "old", 43): Run(60.0, 1, None, 104)}
    lines = reproduce.why_not(runs, {"sst2": [42], "wsc": [42, 43]}, "new", ("old",), 1.0)
    assert lines[0] == "  - By task, `new` minus `old` (test examples): sst2 -0.50 (872), wsc -9.73 (104; by seed -13.46 to -6.00)."
    assert "(wsc: `old`, class 0, in 1 of 2 seeds)" in lines[1]
    assert lines[1].endswith("Without wsc: `new` 80.00 against `old` 80.50 (-0.50 points), which holds (tolerance 1 points).")
    runs[("sst2", "new", 42)] = Run(78.0, 1, None, 872)
    assert reproduce.why_not(runs, {"sst2": [42], "wsc": [42, 43]}, "new", ("old",), 1.0)[1].endswith(
        "(-2.50 points), which does not hold (tolerance 1 points).")
    runs[("wsc", "old", 42)] = Run(63.46, 1, None, 104)  # no collapse: the gaps alone
    assert len(reproduce.why_not(runs, {"sst2": [42], "wsc": [42, 43]}, "new", ("old",), 1.0)) == 1


def test_a_grid_run_stopped_after_a_checkpoint_resumes_and_one_that_cannot_starts_again(tmp_path, monkeypatch):
    """A session that ends mid-run leaves a checkpoint: the next `reproduce.py` continues from it; where the
    library refuses to resume (a staged method, changed arguments) the run starts over instead of failing."""
    from unipetl.errors import ConfigError

    reproduce = load_reproduce()
    monkeypatch.setattr(reproduce, "RUNS", tmp_path)
    calls = []

    def fake_train_task(task, method, model, data, out, options, *, resume=False, overwrite=False, log, sources):
        calls.append((Path(out).relative_to(tmp_path).as_posix(), resume, overwrite))
        if resume and method == "diffprune_short":
            raise ConfigError("--resume is not available for diff pruning")

    monkeypatch.setattr(reproduce, "train_task", fake_train_task)
    reproduce.train("cb", "lora", 43)  # nothing there yet
    (tmp_path / "cb" / "prefix" / "seed43" / "checkpoints" / "checkpoint-40").mkdir(parents=True)
    reproduce.train("cb", "prefix", 43)
    (tmp_path / "cb" / "diffprune_short" / "seed43" / "checkpoints" / "checkpoint-40").mkdir(parents=True)
    reproduce.train("cb", "diffprune_short", 43)
    assert calls == [("cb/lora/seed43", False, True), ("cb/prefix/seed43", True, False),
                     ("cb/diffprune_short/seed43", True, False), ("cb/diffprune_short/seed43", False, True)]
