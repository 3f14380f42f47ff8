"""Loading the official files, the SuperGLUE formulations on real lines, bad input, users' files."""

import json
import os
from pathlib import Path

import pytest

from unipetl.errors import DataError
from unipetl.tasks import get_task, load_custom, load_split

REPO = Path(__file__).resolve().parents[1]


def glue_dir() -> Path:
    """$UNIPETL_GLUE_DIR, else ../shared/data/glue beside the repository; skip when absent."""
    path = Path(os.environ.get("UNIPETL_GLUE_DIR") or REPO.parent / "shared" / "data" / "glue")
    if not path.is_dir():
        pytest.skip(f"GLUE data directory not available: {path} (set UNIPETL_GLUE_DIR)")
    return path


# Official row counts (ALGORITHMS.md §6; MultiRC counts answer options).
COUNTS = [
    ("cola", "train", 8551), ("cola", "validation", 1043),
    ("sst2", "train", 67349), ("sst2", "validation", 872),
    ("stsb", "train", 5749), ("stsb", "validation", 1500),
    ("qnli", "validation", 5463),
    ("wnli", "train", 635), ("wnli", "validation", 71),
    ("cb", "train", 250), ("cb", "validation", 56),
    ("copa", "train", 400), ("copa", "validation", 100),
    ("wic", "train", 5428), ("wic", "validation", 638),
    ("wsc", "train", 554), ("wsc", "validation", 104),
    ("multirc", "train", 27243), ("multirc", "validation", 4848),
]


@pytest.mark.parametrize("task, split, rows", COUNTS)
def test_official_files_load_with_official_row_counts(task, split, rows):
    spec = get_task(task)
    examples = load_split(task, split, glue_dir())
    assert len(examples) == rows
    for ex in examples:
        if spec.kind == "regression":
            assert isinstance(ex.label, float) and 0.0 <= ex.label <= 5.0
        else:
            assert isinstance(ex.label, int) and 0 <= ex.label < spec.num_labels
        assert all(isinstance(t, str) for t in ex.texts)
        assert len(ex.texts) in (1, 2)


def test_label_distributions_match_the_files():
    data = glue_dir()
    # CoLA dev: 721 acceptable / 322 unacceptable; CB dev: 23 / 28 / 5 (entailment, contradiction, neutral).
    cola = [e.label for e in load_split("cola", "validation", data)]
    assert (cola.count(0), cola.count(1)) == (322, 721)
    cb = [e.label for e in load_split("cb", "validation", data)]
    assert (cb.count(0), cb.count(1), cb.count(2)) == (23, 28, 5)


def test_glue_tsv_columns_are_read_by_name():
    data = glue_dir()
    cola = load_split("cola", "validation", data)[0]
    assert cola.texts == ("The sailors rode the breeze clear of the rocks.",) and cola.label == 1
    stsb = load_split("stsb", "validation", data)[1]
    assert stsb.texts == ("A young child is riding a horse.", "A child is riding a horse.") and stsb.label == 4.75
    qnli = load_split("qnli", "validation", data)[1]
    assert qnli.texts[0] == "What is the first major city in the stream of the Rhine?" and qnli.label == 1
    wnli = load_split("wnli", "validation", data)[0]
    assert wnli.texts == ("The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.")


# --- the SuperGLUE formulations on real lines (first line of each val file) ----------------------

def test_copa_real_line():
    ex = load_split("copa", "validation", glue_dir())[0]
    # {"premise": "The man turned on the faucet.", ..., "question": "effect", "label": 1}
    assert ex.choices == (("The man turned on the faucet. so", "The toilet filled with water."),
                          ("The man turned on the faucet. so", "Water flowed from the spout."))
    assert ex.label == 1
    causes = [e for e in load_split("copa", "validation", glue_dir()) if e.meta["question"] == "cause"]
    assert causes and all(e.choices[0][0].endswith(" because") for e in causes)


def test_multirc_real_line_one_example_per_answer():
    examples = load_split("multirc", "validation", glue_dir())
    first = [e for e in examples if e.group == "0-0"]
    assert [e.texts[1] for e in first] == [
        "Would the mass of a baseball affect how much force you have to use to pick it up? No",
        "Would the mass of a baseball affect how much force you have to use to pick it up? Yes",
        "Would the mass of a baseball affect how much force you have to use to pick it up? "
        "Less the mass, less the force applied",
        "Would the mass of a baseball affect how much force you have to use to pick it up? "
        "It depends on the shape of the baseball",
    ]
    assert [e.label for e in first] == [0, 1, 1, 0]
    assert first[0].texts[0].startswith("What causes a change in motion? The application of a force.")
    assert len({e.group for e in examples}) == 953  # questions in the val file


def test_wic_real_line():
    ex = load_split("wic", "validation", glue_dir())[0]
    assert ex.texts == ("An emerging professional class. Apologizing for losing your temper, even though you were "
                        "badly provoked, showed real class. Does class have the same meaning in both sentences?",)
    assert ex.label == 0


