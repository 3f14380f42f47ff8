"""Users' data files: labels that must not split into extra classes, and read errors that name the
file and line (issue 20, defects 6 and 10)."""

import json
import tracemalloc

import pytest

from unipetl.errors import DataError
from unipetl.tasks import get_task, load_custom


def refused(load, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- 6. labels --------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["", "NaN", "nan", "null", "None", " "])
def test_csv_missing_label_is_refused_with_file_and_line(tmp_path, cell):
    path = tmp_path / "reviews.csv"
    path.write_text(f"text,label\ngood,1\nbad,0\nmeh,{cell}\n")
    message = refused(load_custom, path, ["text"], "label")
    assert message.startswith(f"{path}: line 4: field 'label': missing label")


def test_skip_missing_labels_leaves_rows_out_and_counts_them(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\na,1\nb,\nc,NaN\nd,0\ne,nan\n")
    with pytest.warns(UserWarning, match=r"reviews\.csv: skipped 3 row\(s\) without a label in 'label', first at line 3"):
        examples, names = load_custom(path, ["text"], "label", skip_missing_labels=True)
    assert names == ("0", "1")
    assert [(e.texts, e.label, e.meta["line"]) for e in examples] == [(("a",), 1, 2), (("d",), 0, 5)]


def test_jsonl_missing_label_is_refused_or_skipped(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": 1}, {"text": "b"}, {"text": "c", "label": None}])
    assert refused(load_custom, path, ["text"], "label").startswith(f"{path}: line 2: field 'label': missing label")
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": NaN}\n{"text": "c", "label": 0}\n')
    assert "line 2: field 'label': missing label" in refused(load_custom, path, ["text"], "label")
    with pytest.warns(UserWarning, match="skipped 1 row"):
        examples, names = load_custom(path, ["text"], "label", skip_missing_labels=True)
    assert names == ("0", "1") and [e.label for e in examples] == [1, 0]


def test_numeric_labels_in_any_spelling_are_one_class(tmp_path):
    labels = [0, 0.0, "0", "0.0", " 0 ", 1, 1.0, "1", "1.00", "+1"]
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": str(i), "label": v} for i, v in enumerate(labels)])
    examples, names = load_custom(path, ["text"], "label")
    assert names == ("0", "1")
    assert [e.label for e in examples] == [0] * 5 + [1] * 5
    path = tmp_path / "x.csv"
    path.write_text("text,label\na,0\nb,0.0\nc,1.0\nd,0.5\ne,pos\n")
    assert load_custom(path, ["text"], "label")[1] == ("0", "0.5", "1", "pos")


def test_later_files_match_label_names_in_any_spelling(tmp_path):
    from unipetl.tasks import custom_splits

    train = write_jsonl(tmp_path / "train.jsonl", [{"t": f"x{i}", "y": i % 2} for i in range(10)])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"t": "a", "y": 1.0}, {"t": "b", "y": "0.0"}])
    spec, splits = custom_splits(str(train), ["t"], "y", validation_file=str(dev), test_file=str(dev))
    assert spec.label_names == ("0", "1") and [e.label for e in splits["validation"]] == [1, 0]
    # a module saved with names spelled "0.0" / "1.0" still reads files that write 0 / 1
    assert [e.label for e in load_custom(dev, ["t"], "y", label_names=["0.0", "1.0"])[0]] == [1, 0]


