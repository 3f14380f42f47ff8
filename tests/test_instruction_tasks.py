"""Instruction tuning of decoder-only LMs (issue 23): prompt/completion and chat JSONL, loss on the completion,
teacher-forced and generated metrics checked against independent computations, the CLI end to end."""

import json
import math
import subprocess
import sys

import pytest
import torch
import transformers as T

from tiny_models import save_tiny_llama
from unipetl.defaults import default_model_path
from unipetl.errors import DataError
from unipetl.taskio.instruction import InstructionLayout
from unipetl.tasks.instructions import completion_metrics, load_instructions
from unipetl.training import evaluate_module, load_task_module

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


@pytest.fixture(scope="module")
def tokenizer():
    return T.AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tokenizer):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 lines, prompt/completion and chat alternating: 'Name the colour after X' -> a word."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    lines = []
    for i in range(40):
        prompt, answer = f"Name the word after {WORDS[i % 8]}", WORDS[(i + 1) % 8]
        lines.append({"prompt": prompt, "completion": answer} if i % 2 else
                     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer}]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def write(path, *rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_both_formats_read_as_a_context_and_a_completion(data):
    examples = load_instructions(data)
    assert examples[0].context == ({"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Name the word after red"})
    assert examples[0].completion == "blue"
    assert examples[1].context == ({"role": "user", "content": "Name the word after blue"},) and examples[1].completion == "green"


@pytest.mark.parametrize("row, message", [
    ({"prompt": "a"}, "line 1: missing field 'completion'"),
    ({"prompt": 3, "completion": "a"}, "line 1: field 'prompt' must be a string, got int"),
    ({"text": "a"}, "line 1: expected 'prompt' and 'completion' fields, or 'messages'"),
    ({"messages": []}, "line 1: field 'messages' must be a non-empty list"),
    ({"messages": [{"role": "bot", "content": "a"}]}, r"line 1: messages\[0\]: role 'bot' is not one of system, user, assistant"),
    ({"messages": [{"role": "user", "content": "a"}]}, "line 1: the last message is the answer to learn: its role must be 'assistant'"),
    ({"messages": [{"role": "user"}]}, r"line 1: messages\[0\]: missing field 'content'"),
    ("{not json", "line 1"),
])
def test_bad_lines_are_refused_naming_the_file_line_and_field(tmp_path, row, message):
    path = write(tmp_path / "bad.jsonl", row)
    with pytest.raises(DataError, match=message) as err:
        load_instructions(path)
    assert str(path) in str(err.value)


def test_the_loss_is_on_the_completion_and_a_long_context_keeps_its_end(tokenizer, data):
    layout = InstructionLayout(tokenizer)
    example = load_instructions(data)[1]
    features = layout.features(example, max_length=64)
    completion = [t for t in features["labels"] if t != -100]
    assert tokenizer.decode(completion) == "green"
    assert tokenizer.decode(features["input_ids"][:-len(completion)]) == "name the word after blue"  # no BOS here
    long = type(example)(({"role": "user", "content": "word " * 100 + "the end"},), "green")
    truncated = layout.features(long, max_length=10)
    assert len(truncated["input_ids"]) == 10
    assert tokenizer.decode(truncated["input_ids"]).endswith("word word the end green")


def run(*args):
    return subprocess.run([sys.executable, "-m", "unipetl.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(tiny_llama, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    done = run("train", "--task", "instruction", "--train-file", data, "--method", "lora", "--model", tiny_llama,
               "--epochs", 2, "--max-length", 48, "--learning-rate", 5e-3, "--output", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_metrics_equal_an_independent_computation(trained, data):
    """Perplexity and token accuracy from the evaluation equal a loop over the examples with the model's own
    loss; exact match and ROUGE-L equal those of greedy generations made here."""
    metrics = evaluate_module(str(trained / "module"), file=str(data))
    petl, backbone, io, info = load_task_module(str(trained / "module"))
    layout = InstructionLayout(backbone.tokenizer)
    nll = tokens = correct = 0.0
    predictions = []
    examples = load_instructions(data)
    with torch.no_grad():
        for example in examples:
            f = layout.features(example, info["max_length"])
            ids, labels = torch.tensor([f["input_ids"]]), torch.tensor([f["labels"]])
            out = petl(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            nll += out.loss.item() * n
            tokens += n
            correct += int(((out.logits[:, :-1].argmax(-1) == labels[:, 1:]) & (labels[:, 1:] != -100)).sum())
            context = torch.tensor([layout.context_ids(example.context)])
            generated = petl.generate(input_ids=context, attention_mask=torch.ones_like(context), do_sample=False,
                                      max_new_tokens=info["max_new_tokens"], pad_token_id=backbone.tokenizer.pad_token_id)
            predictions.append(backbone.tokenizer.decode(generated[0, context.shape[1]:], skip_special_tokens=True).strip())
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert metrics["token_accuracy"] == pytest.approx(correct / tokens)
    expected = completion_metrics(predictions, [ex.completion for ex in examples])
    assert metrics["exact_match"] == pytest.approx(expected["exact_match"])
    assert metrics["rougeL"] == pytest.approx(expected["rougeL"])


def test_training_lowers_the_perplexity_and_results_record_it(trained, tiny_llama, data):
    results = json.loads((trained / "results.json").read_text())
    assert set(results["metrics"]) >= {"token_accuracy", "perplexity", "exact_match", "rougeL"}
    assert results["head_params"] == 0 and results["stored_bytes"] < 40_000
    after = evaluate_module(str(trained / "module"), file=str(data))["perplexity"]
    plain = T.AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    layout = InstructionLayout(T.AutoTokenizer.from_pretrained(tiny_llama))
    nll = tokens = 0.0
    with torch.no_grad():
        for f in (layout.features(ex, 48) for ex in load_instructions(data)):
            n = sum(1 for t in f["labels"][1:] if t != -100)
            nll += plain(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss.item() * n
            tokens += n
    assert after < math.exp(nll / tokens)  # the trained module beats the untrained backbone


def test_predict_writes_a_completion_per_line(trained, tmp_path):
    inputs = write(tmp_path / "in.jsonl", {"prompt": "Name the word after cat"},
                   {"messages": [{"role": "user", "content": "Name the word after sun"}]})
    done = run("predict", "--module", trained / "module", "--input", inputs)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 2 and all(isinstance(line["prediction"], str) for line in lines)


def test_an_encoder_is_refused_for_instruction_tuning_before_anything_is_written(data, tmp_path):
    done = run("train", "--task", "instruction", "--train-file", data, "--output", tmp_path / "run")
    assert done.returncode != 0 and "decoder-only" in done.stderr and "'bert'" in done.stderr
    assert not (tmp_path / "run").exists()
    done = run("train", "--task", "instruction", "--output", tmp_path / "run")
    assert done.returncode != 0 and "--train-file" in done.stderr


def test_packing_joins_whole_examples_up_to_the_length_and_keeps_their_labels(tokenizer, data):
    from unipetl.taskio.instruction import pack

    layout = InstructionLayout(tokenizer)
    features = [layout.features(ex, 48) for ex in load_instructions(data)]
    packed = pack(features, 24)
    assert all(len(row["input_ids"]) <= 24 for row in packed) and len(packed) < len(features)
    for key in ("input_ids", "labels", "attention_mask"):
        assert sum((row[key] for row in packed), []) == sum((f[key] for f in features), [])
    # no example is split: every row starts where an example starts
    starts, position = set(), 0
    for f in features:
        starts.add(position)
        position += len(f["input_ids"])
    position = 0
    for row in packed:
        assert position in starts
        position += len(row["input_ids"])


def test_training_with_packing_runs_and_packing_elsewhere_is_refused(tiny_llama, data, tmp_path):
    done = run("train", "--task", "instruction", "--train-file", data, "--method", "lora", "--model", tiny_llama,
               "--epochs", 1, "--max-length", 48, "--packing", "--output", tmp_path / "packed")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "packed" / "results.json").read_text())["options"]["packing"] is True
    refused = run("train", "--task", "sst2", "--packing", "--data-dir", "../shared/data/glue", "--output", tmp_path / "x")
    assert refused.returncode != 0 and "--packing packs instruction-tuning examples" in refused.stderr
    assert not (tmp_path / "x").exists()
