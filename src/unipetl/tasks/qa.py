"""Extractive question answering in the SQuAD v1.1 format: loading, windowed features, answer
extraction and the official exact-match / F1 scores.

Files:
* ``.json``: the official nested layout ``{"data": [{"title", "paragraphs": [{"context", "qas":
  [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}``.
* ``.jsonl``: one question per line, the Hugging Face ``squad`` columns ``{"id", "title"?,
  "context", "question", "answers": {"text": [...], "answer_start": [...]}}``.

Every answer's ``answer_start`` must index its text in the context character for character, so a
misaligned file is refused instead of training on shifted spans. The context is never stripped or
re-spaced, since that is what shifts the offsets.

Long contexts are cut into overlapping windows: each feature holds the question plus one slice
of the context, and ``doc_stride`` is the number of context tokens consecutive windows share (the
``stride`` of Hugging Face fast tokenizers and of ``run_qa.py``; Google's original BERT script used
the same name for the step between windows instead).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .metrics import normalize_answer, token_f1
from .textfiles import json_document, jsonl_records, need, need_text


@dataclass(frozen=True)
class QAExample:
    """One question about one context. answer_starts[i] is the character offset of answer_texts[i]."""

    id: str
    question: str
    context: str
    answer_texts: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    title: str = ""


# --- loading ---------------------------------------------------------------------------------

def load_squad(path, *, training: bool) -> list[QAExample]:
    """Questions of a SQuAD-format ``.json`` or HF-style ``.jsonl`` file.

    training=True requires at least one answer per question (the first one is the training
    target); evaluation files may leave answers empty when there is nothing to score.
    """
    path_str = str(path)
    if path_str.lower().endswith(".jsonl"):
        examples = [_flat_example(row, f"{path}: line {line}", training) for line, row in jsonl_records(path)]
    elif path_str.lower().endswith(".json"):
        examples = list(_nested_examples(json_document(path), path, training))
    else:
        raise DataError(f"{path}: unsupported file type; expected .json (SQuAD layout) or .jsonl (one question a line)")
    if not examples:
        raise DataError(f"{path}: no questions")
    _refuse_duplicate_ids(examples, path)
    return examples


def qa_examples_from_rows(rows, where: str, training: bool) -> list[QAExample]:
    """Questions from rows in the Hugging Face ``squad`` layout (a hub split or parsed JSONL)."""
    examples = [_flat_example(dict(row), f"{where}: row {i}", training) for i, row in enumerate(rows)]
    if not examples:
        raise DataError(f"{where}: no questions")
    _refuse_duplicate_ids(examples, where)
    return examples


def _nested_examples(document: Any, path, training: bool):
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f"{path}: expected the SQuAD layout {{\"data\": [...]}} at the top level "
                        f"(for one question per line use a .jsonl file)")
    for a, article in enumerate(document["data"]):
        where = f"{path}: data[{a}]"
        for p, paragraph in enumerate(_list(article, "paragraphs", where)):
            p_where = f"{where}: paragraphs[{p}]"
            context = need_text(_object(paragraph, p_where), "context", p_where)
            for q, qa in enumerate(_list(paragraph, "qas", p_where)):
                qa = _object(qa, f"{p_where}: qas[{q}]")
                q_where = f"{p_where}: question {qa['id']!r}" if "id" in qa else f"{p_where}: qas[{q}]"
                texts, starts = [], []
                for i, answer in enumerate(_list(qa, "answers", q_where)):
                    a_where = f"{q_where}: answers[{i}]"
                    texts.append(need_text(_object(answer, a_where), "text", a_where))
                    starts.append(need(answer, "answer_start", a_where))
                yield _checked_example(qa, context, texts, starts, q_where, training, title=article.get("title") or "")


def _flat_example(row: dict, where: str, training: bool) -> QAExample:
    if "id" in row:
        where = f"{where} (question {row['id']!r})"
    context = need_text(row, "context", where)
    answers = _object(need(row, "answers", where), f"{where}: field 'answers'")
    texts = need(answers, "text", f"{where}: answers")
    starts = need(answers, "answer_start", f"{where}: answers")
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(f"{where}: field 'answers' must hold two lists of equal length, 'text' and 'answer_start'")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{where}: answers: field 'text'[{i}] must be a string, got {type(text).__name__}")
    return _checked_example(row, context, tuple(texts), tuple(starts), where, training, title=row.get("title") or "")


def _checked_example(qa: dict, context: str, texts, starts, where: str, training: bool, title: str) -> QAExample:
    question_id = need(qa, "id", where)
    question = need_text(qa, "question", where)
    if training and not texts:
        raise DataError(f"{where}: field 'answers' is empty; every training question needs an answer")
    for text, start in zip(texts, starts):
        if not text:
            raise DataError(f"{where}: field 'text' of an answer is empty")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise DataError(f"{where}: field 'answer_start' must be a character offset (int >= 0), got {start!r}")
        found = context[start:start + len(text)]
        if found != text:
            raise DataError(f"{where}: field 'answer_start' {start} does not point at the answer {text!r}; "
                            f"the context there reads {found!r}")
    return QAExample(str(question_id), question, context, tuple(texts), tuple(starts), str(title))


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(row: Any, key: str, where: str) -> list:
    value = need(_object(row, where), key, where)
    if not isinstance(value, list):
        raise DataError(f"{where}: field {key!r} must be a list, got {type(value).__name__}")
    return value


def _refuse_duplicate_ids(examples: list[QAExample], path) -> None:
    # Predictions and references are keyed by question id, so ids must be unique.
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"{path}: question {ex.id!r}: field 'id' is not unique")
        seen.add(ex.id)


# --- features ----------------------------------------------------------------------------------

def qa_train_features(examples: Sequence[QAExample], tokenizer, max_length: int = 384, doc_stride: int = 128,
                      pad_to_max_length: bool = False) -> dict[str, list]:
    """Tokenized windows with ``start_positions`` / ``end_positions`` of each example's first answer.

    A window that does not hold the whole answer points both positions at the CLS token, the
    "no answer here" target of the standard recipe.
    """
    encoded, context_id = _windows(examples, tokenizer, max_length, doc_stride, pad_to_max_length)
    starts, ends = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        if not example.answer_texts:
            raise DataError(f"question {example.id!r}: field 'answers' is empty; training features need an answer")
        first_char = example.answer_starts[0]
        span = answer_token_span(offsets, encoded.sequence_ids(i), context_id, first_char,
                                 first_char + len(example.answer_texts[0]))
        if span is None:
            cls = _cls_index(encoded["input_ids"][i], tokenizer)
            span = (cls, cls)
        starts.append(span[0])
        ends.append(span[1])
    features = {k: v for k, v in encoded.items() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
    features["start_positions"], features["end_positions"] = starts, ends
    return features


def qa_eval_features(examples: Sequence[QAExample], tokenizer, max_length: int = 384, doc_stride: int = 128,
                     pad_to_max_length: bool = False) -> dict[str, list]:
    """Tokenized windows plus what post-processing needs: ``example_id`` per window and an
    ``offset_mapping`` whose non-context entries are None, so no answer can start in the question."""
    encoded, context_id = _windows(examples, tokenizer, max_length, doc_stride, pad_to_max_length)
    features = {k: v for k, v in encoded.items() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
    features["example_id"] = [examples[s].id for s in encoded["overflow_to_sample_mapping"]]
    features["offset_mapping"] = [
        [offset if seq == context_id else None for offset, seq in zip(offsets, encoded.sequence_ids(i))]
        for i, offsets in enumerate(encoded["offset_mapping"])
    ]
    return features


def answer_token_span(offsets, sequence_ids, context_id: int, start_char: int, end_char: int) -> tuple[int, int] | None:
    """(first, last) token of the context that covers characters [start_char, end_char), or None
    when this window does not hold the whole answer."""
    context_tokens = [t for t, seq in enumerate(sequence_ids) if seq == context_id]
    if not context_tokens:
        return None
    first_ctx, last_ctx = context_tokens[0], context_tokens[-1]
    if offsets[first_ctx][0] > start_char or offsets[last_ctx][1] < end_char:
        return None
    # Last token starting at or before the answer start; first token ending at or after its end.
    start = max(t for t in context_tokens if offsets[t][0] <= start_char)
    end = min(t for t in context_tokens if offsets[t][1] >= end_char)
    return start, end


def _windows(examples, tokenizer, max_length: int, doc_stride: int, pad_to_max_length: bool):
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"extractive QA needs a fast tokenizer (for offset mappings); got {type(tokenizer).__name__}")
    if not examples:
        raise DataError("no QA examples to tokenize")
    # Question first and context second unless the tokenizer pads on the left (then context
    # first, so truncation and padding stay on the same side).
    question_first = tokenizer.padding_side == "right"
    # Leading spaces in a few SQuAD questions only waste window room (and can fill it).
    questions = [ex.question.lstrip() for ex in examples]
    contexts = [ex.context for ex in examples]
    _check_window_room(examples, questions, tokenizer, max_length, doc_stride)
    encoded = tokenizer(
        questions if question_first else contexts,
        contexts if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )
    return encoded, 1 if question_first else 0


def _check_window_room(examples, questions, tokenizer, max_length: int, doc_stride: int) -> None:
    # The Rust tokenizer aborts the whole batch with a panic when a question leaves no more than
    # doc_stride tokens of context room; name the question instead.
    if doc_stride < 0 or doc_stride >= max_length:
        raise ConfigError(f"doc_stride must be in [0, max_length={max_length}), got {doc_stride}")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = tokenizer(questions, add_special_tokens=False)["input_ids"]
    for example, ids in zip(examples, lengths):
        room = max_length - specials - len(ids)
        if room <= doc_stride:
            raise DataError(f"question {example.id!r}: {len(ids)} question tokens leave {room} context tokens per "
                            f"window at max_length={max_length}, not more than doc_stride={doc_stride}; raise "
                            f"max_length or lower doc_stride")


def _cls_index(input_ids: list[int], tokenizer) -> int:
    cls = getattr(tokenizer, "cls_token_id", None)
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


# --- from logits to answers ----------------------------------------------------------------------

def best_answers(examples: Sequence[QAExample], features: Mapping[str, Sequence], start_logits, end_logits,
                 n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """Question id -> answer text with the highest start + end logit over all windows of that question.

    Candidates are the n_best highest start and end logits of each window; a pair counts if both
    tokens lie in the context, end >= start, and it spans at most max_answer_length tokens. A
    question with no valid pair gets the empty answer.
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if len(start_logits) != len(features["example_id"]) or len(end_logits) != len(features["example_id"]):
        raise ValueError(f"{len(features['example_id'])} QA features but {len(start_logits)} start / "
                         f"{len(end_logits)} end logit rows")
    windows: dict[str, list[int]] = {}
    for i, example_id in enumerate(features["example_id"]):
        windows.setdefault(example_id, []).append(i)

    answers = {}
    for example in examples:
        best_score, best_text = -np.inf, ""
        for i in windows.get(example.id, []):
            offsets = features["offset_mapping"][i]
            for start, end in _candidate_spans(start_logits[i], end_logits[i], offsets, n_best, max_answer_length):
                score = start_logits[i][start] + end_logits[i][end]
                if score > best_score:
                    best_score, best_text = score, example.context[offsets[start][0]:offsets[end][1]]
        answers[example.id] = best_text
    return answers


