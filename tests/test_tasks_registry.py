"""Task registry, formulations on synthetic rows, and the text-to-text view."""

import pytest

from unipetl.errors import DataError
from unipetl.tasks import registry
from unipetl.tasks import (
    Example,
    TaskSpec,
    build_examples,
    get_task,
    list_tasks,
    parse_text_target,
    register_task,
    round_stsb,
    to_text_to_text,
)

GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
SUPERGLUE = ["boolq", "cb", "copa", "multirc", "record", "rte_superglue", "wic", "wsc"]


def test_every_task_is_registered_with_its_benchmark():
    assert list_tasks("glue") == GLUE
    assert list_tasks("superglue") == SUPERGLUE
    assert "polarity" in list_tasks("custom")
    # users' own tasks register as "custom" when they train (other tests may have done so already)
    assert set(list_tasks()) - set(list_tasks("custom")) == set(GLUE + SUPERGLUE)


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(DataError) as err:
        get_task("sst-3")
    message = str(err.value)
    assert "'sst-3'" in message
    for name in GLUE + SUPERGLUE + ["polarity"]:
        assert name in message


def test_get_task_is_case_insensitive_and_accepts_a_spec():
    spec = get_task("SST2")
    assert spec is get_task("sst2") and get_task(spec) is spec


@pytest.mark.parametrize(
    "name, kind, labels, metrics, main",
    [
        ("cola", "classification", ("unacceptable", "acceptable"), ("matthews_correlation",), "matthews_correlation"),
        ("mrpc", "classification", ("not_equivalent", "equivalent"), ("accuracy", "f1"), "combined_score"),
        ("stsb", "regression", (), ("pearson", "spearmanr"), "combined_score"),
        ("mnli", "classification", ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy"),
        ("wnli", "classification", ("not_entailment", "entailment"), ("accuracy",), "accuracy"),
        ("cb", "classification", ("entailment", "contradiction", "neutral"), ("accuracy", "macro_f1"),
         "combined_score"),
        ("copa", "multiple_choice", ("choice1", "choice2"), ("accuracy",), "accuracy"),
        ("multirc", "classification", ("False", "True"), ("f1a", "em"), "combined_score"),
        ("record", "classification", ("False", "True"), ("f1", "em"), "combined_score"),
    ],
)
def test_task_specs_follow_the_reference_tables(name, kind, labels, metrics, main):
    spec = get_task(name)
    assert (spec.kind, spec.label_names, spec.metrics, spec.main_metric) == (kind, labels, metrics, main)
    assert spec.num_labels == (1 if kind == "regression" else len(labels))


def test_hub_and_local_locations():
    mnli = get_task("mnli")
    assert (mnli.hub_path, mnli.hub_config, mnli.folder) == ("nyu-mll/glue", "mnli", "MNLI")
    assert mnli.hub_split("validation") == "validation_matched"
    assert mnli.local_file("validation_mismatched") == "dev_mismatched.tsv"
    rte = get_task("rte_superglue")
    assert (rte.hub_path, rte.hub_config, rte.folder, rte.local_file("validation")) == (
        "aps/super_glue", "rte", "RTE", "val.jsonl")
    assert get_task("rte").local_file("validation") == "dev.tsv"
    with pytest.raises(DataError, match="no split 'test'.*train, validation"):
        get_task("cola").local_file("test")


def test_scalearn_stratification_flags():
    assert {n for n in GLUE + SUPERGLUE if not get_task(n).stratify} == {"stsb", "record", "cb"}


def test_bad_specs_and_duplicate_registration_are_rejected():
    with pytest.raises(DataError, match="kind"):
        TaskSpec("x", "custom", "ranking", ("a", "b"), ("accuracy",), "accuracy", ("text",))
    with pytest.raises(DataError, match="main_metric"):
        TaskSpec("x", "custom", "classification", ("a", "b"), ("accuracy",), "f1", ("text",))
    with pytest.raises(DataError, match="already registered"):
        register_task(get_task("cola"))


def test_register_a_custom_task():
    spec = TaskSpec("my_topic_test", "custom", "classification", ("a", "b", "c"), ("accuracy",), "accuracy",
                    ("text",))
    register_task(spec)
    try:
        assert get_task("my_topic_test") is spec and spec.text_labels == ("a", "b", "c")
    finally:
        registry._REGISTRY.pop("my_topic_test")  # leave the registry as other tests expect it


# --- formulations on hand-written rows (the real files are tested in test_tasks_loaders.py) ----

def test_record_one_binary_example_per_candidate_entity():
    row = {
        "passage": "Tracy Morgan hosts SNL.\n@highlight\nMorgan returns",
        "query": "@placeholder will host the show.",
        "entities": ["Morgan", "SNL", "Tracy Morgan"],
        "answers": ["Morgan", "Tracy Morgan"],
        "idx": {"passage": 3, "query": 7},
    }
    examples = build_examples("record", [row])
    assert [e.texts[1] for e in examples] == [
        "Morgan will host the show.", "SNL will host the show.", "Tracy Morgan will host the show."]
    assert [e.label for e in examples] == [1, 0, 1]
    assert {e.group for e in examples} == {"3-7"}
    assert examples[0].texts[0] == "Tracy Morgan hosts SNL.\n- Morgan returns"
    assert examples[1].meta["entity"] == "SNL" and examples[1].meta["answers"] == ("Morgan", "Tracy Morgan")


def test_copa_connector_follows_the_question():
    row = {"premise": "The floor was wet.", "choice1": "It rained.", "choice2": "I mopped it.",
           "question": "cause", "label": 1, "idx": 0}
    (example,) = build_examples("copa", [row])
    assert example.choices == (("The floor was wet. because", "It rained."),
                               ("The floor was wet. because", "I mopped it."))
    (effect,) = build_examples("copa", [{**row, "question": "effect"}])
    assert effect.choices[0][0] == "The floor was wet. so"


# --- text-to-text --------------------------------------------------------------------------------

def _example_for(spec: TaskSpec, label) -> Example:
    if spec.kind == "multiple_choice":
        return Example(("p because",), label, choices=(("p because", "c1"), ("p because", "c2")))
    return Example(tuple(f"text {i}" for i in range(len(spec.text_fields))), label)


@pytest.mark.parametrize("name", [n for n in list_tasks() if get_task(n).kind != "regression"])
def test_text_to_text_round_trip_for_every_classification_task(name):
    spec = get_task(name)
    targets = set()
    for label in range(spec.num_labels):
        source, target = to_text_to_text(spec, _example_for(spec, label))
        assert source.startswith(name + " ")
        assert parse_text_target(spec, target) == label
        assert parse_text_target(spec, f"  {target.upper()} \n") == label  # generation noise
        targets.add(target)
    assert len(targets) == spec.num_labels
    assert parse_text_target(spec, "no such label") is None


def test_text_to_text_sources_and_words():
    assert to_text_to_text("sst2", Example(("a fine film",), 1)) == ("sst2 sentence: a fine film", "positive")
    assert to_text_to_text("mnli", Example(("p", "h"), 2)) == ("mnli premise: p hypothesis: h", "contradiction")
    assert to_text_to_text("mnli", Example(("p", "h"), 0), prefix=False) == ("premise: p hypothesis: h", "entailment")
    copa = _example_for(get_task("copa"), 1)
    assert to_text_to_text("copa", copa) == ("copa premise: p because choice1: c1 choice2: c2", "choice2")


@pytest.mark.parametrize(
    "score, target",
    [(3.37, "3.4"), (3.29, "3.2"), (3.3, "3.4"), (2.5, "2.6"), (0.0, "0.0"), (0.09, "0.0"), (4.91, "5.0"),
     (5.0, "5.0"), (1.0, "1.0")],
)
def test_stsb_targets_round_to_the_nearest_0_2(score, target):
    source, text = to_text_to_text("stsb", Example(("a", "b"), score))
    assert source == "stsb sentence1: a sentence2: b"
    assert text == target
    assert parse_text_target("stsb", text) == pytest.approx(round_stsb(score))
    assert parse_text_target("stsb", "five") is None and parse_text_target("stsb", "nan") is None
