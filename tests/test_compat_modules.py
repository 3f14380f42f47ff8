"""Task modules saved by an earlier version of the code (tests/compat/make_modules.py, committed) load
and give the logits they gave when saved: the on-disk format and each method's behaviour survive refactors."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import unipetl
from tiny_models import tiny_batch, tiny_model

COMPAT = Path(__file__).parent / "compat"
MODULES = COMPAT / "modules"
EXPECTED = load_file(str(COMPAT / "logits.safetensors"))
SOURCES = [MODULES / "sources" / f"source{i}" for i in range(2)]
LABELS = {"family_b": 2}


def module_dir(name: str) -> Path:
    return MODULES / "family" / name.removeprefix("family_") if name.startswith("family_") else MODULES / name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_module_saved_before_loads_to_the_same_logits(name):
    backbone = tiny_model("bert", num_labels=LABELS.get(name, 3))
    sources = SOURCES if name in ("scalearn", "adapterfusion") else None  # the header's paths are another machine's
    petl = unipetl.load_petl_model(backbone, module_dir(name), sources=sources).eval()
    inputs = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    with torch.no_grad():
        actual = petl(**inputs).logits
    torch.testing.assert_close(actual, EXPECTED[name], atol=1e-6, rtol=0)
