"""The sweep behind the defaults of prefix tuning, MAM, prompt tuning and ProPrefix (issue 21, item 2).

Each variant PRESET:LR trains on the reproduction's settings (benchmarks/reproduce.py: the same subsets,
epochs, lengths, splits, seed 42; the preset's own defaults, the BERT pooler trained with the head as the
library now does by default) and records its test score and whether it collapsed: the share of test
examples given the most frequent class (1.0: one class for everything), or for regression the spread
of its test predictions. STS-B trains on a seeded 2,000-example subset here (the reproduction uses all
5,749) to keep the sweep short.

    python benchmarks/sweep_defaults.py                      # the default grid; resumes from finished rows
    python benchmarks/sweep_defaults.py --variants prefix:3e-4 --tasks sst2

Each finished run appends one line to benchmarks/results/sweep_defaults/rows.jsonl; a run already there
is skipped, so an interrupted sweep resumes. The table is rewritten after every run.
"""

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from unipetl.bench import machine_description
from unipetl.presets import default_learning_rate
from unipetl.tasks.loaders import load_split
from unipetl.training import TrainOptions, load_task_module, train_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import GLUE, TASKS  # noqa: E402  (the reproduction's own settings)

OUT = Path(__file__).resolve().parent / "results" / "sweep_defaults"
SWEEP_SAMPLES = {"stsb": 2000}  # fewer than the reproduction's, for time
PRESETS = ("prefix", "mam", "mam_glue", "proprefix", "prompt_tuning")  # prompt tuning last: l = 200 makes it the slowest
DEFAULT_TASKS = ("sst2", "wic", "stsb")
# MAM at 1e-4 learned SST-2 where 1e-3 collapsed (benchmarks/results/prefix_collapse_cpu.md)
ALTERNATIVES = ("mam:1e-4", "prefix:3e-4", "mam_glue:3e-4", "proprefix:3e-4", "prompt_tuning:3e-3")
REGRESSION_FLAT = 0.05  # a regression output this flat (std; STS-B's labels span 0-5) counts as collapsed


def parse_variant(text: str) -> tuple[str, float, dict]:
    """PRESET[:LR[:FIELD=VALUE,...]] -> (preset, rate, config overrides)."""
    preset, _, rest = text.partition(":")
    rate, _, fields = rest.partition(":")
    overrides = dict(field.split("=", 1) for field in fields.split(",") if "=" in field)
    try:
        return preset, float(rate) if rate else default_learning_rate(preset), overrides
    except ValueError:
        raise SystemExit(f"--variants: {rate!r} in {text!r} is not a learning rate") from None


def run(task: str, preset: str, learning_rate: float, folder: Path, overrides: dict) -> dict:
    samples, epochs, length, seeds = TASKS[task]
    options = TrainOptions(epochs=epochs, max_train_samples=SWEEP_SAMPLES.get(task, samples), max_length=length,
                           batch_size=16, seed=seeds[0], protocol="scalearn", max_validation_samples=1000,
                           progress=False, learning_rate=learning_rate,
                           head_learning_rate=learning_rate)  # as before presets set head rates (sweep_head_rate.py)
    result = train_task(task, preset, None, str(GLUE), str(folder), options, overrides or None, overwrite=True,
                        log=lambda m: None)
    petl, backbone, io, info = load_task_module(str(folder / "module"))
    predictions = [p["prediction"] for p in io.predict(petl, backbone, load_split(task, "validation", GLUE),
                                                       info.get("max_length", 128))]
    if result["task_kind"] == "regression":
        spread = float(np.std(np.asarray(predictions, dtype=np.float64)))
        collapsed, shape = spread < REGRESSION_FLAT, {"prediction_std": spread}
    else:
        share = Counter(predictions).most_common(1)[0][1] / len(predictions)
        collapsed, shape = share == 1.0, {"most_frequent_prediction_share": share}
    return {"task": task, "preset": preset, "learning_rate": learning_rate, **({"overrides": overrides} if overrides else {}),
            "main_score": result["main_score"],
            "validation_score": result["validation_metrics"]["main_score"], "collapsed": collapsed,
            "collapse_warning": result.get("collapse"), **shape, "train_seconds": result["train_seconds"]}


def write_table(rows: list[dict]) -> None:
    lines = ["Command: `python benchmarks/sweep_defaults.py` (the rows so far; it resumes)", "",
             f"Machine: {machine_description()}  ",
             "Settings of benchmarks/reproduce.py (seed 42; STS-B on a 2,000-example subset), each preset's defaults "
             "with the pooler trained (the library's default); collapsed: one class for every test example, or "
             f"a regression output with standard deviation under {REGRESSION_FLAT:g}.", "",
             "| preset | lr | task | test score | validation score | collapsed | most frequent share / prediction std | train (s) |",
             "|---|---:|---|---:|---:|---|---:|---:|"]
    for r in sorted(rows, key=lambda r: (PRESETS.index(r["preset"]) if r["preset"] in PRESETS else 99,
                                         str(r.get("overrides", "")), r["learning_rate"], r["task"])):
        shape = r.get("most_frequent_prediction_share", r.get("prediction_std"))
        collapsed = r["collapsed"] or r.get("prediction_std", 1.0) < REGRESSION_FLAT
        name = r["preset"] + "".join(f" {k}={v}" for k, v in r.get("overrides", {}).items())
        lines.append(f"| {name} | {r['learning_rate']:g} | {r['task']} | {100 * r['main_score']:.2f} | "
                     f"{100 * r['validation_score']:.2f} | {'yes' if collapsed else 'no'} | {shape:.3f} | "
                     f"{r['train_seconds']:.0f} |")
    (OUT / "sweep.md").write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(PRESETS) + list(ALTERNATIVES),
                        help="PRESET, PRESET:LR or PRESET:LR:FIELD=VALUE,... (config overrides); default: each preset "
                             "at its own rate, then one alternative rate")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=list(TASKS))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows_file = OUT / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    done = {(r["task"], r["preset"], r["learning_rate"], json.dumps(r.get("overrides", {}), sort_keys=True)) for r in rows}
    for variant in args.variants:
        preset, rate, overrides = parse_variant(variant)
        for task in args.tasks:
            if (task, preset, rate, json.dumps(overrides, sort_keys=True)) in done:
                continue
            with tempfile.TemporaryDirectory() as scratch:
                row = run(task, preset, rate, Path(scratch) / "run", overrides)
            print(json.dumps(row), flush=True)
            with rows_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            write_table(rows)
    write_table(rows)


if __name__ == "__main__":
    main()
