"""The committed reproduction table and plot are what `unipetl report` makes of the committed results.json files."""

import importlib.util
import json
from pathlib import Path

import matplotlib
import pytest

from unipetl.report import build_report

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "benchmarks" / "reproduction"
MARKERS = ("<!-- reproduction table: start -->", "<!-- reproduction table: end -->")

pytestmark = pytest.mark.skipif(not (REPORT / "report.md").exists(), reason="no reproduction report committed yet")


@pytest.mark.parametrize("report", [REPORT, REPORT / "history" / "v1"], ids=["current", "history-v1"])
def test_the_committed_report_regenerates_byte_for_byte(report, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the report names its runs by paths relative to the repository
    build_report([(report / "runs").relative_to(REPO)], tmp_path, warn=lambda m: None)
    for name in ("report.md", "report.csv", "report.json"):
        assert (tmp_path / name).read_bytes() == (report / name).read_bytes(), name
    if json.loads((report / "report.json").read_text())["matplotlib"] == matplotlib.__version__:
        assert (tmp_path / "report.png").read_bytes() == (report / "report.png").read_bytes()


def test_the_readme_table_is_the_committed_report_with_its_coverage_line(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(MARKERS[0]) + len(MARKERS[0]):readme.index(MARKERS[1])]
    assert block == reproduce.readme_block()
    assert (REPORT / "report.md").read_text() in block


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
