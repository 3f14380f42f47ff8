"""`unipetl report`: the tables equal their inputs, bad run folders are named, the plot is a real PNG."""

import csv
import json
import statistics

import pytest

from unipetl.cli import main

# (method, task, seed) -> metrics; stsb is a two-metric task, cb reports accuracy and macro F1.
RESULTS = {
    ("lora", "cola", 42): {"matthews_correlation": 0.40},
    ("lora", "cola", 43): {"matthews_correlation": 0.46},
    ("lora", "stsb", 42): {"pearson": 0.80, "spearmanr": 0.78},
    ("lora", "stsb", 43): {"pearson": 0.84, "spearmanr": 0.81},
    ("lora", "stsb", 44): {"pearson": 0.85, "spearmanr": 0.86},
    ("full", "cola", 42): {"matthews_correlation": 0.50},
    ("full", "stsb", 42): {"pearson": 0.88, "spearmanr": 0.87},
    ("scalearn", "cola", 42): {"matthews_correlation": 0.30},
}
STORED = {"lora": 150_000, "full": 90_000_000, "scalearn": 9_000}


def write_run(root, method, task, seed, metrics, **extra):
    run = root / f"{task}-{method}-{seed}"
    run.mkdir(parents=True)
    metrics = dict(metrics)
    if len(metrics) == 2:
        metrics["combined_score"] = sum(metrics.values()) / 2
    main_score = metrics.get("combined_score", next(iter(metrics.values())))
    payload = {"task": task, "method": method, "model": "minilm", "seed": seed, "metrics": metrics,
               "main_score": main_score, "trainable_params": 1000, "trainable_percent": 0.5,
               "stored_bytes": STORED[method] + seed, **extra}
    (run / "results.json").write_text(json.dumps(payload))
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for (method, task, seed), metrics in RESULTS.items():
        write_run(root, method, task, seed, metrics)
    return root


def cell(method, task, name):
    return [m[name] if name in m else sum(m.values()) / 2
            for (me, t, _), m in RESULTS.items() if (me, t) == (method, task)]


