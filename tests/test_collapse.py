"""Training notices a collapsed model (issue 21): one predicted class, or one value, at two evaluations in a
row is warned about and recorded in results.json."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, TrainerCallback

from test_run_folders import data, options  # noqa: F401 - data is a fixture
from test_training import tiny_bert  # noqa: F401 - tiny_bert is a fixture
from unipetl.collapse import (CollapseWatch, class_share_loss, collapsed, long_prefix, long_prefix_warning,
                              train_loss_since_last_evaluation)
from unipetl.config import PetlConfig
from unipetl.tasks.custom import custom_splits
from unipetl.training import train_task


def test_one_class_or_one_value_is_a_collapse_and_variety_is_not():
    assert collapsed(np.array([[0.1, 0.9], [0.3, 0.7], [0.0, 2.0]]), "classification") == "class 1"
    assert collapsed(np.array([[0.9, 0.1], [0.3, 0.7]]), "classification") is None
    assert collapsed((np.array([[1.0, 0.0, 0.0]] * 4), None), "multiple_choice") == "class 0"
    assert collapsed(np.full((5, 1), 2.5), "regression") == "the constant 2.5"
    assert collapsed(np.array([[2.5], [2.6]]), "regression") is None
    # about one value for every input, measured against the labels' spread
    near = np.array([[2.50], [2.52], [2.49], [2.51]])
    assert collapsed(near, "regression", labels=np.array([0.0, 5.0, 2.5, 4.0])).startswith("nearly the constant 2.505")
    assert collapsed(near, "regression", labels=np.array([2.50, 2.53, 2.48, 2.51])) is None  # labels as narrow
    assert collapsed(near, "regression") is None  # without labels only an exact constant counts
    assert collapsed(np.array([[0.5], [4.5], [2.0], [3.0]]), "regression", labels=np.array([0.0, 5.0, 2.5, 4.0])) is None


def test_the_watch_warns_at_the_second_collapsed_evaluation_in_a_row():
    messages = []
    watch = CollapseWatch("classification", "sst2", log=messages.append)
    one_class, varied = np.array([[0.0, 1.0]] * 3), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    for predictions in (one_class, varied, one_class):  # never twice in a row
        watch.observe(predictions)
    assert watch.record is None and not messages
    watch.observe(one_class)
    assert watch.record["predicted"] == "class 1" and watch.record["evaluation"] == 4
    assert len(messages) == 1 and "collapsed" in messages[0] and "train_pooler" in messages[0]
    assert "--head-learning-rate" in messages[0] and "attn_bn=30" in messages[0]  # the levers CoLA's diagnosis found
    regression = CollapseWatch("regression", "stsb", log=messages.append)
    for _ in range(2):  # the Trainer's label_ids reach the check
        regression.wrap(lambda p: {})(EvalPrediction(np.array([[2.5], [2.51], [2.49]]), np.array([0.0, 2.0, 5.0])))
    assert regression.record["predicted"].startswith("nearly the constant 2.5")


def test_the_class_shares_loss_is_the_loss_of_predicting_the_shares_for_every_input():
    labels = [1, 1, 1, 0, 2, 1, 0, 1]
    shares = torch.tensor([2 / 8, 5 / 8, 1 / 8], dtype=torch.float64)
    expected = F.cross_entropy(shares.log().expand(len(labels), 3), torch.tensor(labels)).item()
    assert class_share_loss("classification", labels) == pytest.approx(expected, rel=1e-9)
    assert class_share_loss("multiple_choice", labels) == pytest.approx(expected, rel=1e-9)  # choice indices alike
    assert class_share_loss("classification", ["no", "yes", "yes", "yes"]) == pytest.approx(
        F.cross_entropy(torch.tensor([[0.25, 0.75]], dtype=torch.float64).log().expand(4, 2), torch.tensor([0, 1, 1, 1])).item())
    values = torch.tensor([0.0, 2.5, 5.0, 4.2, 1.0], dtype=torch.float64)
    assert class_share_loss("regression", values.tolist()) == pytest.approx(
        F.mse_loss(values.mean().expand(5), values).item(), rel=1e-9)
    assert class_share_loss("classification", [1]) is None and class_share_loss("generation", [0, 1]) is None


def test_the_training_loss_since_the_last_evaluation_is_the_mean_of_the_losses_logged_after_it():
    history = [{"loss": 0.9, "step": 1}, {"eval_loss": 0.8, "step": 2}, {"loss": 0.7, "step": 3},
               {"loss": 0.5, "step": 4}, {"train_runtime": 3.0, "step": 4}]
    assert train_loss_since_last_evaluation(history) == pytest.approx(0.6)
    assert train_loss_since_last_evaluation(history[:2]) is None  # nothing logged since the evaluation
    assert train_loss_since_last_evaluation(history[:1]) == pytest.approx(0.9)  # no evaluation yet


@pytest.mark.parametrize("train_loss,says", [(0.62, "learned nothing from the inputs"), (0.60, "learned nothing"),
                                             (0.55, "learns from the training inputs")])
def test_the_warning_says_whether_the_training_loss_went_below_the_class_shares(train_loss, says):
    messages = []
    watch = CollapseWatch("classification", "cola", log=messages.append, reference_loss=0.607,
                          recent_train_loss=lambda: train_loss)
    for _ in range(2):
        watch.observe(np.array([[0.0, 1.0]] * 3))
    assert says in messages[0] and f"({train_loss:.4g})" in messages[0] and "(0.607)" in messages[0]
    assert watch.record["train_loss"] == train_loss and watch.record["class_share_loss"] == 0.607
    bare = CollapseWatch("classification", "cola", log=messages.append)  # nothing to compare: no sentence
    for _ in range(2):
        bare.observe(np.array([[0.0, 1.0]] * 3))
    assert "training loss" not in messages[1] and "train_loss" not in bare.record


class ZeroHead(TrainerCallback):
    """A head that outputs nothing but its zero bias: every prediction is class 0."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.model.classifier.weight.zero_()  # model: the PetlModel the Trainer trains
            model.model.classifier.bias.zero_()


