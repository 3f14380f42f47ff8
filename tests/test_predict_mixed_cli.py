"""`unipetl predict --modules [NAME=]DIR ... --input mixed.jsonl`: one output line per input line, in
order, each for its own task; refusals name the line and leave no output file behind."""

import json

import pytest

import test_server
from unipetl.cli import main

modules = test_server.modules  # the fixture: quick MiniLM modules, trained once per session

LINES = [
    {"task": "a", "text": "a good movie"},
    {"task": "b", "sentence": "a sentence of length 3"},
    {"task": "a", "review": "a bad movie"},
    {"task": "b", "text": "another sentence", "idx": 7},
    {"task": "a", "texts": ["fine"]},
]


def write_jsonl(path, rows, blank_line_at=None):
    lines = [json.dumps(r) for r in rows]
    if blank_line_at is not None:
        lines.insert(blank_line_at, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mixed_file_gives_one_line_per_input_in_order(modules, tmp_path, capsys):
    source = write_jsonl(tmp_path / "mixed.jsonl", LINES, blank_line_at=2)
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--modules", f"a={modules['sentiment']}", f"b={modules['score']}",
                 "--input", str(source), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task"] for r in rows] == ["a", "b", "a", "b", "a"]
    assert all(r["prediction"] in ("neg", "pos") and set(r["probabilities"]) == {"neg", "pos"} for r in rows[::2])
    assert all(isinstance(r["prediction"], float) and "probabilities" not in r for r in rows[1::2])
    assert not list(tmp_path.glob(".out.jsonl*"))  # no temporary file left beside it

    # the same rows through the single-module command give the same answers
    single = write_jsonl(tmp_path / "single.jsonl", [{k: v for k, v in r.items() if k != "task"} for r in LINES[::2]])
    capsys.readouterr()
    assert main(["predict", "--module", str(modules["sentiment"]), "--input", str(single)]) == 0
    alone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prediction"] for r in alone] == [r["prediction"] for r in rows[::2]]
    for mixed, one in zip(rows[::2], alone):
        assert mixed["probabilities"] == pytest.approx(one["probabilities"], abs=1e-4)


def test_without_output_the_lines_go_to_stdout_and_names_default_to_the_run_folder(modules, tmp_path, capsys):
    name = modules["sentiment"].parent.name  # OUTPUT/module, as `unipetl train` writes it: named by OUTPUT
    source = write_jsonl(tmp_path / "in.jsonl", [{"task": name, "text": "a good movie"}])
    assert main(["predict", "--modules", str(modules["sentiment"]), "--input", str(source)]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["task"] == name and row["prediction"] in ("neg", "pos")


@pytest.mark.parametrize("bad,message", [
    ('{"task": "c", "text": "x"}', "line 3: unknown task 'c'; expected the NAME of one of --modules: a, b"),
    ('{"text": "x"}', "line 3: missing field 'task'"),
    ('{"task": "a", "text": 5}', "line 3: field 'text' must be a string, got number"),
    ('{"task": "a", "text": ', "line 3: invalid JSON"),
    ('["task", "a"]', "line 3: expected a JSON object"),
    ('{"task": "a", "comment": "x"}', "line 3: missing field 'review'"),  # refused by the bank itself
])
def test_a_bad_line_exits_2_naming_it_and_writes_nothing(modules, tmp_path, capsys, bad, message):
    source = tmp_path / "mixed.jsonl"
    source.write_text(json.dumps(LINES[0]) + "\n" + json.dumps(LINES[1]) + "\n" + bad + "\n" + json.dumps(LINES[2]) + "\n")
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--modules", f"a={modules['sentiment']}", f"b={modules['score']}",
                 "--input", str(source), "--output", str(out)])
    err = capsys.readouterr().err.splitlines()[-1]  # (after the backbone's loading progress, if it loaded)
    assert code == 2
    assert err.startswith("unipetl predict: error: ") and f"{source}: {message}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl"]  # no output, no temporary file


def test_a_failed_run_leaves_an_existing_output_as_it_was(modules, tmp_path, capsys):
    source = write_jsonl(tmp_path / "mixed.jsonl", [LINES[0], {"task": "a", "comment": "no review"}])
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n")
    assert main(["predict", "--modules", f"a={modules['sentiment']}", "--input", str(source), "--output", str(out)]) == 2
    assert "line 2: missing field 'review'" in capsys.readouterr().err
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl", "out.jsonl"]


def test_module_and_modules_are_exclusive_and_one_is_required(modules, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", LINES[:1])
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--module", str(modules["sentiment"]), "--modules", f"a={modules['sentiment']}",
              "--input", str(source)])
    assert exit_info.value.code == 2
    assert "argument --modules: not allowed with argument --module" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--input", str(source)])
    assert exit_info.value.code == 2
    assert "one of the arguments --module --modules is required" in capsys.readouterr().err


def test_bad_module_lists_are_refused_before_loading(modules, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", LINES[:1])
    assert main(["predict", "--modules", f"a={modules['sentiment']}", f"a={modules['score']}", "--input", str(source)]) == 2
    assert "--modules: task name 'a' is given twice" in capsys.readouterr().err
    assert main(["predict", "--modules", f"a={tmp_path / 'nowhere'}", "--input", str(source)]) == 2
    assert "is not a directory (expected a task module folder)" in capsys.readouterr().err
    assert main(["predict", "--modules", f"a={modules['sentiment']}", f"b={modules['alien']}",
                 "--input", str(source), "--output", str(tmp_path / "out.jsonl")]) == 2
    assert "trained on another backbone checkpoint (fingerprint" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
