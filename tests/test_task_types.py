"""Generation (T5, BART), extractive QA (real MiniLM) and multi-label classification, end to end:
every preset trains a step, generates text, and its saved module reloads to identical outputs."""

import json

import pytest
import torch
import transformers as T

import unipetl
from unipetl.errors import ConfigError
from unipetl.defaults import default_model_path
from unipetl.taskio import ExtractiveQAIO, Seq2SeqIO, task_io_for
from unipetl.taskio.seq2seq import generation_settings
from unipetl.tasks.generation import XSUM_GENERATION, Seq2SeqExample
from unipetl.training import TrainOptions, build_trainer, load_task_module

from test_training import run_cli

PRESETS = unipetl.list_presets()
SMALL_DECODING = {"max_source_length": 24, "max_target_length": 8, "num_beams": 2, "min_length": 2, "max_length": 8}


def _save_tiny(path, family):
    """A random tiny T5 / BART / BERT with MiniLM's (fast, offline) tokenizer; no pretrained T5 or BART is available."""
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    pad, cls, sep = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id
    T.set_seed(0)
    size = dict(vocab_size=tokenizer.vocab_size)
    if family == "t5":
        model = T.T5ForConditionalGeneration(T.T5Config(
            d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=pad, pad_token_id=pad,
            eos_token_id=sep, **size))
    elif family == "bart":
        model = T.BartForConditionalGeneration(T.BartConfig(
            d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512, pad_token_id=pad, bos_token_id=cls,
            eos_token_id=sep, decoder_start_token_id=sep, forced_eos_token_id=sep, **size))
    else:
        model = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=128, **size))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-generators")
    return {family: _save_tiny(root / family, family) for family in ("t5", "bart", "bert")}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _summaries(n, offset=0):
    return [{"document": f"report {i} : the river rose and the town moved {i} families uphill",
             "summary": f"river {i} rose"} for i in range(offset, offset + n)]


def _squad_rows(n, offset=0):
    people = ["Alice", "Bob", "Carla", "Dmitri", "Emeka", "Fatima", "Goran", "Hana"]
    cities = ["Paris", "Lagos", "Lima", "Oslo", "Hanoi", "Quito", "Accra", "Perth"]
    rows = []
    for i in range(offset, offset + n):
        person, city, other = people[i % 8], cities[(3 * i) % 8], cities[(5 * i + 1) % 8]
        context = f"{person} was born in {city}. Years later {person} moved to {other} to study music and law."
        rows.append({"id": f"q{i}", "context": context, "question": f"Where was {person} born?",
                     "answers": {"text": [city], "answer_start": [context.index(city)]}})
    return rows


def _trainable_snapshot(petl):
    return {n: p.detach().clone() for n, p in petl.named_parameters() if p.requires_grad}


# --- sequence to sequence ------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_trains_generates_and_reloads_to_identical_generations(tiny_dirs, tmp_path, family, preset):
    examples = [Seq2SeqExample(r["document"], r["summary"]) for r in _summaries(8)]
    io = Seq2SeqIO("xsum", {"train": examples, "validation": examples[:2], "test": examples[:2]},
                   generation_settings(XSUM_GENERATION, SMALL_DECODING))
    backbone = io.load_backbone(tiny_dirs[family])
    if preset == "bitfit" and family == "t5":  # T5 has no biases: refused, not silently empty
        with pytest.raises(ConfigError, match="no bias parameters"):
            unipetl.get_petl_model(backbone.model, preset)
        return
    petl = unipetl.get_petl_model(backbone.model, preset)
    before = _trainable_snapshot(petl)
    options = TrainOptions(max_steps=2, batch_size=4, progress=False)  # the warmup gives step 1 a zero rate
    trainer, _ = build_trainer(petl, backbone, io, options, tmp_path / "run", 1e-2, select_best=False)
    trainer.train()
    after = _trainable_snapshot(petl)
    assert any(not torch.equal(before[n], after[n]) for n in before), "the training step changed nothing"
    if len(petl.training_stages()) > 1:
        petl.project()  # diff pruning stores the projected sparse diff
    petl.eval()
    generated = io.predict(petl, backbone, examples[:3], 24)
    assert len(generated) == 3 and all(isinstance(g["prediction"], str) and g["prediction"] for g in generated)

    petl.save(tmp_path / "module", task=io.header(backbone, 24, {}))
    reloaded, backbone2, io2, info = load_task_module(str(tmp_path / "module"))
    assert isinstance(io2, Seq2SeqIO) and io2.settings == io.settings
    assert io2.predict(reloaded, backbone2, examples[:3], 24) == generated


