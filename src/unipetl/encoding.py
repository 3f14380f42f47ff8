"""Examples -> tokenized features and the collators that pad them, for the four training modes."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .tasks import Example, to_text_to_text


class FeatureDataset(Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return self.features[index]


def _tokenize_segments(tokenizer, examples_texts: list[tuple[str, ...]], max_length: int) -> dict:
    """One batched tokenizer call for single segments or pairs (all rows must have the same arity)."""
    first = [t[0] for t in examples_texts]
    second = [t[1] for t in examples_texts] if len(examples_texts[0]) > 1 else None
    return tokenizer(first, second, truncation=True, max_length=max_length)


def encode(examples: list[Example], task, tokenizer, mode: str, max_length: int = 128) -> FeatureDataset:
    if not examples:
        return FeatureDataset([])
    if mode == "causal_lm":
        from .label_words import LabelWordFormat

        layout = LabelWordFormat(task, tokenizer)
        return FeatureDataset([layout.features(ex, max_length) for ex in examples])
    if mode == "text_to_text":
        pairs = [to_text_to_text(task, ex) for ex in examples]
        enc = tokenizer([s for s, _ in pairs], truncation=True, max_length=max_length)
        targets = tokenizer(text_target=[t for _, t in pairs], truncation=True, max_length=16)["input_ids"]
        return FeatureDataset([{**{k: enc[k][i] for k in enc}, "labels": targets[i]} for i in range(len(pairs))])
    if mode == "multiple_choice":
        n_choices = len(examples[0].choices)
        flat = [choice for ex in examples for choice in ex.choices]
        enc = _tokenize_segments(tokenizer, flat, max_length)
        return FeatureDataset([{**{k: enc[k][i * n_choices:(i + 1) * n_choices] for k in enc}, "labels": int(ex.label)}
                               for i, ex in enumerate(examples)])
    enc = _tokenize_segments(tokenizer, [ex.texts for ex in examples], max_length)
    dtype = float if task.kind == "regression" else int
    return FeatureDataset([{**{k: enc[k][i] for k in enc}, "labels": dtype(ex.label)} for i, ex in enumerate(examples)])


class MultipleChoiceCollator:
    """Pads (batch, choices, length) features, the shape AutoModelForMultipleChoice expects."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict:
        n = len(features[0]["input_ids"])
        flat = [{k: f[k][c] for k in f if k != "labels"} for f in features for c in range(n)]
        batch = self.tokenizer.pad(flat, return_tensors="pt")
        batch = {k: v.view(len(features), n, -1) for k, v in batch.items()}
        batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch


def collator_for(mode: str, tokenizer):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if mode in ("text_to_text", "causal_lm"):  # token labels, padded with -100
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    if mode == "multiple_choice":
        return MultipleChoiceCollator(tokenizer)
    return DataCollatorWithPadding(tokenizer)
