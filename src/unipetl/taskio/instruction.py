"""Instruction tuning of a decoder-only LM (``--task instruction`` with JSONL files; tasks/instructions.py).

Each example is its context rendered by the tokenizer's chat template (where it has one; plain text
joined by blank lines otherwise) followed by the completion and the end-of-sequence token; the loss is
on the completion only. A sequence longer than --max-length keeps the end of its context and as much
of the completion as fits. With --packing, training sequences hold several examples each (`pack`).

Validation (checkpoint selection) is teacher-forced: next-token accuracy and perplexity over the
completions' tokens. The test split is also scored by generation: greedy completions, one example at
a time (no padding: positions match training), against the references (exact match, ROUGE-L).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..encoding import FeatureDataset
from ..errors import ConfigError, DataError
from ..tasks.instructions import InstructionExample, completion_metrics, example_from_row, load_instructions
from ..tasks.textfiles import jsonl_records
from .base import TaskIO, file_splits

MAX_NEW_TOKENS = 256  # the most a generated completion may take, whatever the references' lengths


class InstructionLayout:
    """Token ids of contexts and completions for one tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def context_ids(self, context) -> list[int]:
        if self.chat:
            return self._ids(self.tokenizer.apply_chat_template(list(context), tokenize=False, add_generation_prompt=True))
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self._ids("\n\n".join(message["content"] for message in context))

    def completion_ids(self, completion: str) -> list[int]:
        return self._ids(completion + (self.tokenizer.eos_token or ""))

    def features(self, example: InstructionExample, max_length: int) -> dict:
        completion = self.completion_ids(example.completion)[:max_length - 1]
        context = self.context_ids(example.context)[-(max_length - len(completion)):]
        ids = context + completion
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(context) + completion}


def pack(features: list[dict], max_length: int) -> list[dict]:
    """Consecutive examples joined into sequences of at most ``max_length`` tokens (an example is never split;
    each keeps its labels). Positions run on across an example boundary and attention crosses it, as in
    the common concatenation packing: fewer, fuller rows for a training step."""
    packed, current = [], {"input_ids": [], "attention_mask": [], "labels": []}
    for feature in features:
        if current["input_ids"] and len(current["input_ids"]) + len(feature["input_ids"]) > max_length:
            packed.append(current)
            current = {"input_ids": [], "attention_mask": [], "labels": []}
        for key in current:
            current[key] = current[key] + feature[key]
    if current["input_ids"]:
        packed.append(current)
    return packed


def completion_token_scores(logits, labels):
    """preprocess_logits_for_metrics: per row (summed negative log-likelihood, tokens, correctly predicted
    tokens) over the completion, instead of the vocabulary's logits at every position."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    predicted, targets = logits[:, :-1].float(), labels[:, 1:]
    mask = targets != -100
    nll = F.cross_entropy(predicted.transpose(1, 2), targets.clamp(min=0), reduction="none") * mask
    correct = (predicted.argmax(-1) == targets) & mask
    return torch.stack([nll.sum(1), mask.sum(1).to(nll.dtype), correct.sum(1).to(nll.dtype)], dim=1)


class InstructionIO(TaskIO):
    name = kind = "instruction"
    metrics = ("token_accuracy", "perplexity", "exact_match", "rougeL")
    main_metric = "token_accuracy"

    def __init__(self, splits=None, max_new_tokens: int | None = None):
        super().__init__(splits)
        self.max_new_tokens = max_new_tokens
        self.packing = False

    def configure(self, options) -> None:
        self.packing = options.packing

    def load_backbone(self, model):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..backbone import Backbone, decoder_tokenizer, load_model_config, quiet_transformers
        from ..sites import family_for_config

        quiet_transformers()
        path, config = load_model_config(model)
        if not family_for_config(config).causal_lm:
            raise ConfigError(f"task 'instruction' trains a decoder-only language model (Llama, Mistral, Qwen2, Qwen3, "
                              f"SmolLM2: --model smollm2-135m); --model {path!r} is a {config.model_type!r} model")
        tokenizer = decoder_tokenizer(AutoTokenizer.from_pretrained(path))
        return Backbone(AutoModelForCausalLM.from_pretrained(path), tokenizer, path, "causal_lm")

    def encode(self, split, backbone, max_length):
        layout = InstructionLayout(backbone.tokenizer)
        if self.max_new_tokens is None and self.splits.get("train"):
            # Generation may write as much as the longest training completion, and a little more.
            longest = max(len(layout.completion_ids(ex.completion)) for ex in self.splits["train"])
            self.max_new_tokens = min(MAX_NEW_TOKENS, longest + 8)
        features = [layout.features(ex, max_length) for ex in self.splits[split]]
        return FeatureDataset(pack(features, max_length) if self.packing and split == "train" else features)

    def collator(self, backbone):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(backbone.tokenizer, label_pad_token_id=-100)

    def logits_reducer(self, backbone):
        return completion_token_scores

    def metrics_function(self, split, backbone):
        count = len(self.splits[split])

        def compute(eval_prediction) -> dict[str, float]:
            nll, tokens, correct = torch.as_tensor(eval_prediction.predictions[:count]).double().sum(0).tolist()
            if tokens == 0:
                raise DataError(f"task 'instruction': the {split} split has no completion tokens to score")
            metrics = {"token_accuracy": correct / tokens, "perplexity": math.exp(nll / tokens)}
            metrics["main_score"] = metrics[self.main_metric]
            return metrics

        return compute

    @torch.no_grad()
    def generated_metrics(self, petl, backbone, split: str, max_length: int) -> dict[str, float]:
        examples = self.splits[split]
        predictions = [p["prediction"] for p in self.predict(petl, backbone, examples, max_length)]
        return completion_metrics(predictions, [ex.completion for ex in examples])

    def header_fields(self):
        return {"max_new_tokens": self.max_new_tokens}

    @classmethod
    def from_header(cls, info: dict) -> "InstructionIO":
        return cls(max_new_tokens=info.get("max_new_tokens"))

    def load_file(self, path):
        return load_instructions(path)

    def read_inputs(self, path):
        """Lines {"prompt": ...} or {"messages": [...]} (a last assistant message is the reference, ignored)."""
        examples = [example_from_row(row, f"{path}: line {line}", need_completion=False) for line, row in jsonl_records(path)]
        if not examples:
            raise DataError(f"{path}: no input lines")
        return examples

    @torch.no_grad()
    def predict(self, petl, backbone, examples, max_length, batch_size=1):
        """Greedy completions, one example at a time."""
        layout, tokenizer = InstructionLayout(backbone.tokenizer), backbone.tokenizer
        out = []
        for example in examples:
            ids = torch.tensor([layout.context_ids(example.context)[-max_length:]], device=next(petl.parameters()).device)
            generated = petl.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.max_new_tokens or MAX_NEW_TOKENS,
                                      pad_token_id=tokenizer.pad_token_id)
            out.append({"prediction": tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip()})
        return out


def load_instruction_splits(train_file, validation_file, test_file, seed: int) -> dict[str, list]:
    return file_splits(lambda path, training: load_instructions(path), train_file, validation_file, test_file, seed)