def test_xsum_cli_trains_evaluates_and_predicts_with_t5(tiny_dirs, tmp_path, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _summaries(16))
    dev = _write_jsonl(tmp_path / "dev.jsonl", _summaries(4, offset=100))
    out = tmp_path / "run"
    code = run_cli("train", "--task", "xsum", "--method", "lora", "--model", tiny_dirs["t5"], "--train-file", train,
                   "--validation-file", dev, "--epochs", 1, "--output-dir", out, "--no-progress", "--max-length", 24,
                   *[f"--generate={k}={v}" for k, v in SMALL_DECODING.items() if k != "max_source_length"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task_kind"] == "seq2seq" and set(results["metrics"]) >= {"rouge1", "rouge2", "rougeL"}
    # §3.5's settings where the user gave none: lr 5e-5 (not the preset's 1e-3), weight decay 0.01, no warmup
    assert results["learning_rate"] == 5e-5
    assert results["options"]["weight_decay"] == 0.01 and results["options"]["warmup_ratio"] == 0.0
    header = json.loads((out / "module" / "unipetl_module.json").read_text())["task"]
    assert header["source_prefix"] == "summarize: " and header["generation"]["num_beams"] == 2
    assert header["generation"]["max_source_length"] == 24  # --max-length is the source length
    capsys.readouterr()
    assert run_cli("evaluate", "--module", out / "module", "--file", dev) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for name in ("rouge1", "rouge2", "rougeL"):
        assert evaluated[name] == pytest.approx(results["metrics"][name], abs=1e-9)
    inputs = _write_jsonl(tmp_path / "in.jsonl", [{"source": "the river rose"}, {"document": "a town moved"}])
    assert run_cli("predict", "--module", out / "module", "--input", inputs) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(isinstance(json.loads(line)["prediction"], str) for line in lines)


def test_translation_uses_the_direction_and_t5_prefix(tiny_dirs, tmp_path):
    pairs = [{"translation": {"en": f"house {i}", "ro": f"casa {i}"}} for i in range(12)]
    train = _write_jsonl(tmp_path / "wmt.jsonl", pairs)
    io = task_io_for("wmt16_ro_en", custom={"train_file": train, "validation_file": train},
                     generation={"num_beams": 1, "max_length": 6})
    assert io.splits["train"][0].source == "casa 0" and io.splits["train"][0].target == "house 0"
    io.load_backbone(tiny_dirs["t5"])
    assert io.source_prefix == "translate Romanian to English: " and io.main_metric == "bleu"
    io.load_backbone(tiny_dirs["bart"])
    assert io.source_prefix == ""  # BART takes the bare source


def test_label_smoothing_and_decoding_settings_reach_the_trainer(tiny_dirs, tmp_path):
    examples = [Seq2SeqExample(r["document"], r["summary"]) for r in _summaries(4)]
    io = Seq2SeqIO("xsum", {"train": examples, "validation": examples, "test": examples})
    backbone = io.load_backbone(tiny_dirs["bart"])
    trainer, _ = build_trainer(unipetl.get_petl_model(backbone.model, "lora"), backbone, io,
                               TrainOptions(max_steps=1, progress=False), tmp_path, 1e-3)
    assert trainer.args.label_smoothing_factor == 0.1 and trainer.args.predict_with_generate
    assert trainer.args.max_grad_norm == 0.1
    # the unified view's XSum decoding (§3.5): beam 6, length 10-60, no repeated trigram
    assert trainer.generation_kwargs == {"num_beams": 6, "min_length": 10, "max_length": 60,
                                         "no_repeat_ngram_size": 3, "length_penalty": 1.0}


# --- extractive QA on the real MiniLM --------------------------------------------------------------

def test_squad_trains_end_to_end_on_minilm_and_evaluate_agrees(tmp_path, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _squad_rows(32))
    dev = _write_jsonl(tmp_path / "dev.jsonl", _squad_rows(8, offset=32))
    out = tmp_path / "run"
    code = run_cli("train", "--task", "squad", "--method", "pfeiffer", "--train-file", train, "--validation-file", dev,
                   "--epochs", 1, "--max-length", 48, "--doc-stride", 16, "--output-dir", out, "--no-progress")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "squad" and set(results["metrics"]) >= {"exact_match", "f1"}
    assert results["head_params"] == 2 * 384 + 2  # the span head: start and end logits per token
    capsys.readouterr()
    assert run_cli("evaluate", "--module", out / "module", "--file", dev) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["f1"] == pytest.approx(results["metrics"]["f1"], abs=1e-12)
    assert evaluated["exact_match"] == pytest.approx(results["metrics"]["exact_match"], abs=1e-12)
    inputs = _write_jsonl(tmp_path / "in.jsonl", [{"question": "Where was Hana born?",
                                                   "context": "Hana was born in Oslo and moved to Lima."}])
    assert run_cli("predict", "--module", out / "module", "--input", inputs) == 0
    answer = json.loads(capsys.readouterr().out.strip())["prediction"]
    assert answer in "Hana was born in Oslo and moved to Lima."  # a span of the context


@pytest.mark.parametrize("preset", ["lora", "prompt_tuning"])
def test_a_qa_module_reloads_to_identical_start_and_end_logits(tmp_path, preset):
    rows = _squad_rows(12)
    path = _write_jsonl(tmp_path / "qa.jsonl", rows)
    io = task_io_for("squad", custom={"train_file": path, "validation_file": path}, doc_stride=16)
    backbone = io.load_backbone(None)
    petl = unipetl.get_petl_model(backbone.model, preset)
    trainer, encoded = build_trainer(petl, backbone, io, TrainOptions(max_steps=2, batch_size=4, max_length=48,
                                                                      progress=False), tmp_path / "run", 1e-3,
                                     select_best=False)
    trainer.train()
    batch = io.collator(backbone)([encoded["validation"][i] for i in range(6)])
    petl.eval()
    with torch.no_grad():
        first = petl(**batch)
    assert first.start_logits.shape == batch["input_ids"].shape  # one score per input token (prompt excluded)
    petl.save(tmp_path / "module", task=io.header(backbone, 48, {}))
    reloaded, _, io2, _ = load_task_module(str(tmp_path / "module"))
    assert isinstance(io2, ExtractiveQAIO) and io2.doc_stride == 16
    with torch.no_grad():
        again = reloaded(**batch)
    assert torch.equal(first.start_logits, again.start_logits) and torch.equal(first.end_logits, again.end_logits)


def test_prompt_tuning_shifts_qa_targets_past_the_prompt(tmp_path):
    """The loss with a prompt equals cross-entropy of the returned (input-token) logits at the given positions."""
    from tiny_models import HIDDEN, HEADS, LAYERS, FFN, VOCAB

    torch.manual_seed(0)
    model = T.BertForQuestionAnswering(T.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                                    num_attention_heads=HEADS, intermediate_size=FFN)).eval()
    petl = unipetl.get_petl_model(model, unipetl.PetlConfig.from_preset("prompt_tuning", attn_bn=5)).eval()
    ids = torch.randint(5, VOCAB, (3, 9))
    starts, ends = torch.tensor([1, 4, 0]), torch.tensor([2, 6, 0])
    out = petl(input_ids=ids, attention_mask=torch.ones_like(ids), start_positions=starts, end_positions=ends)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out.start_logits, starts) + ce(out.end_logits, ends)) / 2
    assert out.start_logits.shape == (3, 9)
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)


