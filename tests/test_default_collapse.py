"""Prefix tuning at its defaults on a small real subset of SST-2 (issue 21): the trained model must not
predict one class for everything, and training must record no collapse warning. Kept short: 480
training sentences, 32 tokens, 3 epochs on MiniLM. The test does catch a collapse: the same run with
`mam` at its defaults (r 512, s 4, lr 1e-3) fails it (training records "class 1" at two evaluations in
a row), as the reproduction's SST-2 run of `mam` did (benchmarks/results/sweep_defaults/sweep.md)."""

import os
from collections import Counter
from pathlib import Path

import pytest

from unipetl.tasks.loaders import load_split
from unipetl.training import TrainOptions, load_task_module, train_task

GLUE = Path(os.environ.get("UNIPETL_GLUE_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue")


@pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason="the GLUE files of ../shared/data/glue are not here")
def test_prefix_tuning_at_its_defaults_does_not_collapse_on_real_sst2(tmp_path):
    options = TrainOptions(epochs=3, max_train_samples=480, max_length=32, batch_size=16, seed=42, progress=False)
    result = train_task("sst2", "prefix", None, str(GLUE), str(tmp_path / "run"), options, log=lambda m: None)
    assert result["collapse"] is None and result["test_collapse"] is None
    petl, backbone, io, info = load_task_module(str(tmp_path / "run" / "module"))
    examples = load_split("sst2", "validation", GLUE)[:400]
    predictions = Counter(p["prediction"] for p in io.predict(petl, backbone, examples, info["max_length"]))
    share = predictions.most_common(1)[0][1] / len(examples)
    assert share < 0.85, f"prefix tuning at its defaults predicts {predictions} on 400 SST-2 sentences"
    assert result["main_score"] > 0.6
