"""Metrics against scikit-learn / scipy on fixed predictions, and by hand for MultiRC EM and ReCoRD."""

import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from unipetl.tasks import (
    Example,
    benchmark_average,
    compute_metrics,
    main_score,
    normalize_answer,
    record_predictions,
    task_score,
    token_f1,
)

REFS = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
PREDS = [1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1]


def test_cola_matthews():
    out = compute_metrics("cola", PREDS, REFS)
    assert out == {"matthews_correlation": pytest.approx(matthews_corrcoef(REFS, PREDS))}
    assert main_score("cola", out) == out["matthews_correlation"]


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "wnli", "boolq", "wic", "wsc", "rte_superglue", "copa",
                                  "polarity"])
def test_accuracy_tasks(task):
    out = compute_metrics(task, PREDS, REFS)
    assert out == {"accuracy": pytest.approx(accuracy_score(REFS, PREDS))}
    assert out["accuracy"] == pytest.approx(8 / 12)


def test_mnli_three_way_accuracy():
    refs, preds = [0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 2, 1, 1, 0]
    assert compute_metrics("mnli", preds, refs) == {"accuracy": pytest.approx(4 / 7)}


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_and_binary_f1(task):
    out = compute_metrics(task, PREDS, REFS)
    acc, f1 = accuracy_score(REFS, PREDS), f1_score(REFS, PREDS)
    assert out["accuracy"] == pytest.approx(acc)
    assert out["f1"] == pytest.approx(f1)
    assert out["combined_score"] == pytest.approx((acc + f1) / 2)
    assert main_score(task, out) == out["combined_score"]


def test_stsb_pearson_spearman():
    refs = [0.0, 1.2, 2.5, 3.0, 4.4, 5.0, 3.8, 1.0]
    preds = [0.3, 1.0, 2.9, 2.7, 4.0, 4.6, 4.1, 1.9]
    out = compute_metrics("stsb", preds, refs)
    p, s = pearsonr(preds, refs)[0], spearmanr(preds, refs)[0]
    assert out["pearson"] == pytest.approx(p) and out["spearmanr"] == pytest.approx(s)
    assert out["combined_score"] == pytest.approx((p + s) / 2)


def test_constant_regression_predictions_score_zero_not_nan():
    out = compute_metrics("stsb", [2.0] * 4, [1.0, 2.0, 3.0, 4.0])
    assert out["pearson"] == 0.0 and out["spearmanr"] == 0.0


def test_cb_accuracy_and_macro_f1():
    refs = [0, 1, 2, 0, 1, 1, 0, 2, 1, 0]
    preds = [0, 1, 1, 0, 1, 2, 0, 2, 0, 0]
    out = compute_metrics("cb", preds, refs)
    acc, mf1 = accuracy_score(refs, preds), f1_score(refs, preds, average="macro")
    assert out["accuracy"] == pytest.approx(acc) and out["macro_f1"] == pytest.approx(mf1)
    assert out["combined_score"] == pytest.approx((acc + mf1) / 2)


def test_multirc_f1a_and_per_question_em():
    groups = ["q1", "q1", "q1", "q2", "q2", "q3", "q4", "q4"]
    refs = [1, 0, 1, 0, 0, 1, 1, 1]
    preds = [1, 0, 1, 0, 1, 1, 1, 0]
    out = compute_metrics("multirc", preds, refs, groups=groups)
    assert out["f1a"] == pytest.approx(f1_score(refs, preds))
    assert out["em"] == pytest.approx(2 / 4)  # q1 and q3 fully right; q2 and q4 each have one error
    assert out["combined_score"] == pytest.approx((out["f1a"] + 0.5) / 2)
    with pytest.raises(ValueError, match="group"):
        compute_metrics("multirc", preds, refs)


def test_record_token_f1_and_em_by_hand():
    predictions = ["the Tracy Morgan", "Morgan Freeman", "Paris", "Bob"]
    references = [["Tracy Morgan", "Morgan"], ["Tracy Morgan"], ["paris!", "France"], ["Alice"]]
    out = compute_metrics("record", predictions, references)
    # 1) normalizes to "tracy morgan": F1 1, EM 1. 2) one shared token of two each: P = R = 1/2, F1 1/2.
    # 3) "paris!" normalizes to "paris": F1 1, EM 1. 4) nothing shared: 0.
    assert out["f1"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert out["em"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert normalize_answer("  The  Eiffel-Tower, a landmark ") == "eiffeltower landmark"
    assert token_f1("x b c", "b c d e") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert token_f1("a b c", "b c d e") == pytest.approx(2 * 1 * (2 / 4) / (1 + 2 / 4))  # "a" is an article


def test_record_predictions_pick_the_top_candidate_per_query():
    def ex(group, entity, answers):
        return Example(("p", "q"), int(entity in answers), group=group, meta={"entity": entity, "answers": answers})

    examples = [ex("a", "Alice", ("Alice",)), ex("a", "Bob", ("Alice",)), ex("b", "Paris", ("Rome",)),
                ex("b", "Rome", ("Rome",))]
    preds, golds = record_predictions(examples, [0.2, 0.9, 0.1, 0.7])
    assert preds == ["Bob", "Rome"] and golds == [["Alice"], ["Rome"]]
    assert compute_metrics("record", preds, golds)["em"] == 0.5


def test_unparseable_text_outputs_count_as_wrong():
    out = compute_metrics("mrpc", [1, None, 0, 1], [1, 1, 0, 0])
    assert out["accuracy"] == 0.5
    assert out["f1"] == pytest.approx(f1_score([1, 1, 0, 0], [1, 0, 0, 1]))
    assert compute_metrics("cb", [None, 1], [0, 1])["accuracy"] == 0.5


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        compute_metrics("sst2", [1, 0, 1], [1, 0])


# ProPETL README, ProAdapter row (ALGORITHMS.md §2.8), as fractions.
PROADAPTER = {
    "cola": {"matthews_correlation": 0.6543},
    "sst2": {"accuracy": 0.9415},
    "mrpc": {"accuracy": 0.8824, "f1": 0.9141},
    "qqp": {"accuracy": 0.8940, "f1": 0.8604},
    "stsb": {"pearson": 0.9134, "spearmanr": 0.9095},
    "mnli": {"accuracy": 0.8653},
    "qnli": {"accuracy": 0.9258},
    "rte": {"accuracy": 0.7650},
}


def test_benchmark_average_metric_mode_reproduces_the_propetl_average():
    # 11 numbers for 8 tasks; the README reports 86.6.
    assert benchmark_average(PROADAPTER, mode="metric") == pytest.approx(9.5257 / 11)
    assert round(100 * benchmark_average(PROADAPTER, mode="metric"), 1) == 86.6


def test_benchmark_average_task_mode_uses_combined_scores():
    expected = (0.6543 + 0.9415 + (0.8824 + 0.9141) / 2 + (0.8940 + 0.8604) / 2 + (0.9134 + 0.9095) / 2
                + 0.8653 + 0.9258 + 0.7650) / 8
    assert benchmark_average(PROADAPTER) == pytest.approx(expected)
    assert benchmark_average(PROADAPTER, mode="task") == pytest.approx(0.68388 / 0.8)
    assert task_score("mrpc", PROADAPTER["mrpc"]) == pytest.approx((0.8824 + 0.9141) / 2)
    assert main_score("stsb", PROADAPTER["stsb"]) == pytest.approx((0.9134 + 0.9095) / 2)
    with pytest.raises(ValueError, match="mode"):
        benchmark_average(PROADAPTER, mode="median")
