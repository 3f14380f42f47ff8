"""The README as a new user follows it: every Python block runs, every command line parses.

Blocks that continue from elsewhere in the README (they use names such as ``model`` or ``batch``
without defining them) get those names from a tiny BERT here; self-contained blocks run as written,
in a temporary folder.
"""

import copy
import re
import shlex
from pathlib import Path

import pytest
import torch
import transformers as T

from unipetl.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def command_lines() -> list[str]:
    """Every `unipetl ...`, `python -m unipetl.cli ...`, torchrun or accelerate line of the bash blocks."""
    lines = []
    for body in blocks("bash"):
        for line in body.splitlines():
            for command in line.split("&&"):
                command = command.split("  #")[0].strip()
                if re.match(r"(unipetl|torchrun|accelerate launch|python3? -m unipetl\.cli)\b", command):
                    lines.append(command)
    return lines


def unipetl_arguments(command: str) -> list[str]:
    """The arguments the unipetl CLI receives from one command line (launchers' own flags dropped)."""
    words = shlex.split(command)
    if words[0] == "unipetl":
        return words[1:]
    return words[words.index("unipetl.cli") + 1:]


def test_the_readme_has_commands_and_code():
    assert len(command_lines()) >= 20 and len(blocks("python")) >= 2


@pytest.mark.parametrize("command", command_lines())
def test_every_readme_command_line_parses(command):
    arguments = unipetl_arguments(command)
    try:
        args = build_parser().parse_args(arguments)
    except SystemExit as err:  # argparse exits with 2 on an unknown flag (e.g. --cpu under torchrun)
        pytest.fail(f"the README's command {command!r} is refused by the CLI (exit {err.code})")
    assert args.command == arguments[0]


def tiny_names(tmp_path) -> dict:
    """Names that continuing blocks take from context: a model, its untouched twin, a batch, a folder."""
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, num_labels=2)
    model = T.BertForSequenceClassification(config)
    batch = {"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    return {"model": model, "backbone": copy.deepcopy(model), "batch": batch, "DIR": str(tmp_path / "module")}


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_every_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks write modules into the working folder
    code = blocks("python")[index]
    namespace = {"__name__": "readme"}
    if not re.search(r"^import |^from ", code, re.M) or "unipetl.get_petl_model(model" in code:
        import unipetl

        namespace.update(tiny_names(tmp_path), unipetl=unipetl)
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