# --- multi-label ---------------------------------------------------------------------------------

def _multilabel_rows(n, offset=0):
    labels = ["food", "health", "shelter", "water"]
    rows = []
    for i in range(offset, offset + n):
        chosen = [labels[i % 4]] + ([labels[(i + 1) % 4]] if i % 3 == 0 else [])
        rows.append({"text": f"{' '.join(chosen)} needs in report {i}", "labels": chosen})
    return rows


def test_multilabel_trains_evaluates_and_predicts(tiny_dirs, tmp_path, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _multilabel_rows(24))
    dev = _write_jsonl(tmp_path / "dev.jsonl", _multilabel_rows(8, offset=24))
    out = tmp_path / "run"
    code = run_cli("train", "--task", "needs", "--task-kind", "multi_label", "--train-file", train, "--validation-file",
                   dev, "--text-columns", "text", "--method", "lora", "--model", tiny_dirs["bert"], "--epochs", 1,
                   "--max-length", 32, "--output-dir", out, "--no-progress")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task_kind"] == "multi_label" and set(results["metrics"]) >= {"micro_f1", "macro_f1", "samples_f1"}
    assert results["main_score"] == results["metrics"]["macro_f1"]
    capsys.readouterr()
    assert run_cli("evaluate", "--module", out / "module", "--file", dev) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for name in ("micro_f1", "macro_f1", "samples_f1"):
        assert evaluated[name] == pytest.approx(results["metrics"][name], abs=1e-12)
    inputs = _write_jsonl(tmp_path / "in.jsonl", [{"text": "water and food"}])
    assert run_cli("predict", "--module", out / "module", "--input", inputs) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row["probabilities"]) == {"food", "health", "shelter", "water"}
    assert row["prediction"] == [n for n, p in row["probabilities"].items() if p >= 0.5]


