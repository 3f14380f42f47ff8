"""Why the MAM claims fail in the reproduction: `mam` behind its parts, `mam_glue` flat on STS-B, and
the prefix family at one class on CoLA.

- `mam_glue` (prefix l = 16, scaled parallel adapter r = 16, lr 3e-4) predicted about the mean for every
  STS-B pair in the grid (Pearson 0.07), where `prefix` at the same rate learned the task. Its pooler
  outputs were nearly the same for every pair. The variant "mam_glue, zero regression bias" reruns it
  as the grid did then, with the regression head's bias starting at transformers' 0; the grid's
  `mam_glue` now starts it at the training labels' mean (the library's default since).
- The `mam` preset is He et al.'s generation setting (prefix l = 30 through an 800-wide MLP, a scaled
  parallel adapter r = 512 at the FFN): 28 % of MiniLM's parameters train, at the preset's 1e-4 (at 1e-3
  it predicts one class on SST-2 and WiC, benchmarks/results/sweep_defaults/sweep.md), a tenth of the
  `parallel` preset's rate. Its largest gaps are on STS-B and SST-2. Here `mam` and its parts train
  with the grid's budget doubled, and `mam` with a 3x higher rate: if `mam` reaches its parts with
  more steps, the grid's budget, not the method, is what the claim fails on.
- On CoLA `prefix`, `mam`, `mam_glue` and `proprefix` predict class 1 for every test example at the
  grid's 2 epochs; `prefix` trains with 4 here, and at 2 epochs with a 3x and a 10x higher rate.

Seed 42, benchmarks/reproduce.py's settings for each task; every epoch's validation score is recorded.

    python benchmarks/diagnose_mam.py          # trains what is missing (one thread), then the table
    python benchmarks/diagnose_mam.py --report-only

Each run's results.json is kept in benchmarks/results/diagnose_mam/<task>/<variant>/ (the module is
not); finished runs are skipped. The table, with the grid's own seed-42 cells beside it, goes to
benchmarks/results/diagnose_mam/summary.md.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

import reproduce
import sweep_head_rate
from unipetl.atomic import write_json_atomically
from unipetl.bench import machine_description
from unipetl.training import train_task

OUT = Path("benchmarks/results/diagnose_mam")


class Variant(NamedTuple):
    preset: str
    tasks: tuple[str, ...]
    learning_rate: float | None = None  # None: the preset's own
    epochs_factor: float = 1.0  # on the grid's epochs
    regression_bias_at_mean: bool = True
    head_learning_rate: float | None = None  # None: the run's rate
    overrides: tuple[tuple[str, object], ...] = ()  # design-config fields set over the preset's (--set)
    seed: int = 42


# In the order they train: the STS-B question first, then the budget (STS-B, the larger gaps, first).
VARIANTS = {
    # mam_glue's head at the preset's rate, as these ran before the preset set its head at 3e-3
    "mam_glue, zero regression bias": Variant("mam_glue", ("stsb",), regression_bias_at_mean=False,
                                              head_learning_rate=3e-4),
    "mam_glue": Variant("mam_glue", ("stsb",), head_learning_rate=3e-4),
    "mam, lr 1e-4, twice the epochs": Variant("mam", ("stsb", "sst2"), 1e-4, 2.0),
    # the parts with the same doubled budget, so that the comparison stays fair
    # on CoLA the prefix family predicts one class at the grid's 2 epochs; every method is near MCC 0 after one
    "prefix, twice the epochs": Variant("prefix", ("stsb", "sst2", "cola"), epochs_factor=2.0),
    "parallel, twice the epochs": Variant("parallel", ("stsb", "sst2"), epochs_factor=2.0),
    "mam, lr 3e-4": Variant("mam", ("stsb", "sst2"), 3e-4),
    # with twice the epochs `prefix` stayed at MCC 0 on CoLA: is it the rate rather than the budget?
    "prefix, lr 1e-3": Variant("prefix", ("cola",), 1e-3),
    "prefix, lr 3e-3": Variant("prefix", ("cola",), 3e-3),
}
TASKS = ("stsb", "sst2", "cola")
GRID_METHODS = ("mam", "mam_glue", "prefix", "parallel")


class Diagnosis(NamedTuple):
    """Variants of grid cells, trained at the grid's settings, and the table that sets them beside the
    grid's own seed-42 runs of ``grid_methods``."""
    variants: dict[str, Variant]
    tasks: tuple[str, ...]
    grid_methods: tuple[str, ...]
    out: Path
    command: str
    model_name: str | None = None  # a backbone given with --model at run time; None: the embedded MiniLM

    def folder(self, task: str, name: str) -> Path:
        return self.out / task / name.replace(", ", "_").replace(" ", "-")

    def train(self, task: str, name: str, model: str | None = None) -> None:
        variant = self.variants[name]
        samples, epochs, length, _ = reproduce.TASKS[task]
        options = reproduce.grid_options(samples, epochs * variant.epochs_factor, length, variant.seed)
        options.learning_rate = variant.learning_rate
        options.regression_bias_at_mean = variant.regression_bias_at_mean
        options.head_learning_rate = variant.head_learning_rate
        with tempfile.TemporaryDirectory() as scratch:  # the module is not kept: results.json says it all
            result = train_task(task, variant.preset, model, str(reproduce.GLUE), scratch + "/run", options,
                                dict(variant.overrides), log=lambda m: print(m, flush=True))
        self.folder(task, name).mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.folder(task, name) / "results.json", {**result, "machine": machine_description()})

    def summary(self) -> str:
        lines, machines = [], set()
        for task in self.tasks:
            rows = [grid_row(task, m) for m in self.grid_methods]
            rows += [(name, self.folder(task, name) / "results.json") for name, v in self.variants.items() if task in v.tasks]
            for name, path in rows:
                if not path.exists():
                    lines.append(f"| {task} | {name} | | | | | not run yet | |")
                    continue
                result = json.loads(path.read_text())
                if "machine" in result:
                    machines.add(result["machine"])
                lines.append(f"| {task} | {name} | {result['train_examples']:,} | {rates(result)} | "
                             f"{result['options']['epochs']:g} | {bias_start(result)} | "
                             f"{100 * result['main_score']:.2f}{one_class(result)} | {history(result)} |")
        head = [f"Command: `{self.command}`", "",
                f"Machine of this script's runs: {'; '.join(sorted(machines)) or 'none yet'}, one thread each. "
                f"Backbone: {self.model_name or 'the embedded MiniLM'}."
                + (" The grid rows are benchmarks/reproduce.py's committed seed-42 runs." if self.grid_methods else "") + "  ",
                "Seed 42 (unless the run's name gives another) with benchmarks/reproduce.py's settings for each task "
                "(length 64, batch 16, ScaLearn's split protocol). Main score x 100 on the test split (the official "
                "dev set), and on the validation split at each epoch (recorded by runs trained since results.json has `validation_history`), "
                "with the epoch's mean training loss where the run recorded it (against its results.json's `class_share_loss`, "
                "what predicting the labels' shares alone gives). Bias start: "
                "a regression head's output bias before training (0: transformers' default; the grid's STS-B runs "
                "trained before the label-mean default show 0). \"class 1 for all\": the run predicted that class "
                "for every test example.", "",
                "| task | run | train examples | lr | epochs | bias start | test | validation by epoch |",
                "|---|---|---:|---:|---:|---:|---:|---|"]
        return "\n".join(head + lines) + "\n"

    def main(self, doc: str) -> None:
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--report-only", action="store_true", help="rewrite summary.md only")
        parser.add_argument("--variant", action="append", choices=list(self.variants),
                            help="train only this variant (repeatable): two processes can share the list")
        if self.model_name:
            parser.add_argument("--model", help=f"the {self.model_name} folder (needed to train)")
        args = parser.parse_args()
        model = getattr(args, "model", None)
        if model:
            model = str(Path(model).resolve())  # before the chdir below
        os.chdir(reproduce.ROOT.parent)
        if not args.report_only:
            if self.model_name and not (model and (Path(model) / "config.json").is_file()):
                parser.error(f"--model must be the {self.model_name} folder (with config.json); got {model!r}")
            torch.set_num_threads(1)  # beside the grid's one-thread runs on a 2-core machine
            for task in self.tasks:  # task by task, so that an interrupted diagnosis has whole tasks
                for name in (n for n, v in self.variants.items() if task in v.tasks and n in (args.variant or [n])):
                    if not (self.folder(task, name) / "results.json").exists():
                        print(f"== {task} / {name}", flush=True)
                        self.train(task, name, model)
        text = self.summary()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "summary.md").write_text(text)
        print(text)


