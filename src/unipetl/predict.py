"""`unipetl predict`: one prediction per line of a JSONL file, with a saved task module."""

from __future__ import annotations

from pathlib import Path

import torch

from .encoding import collator_for, encode
from .errors import DataError
from .label_words import LabelWordFormat, label_word_scores
from .tasks import Example, build_examples, parse_text_target
from .tasks.textfiles import jsonl_records


def read_inputs(path: str, spec) -> list[Example]:
    """Each line: {"text": ..., "text_pair": ...}, {"texts": [...]}, or a row in the task's own layout."""
    path = Path(path)
    rows = list(jsonl_records(path))  # the task loaders' reader: its line limit, lines named in every error
    examples = [example for number, row in rows for example in examples_from_row(row, spec, f"{path}, line {number}")]
    if not examples:
        raise DataError(f"{path}: no input lines")
    return examples


def examples_from_row(row: dict, spec, where: str) -> list[Example]:
    """The inputs of one line (``where`` names it in errors): 'text'/'text_pair', 'texts', or the task's own
    fields (one example, except for tasks whose rows hold several, such as MultiRC's answers)."""
    plain_text = "text" in row and spec.kind != "multiple_choice" and spec.name not in ("wic", "wsc", "record", "multirc")
    if "texts" in row or plain_text:
        texts = row["texts"] if "texts" in row else [row["text"]] + ([row["text_pair"]] if "text_pair" in row else [])
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{where}: 'texts' must be a non-empty list of strings (or give 'text' and 'text_pair' as strings)")
        examples = [Example(tuple(texts), 0)]
    else:
        try:
            examples = build_examples(spec, [{"label": 0, **row}])
        except KeyError as err:
            raise DataError(f"{where}: missing field {err.args[0]!r} (give 'text'/'text_pair', 'texts', "
                            f"or the task's own fields)") from None
        except (TypeError, AttributeError, ValueError) as err:
            raise DataError(f"{where}: a field of the wrong type for task {spec.name!r}: {err}") from None
    for example in examples:  # what reaches the tokenizer must be text, or it fails the whole batch
        segments = [example.texts] if example.texts else list(example.choices or [])
        for text in (t for segment in segments for t in segment):
            field = next((repr(k) for k, v in row.items() if v is text), "a text field")
            if not isinstance(text, str):
                raise DataError(f"{where}: field {field} must be a string, got {type(text).__name__}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(f"{where}: field {field} holds a lone surrogate (\\ud800-\\udfff); expected valid "
                                f"Unicode text") from None
    return examples


def format_prediction(spec, row: torch.Tensor) -> dict:
    """One output line from a row of classification or regression logits."""
    if spec.kind == "regression":
        return {"prediction": float(row.reshape(-1)[0])}
    probs = row.softmax(-1).tolist()
    names = spec.label_names
    return {"prediction": names[int(row.argmax())], "probabilities": {names[i]: round(p, 6) for i, p in enumerate(probs)}}


@torch.no_grad()
def predict_examples(petl, backbone, spec, examples, max_length: int = 128, batch_size: int = 64) -> list[dict]:
    dataset = encode(examples, spec, backbone.tokenizer, backbone.mode, max_length)
    collate = collator_for(backbone.mode, backbone.tokenizer)
    if backbone.mode == "causal_lm":  # the label words' scores where each row's answer starts
        scores_of = label_word_scores(LabelWordFormat(spec, backbone.tokenizer).first_tokens)
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        labels = batch.pop("labels", None)
        if backbone.mode == "causal_lm":
            out.extend(format_prediction(spec, row) for row in scores_of(petl(**batch).logits, labels))
            continue
        if backbone.mode == "text_to_text":
            generated = petl.generate(**batch, max_new_tokens=16)
            for text in backbone.tokenizer.batch_decode(generated, skip_special_tokens=True):
                value = parse_text_target(spec, text)
                label = value if spec.kind == "regression" or value is None else spec.label_names[value]
                out.append({"prediction": label, "generated": text})
            continue
        logits = petl(**batch).logits
        out.extend(format_prediction(spec, row) for row in logits)
    return out