def test_multilabel_head_uses_binary_cross_entropy(tiny_dirs):
    from unipetl.taskio import MultiLabelIO

    io = MultiLabelIO("needs", ["a", "b", "c"], ["text"])
    backbone = io.load_backbone(tiny_dirs["bert"])
    assert backbone.model.config.problem_type == "multi_label_classification"
    petl = unipetl.get_petl_model(backbone.model, "lora").eval()
    batch = backbone.tokenizer(["x y", "z"], padding=True, return_tensors="pt")
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    out = petl(**batch, labels=target)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target)
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)


# --- bad input -----------------------------------------------------------------------------------

def _refused(capsys, *args):
    capsys.readouterr()
    assert run_cli(*args) == 2
    return capsys.readouterr().err


def test_a_seq2seq_task_with_an_encoder_only_model_is_refused(tiny_dirs, tmp_path, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _summaries(12))
    err = _refused(capsys, "train", "--task", "xsum", "--model", tiny_dirs["bert"], "--train-file", train,
                   "--output-dir", tmp_path / "out", "--no-progress")
    assert "encoder-decoder" in err and "xsum" in err
    assert not (tmp_path / "out").exists()


def test_qa_with_an_encoder_decoder_is_refused(tiny_dirs, tmp_path, capsys):
    train = _write_jsonl(tmp_path / "qa.jsonl", _squad_rows(12))
    err = _refused(capsys, "train", "--task", "squad", "--model", tiny_dirs["t5"], "--train-file", train,
                   "--output-dir", tmp_path / "out")
    assert "extractive QA takes an encoder" in err and not (tmp_path / "out").exists()


def test_a_qa_file_without_answer_offsets_is_refused(tmp_path, capsys):
    rows = _squad_rows(12)
    del rows[3]["answers"]["answer_start"]
    train = _write_jsonl(tmp_path / "qa.jsonl", rows)
    err = _refused(capsys, "train", "--task", "squad", "--train-file", train, "--output-dir", tmp_path / "out")
    assert str(train) in err and "line 4" in err and "answer_start" in err
    assert not (tmp_path / "out").exists()


def test_a_label_outside_the_label_set_is_refused(tiny_dirs, tmp_path, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _multilabel_rows(12))
    dev_rows = _multilabel_rows(4)
    dev_rows[2]["labels"] = ["food", "transport"]
    dev = _write_jsonl(tmp_path / "dev.jsonl", dev_rows)
    err = _refused(capsys, "train", "--task", "needs", "--task-kind", "multi_label", "--train-file", train,
                   "--validation-file", dev, "--text-columns", "text", "--model", tiny_dirs["bert"],
                   "--output-dir", tmp_path / "out")
    assert str(dev) in err and "line 3" in err and "'transport'" in err and "food" in err
    assert not (tmp_path / "out").exists()


