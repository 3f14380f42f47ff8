"""Classification tasks on decoder-only LMs (issue 23): instructions answered by label words, scored under the
LM head. A tiny random Llama saved with the MiniLM's tokenizer (no chat template) stands in for a real one;
one test gives that tokenizer a chat template."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import transformers as T

from tiny_models import save_tiny_llama
from unipetl.defaults import default_model_path
from unipetl.errors import ConfigError
from unipetl.label_words import LabelWordFormat, answer_position, label_word_scores
from unipetl.tasks import Example, get_task

GLUE = "../shared/data/glue"


@pytest.fixture(scope="module")
def tokenizer():
    return T.AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tokenizer):
    """A saved tiny Llama causal LM with the MiniLM's WordPiece tokenizer."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


def test_the_instruction_has_no_loss_and_the_answer_is_the_label_word(tokenizer):
    layout = LabelWordFormat(get_task("sst2"), tokenizer)
    features = layout.features(Example(("a fine film",), 1), max_length=64)
    prompt = tokenizer.decode(features["input_ids"][:features["labels"].count(-100)])
    assert prompt == "sentence : a fine film answer with one of : negative, positive. answer :"
    answer = [t for t in features["labels"] if t != -100]
    assert tokenizer.decode(answer) == "positive"
    assert features["input_ids"][-len(answer):] == answer


def test_a_long_input_loses_the_end_of_its_text_never_the_question_or_the_answer(tokenizer):
    layout = LabelWordFormat(get_task("sst2"), tokenizer)
    features = layout.features(Example((" ".join(["word"] * 500),), 0), max_length=40)
    assert len(features["input_ids"]) == 40
    assert tokenizer.decode(features["input_ids"]).startswith("sentence : word word")
    assert tokenizer.decode(features["input_ids"]).endswith("word answer with one of : negative, positive. answer : negative")
    with pytest.raises(ConfigError, match="--max-length 8 leaves no room"):
        layout.features(Example(("a fine film",), 0), max_length=8)


def test_a_chat_template_frames_the_instruction(tokenizer):
    chat = T.AutoTokenizer.from_pretrained(default_model_path())
    chat.chat_template = ("{% for m in messages %}[user] {{ m['content'] }} [end]{% endfor %}"
                          "{% if add_generation_prompt %} [bot]{% endif %}")
    chat.eos_token = "[SEP]"
    layout = LabelWordFormat(get_task("sst2"), chat)
    features = layout.features(Example(("a fine film",), 0), max_length=64)
    rendered = chat.apply_chat_template([{"role": "user", "content": "sentence: a fine film\n\nAnswer with one of: "
                                                                      "negative, positive."}],
                                        tokenize=False, add_generation_prompt=True)
    expected = chat(rendered + "negative[SEP]", add_special_tokens=False)["input_ids"]
    assert features["input_ids"] == expected
    assert chat.decode([t for t in features["labels"] if t != -100]) == "negative [SEP]"


def test_label_words_that_start_alike_and_other_task_kinds_are_refused(tokenizer):
    with pytest.raises(ConfigError, match="regression"):
        LabelWordFormat(get_task("stsb"), tokenizer)
    with pytest.raises(ConfigError, match="multiple_choice"):
        LabelWordFormat(get_task("copa"), tokenizer)
    alike = dataclasses.replace(get_task("sst2"), name="alike", text_labels=("good film", "good show"))
    with pytest.raises(ConfigError, match="start with the same token"):
        LabelWordFormat(alike, tokenizer)


def test_scores_are_the_next_token_logits_of_the_instruction_alone(tiny_llama, tokenizer):
    """The scores read inside a padded batch of instruction + answer equal the last-position logits of each
    instruction run alone (an independent forward, no answer, no padding)."""
    model = T.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    layout = LabelWordFormat(get_task("sst2"), tokenizer)
    examples = [Example(("a fine film",), 1), Example(("dull , long and much too loud",), 0)]
    features = [layout.features(ex, 64) for ex in examples]
    tokenizer.padding_side = "right"
    batch = T.DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(features)
    with torch.no_grad():
        scores = label_word_scores(layout.first_tokens)(model(**batch).logits, batch["labels"])
        for row, feature in enumerate(features):
            prompt = [t for t, label in zip(feature["input_ids"], feature["labels"]) if label == -100]
            alone = model(input_ids=torch.tensor([prompt])).logits[0, -1, layout.first_tokens]
            torch.testing.assert_close(scores[row], alone, atol=1e-5, rtol=1e-5)
    assert answer_position(batch["labels"]).tolist() == [sum(1 for t in f["labels"] if t == -100) - 1 for f in features]


def unipetl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unipetl.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_train_evaluate_and_predict_on_a_decoder(tiny_llama, tmp_path):
    run = tmp_path / "run"
    done = unipetl("train", "--task", "sst2", "--method", "lora", "--model", tiny_llama, "--data-dir", GLUE,
                   "--max-train-samples", 32, "--epochs", 1, "--max-length", 64, "--output", run)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["head_params"] == 0  # the LM head is the backbone's
    assert results["stored_bytes"] < 40_000
    evaluated = unipetl("evaluate", "--module", run / "module")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(results["metrics"]["accuracy"])
    (tmp_path / "in.jsonl").write_text('{"text": "a fine film"}\n{"text": "awful"}\n')
    predicted = unipetl("predict", "--module", run / "module", "--input", tmp_path / "in.jsonl")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [set(line["probabilities"]) for line in lines] == [{"negative", "positive"}] * 2


def test_a_regression_task_on_a_decoder_is_refused_before_anything_is_written(tiny_llama, tmp_path):
    done = unipetl("train", "--task", "stsb", "--method", "lora", "--model", tiny_llama, "--data-dir", GLUE,
                   "--output", tmp_path / "run")
    assert done.returncode != 0
    assert "regression" in done.stderr and "decoder-only" in done.stderr
    assert not (tmp_path / "run").exists()


def test_the_sequence_classification_head_option_trains_classification_and_regression(tiny_llama, tmp_path):
    for task in ("sst2", "stsb"):
        run = tmp_path / task
        done = unipetl("train", "--task", task, "--method", "lora", "--model", tiny_llama, "--data-dir", GLUE,
                       "--decoder-head", "sequence_classification", "--max-train-samples", 32, "--epochs", 1,
                       "--max-length", 48, "--output", run)
        assert done.returncode == 0, done.stderr[-2000:]
        results = json.loads((run / "results.json").read_text())
        assert results["head_params"] == 32 * (2 if task == "sst2" else 1)  # the new score head, no bias
        evaluated = unipetl("evaluate", "--module", run / "module")
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        assert json.loads(evaluated.stdout)["main_score"] == pytest.approx(results["main_score"])
    from unipetl.serving import TaskBank

    with pytest.raises(ConfigError, match="sequence-classification head reads the last token"):
        TaskBank().add(tmp_path / "sst2" / "module")