def test_regression_targets_must_be_finite_and_missing_ones_can_be_skipped(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("text,score\na,0.5\nb,inf\n")
    assert "line 3: field 'score': expected a finite number" in refused(load_custom, path, ["text"], "score", "regression")
    path.write_text("text,score\na,0.5\nb,\nc,NaN\nd,2\n")
    assert "line 3: field 'score': missing label" in refused(load_custom, path, ["text"], "score", "regression")
    with pytest.warns(UserWarning, match="skipped 2 row"):
        examples, _ = load_custom(path, ["text"], "score", "regression", skip_missing_labels=True)
    assert [e.label for e in examples] == [0.5, 2.0]
    path = write_jsonl(tmp_path / "scores.jsonl", [{"text": "a", "score": 1}, {"text": "b", "score": True}])
    assert "line 2: field 'score': expected a number" in refused(load_custom, path, ["text"], "score", "regression")


def test_multilabel_labels_are_normalised_and_missing_ones_refused(tmp_path):
    from unipetl.tasks.multilabel import load_multilabel

    rows = [{"text": "a", "labels": [0, "1.0"]}, {"text": "b", "labels": ["0.0", 1]}, {"text": "c", "labels": [1.0]}]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    examples, names = load_multilabel(path, ["text"], "labels")
    assert names == ("0", "1") and [e.label_ids for e in examples] == [(0, 1), (0, 1), (1,)]
    for bad in ("", None, "nan"):
        write_jsonl(path, [{"text": "a", "labels": ["x", "y"]}, {"text": "b", "labels": ["x", bad]}])
        assert "line 2: field 'labels': missing label" in refused(load_multilabel, path, ["text"], "labels")
    write_jsonl(path, [{"text": "a", "labels": ["x", "y"]}, {"text": "b"}, {"text": "c", "labels": None},
                       {"text": "d", "labels": []}])
    assert "line 2: missing field 'labels'" in refused(load_multilabel, path, ["text"], "labels")
    with pytest.warns(UserWarning, match="skipped 2 row"):
        examples, names = load_multilabel(path, ["text"], "labels", skip_missing_labels=True)
    assert names == ("x", "y") and [e.label_ids for e in examples] == [(0, 1), ()]


def test_task_io_passes_skip_missing_labels_on(tmp_path):
    from unipetl.taskio import task_io_for

    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{['a', 'b', ''][i % 3]}\n" for i in range(30)))
    custom = {"train_file": str(path), "text_columns": ["text"], "label_column": "label", "kind": "classification",
              "name": "mine"}
    assert "missing label" in refused(task_io_for, "mine", custom=custom)
    with pytest.warns(UserWarning, match="skipped 10 row"):
        io = task_io_for("mine", custom={**custom, "skip_missing_labels": True})
    assert io.spec.label_names == ("a", "b") and sum(len(s) for s in io.splits.values()) == 20


# --- 10. read errors ----------------------------------------------------------------------------

def test_utf8_error_names_the_line_and_file_offset(tmp_path):
    from unipetl.tasks.textfiles import jsonl_records

    good = '{"text": "fine", "label": "a"}\n'
    raw = good.encode() * 20000 + b'{"text": "caf\xe9", "label": "b"}\n'
    offset = len(good) * 20000 + len('{"text": "caf')
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(raw)
    message = refused(lambda: list(jsonl_records(path)))
    assert message == f"{path}: line 20001: not UTF-8 text (invalid continuation byte at byte {offset} of the file)"
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"\xef\xbb\xbftext,label\n" + b"fine,a\n" * 20000 + b"caf\xe9,b\n")
    assert refused(load_custom, csv_path, ["text"], "label").startswith(f"{csv_path}: line 20002: not UTF-8 text")


def test_oversized_tsv_field_names_file_and_line(tmp_path):
    from unipetl.tasks.textfiles import tsv_records

    path = tmp_path / "big.tsv"
    path.write_text("text\tlabel\nshort\ta\n" + "x" * 200_000 + "\tb\n")  # over csv's 131072-character field limit
    message = refused(load_custom, path, ["text"], "label")
    assert message.startswith(f"{path}: line 3: malformed CSV/TSV") and "field limit" in message
    assert refused(lambda: list(tsv_records(path, quoted=True))).startswith(f"{path}: line 3:")


def test_overlong_jsonl_line_is_refused_without_reading_it_whole(tmp_path):
    from unipetl.predict import read_inputs

    path = tmp_path / "inputs.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n' + json.dumps({"text": "x" * (8 << 20), "label": "a"}) + "\n")
    tracemalloc.start()
    try:
        message = refused(load_custom, path, ["text"], "label")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message.startswith(f"{path}: line 2: longer than ") and "expected one record a line" in message
    assert peak < 3 << 20  # the line is 8 MiB; only the limit's worth (1 MiB) of it was read
    # the same limit for `unipetl predict` inputs
    assert refused(read_inputs, str(path), get_task("sst2")).startswith(f"{path}: line 2: longer than")
    # a line just under the limit is fine
    from unipetl.tasks.linefiles import MAX_LINE_BYTES

    path.write_text(json.dumps({"text": "x" * (MAX_LINE_BYTES - 100)}) + "\n")
    assert len(read_inputs(str(path), get_task("sst2"))) == 1