def grid_row(task: str, method: str) -> tuple[str, Path]:
    """The grid's seed-42 cell of ``method`` as the diagnoses compared with it: where the preset's default
    changed since, its cell from before (benchmarks/sweep_head_rate.py keeps them), else the grid's own."""
    before = sweep_head_rate.grid_before(method) / task / "seed42" / "results.json"
    if before.exists():
        return f"grid `{method}` (before its head rate changed)", before
    return f"grid `{method}`", reproduce.run_dir(task, method, 42) / "results.json"


def one_class(result: dict) -> str:
    """What every test prediction was, where they were all one class (or about one value)."""
    return f" ({result['test_collapse']} for all)" if result.get("test_collapse") else ""


def rates(result: dict) -> str:
    """The run's learning rate, and its head's where that differs."""
    head = result["options"].get("head_learning_rate")
    return f"{result['learning_rate']:g}" + (f" (head {head:g})" if head else "")


def history(result: dict) -> str:
    """Each epoch's validation score, with that epoch's mean training loss where the run recorded it."""
    steps = result.get("validation_history")
    if not steps:
        return "(not recorded)"
    return " → ".join(f"{100 * h['main_score']:.1f}"
                      + (f" (loss {h['train_loss']:.3f})" if h.get("train_loss") is not None else "") for h in steps)


def bias_start(result: dict) -> str:
    if result["task_kind"] != "regression":
        return ""
    start = result.get("regression_bias_start")
    return "0" if start is None else f"{start:.3f}"


MAM = Diagnosis(VARIANTS, TASKS, GRID_METHODS, OUT, "python benchmarks/diagnose_mam.py")


if __name__ == "__main__":
    MAM.main(__doc__)