def test_task_type_options_are_checked(tiny_dirs, tmp_path, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _summaries(12))
    err = _refused(capsys, "train", "--task", "xsum", "--model", tiny_dirs["t5"], "--train-file", train,
                   "--generate", "beams=2", "--output-dir", tmp_path / "out")
    assert "unknown setting" in err and "num_beams" in err
    err = _refused(capsys, "train", "--task", "xsum", "--model", tiny_dirs["t5"], "--train-file", train,
                   "--generate", "num_beams=2.5", "--output-dir", tmp_path / "out")
    assert "num_beams=2.5" in err and "whole number" in err
    err = _refused(capsys, "train", "--task", "cb", "--generate", "num_beams=2", "--output-dir", tmp_path / "out")
    assert "--generate" in err and "generation tasks" in err
    err = _refused(capsys, "train", "--task", "xsum,squad", "--multitask", "--output-dir", tmp_path / "out")
    assert "GLUE/SuperGLUE" in err
    err = _refused(capsys, "train", "--task", "squad", "--train-file", train, "--text-columns", "text",
                   "--output-dir", tmp_path / "out")
    assert "fixed layout" in err
    assert not (tmp_path / "out").exists()


def test_transfer_onto_a_generation_task_trains_over_t5_sources(tiny_dirs, tmp_path, capsys):
    """ScaLearn sits at Pfeiffer's position of every family: on T5 (pre-LN) it combines T5 Pfeiffer sources
    for a generation task, and the saved module records them."""
    train = _write_jsonl(tmp_path / "train.jsonl", _summaries(12))
    common = ("--model", tiny_dirs["t5"], "--train-file", train, "--no-progress",
              *[f"--generate={k}={v}" for k, v in SMALL_DECODING.items()])
    assert run_cli("train", "--task", "xsum", "--method", "pfeiffer", "--max-steps", 1, "--output-dir",
                   tmp_path / "source", *common) == 0
    assert run_cli("transfer", "--task", "xsum", "--sources", tmp_path / "source" / "module", "--max-steps", 1,
                   "--output-dir", tmp_path / "out", *common) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["method"] == "scalearn" and [s["name"] for s in results["config"]["transfer_sources"]] == ["xsum"]
    assert (tmp_path / "out" / "module" / "weights.safetensors").is_file()


def test_scalearn_combines_sources_of_other_task_types_and_names_the_ones_it_cannot(tiny_dirs, tmp_path, capsys):
    """Sources are adapters on the same encoder whatever head trained them (multi-label, classification);
    a QA source differs in its backbone (no pooler) and is refused with the reason."""
    qa = _write_jsonl(tmp_path / "qa.jsonl", _squad_rows(16))
    labels = _write_jsonl(tmp_path / "ml.jsonl", _multilabel_rows(16))
    common = ("--model", tiny_dirs["bert"], "--max-steps", 2, "--max-length", 48, "--no-progress")
    multilabel = ("--task", "needs", "--task-kind", "multi_label", "--text-columns", "text", "--train-file", labels)
    assert run_cli("train", *multilabel, "--method", "pfeiffer", "--output-dir", tmp_path / "src-ml", *common) == 0
    topics = _write_jsonl(tmp_path / "topic.jsonl", [{"text": r["text"], "label": r["labels"][0]}
                                                     for r in _multilabel_rows(16)])
    assert run_cli("train", "--task", "topic", "--train-file", topics, "--validation-file", topics, "--text-columns",
                   "text", "--method", "pfeiffer", "--output-dir", tmp_path / "src-topic", *common) == 0
    assert run_cli("train", "--task", "squad", "--method", "pfeiffer", "--train-file", qa, "--doc-stride", 16,
                   "--output-dir", tmp_path / "src-qa", *common) == 0
    assert run_cli("transfer", *multilabel, "--method", "scalearn", "--sources", tmp_path / "src-ml" / "module",
                   tmp_path / "src-topic" / "module", "--output-dir", tmp_path / "target", *common) == 0
    results = json.loads((tmp_path / "target" / "results.json").read_text())
    assert results["task"] == "needs" and results["task_kind"] == "multi_label" and results["method"] == "scalearn"
    assert results["trainable_params"] == 2 * 2 * 32  # layers x sources x hidden
    err = _refused(capsys, "transfer", *multilabel, "--method", "scalearn", "--sources", tmp_path / "src-qa" / "module",
                   "--output-dir", tmp_path / "target2", *common)
    assert "BertForQuestionAnswering" in err and "pooler" in err and not (tmp_path / "target2").exists()
