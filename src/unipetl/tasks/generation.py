"""Sequence-to-sequence tasks (summarisation, translation): data, decoding settings and metrics.

Local files:
* summarisation: JSONL with a document and a summary field (XSum's are ``document`` / ``summary``),
  or a TSV whose header names those columns (csv-style quoting, so documents may hold newlines).
* translation: JSONL rows ``{"translation": {"en": ..., "ro": ...}}`` (the WMT16 layout on the hub),
  or a two-column TSV of raw sentence pairs, read literally (no quoting), whose header names the two
  languages unless ``tsv_languages`` gives the column order.
The direction ``"en-ro"`` means English source, Romanian target.

Metrics: ROUGE-1/2/L F-measure with Porter stemming (``rouge_score``; the mean over pairs, as a
fraction in [0, 1]) and sacreBLEU corpus BLEU with its default 13a tokenisation. BLEU stays on
sacreBLEU's 0-100 scale, the scale every paper reports it on (unlike the library's other metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import DataError
from ..extras import optional_import
from ..hub import load_hub_split
from .textfiles import jsonl_records, need, need_text, tsv_records

SUMMARIZATION, TRANSLATION = "summarization", "translation"


@dataclass(frozen=True)
class Seq2SeqExample:
    source: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationSettings:
    """Input / label truncation and beam-search decoding for one task (ALGORITHMS.md §3.5).

    min_length / max_length bound the generated sequence as ``model.generate`` counts it;
    no_repeat_ngram_size 0 means no blocking.
    """

    max_source_length: int
    max_target_length: int
    num_beams: int
    min_length: int
    max_length: int
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        return {
            "num_beams": self.num_beams,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "length_penalty": self.length_penalty,
        }


# BART-large on XSum: source 512 / target 128, beam 6, length 10-60, no repeated trigram. §3.5 does not
# state a length penalty; 1.0 is BART's own XSum decoding setting (fairseq lenpen 1.0).
XSUM_GENERATION = GenerationSettings(max_source_length=512, max_target_length=128, num_beams=6,
                                     min_length=10, max_length=60, no_repeat_ngram_size=3, length_penalty=1.0)
# mBART-large-cc25 on WMT16 en-ro: sequences of 150 tokens, beam 5, generated length 1-200; no n-gram
# blocking or length penalty is stated, so neither is applied.
WMT16_GENERATION = GenerationSettings(max_source_length=150, max_target_length=150, num_beams=5,
                                      min_length=1, max_length=200, no_repeat_ngram_size=0, length_penalty=1.0)


@dataclass(frozen=True)
class Seq2SeqTask:
    """A seq2seq task: where the hub keeps it, its fields, how it is scored and decoded.

    hub_splits: (split, hub split name) rows. main_metric selects checkpoints: ROUGE-2 for XSum as
    in §3.5; for MT the paper selects on loss, so BLEU is the closest scored stand-in.
    """

    name: str
    kind: str
    hub_path: str
    hub_config: str | None
    metrics: tuple[str, ...]
    main_metric: str
    generation: GenerationSettings
    hub_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("validation", "validation"), ("test", "test"))
    document_field: str = "document"
    summary_field: str = "summary"
    direction: str | None = None


ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")
SEQ2SEQ_TASKS: dict[str, Seq2SeqTask] = {
    task.name: task
    for task in (
        Seq2SeqTask("xsum", SUMMARIZATION, "EdinburghNLP/xsum", None, ROUGE_METRICS, "rouge2", XSUM_GENERATION),
        # "wmt/wmt16" is where the hub now keeps the canonical "wmt16" dataset (the old name redirects).
        Seq2SeqTask("wmt16_en_ro", TRANSLATION, "wmt/wmt16", "ro-en", ("bleu",), "bleu", WMT16_GENERATION,
                    direction="en-ro"),
        Seq2SeqTask("wmt16_ro_en", TRANSLATION, "wmt/wmt16", "ro-en", ("bleu",), "bleu", WMT16_GENERATION,
                    direction="ro-en"),
    )
}


def get_seq2seq_task(name: str | Seq2SeqTask) -> Seq2SeqTask:
    if isinstance(name, Seq2SeqTask):
        return name
    task = SEQ2SEQ_TASKS.get(str(name).lower())
    if task is None:
        raise DataError(f"unknown seq2seq task {name!r}; valid names: {', '.join(SEQ2SEQ_TASKS)}")
    return task


def parse_direction(direction: str) -> tuple[str, str]:
    """'en-ro' -> ('en', 'ro')."""
    parts = str(direction).split("-")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise DataError(f"translation direction {direction!r} must read 'source-target', e.g. 'en-ro' or 'ro-en'")
    return parts[0], parts[1]


# --- local files -----------------------------------------------------------------------------------

def load_summarization(path, document_field: str = "document", summary_field: str = "summary") -> list[Seq2SeqExample]:
    """(document, summary) pairs from a JSONL file or a TSV file with a header."""
    if _is_tsv(path):
        examples = list(_summary_tsv(path, document_field, summary_field))
    else:
        examples = [_summary_example(row, f"{path}: line {line}", document_field, summary_field)
                    for line, row in jsonl_records(_jsonl_path(path))]
    return _nonempty(examples, path)


def load_translation(path, direction: str = "en-ro", tsv_languages: Sequence[str] | None = None) -> list[Seq2SeqExample]:
    """(source, target) sentence pairs in the given direction from WMT16-style JSONL or a two-column TSV.

    tsv_languages: the languages of the TSV's two columns, in order, for a file without a header.
    """
    source, target = parse_direction(direction)
    if _is_tsv(path):
        examples = list(_translation_tsv(path, source, target, tsv_languages))
    else:
        examples = [_translation_example(row, f"{path}: line {line}", source, target)
                    for line, row in jsonl_records(_jsonl_path(path))]
    return _nonempty(examples, path)


def _summary_example(row: dict, where: str, document_field: str, summary_field: str) -> Seq2SeqExample:
    meta = {"id": row["id"]} if "id" in row else {}
    return Seq2SeqExample(need_text(row, document_field, where), need_text(row, summary_field, where), meta)


def _translation_example(row: dict, where: str, source: str, target: str) -> Seq2SeqExample:
    pair = need(row, "translation", where)
    if not isinstance(pair, dict):
        raise DataError(f"{where}: field 'translation' must be an object of language -> sentence, "
                        f"got {type(pair).__name__}")
    where = f"{where}: translation"
    return Seq2SeqExample(need_text(pair, source, where), need_text(pair, target, where))


def _summary_tsv(path, document_field: str, summary_field: str) -> Iterable[Seq2SeqExample]:
    rows = tsv_records(path, quoted=True)
    header = _header(path, rows)
    columns = [_column(path, header, name) for name in (document_field, summary_field)]
    for line, cells in rows:
        row = _cells(path, line, header, cells)
        yield Seq2SeqExample(row[columns[0]], row[columns[1]])


def _translation_tsv(path, source: str, target: str, tsv_languages) -> Iterable[Seq2SeqExample]:
    rows = tsv_records(path, quoted=False)
    if tsv_languages is None:
        header = _header(path, rows)
    else:
        header = [str(lang) for lang in tsv_languages]
    if len(header) != 2:
        raise DataError(f"{path}: a translation TSV has two columns, one per language; got {header}")
    columns = [_column(path, header, lang) for lang in (source, target)]
    for line, cells in rows:
        row = _cells(path, line, header, cells)
        yield Seq2SeqExample(row[columns[0]], row[columns[1]])


def _header(path, rows) -> list[str]:
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a header line)")
    return [cell.strip() for cell in first[1]]


def _column(path, header: list[str], name: str) -> int:
    if name not in header:
        raise DataError(f"{path}: line 1: missing column {name!r} (header has {header})")
    return header.index(name)


def _cells(path, line: int, header: list[str], cells: list[str]) -> list[str]:
    if len(cells) != len(header):
        raise DataError(f"{path}: line {line}: expected {len(header)} tab-separated fields {header}, got {len(cells)}")
    return cells


def _is_tsv(path) -> bool:
    return str(path).lower().endswith(".tsv")


def _jsonl_path(path):
    if not str(path).lower().endswith((".jsonl", ".json")):
        raise DataError(f"{path}: unsupported file type; expected .jsonl or .tsv")
    return path


def _nonempty(examples: list[Seq2SeqExample], path) -> list[Seq2SeqExample]:
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


# --- the hub ----------------------------------------------------------------------------------------

def hub_rows_to_examples(task: str | Seq2SeqTask, rows: Iterable[dict], where: str) -> list[Seq2SeqExample]:
    """Hub rows (the same columns as the JSONL files) as examples."""
    task = get_seq2seq_task(task)
    if task.kind == SUMMARIZATION:
        return [_summary_example(row, f"{where}: row {i}", task.document_field, task.summary_field)
                for i, row in enumerate(rows)]
    source, target = parse_direction(task.direction)
    return [_translation_example(row, f"{where}: row {i}", source, target) for i, row in enumerate(rows)]


def load_seq2seq_hub(task: str | Seq2SeqTask, split: str) -> list[Seq2SeqExample]:
    """One split from the Hugging Face hub (needs network access)."""
    task = get_seq2seq_task(task)
    hub_split = dict(task.hub_splits).get(split)
    if hub_split is None:
        raise DataError(f"task {task.name!r} has no split {split!r}; valid splits: {', '.join(dict(task.hub_splits))}")
    dataset = load_hub_split(task.hub_path, task.hub_config, hub_split,
                             "give local files with --train-file / --validation-file / --test-file "
                             "(Python: load_summarization / load_translation)")
    return _nonempty(hub_rows_to_examples(task, dataset, f"{task.hub_path}[{hub_split}]"), task.hub_path)


# --- features ---------------------------------------------------------------------------------------

def seq2seq_features(examples: Sequence[Seq2SeqExample], tokenizer, settings: GenerationSettings,
                     source_prefix: str = "") -> list[dict]:
    """Tokenized sources with tokenized targets as ``labels``, truncated to the task's lengths.

    For mBART set ``tokenizer.src_lang`` / ``tgt_lang`` first so the language codes are right.
    """
    if not examples:
        return []
    sources = tokenizer([source_prefix + ex.source for ex in examples], truncation=True,
                        max_length=settings.max_source_length)
    labels = tokenizer(text_target=[ex.target for ex in examples], truncation=True,
                       max_length=settings.max_target_length)["input_ids"]
    return [{**{k: sources[k][i] for k in sources}, "labels": labels[i]} for i in range(len(examples))]


# --- metrics ----------------------------------------------------------------------------------------

def rouge_scores(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over prediction-reference pairs, as fractions in [0, 1]."""
    rouge_scorer = optional_import("rouge_score.rouge_scorer", "seq2seq", "ROUGE (xsum)")

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_METRICS), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_METRICS, 0.0)
    for prediction, reference in zip(predictions, references):
        # RougeScorer.score takes the reference first.
        scores = scorer.score(reference, prediction or "")
        for name in ROUGE_METRICS:
            totals[name] += scores[name].fmeasure
    return {name: total / len(references) for name, total in totals.items()}


def bleu_score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """sacreBLEU corpus BLEU (one reference per sentence, default 13a tokenisation), 0-100."""
    sacrebleu = optional_import("sacrebleu", "seq2seq", "BLEU (wmt16)")

    _check_pairs(predictions, references)
    result = sacrebleu.corpus_bleu([p or "" for p in predictions], [list(references)])
    return {"bleu": float(result.score)}


def require_metric_packages(task: str | Seq2SeqTask) -> None:
    """Refuse a seq2seq run before training when its metric's package is missing, not at the first evaluation."""
    task = get_seq2seq_task(task)
    if task.kind == SUMMARIZATION:
        optional_import("rouge_score.rouge_scorer", "seq2seq", f"{task.name}'s metric, ROUGE,")
    else:
        optional_import("sacrebleu", "seq2seq", f"{task.name}'s metric, BLEU,")


def seq2seq_metrics(task: str | Seq2SeqTask, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The task's metrics: ROUGE for summarisation, BLEU for translation."""
    task = get_seq2seq_task(task)
    if task.kind == SUMMARIZATION:
        return rouge_scores(predictions, references)
    return bleu_score(predictions, references)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("no predictions to score")
