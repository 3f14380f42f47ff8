"""A regression head's output bias starts at the training labels' mean (issue 21: from 0, `mam_glue` on
STS-B stayed at one prediction for every pair); `--zero-regression-bias` keeps transformers' 0."""

import json
import statistics

import pytest
import torch
import transformers as T

from test_training import GLUE, needs_glue, quick, run_cli, tiny_bert  # noqa: F401 - tiny_bert is a fixture
from unipetl.heads import regression_output
from unipetl.tasks import get_task, make_splits
from unipetl.training import start_at_label_mean, train_task

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=100,
             max_position_embeddings=64)


class Labelled:
    def __init__(self, label):
        self.label = label


def test_the_regression_output_is_found_on_bert_and_roberta_heads():
    bert = T.BertForSequenceClassification(T.BertConfig(num_labels=1, **SMALL))
    roberta = T.RobertaForSequenceClassification(T.RobertaConfig(num_labels=1, pad_token_id=1, **SMALL))
    assert regression_output(bert) is bert.classifier
    assert regression_output(roberta) is roberta.classifier.out_proj  # not the dense layer under it
    assert regression_output(T.BertForSequenceClassification(T.BertConfig(num_labels=2, **SMALL))) is None


def test_the_bias_starts_at_the_mean_label_and_nothing_else_changes():
    model = T.BertForSequenceClassification(T.BertConfig(num_labels=1, **SMALL))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert start_at_label_mean(model, [Labelled(v) for v in (1.0, 2.5, 5.0)]) == pytest.approx(17 / 6)
    assert model.classifier.bias.item() == pytest.approx(17 / 6)
    for name, p in model.named_parameters():
        if name != "classifier.bias":
            assert torch.equal(p, before[name]), name
    classifier = T.BertForSequenceClassification(T.BertConfig(num_labels=2, **SMALL))
    bias = classifier.classifier.bias.detach().clone()
    assert start_at_label_mean(classifier, [Labelled(0), Labelled(1)]) is None
    assert torch.equal(classifier.classifier.bias, bias)


@needs_glue
def test_training_starts_from_the_mean_of_its_own_training_split_and_the_flag_keeps_zero(tiny_bert, tmp_path, capsys):
    options = quick(max_train_samples=32, epochs=1)
    results = train_task("stsb", "lora", tiny_bert, str(GLUE), str(tmp_path / "mean"), options, log=lambda m: None)
    train = make_splits(get_task("stsb"), str(GLUE), options.protocol, options.seed, 32, None)["train"]
    assert len(train) == 32
    assert results["regression_bias_start"] == pytest.approx(statistics.mean(e.label for e in train))
    code = run_cli("train", "--task", "stsb", "--method", "lora", "--model", tiny_bert, "--data-dir", GLUE,
                   "--output-dir", tmp_path / "zero", "--epochs", 1, "--max-train-samples", 32, "--max-length", 48,
                   "--no-progress", "--zero-regression-bias")
    assert code == 0
    assert json.loads((tmp_path / "zero" / "results.json").read_text())["regression_bias_start"] is None
    classification = train_task("cola", "lora", tiny_bert, str(GLUE), str(tmp_path / "cola"), options, log=lambda m: None)
    assert classification["regression_bias_start"] is None
