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
STORED = {"lora": 150_000, "full": 90_000_000, "scalearn": 9_000, "pfeiffer": 400_000}


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
    assert "| proadapter (multi-task) | 30.00 | 50.00/70.00 | 45.00 | 0.100 | 750 | 750 | 750 |" in md


def test_no_usable_run_is_an_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "empty"), "--output-dir", str(out)]) == 2
    assert "no usable results.json" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- methods without a shared task
def test_methods_without_a_shared_task_still_get_every_report_file(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, "lora", "cb", 42, {"accuracy": 0.70, "macro_f1": 0.50})
    write_run(root, "pfeiffer", "wic", 42, {"accuracy": 0.60})
    out = tmp_path / "report"
    assert main(["report", str(root), "--output-dir", str(out)]) == 0
    for name in ("report.md", "report.csv", "report.json", "report.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    assert next(line for line in lines if line.startswith("| lora |")).startswith("| lora | 70.00/50.00 | – | – |")
    assert next(line for line in lines if line.startswith("| pfeiffer |")).startswith("| pfeiffer | – | 60.00 | – |")
    # a sentence under the table says whose average is missing and why
    note = next(line for line in lines if "avg" in line and "lora" in line and "pfeiffer" in line)
    assert "wic" in note and "cb" in note
    assert json.loads((out / "report.json").read_text())["plot_tasks"] == []
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- unfinished runs
def test_only_run_folders_without_results_are_named_unfinished(tmp_path, capsys):
    root = tmp_path / "runs"
    done = write_run(root / "cb" / "lora", "lora", "cb", 42, {"accuracy": 0.7, "macro_f1": 0.5})
    (done / "module").mkdir()
    (done / "checkpoints" / "checkpoint-13").mkdir(parents=True)
    interrupted = root / "cb" / "lora" / "cb-lora-43"  # stopped after a checkpoint
    (interrupted / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    crashed = root / "cb" / "lora" / "cb-lora-44"  # created, then nothing: an empty leaf folder
    crashed.mkdir()
    multitask = root / "mt"  # a finished multi-task run keeps a module folder per task
    (multitask / "module" / "cb").mkdir(parents=True)
    (multitask / "results.json").write_text(json.dumps({
        "multitask": True, "task": "cb", "method": "proadapter", "model": "minilm", "seed": 42, "trainable_params": 1,
        "per_task": {"cb": {"metrics": {"accuracy": 0.6, "macro_f1": 0.4}, "main_score": 0.5, "stored_bytes": 7}}}))
    out = root / "report"  # the report written beside the runs, then made again
    assert main(["report", str(root), "--output-dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(root), "--output-dir", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert sorted(warnings) == sorted(f"unipetl report: warning: {folder}: a run folder without results.json "
                                      "(unfinished or failed run); skipped" for folder in (interrupted, crashed))


# ----------------------------------------------------------------------------- the plot
ALL_METHODS = ("full", "houlsby", "pfeiffer", "parallel", "scaled_parallel", "lora", "prefix", "prompt_tuning",
               "bitfit", "mam", "mam_glue", "proadapter", "prolora", "proprefix", "diffprune", "scalearn", "adapterfusion")


def test_the_plot_tells_17_methods_apart_with_a_legend_outside_the_axes(tmp_path):
    import matplotlib.colors
    import matplotlib.pyplot as plt

    from unipetl.report import read_table, score_storage_figure

    root = tmp_path / "runs"
    source = {"name": "cola", "path": str(root / "cola-pfeiffer" / "module"), "sha256": "p"}
    for i, method in enumerate(ALL_METHODS):
        for task in ("cola", "wic"):
            folder = root / f"{task}-{method}"
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps({
                "task": task, "method": method, "model": "minilm", "seed": 42, "main_score": 0.5 + i / 100,
                "metrics": {"matthews_correlation" if task == "cola" else "accuracy": 0.5 + i / 100},
                "trainable_params": 10, "trainable_percent": 0.1, "stored_bytes": 10_000 * (i + 1),
                "config": {"transfer_sources": [source] if method in ("scalearn", "adapterfusion") else []}}))
    table = read_table([root], warn=pytest.fail)
    fig, tasks = score_storage_figure(table)
    try:
        assert tasks == ["cola", "wic"]
        (ax,) = fig.axes
        points = [line for line in ax.get_lines() if line.get_marker() not in ("None", "", None)]
        styles = [(matplotlib.colors.to_hex(p.get_markerfacecolor()), p.get_marker()) for p in points]
        assert len(points) == len(ALL_METHODS) and len(set(styles)) == len(ALL_METHODS)
        legend = fig.legends[0] if fig.legends else ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == list(table["rows"])
        assert not ax.texts  # no annotations to collide
        fig.canvas.draw()
        legend_box, axes_box = legend.get_window_extent(), ax.get_window_extent()
        assert not legend_box.overlaps(axes_box)
        assert ax.get_xscale() == "log" and "bytes" in ax.get_xlabel() and ax.get_ylabel()
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- bytes per task
def write_result(folder, **payload):
    folder.mkdir(parents=True)
    row = {"model": "minilm", "seed": 42, "trainable_params": 10, "trainable_percent": 0.1, **payload}
    (folder / "results.json").write_text(json.dumps(row))
    return folder


def single(task, method, stored, seed=42, **extra):
    metrics = {"accuracy": 0.6, "macro_f1": 0.4, "combined_score": 0.5} if task == "cb" else {"accuracy": 0.5}
    return {"task": task, "method": method, "seed": seed, "metrics": metrics, "main_score": 0.5,
            "stored_bytes": stored, **extra}


def csv_rows(out):
    return {(r["method"], r["task"]): r for r in csv.DictReader((out / "report.csv").open())}


def md_row(out, method):
    line = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_a_propetl_family_counts_its_prototype_alone_and_amortised_over_its_tasks(tmp_path):
    write_result(tmp_path / "mt", multitask=True, task="cola+stsb", method="proadapter", family_prototype_bytes=1200,
                 per_task={"cola": {"metrics": {"matthews_correlation": 0.3}, "main_score": 0.3, "stored_bytes": 700},
                           "stsb": {"metrics": {"pearson": 0.5, "spearmanr": 0.7, "combined_score": 0.6},
                                    "main_score": 0.6, "stored_bytes": 800}})
    out = tmp_path / "r"
    assert main(["report", str(tmp_path / "mt"), "--output-dir", str(out)]) == 0
    rows = csv_rows(out)
    assert float(rows[("proadapter (multi-task)", "cola")]["bytes_alone_mean"]) == 700 + 1200
    assert float(rows[("proadapter (multi-task)", "cola")]["bytes_amortised_mean"]) == 700 + 1200 / 2
    assert float(rows[("proadapter (multi-task)", "stsb")]["bytes_amortised_mean"]) == 800 + 1200 / 2
    assert md_row(out, "proadapter (multi-task)")[-3:] == ["750", "1,950", "1,350"]  # module, alone, amortised
    summary = json.loads((out / "report.json").read_text())["methods"]["proadapter (multi-task)"]
    assert (summary["stored_bytes_per_task"], summary["bytes_per_task_alone"], summary["bytes_per_task_amortised"]) \
        == (750, 1950, 1350)


def make_source(folder, *sizes, sha256=None):
    """A source module folder of ``sizes`` bytes per file; the first is its header, naming the weights hash."""
    folder.mkdir(parents=True)
    sha256 = sha256 or f"{folder.parent.name}-hash"
    header = json.dumps({"weights": {"sha256": sha256}})
    (folder / "unipetl_module.json").write_text(header.ljust(sizes[0]))  # JSON allows trailing blanks
    for i, size in enumerate(sizes[1:], 1):
        (folder / f"file{i}").write_bytes(b"x" * size)
    return {"name": folder.parent.name, "path": str(folder), "sha256": sha256}


def test_transfer_runs_count_the_source_adapters_they_combine(tmp_path):
    cola = make_source(tmp_path / "sources" / "cola" / "module", 1000, 200)  # 1,200 bytes
    stsb = make_source(tmp_path / "sources" / "stsb" / "module", 2000, 400)  # 2,400 bytes
    root = tmp_path / "runs"
    config = {"config": {"transfer_sources": [cola, stsb]}}
    write_result(root / "cb-42", **single("cb", "scalearn", 100, seed=42, **config))
    write_result(root / "cb-43", **single("cb", "scalearn", 100, seed=43, **config))
    write_result(root / "copa-42", **single("copa", "scalearn", 100, **config))
    write_result(root / "cb-af", **single("cb", "adapterfusion", 5000, **config))
    out = tmp_path / "r"
    assert main(["report", str(root), "--output-dir", str(out)]) == 0
    rows = csv_rows(out)
    # each source serves 3 tasks: its own and the distinct targets that combine it (cb, copa)
    for method, task, module in (("scalearn", "cb", 100), ("scalearn", "copa", 100), ("adapterfusion", "cb", 5000)):
        assert float(rows[(method, task)]["stored_bytes_mean"]) == module
        assert float(rows[(method, task)]["bytes_alone_mean"]) == module + 1200 + 2400
        assert float(rows[(method, task)]["bytes_amortised_mean"]) == module + 1200 / 3 + 2400 / 3
    assert md_row(out, "scalearn")[-3:] == ["100", "3,700", "1,300"]
    assert md_row(out, "adapterfusion")[-3:] == ["5,000", "8,600", "6,200"]
    md = (out / "report.md").read_text()
    assert "amortised" in md and "source" in md  # the footnote states the rule


def test_a_missing_source_is_sized_from_its_run_or_said_to_be_unknown(tmp_path):
    root = tmp_path / "runs"
    write_result(root / "wic" / "pfeiffer" / "seed42", **single("wic", "pfeiffer", 2800))
    write_result(root / "cb" / "pfeiffer", **single("cb", "pfeiffer", 2700))
    # recorded where the grid was trained (another checkout): the folder is gone, its run is read here
    wic = {"name": "wic", "path": "/elsewhere/runs/wic/pfeiffer/seed42/module", "sha256": "w"}
    rte = {"name": "rte", "path": str(tmp_path / "gone" / "module"), "sha256": "r"}  # neither folder nor run
    write_result(root / "cb" / "scalearn", **single("cb", "scalearn", 100, config={"transfer_sources": [wic]}))
    write_result(root / "cb" / "scalearn_uniform",
                 **single("cb", "scalearn_uniform", 90, config={"transfer_sources": [wic, rte]}))
    out = tmp_path / "r"
    assert main(["report", str(root), "--output-dir", str(out)]) == 0
    rows = csv_rows(out)
    assert float(rows[("scalearn", "cb")]["bytes_alone_mean"]) == 100 + 2800
    assert float(rows[("scalearn", "cb")]["bytes_amortised_mean"]) == 100 + 2800 / 2  # wic and cb share it
    assert rows[("scalearn_uniform", "cb")]["bytes_alone_mean"] == ""  # unknown, not 0
    assert md_row(out, "scalearn_uniform")[-3:] == ["90", "–", "–"]
    note = next(line for line in (out / "report.md").read_text().splitlines() if "unknown" in line.lower() and "rte" in line)
    assert str(tmp_path / "gone" / "module") in note and "scalearn_uniform" in note
    summary = json.loads((out / "report.json").read_text())["methods"]["scalearn_uniform"]
    assert summary["bytes_per_task_alone"] is None and summary["bytes_per_task_amortised"] is None


def test_a_source_folder_retrained_since_is_not_the_recorded_source(tmp_path):
    """A grid rerun writes new source adapters where the old ones were: the old transfer runs are sized
    from the runs that wrote their sources (by the hash they recorded), not from today's folder."""
    root = tmp_path / "history" / "runs"
    write_result(root / "wic" / "pfeiffer" / "seed42", **single("wic", "pfeiffer", 2800))
    today = make_source(tmp_path / "now" / "runs" / "wic" / "pfeiffer" / "seed42" / "module", 9000, 1000,
                        sha256="new-hash")
    recorded = {**today, "sha256": "old-hash"}  # same path, the adapter trained before
    write_result(root / "cb" / "scalearn", **single("cb", "scalearn", 100, config={"transfer_sources": [recorded]}))
    out = tmp_path / "r"
    assert main(["report", str(root), "--output-dir", str(out)]) == 0
    assert float(csv_rows(out)[("scalearn", "cb")]["bytes_alone_mean"]) == 100 + 2800
    write_result(root / "cb" / "scalearn-today", **single("cb", "scalearn", 100, config={"transfer_sources": [today]}))
    (root / "cb" / "scalearn" / "results.json").unlink()
    assert main(["report", str(root), "--output-dir", str(out)]) == 0
    assert float(csv_rows(out)[("scalearn", "cb")]["bytes_alone_mean"]) == 100 + 10_000  # the folder it names


def test_test_sets_of_different_sizes_are_named_under_the_table(tmp_path):
    root = tmp_path / "runs"
    write_result(root / "a", **single("cb", "lora", 1, seed=42, test_examples=56))
    write_result(root / "b", **single("cb", "lora", 1, seed=43, test_examples=56))
    write_result(root / "c", **single("cb", "pfeiffer", 1, test_examples=28))
    write_result(root / "d", **single("cb", "full", 1))  # an older run: no count
    write_result(root / "e", **single("wic", "lora", 1, test_examples=638))
    write_result(root / "f", **single("wic", "pfeiffer", 1, test_examples=638))
    out = tmp_path / "r"
    assert main(["report", str(root), "--output-dir", str(out)]) == 0
    md = (out / "report.md").read_text()
    table_end = md.index("\n\n")
    notes = [line for line in md[table_end:].splitlines() if "56" in line and "28" in line]
    assert len(notes) == 1 and all(word in notes[0] for word in ("cb", "lora", "pfeiffer"))
    assert "638" not in md[table_end:]  # wic's runs agree: nothing to say
    rows = csv_rows(out)
    assert rows[("lora", "cb")]["test_examples"] == "56" and rows[("full", "cb")]["test_examples"] == ""


def test_without_matplotlib_the_tables_are_written_and_the_plot_is_named_missing(runs, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in an install without the `plot` extra
    out = tmp_path / "report"
    assert main(["report", str(runs), "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.json", "report.md"]
    captured = capsys.readouterr()
    assert "pip install 'unipetl[plot]'" in captured.err
    assert "report.png" not in captured.out.splitlines()[-1]  # the "written:" line lists what was written
