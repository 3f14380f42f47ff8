"""Instruction data for decoder-only LMs: JSONL lines of ``{"prompt": ..., "completion": ...}`` or of chat
``{"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}`` whose last message is the
assistant's answer. Either way an example is a conversation (the context) and the completion the model
learns to write; for prediction the completion may be absent.

Metrics of generated completions: exact match after trimming and case folding, and ROUGE-L F-measure
(``rouge_score``, the seq2seq extra) where it is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError
from .textfiles import jsonl_records, need_text

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class InstructionExample:
    context: tuple[dict, ...]  # the messages before the completion: {"role", "content"}
    completion: str  # "" when only prompting (prediction)


def example_from_row(row: dict, where: str, need_completion: bool = True) -> InstructionExample:
    """One line as an example; errors name ``where`` (file and line) and the field."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: field 'messages' must be a non-empty list of {{'role', 'content'}} objects")
        checked = []
        for i, message in enumerate(messages):
            at = f"{where}: messages[{i}]"
            if not isinstance(message, dict):
                raise DataError(f"{at}: expected an object with 'role' and 'content', got {type(message).__name__}")
            role = need_text(message, "role", at)
            if role not in ROLES:
                raise DataError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
            checked.append({"role": role, "content": need_text(message, "content", at)})
        if checked[-1]["role"] == "assistant":
            return InstructionExample(tuple(checked[:-1]), checked[-1]["content"])
        if need_completion:
            raise DataError(f"{where}: the last message is the answer to learn: its role must be 'assistant', "
                            f"got {checked[-1]['role']!r}")
        return InstructionExample(tuple(checked), "")
    if "prompt" not in row:
        raise DataError(f"{where}: expected 'prompt' and 'completion' fields, or 'messages'")
    prompt = need_text(row, "prompt", where)
    completion = need_text(row, "completion", where) if need_completion or "completion" in row else ""
    return InstructionExample(({"role": "user", "content": prompt},), completion)


def load_instructions(path, need_completion: bool = True) -> list[InstructionExample]:
    examples = [example_from_row(row, f"{path}: line {line}", need_completion) for line, row in jsonl_records(path)]
    if not examples:
        raise DataError(f"{path}: no examples")
    if need_completion and not any(ex.completion for ex in examples):
        raise DataError(f"{path}: every completion is empty")
    return examples


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def completion_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """exact_match (fraction) and, with rouge_score installed, rougeL (mean F-measure)."""
    metrics = {"exact_match": sum(normalize(p) == normalize(r) for p, r in zip(predictions, references)) / len(references)}
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return metrics
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    metrics["rougeL"] = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)
    return metrics
