"""Classification on a decoder-only language model: each example becomes an instruction whose answer is its
label word, and a class is predicted by scoring the label words under the LM head.

Training puts the loss on the answer tokens only (the instruction's labels are -100). Prediction reads
the LM head's logits at the position before the answer and compares the label words' first tokens
there: one forward per example, whatever the number of classes, and exactly what greedy decoding
would choose among them. So the label words of a task must start with different tokens (checked).

The instruction goes through the tokenizer's chat template where it has one (an instruct model), else
it is plain text ending in "Answer:". Inputs too long for max_length lose the end of their text, never
the question or the answer.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

PLACEHOLDER = "\u241fUNIPETL-INPUT\u241f"  # where the example's text goes in the rendered chat template


class LabelWordFormat:
    """The instruction layout of one classification task for one tokenizer."""

    def __init__(self, spec, tokenizer):
        if spec.kind != "classification":
            raise ConfigError(f"task {spec.name!r} is a {spec.kind} task: on a decoder-only model unipetl trains "
                              f"classification tasks (scored by their label words); regression and multiple choice "
                              f"need an encoder or an encoder-decoder model")
        self.spec, self.tokenizer = spec, tokenizer
        words = list(spec.text_labels)
        question = f"Answer with one of: {', '.join(words)}."
        eos = tokenizer.eos_token or ""
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": f"{PLACEHOLDER}\n\n{question}"}],
                                                     tokenize=False, add_generation_prompt=True)
            before, after = rendered.split(PLACEHOLDER)
            answers = [word + eos for word in words]
        else:
            before, after = tokenizer.bos_token or "", f"\n{question}\nAnswer:"
            answers = [f" {word}{eos}" for word in words]
        self.before, self.after = self._ids(before), self._ids(after)
        self.answers = [self._ids(answer) for answer in answers]
        self.first_tokens = [answer[0] for answer in self.answers]
        if len(set(self.first_tokens)) < len(words):
            raise ConfigError(f"task {spec.name!r}: its label words {words} start with the same token in this tokenizer; "
                              "scoring needs each to start with its own")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def features(self, example, max_length: int) -> dict:
        """input_ids = instruction + answer (the example's label word; any for prediction), labels = -100 on
        the instruction."""
        return self.features_and_truncation(example, max_length)[0]

    def features_and_truncation(self, example, max_length: int) -> tuple[dict, bool]:
        """The features, and whether the example's text lost tokens to ``max_length``."""
        text = "\n".join(f"{field}: {segment}" for field, segment in zip(self.spec.text_fields, example.texts))
        answer = self.answers[int(example.label)]
        room = max_length - len(self.before) - len(self.after) - len(answer)
        if room < 1:
            raise ConfigError(f"--max-length {max_length} leaves no room for the text of task {self.spec.name!r}: "
                              f"its instruction and answer take {max_length - room} tokens")
        text_ids = self._ids(text)
        prompt = self.before + text_ids[:room] + self.after
        features = {"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)),
                    "labels": [-100] * len(prompt) + answer}
        return features, len(text_ids) > room


def answer_position(labels: torch.Tensor) -> torch.Tensor:
    """Each row's position whose logits predict its answer's first token (the one before it)."""
    return (labels != -100).int().argmax(dim=1) - 1


def label_word_scores(first_tokens: list[int]):
    """Trainer's preprocess_logits_for_metrics: (rows, length, vocabulary) logits -> (rows, classes) scores, so
    evaluation keeps one number per class instead of the whole vocabulary at every position."""
    tokens = torch.tensor(first_tokens)

    def reduce(logits, labels):
        logits = logits[0] if isinstance(logits, tuple) else logits
        rows = torch.arange(len(labels), device=logits.device)
        return logits[rows, answer_position(labels)][:, tokens.to(logits.device)]

    return reduce
