"""Split protocols: sizes of ALGORITHMS.md §2.6 / §5.5, reproducibility, subsampling."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from unipetl.errors import DataError
from unipetl.tasks import make_splits

REPO = Path(__file__).resolve().parents[1]


def glue_dir() -> Path:
    """$UNIPETL_GLUE_DIR, else ../shared/data/glue beside the repository; skip when absent."""
    path = Path(os.environ.get("UNIPETL_GLUE_DIR") or REPO.parent / "shared" / "data" / "glue")
    if not path.is_dir():
        pytest.skip(f"GLUE data directory not available: {path} (set UNIPETL_GLUE_DIR)")
    return path


def sizes(splits):
    return {k: len(v) for k, v in splits.items()}


def test_dev_as_test_is_the_default():
    splits = make_splits("cb", glue_dir())
    assert sizes(splits) == {"train": 250, "validation": 56, "test": 56}
    assert splits["validation"] == splits["test"]


def test_hyperformer_small_task_halves_dev():
    splits = make_splits("cola", glue_dir(), protocol="hyperformer")
    assert sizes(splits) == {"train": 8551, "validation": 521, "test": 522}
    # The halves partition dev.
    assert sorted(e.meta["idx"] for e in splits["validation"] + splits["test"]) == list(range(1043))


def test_hyperformer_large_task_moves_1000_train_rows_to_validation():
    splits = make_splits("sst2", glue_dir(), protocol="hyperformer")
    assert sizes(splits) == {"train": 66349, "validation": 1000, "test": 872}
    assert not {e.meta["idx"] for e in splits["train"]} & {e.meta["idx"] for e in splits["validation"]}


def test_hyperformer_is_seeded():
    a = make_splits("stsb", glue_dir(), protocol="hyperformer", seed=42)
    b = make_splits("stsb", glue_dir(), protocol="hyperformer", seed=42)
    c = make_splits("stsb", glue_dir(), protocol="hyperformer", seed=43)
    assert sizes(a) == {"train": 5749, "validation": 750, "test": 750}
    assert a == b
    assert a["validation"] != c["validation"]


def test_hyperformer_permutation_is_hf_shuffle_compatible():
    # numpy's default_rng(seed).permutation is what datasets' Dataset.shuffle(seed=...) uses.
    import numpy as np

    dev = make_splits("wnli", glue_dir())["test"]
    order = np.random.default_rng(42).permutation(len(dev))
    splits = make_splits("wnli", glue_dir(), protocol="hyperformer")
    assert splits["validation"] == [dev[i] for i in order[:35]]


def test_scalearn_cb_is_unstratified_10_percent():
    splits = make_splits("cb", glue_dir(), protocol="scalearn")
    assert sizes(splits) == {"train": 225, "validation": 25, "test": 56}


def test_scalearn_sst2_is_stratified():
    splits = make_splits("sst2", glue_dir(), protocol="scalearn")
    assert sizes(splits) == {"train": 60614, "validation": 6735, "test": 872}
    train, val = Counter(e.label for e in splits["train"]), Counter(e.label for e in splits["validation"])
    assert abs(val[1] / 6735 - train[1] / 60614) < 1e-3


def test_scalearn_is_seeded():
    a = make_splits("copa", glue_dir(), protocol="scalearn", seed=1)
    b = make_splits("copa", glue_dir(), protocol="scalearn", seed=1)
    c = make_splits("copa", glue_dir(), protocol="scalearn", seed=2)
    assert sizes(a) == {"train": 360, "validation": 40, "test": 100}
    assert a == b and a["validation"] != c["validation"]


def test_multirc_splits_answer_rows_like_the_reference_code():
    splits = make_splits("multirc", glue_dir(), protocol="hyperformer")
    assert sizes(splits) == {"train": 26243, "validation": 1000, "test": 4848}


def test_max_train_samples_is_a_seeded_subset_after_the_split():
    full = make_splits("wic", glue_dir(), protocol="scalearn")
    a = make_splits("wic", glue_dir(), protocol="scalearn", max_train_samples=100)
    b = make_splits("wic", glue_dir(), protocol="scalearn", max_train_samples=100)
    c = make_splits("wic", glue_dir(), protocol="scalearn", seed=7, max_train_samples=100)
    assert len(a["train"]) == 100 and a == b and a["train"] != c["train"]
    assert a["validation"] == full["validation"] and a["test"] == full["test"]
    # A subset of the protocol's train, in its order.
    position = {e.meta["idx"]: i for i, e in enumerate(full["train"])}
    picked = [position[e.meta["idx"]] for e in a["train"]]
    assert picked == sorted(picked)
    assert make_splits("cb", glue_dir(), max_train_samples=10_000)["train"] == full_train("cb")
    with pytest.raises(DataError, match="max_train_samples"):
        make_splits("cb", glue_dir(), max_train_samples=0)


def test_max_validation_samples_is_a_seeded_subset_and_never_touches_the_test_split():
    full = make_splits("sst2", glue_dir(), protocol="scalearn")
    a = make_splits("sst2", glue_dir(), protocol="scalearn", max_validation_samples=300)
    b = make_splits("sst2", glue_dir(), protocol="scalearn", seed=7, max_validation_samples=300)
    assert len(a["validation"]) == 300 and a["train"] == full["train"] and a["test"] == full["test"]
    assert set(e.meta["idx"] for e in a["validation"]) <= set(e.meta["idx"] for e in full["validation"])
    assert a["validation"] != b["validation"]
    assert a == make_splits("sst2", glue_dir(), protocol="scalearn", max_validation_samples=300)
    with pytest.raises(DataError, match="validation split is its test split"):
        make_splits("sst2", glue_dir(), max_validation_samples=300)  # dev_as_test
    with pytest.raises(DataError, match="max_validation_samples must be a positive"):
        make_splits("sst2", glue_dir(), protocol="scalearn", max_validation_samples=0)


def full_train(task):
    return make_splits(task, glue_dir())["train"]


def test_unknown_protocol_lists_the_valid_ones():
    with pytest.raises(DataError, match="dev_as_test, hyperformer, scalearn"):
        make_splits("cb", glue_dir(), protocol="random")


def _write_record(folder: Path, name: str, n_queries: int, offset: int):
    rows = []
    for q in range(n_queries):
        text = f"Alice met Bob in Paris {q}."
        rows.append({"idx": q + offset, "passage": {"text": text, "entities": [
            {"start": 0, "end": 4}, {"start": 10, "end": 12}, {"start": 17, "end": 21}]},
            "qas": [{"query": "@placeholder smiled.", "idx": q + offset,
                     "answers": [{"start": 0, "end": 4, "text": "Alice"}]}]})
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_record_splits_keep_the_candidates_of_a_query_together(tmp_path):
    (tmp_path / "ReCoRD").mkdir()
    _write_record(tmp_path / "ReCoRD", "train.jsonl", 30, 0)
    _write_record(tmp_path / "ReCoRD", "val.jsonl", 11, 1000)
    hyper = make_splits("record", tmp_path, protocol="hyperformer")
    # 30 training queries (< 10k): dev's 11 queries split 5 / 6, three candidates each.
    assert sizes(hyper) == {"train": 90, "validation": 15, "test": 18}
    for part in hyper.values():
        groups = Counter(e.group for e in part)
        assert set(groups.values()) == {3}
    scalearn = make_splits("record", tmp_path, protocol="scalearn")
    assert sizes(scalearn) == {"train": 90, "validation": 33, "test": 33}
    sub = make_splits("record", tmp_path, max_train_samples=4)
    assert len(sub["train"]) == 12 and set(Counter(e.group for e in sub["train"]).values()) == {3}


def test_mnli_adds_the_mismatched_test_set(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    labels = ["entailment", "neutral", "contradiction"]
    (tmp_path / "MNLI").mkdir()
    for name, n in (("train.tsv", 60), ("dev_matched.tsv", 9), ("dev_mismatched.tsv", 6)):
        lines = [f"{i}\t0\t0\tg\tp{i}\th{i}\t{labels[i % 3]}\t{labels[i % 3]}\n" for i in range(n)]
        (tmp_path / "MNLI" / name).write_text(header + "".join(lines))
    splits = make_splits("mnli", tmp_path, protocol="scalearn")
    assert sizes(splits) == {"train": 54, "validation": 6, "test": 9, "test_mismatched": 6}
    assert Counter(e.label for e in splits["validation"]) == {0: 2, 1: 2, 2: 2}