def test_tables_equal_the_inputs_with_two_metric_tasks_and_seed_aggregation(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--output-dir", str(out)]) == 0
    rows = {(r["method"], r["task"]): r for r in csv.DictReader((out / "report.csv").open())}
    for (method, task) in {(m, t) for m, t, _ in RESULTS}:
        row = rows[(method, task)]
        names = ["pearson", "spearmanr"] if task == "stsb" else ["matthews_correlation"]
        for name in names:
            values = cell(method, task, name)
            assert float(row[f"{name}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert float(row[f"{name}_std"]) == pytest.approx(statistics.stdev(values) if len(values) > 1 else 0, abs=1e-12)
        assert int(row["n_seeds"]) == len(cell(method, task, names[0]))
    # Markdown: lora on STS-B shows both means and the std of the combined score over its 3 seeds.
    md = (out / "report.md").read_text()
    lora = next(line for line in md.splitlines() if line.startswith("| lora |"))
    p, s = statistics.fmean(cell("lora", "stsb", "pearson")), statistics.fmean(cell("lora", "stsb", "spearmanr"))
    combined_std = statistics.stdev((a + b) / 2 for a, b in zip(cell("lora", "stsb", "pearson"), cell("lora", "stsb", "spearmanr")))
    assert f"{100 * p:.2f}/{100 * s:.2f} ± {100 * combined_std:.2f}" in lora
    average = (statistics.fmean(cell("lora", "cola", "matthews_correlation")) + (p + s) / 2) / 2
    assert f"| {100 * average:.2f} |" in lora
    # scalearn has no STS-B run: no average, a dash in the missing cell.
    scalearn = next(line for line in md.splitlines() if line.startswith("| scalearn |"))
    assert "| – |" in scalearn and "30.00" in scalearn
    # methods in the canonical preset order, and the Markdown is what the command printed
    assert md.index("| full |") < md.index("| lora |") < md.index("| scalearn |")
    assert md in capsys.readouterr().out
    summary = json.loads((out / "report.json").read_text())["methods"]
    per_task = [STORED["lora"] + statistics.fmean([42, 43]), STORED["lora"] + statistics.fmean([42, 43, 44])]  # cola, stsb
    assert summary["lora"]["stored_bytes_per_task"] == pytest.approx(statistics.fmean(per_task))


def test_the_plot_is_a_valid_png_and_the_report_is_reproducible_byte_for_byte(runs, tmp_path):
    import matplotlib.image

    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["report", str(runs), "--output-dir", str(first)]) == 0
    assert main(["report", str(runs), "--output-dir", str(second)]) == 0
    png = (first / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    image = matplotlib.image.imread(first / "report.png")
    assert image.shape[0] > 300 and image.shape[1] > 500 and image[..., :3].std() > 0.01  # not a blank canvas
    for name in ("report.md", "report.csv", "report.json", "report.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_malformed_and_partial_runs_are_named_and_skipped(runs, tmp_path, capsys):
    (runs / "broken").mkdir()
    (runs / "broken" / "results.json").write_text("{not json")
    missing = write_run(runs, "lora", "cola", 50, {"matthews_correlation": 0.1})
    payload = json.loads((missing / "results.json").read_text())
    del payload["stored_bytes"]
    (missing / "results.json").write_text(json.dumps(payload))
    (runs / "unfinished" / "checkpoint-4").mkdir(parents=True)
    (runs / "cola-lora-42" / "checkpoints" / "checkpoint-8").mkdir(parents=True)  # a finished run keeps these
    bad = write_run(runs, "lora", "stsb", 51, {"pearson": 0.4, "spearmanr": 0.5})
    payload = json.loads((bad / "results.json").read_text())
    payload["metrics"]["pearson"] = "high"
    (bad / "results.json").write_text(json.dumps(payload))
    out = tmp_path / "report"
    assert main(["report", str(runs), str(tmp_path / "nowhere"), "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broken/results.json: not a readable JSON file" in err
    assert f"{missing.name}/results.json: missing field 'stored_bytes'" in err
    assert "unfinished: a run folder without results.json" in err
    assert "stsb-lora-51/results.json: field 'metrics' must map metric names to finite numbers" in err
    assert "nowhere: no such file or directory" in err
    assert "cola-lora-42" not in err
    rows = {(r["method"], r["task"]): r for r in csv.DictReader((out / "report.csv").open())}
    assert rows[("lora", "cola")]["seeds"] == "42 43"  # the bad runs did not enter the numbers


def test_a_repeated_seed_is_named_and_counted_once(runs, tmp_path, capsys):
    copy = runs.parent / "copy"
    write_run(copy, "full", "cola", 42, {"matthews_correlation": 0.99})
    out = tmp_path / "report"
    assert main(["report", str(runs), str(copy), "--output-dir", str(out)]) == 0
    assert "seed 42 of full on cola is already read from" in capsys.readouterr().err
    rows = {(r["method"], r["task"]): r for r in csv.DictReader((out / "report.csv").open())}
    assert rows[("full", "cola")]["n_seeds"] == "1"


def test_multitask_results_become_one_row_per_task(tmp_path):
    run = tmp_path / "mt"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({
        "multitask": True, "task": "cola+stsb", "method": "proadapter", "model": "minilm", "seed": 42,
        "trainable_params": 5000, "trainable_percent": 0.1,
        "per_task": {"cola": {"metrics": {"matthews_correlation": 0.3}, "main_score": 0.3, "stored_bytes": 700},
                     "stsb": {"metrics": {"pearson": 0.5, "spearmanr": 0.7, "combined_score": 0.6}, "main_score": 0.6,
                              "stored_bytes": 800}}}))
    assert main(["report", str(run), "--output-dir", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| proadapter (multi-task) | 30.00 | 50.00/70.00 | 45.00 | 0.100 | 750 |" in md


def test_no_usable_run_is_an_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "empty"), "--output-dir", str(out)]) == 2
    assert "no usable results.json" in capsys.readouterr().err
    assert not out.exists()
