"""Training notices a collapsed model (issue 21): one predicted class, or one value, at two evaluations in a
row is warned about and recorded in results.json."""

import numpy as np
import torch
from transformers import EvalPrediction, TrainerCallback

from test_run_folders import data, options  # noqa: F401 - data is a fixture
from test_training import tiny_bert  # noqa: F401 - tiny_bert is a fixture
from unipetl.collapse import CollapseWatch, collapsed, long_prefix, long_prefix_warning
from unipetl.config import PetlConfig
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