def test_wsc_real_line():
    ex = load_split("wsc", "validation", glue_dir())[0]
    assert ex.texts[0].startswith("him: Bernard , who had not told the government official")
    assert ex.texts[0].endswith("could take his claim away from him .")
    assert ex.texts[1] == "anyone"
    assert ex.label == 0


def test_cb_string_labels_map_to_hf_ids():
    ex = load_split("cb", "validation", glue_dir())[0]  # "label": "contradiction"
    assert ex.texts[1] == "Valence was helping" and ex.label == 1


# --- bad official input ------------------------------------------------------------------------

def test_missing_official_file_names_the_expected_path(tmp_path):
    with pytest.raises(DataError) as err:
        load_split("mrpc", "train", tmp_path)
    assert "MRPC" in str(err.value) and "train.tsv" in str(err.value) and "not found" in str(err.value)


def test_unknown_split_names_the_valid_ones():
    with pytest.raises(DataError, match="validation_mismatched"):
        load_split("mnli", "test", "/nonexistent")


def test_official_tsv_missing_column_and_unknown_label(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(DataError) as err:
        load_split("sst2", "train", tmp_path)
    assert "train.tsv" in str(err.value) and "'sentence'" in str(err.value)

    (tmp_path / "QNLI").mkdir()
    (tmp_path / "QNLI" / "dev.tsv").write_text(
        "index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n1\tq?\ts.\tcontradiction\n")
    with pytest.raises(DataError) as err:
        load_split("qnli", "validation", tmp_path)
    assert "dev.tsv" in str(err.value) and "line 3" in str(err.value) and "'contradiction'" in str(err.value)


def test_official_stsb_non_numeric_score(tmp_path):
    (tmp_path / "STS-B").mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (tmp_path / "STS-B" / "dev.tsv").write_text(header + "0\tg\tf\ty\t0\tn\tn\ta\tb\t4.5\n"
                                                 + "1\tg\tf\ty\t1\tn\tn\tc\td\thigh\n")
    with pytest.raises(DataError) as err:
        load_split("stsb", "validation", tmp_path)
    message = str(err.value)
    assert "dev.tsv" in message and "line 3" in message and "'score'" in message and "'high'" in message


def test_official_tsv_truncated_rows_are_skipped_with_a_warning(tmp_path):
    # Like HF's GLUE loader, which drops the few corrupt rows of the downloads.
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tbroken\n2\tc\td\tnot_entailment\n")
    with pytest.warns(UserWarning, match="skipped 1 truncated row.*line 3"):
        examples = load_split("rte", "validation", tmp_path)
    assert [e.label for e in examples] == [0, 1]


def test_mnli_files_and_splits(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "dev_matched.tsv").write_text(header + "0\t1\t1\tfiction\tp\th\tneutral\tneutral\n")
    (tmp_path / "MNLI" / "dev_mismatched.tsv").write_text(
        header + "0\t1\t1\tletters\tp2\th2\tcontradiction\tcontradiction\n")
    assert load_split("mnli", "validation", tmp_path)[0].label == 1
    assert load_split("mnli", "validation_matched", tmp_path)[0].texts == ("p", "h")
    assert load_split("mnli", "validation_mismatched", tmp_path)[0].label == 2


def test_superglue_jsonl_errors_name_file_line_and_field(tmp_path):
    (tmp_path / "BoolQ").mkdir()
    path = tmp_path / "BoolQ" / "val.jsonl"
    path.write_text(json.dumps({"question": "q", "passage": "p", "label": True}) + "\n"
                    + json.dumps({"question": "q", "label": False}) + "\n")
    with pytest.raises(DataError) as err:
        load_split("boolq", "validation", tmp_path)
    assert "val.jsonl" in str(err.value) and "line 2" in str(err.value) and "'passage'" in str(err.value)
    path.write_text('{"question": "q", "passage": "p", "label": true}\n{not json\n')
    with pytest.raises(DataError, match=r"val\.jsonl: line 2: invalid JSON"):
        load_split("boolq", "validation", tmp_path)
    path.write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        load_split("boolq", "validation", tmp_path)


def test_record_local_file(tmp_path):
    (tmp_path / "ReCoRD").mkdir()
    text = "Tracy Morgan will host SNL.\n@highlight\nMorgan returns"
    row = {"idx": 5, "passage": {"text": text, "entities": [{"start": 0, "end": 11}, {"start": 23, "end": 25},
                                                              {"start": 39, "end": 44}]},
           "qas": [{"query": "@placeholder hosts.", "idx": 9,
                    "answers": [{"start": 0, "end": 11, "text": "Tracy Morgan"}]}]}
    (tmp_path / "ReCoRD" / "val.jsonl").write_text(json.dumps(row) + "\n")
    examples = load_split("record", "validation", tmp_path)
    assert [e.meta["entity"] for e in examples] == ["Morgan", "SNL", "Tracy Morgan"]
    assert [e.label for e in examples] == [0, 0, 1] and {e.group for e in examples} == {"5-9"}


def test_superglue_rte_reads_jsonl_beside_glue_rte_tsv(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "val.jsonl").write_text(
        json.dumps({"premise": "p", "hypothesis": "h", "label": "not_entailment", "idx": 0}) + "\n")
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    assert load_split("rte_superglue", "validation", tmp_path)[0].label == 1
    assert load_split("rte", "validation", tmp_path)[0].label == 0


# --- the hub path (cannot reach the hub here: fake it) -----------------------------------------

def test_hub_failure_becomes_one_clear_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.delenv("UNIPETL_GLUE_DIR", raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr("unipetl.hub.hub_unreachable_reason", lambda timeout=3.0: None)  # reachable, then fails
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_split("cola", "train")
    message = str(err.value)
    assert "'nyu-mll/glue'" in message and "'cola'" in message and "data_dir" in message
    assert "ConnectionError" in message


def test_hub_rows_go_through_the_same_formulations(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.delenv("UNIPETL_GLUE_DIR", raising=False)
    calls = []

    def fake(path, config, split):
        calls.append((path, config, split))
        return [{"paragraph": "P", "question": "Q?", "answer": "A", "label": 1,
                 "idx": {"paragraph": 0, "question": 4, "answer": 0}}]

    monkeypatch.setattr("unipetl.hub.hub_unreachable_reason", lambda timeout=3.0: None)  # as if online
    monkeypatch.setattr(datasets, "load_dataset", fake)
    (ex,) = load_split("multirc", "validation")
    assert calls == [("aps/super_glue", "multirc", "validation")]
    assert ex.texts == ("P", "Q? A") and ex.group == "0-4" and ex.label == 1


def test_glue_dir_environment_variable_is_the_default_data_dir(monkeypatch):
    monkeypatch.setenv("UNIPETL_GLUE_DIR", str(glue_dir()))
    assert len(load_split("wnli", "validation")) == 71


# --- users' own files ----------------------------------------------------------------------------

def test_custom_csv_pairs_with_found_labels(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('premise,hypothesis,gold\n"A, quoted one",b,yes\nc,d,no\ne,f,yes\n')
    examples, names = load_custom(path, ["premise", "hypothesis"], "gold")
    assert names == ("no", "yes")
    assert [e.texts for e in examples] == [("A, quoted one", "b"), ("c", "d"), ("e", "f")]
    assert [e.label for e in examples] == [1, 0, 1]


def test_custom_jsonl_regression_and_given_label_names(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"text": "a", "y": 0.5}\n\n{"text": "b", "y": "2"}\n')
    examples, names = load_custom(path, ["text"], "y", kind="regression")
    assert names == () and [e.label for e in examples] == [0.5, 2.0]
    path.write_text('{"text": "a", "y": 1}\n{"text": "b", "y": -1}\n')
    examples, names = load_custom(path, ["text"], "y", label_names=["-1", "1"])
    assert names == ("-1", "1") and [e.label for e in examples] == [1, 0]


def test_custom_missing_column(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\ngood,pos\n")
    with pytest.raises(DataError) as err:
        load_custom(path, ["sentence"], "label")
    assert "reviews.csv" in str(err.value) and "'sentence'" in str(err.value) and "line 1" in str(err.value)
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n{"label": "neg"}\n')
    with pytest.raises(DataError) as err:
        load_custom(path, ["text"], "label")
    assert "reviews.jsonl" in str(err.value) and "line 2" in str(err.value) and "'text'" in str(err.value)


def test_custom_short_csv_row(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("text,label\ngood,pos\nbad\n")
    with pytest.raises(DataError) as err:
        load_custom(path, ["text"], "label")
    assert "short.csv" in str(err.value) and "line 3" in str(err.value) and "'label'" in str(err.value)


def test_custom_unknown_label(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\ngood,pos\nmeh,neutral\n")
    with pytest.raises(DataError) as err:
        load_custom(path, ["text"], "label", label_names=["neg", "pos"])
    message = str(err.value)
    assert "reviews.csv" in message and "line 3" in message and "'label'" in message and "'neutral'" in message


def test_custom_empty_file_and_header_only(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError) as err:
        load_custom(path, ["text"], "label")
    assert "empty.csv" in str(err.value) and "empty" in str(err.value)
    path.write_text("text,label\n")
    with pytest.raises(DataError, match=r"empty\.csv: no data rows"):
        load_custom(path, ["text"], "label")
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no data rows"):
        load_custom(path, ["text"], "label")


def test_custom_non_numeric_regression_target(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("text,score\na,1.5\nb,high\n")
    with pytest.raises(DataError) as err:
        load_custom(path, ["text"], "score", kind="regression")
    message = str(err.value)
    assert "scores.csv" in message and "line 3" in message and "'score'" in message and "'high'" in message


def test_custom_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_custom(tmp_path / "nowhere.csv", ["text"], "label")
    assert "nowhere.csv" in str(err.value) and "not found" in str(err.value)
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_custom(path, ["text"], "label")
    assert "latin1.csv" in str(err.value) and "UTF-8" in str(err.value)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="dir.csv"):
        load_custom(tmp_path / "dir.csv", ["text"], "label")
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"data\.parquet.*unsupported"):
        load_custom(path, ["text"], "label")