def _candidate_spans(start_logits, end_logits, offsets, n_best: int, max_answer_length: int):
    top_starts = np.argsort(start_logits)[::-1][:n_best]
    top_ends = np.argsort(end_logits)[::-1][:n_best]
    for start in top_starts:
        for end in top_ends:
            # Logit rows may be padded past this window's tokens; offsets are None outside the context.
            if start >= len(offsets) or end >= len(offsets) or offsets[start] is None or offsets[end] is None:
                continue
            if end < start or end - start + 1 > max_answer_length:
                continue
            yield int(start), int(end)


# --- scores ---------------------------------------------------------------------------------------

def gold_answers(examples: Sequence[QAExample]) -> dict[str, tuple[str, ...]]:
    return {ex.id: ex.answer_texts for ex in examples}


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 of the official SQuAD v1.1 script, as fractions in [0, 1].

    Each question scores its best match over its gold answers after normalisation (lower case, no
    punctuation, no a/an/the, single spaces). As in the official script, a question without a
    prediction scores 0 and predictions for unknown ids are ignored.
    """
    if not references:
        raise ValueError("squad_scores: no reference questions to score")
    exact = f1 = 0.0
    missing = 0
    for question_id, golds in references.items():
        if not golds:
            raise ValueError(f"squad_scores: question {question_id!r} has no gold answers to score against")
        if question_id not in predictions:
            missing += 1
            continue
        prediction = predictions[question_id] or ""
        exact += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
        f1 += max(token_f1(prediction, g) for g in golds)
    if missing:
        warnings.warn(f"squad_scores: {missing} of {len(references)} questions have no prediction and score 0",
                      stacklevel=2)
    return {"exact_match": exact / len(references), "f1": f1 / len(references)}