def test_a_run_that_collapses_says_so_and_records_it(tiny_bert, data, tmp_path, capsys):
    results = train_task("reviews", "lora", tiny_bert, None, str(tmp_path / "run"), options(epochs=3),
                         custom=data, log=lambda m: None, callbacks=[ZeroHead()])
    assert results["collapse"]["predicted"] == "class 0"
    assert results["test_collapse"] == "class 0"  # the test split's predictions, read apart from validation's
    assert "the model has collapsed" in capsys.readouterr().err


def test_a_collapsed_run_that_learned_nothing_says_so_and_records_both_losses(tiny_bert, data, tmp_path, capsys):
    # the zeroed head gives every input the logits (0, 0): a loss of ln 2 at every step after the first
    results = train_task("reviews", "lora", tiny_bert, None, str(tmp_path / "run"), options(epochs=3, logging_steps=1),
                         custom=data, log=lambda m: None, callbacks=[ZeroHead()])
    _, splits = custom_splits(data["train_file"], data["text_columns"], data["label_column"], seed=42)
    counts = np.unique([example.label for example in splits["train"]], return_counts=True)[1]
    assert len(splits["train"]) == results["train_examples"]  # the training split's shares, not the file's
    assert results["class_share_loss"] == pytest.approx(-sum(c / counts.sum() * math.log(c / counts.sum()) for c in counts))
    collapse = results["collapse"]
    assert collapse["train_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert collapse["class_share_loss"] == pytest.approx(results["class_share_loss"], abs=1e-4)
    assert "learned nothing from the inputs" in capsys.readouterr().err
    history = results["validation_history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(h["validation_loss"] == pytest.approx(math.log(2), abs=1e-4) for h in history[1:])
    assert all(h["train_loss"] == pytest.approx(math.log(2), abs=1e-3) for h in history[1:])


def test_a_prefix_long_against_the_inputs_is_named_before_training():
    short = [{"input_ids": [101, 7, 8, 102]}, {"input_ids": [101, 7, 8, 9, 10, 102]}]  # 5 tokens on average
    prefix = PetlConfig.from_preset("prefix")  # 200 positions
    assert long_prefix(prefix, short) == {"positions": 200, "mean_input_tokens": 5.0}
    assert long_prefix(PetlConfig.from_preset("prefix", attn_bn=19), short) is None  # under 4 per token
    assert long_prefix(PetlConfig.from_preset("prefix", attn_bn=20), short) is not None
    assert long_prefix(prefix, [{"input_ids": list(range(60))}]) is None  # inputs long enough
    assert long_prefix(PetlConfig.from_preset("lora"), short) is None
    # a separate softmax over the prefix leaves the tokens' attention alone; a gate over both does not
    separate = PetlConfig.from_preset("prefix", attn_option="cross_attn")
    assert long_prefix(separate, short) is None
    assert long_prefix(PetlConfig.from_preset("prefix", attn_option="cross_attn", attn_composition="gate_add"),
                       short) is not None
    # every choice of a multiple-choice example is an input of its own
    choices = [{"input_ids": [[1] * 10, [1] * 30]}]
    assert long_prefix(prefix, choices)["mean_input_tokens"] == 20.0
    assert long_prefix(prefix, []) is None
    assert "--method prefix_glue" in long_prefix_warning("cola", long_prefix(prefix, short))


def test_a_run_with_a_long_prefix_warns_and_records_it(tiny_bert, data, tmp_path):
    messages = []
    results = train_task("reviews", "prefix", tiny_bert, None, str(tmp_path / "run"), options(epochs=1),
                         overrides={"mid_dim": 8}, custom=data, log=messages.append)
    assert results["long_prefix"]["positions"] == 200
    assert any("the prefix has 200 positions" in m for m in messages)
    results = train_task("reviews", "prefix_glue", tiny_bert, None, str(tmp_path / "short"), options(epochs=1),
                         overrides={"mid_dim": 8, "attn_bn": 2}, custom=data, log=lambda m: None)
    assert results["long_prefix"] is None
