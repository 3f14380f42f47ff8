"""Would a faster head be a better default for the prefix family? The grid's cells again, head at 3e-3.

At the grid's 2 epochs on CoLA, `prefix`, `mam`, `mam_glue`, `proprefix` and `prompt_tuning` predict
class 1 for every test sentence. benchmarks/diagnose_cola.py found one lever on CoLA alone: the head
(pooler and classifier) training at the method's rate, 3e-4 for `prefix` and `mam_glue`, 1e-3 for
`proprefix`, 1e-4 for `mam`. With the head at 3e-3 `mam_glue` and `proprefix` predict both classes,
and so does `prefix` with 30 positions (He et al.'s 0.5 % GLUE prefix on RoBERTa-base is about 30
positions; the preset's 200 are their summarisation setting). A default must not trade one task for
another, so each candidate trains every cell of the reproduction grid (benchmarks/reproduce.py's
settings, seeds and order) and the table sets its row beside the preset's own grid row. A candidate
becomes a default only where it ends the one-class runs and its mean over the tasks is not lower.
`prompt_tuning` trains at 3e-3 already, and `mam`, and `prefix` with its 200 positions, keep class 1
on CoLA with the head at 3e-3 (diagnose_cola.py), so they have no candidate here.

    python benchmarks/sweep_head_rate.py --jobs 2     # train what is missing, then the table
    python benchmarks/sweep_head_rate.py --report-only

Each run's results.json is kept in benchmarks/results/sweep_head_rate/runs/<candidate>/<task>/seed<S>/
(the module is not); finished runs are skipped. The table goes to
benchmarks/results/sweep_head_rate/summary.md.
"""

import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

import reproduce
from unipetl.atomic import write_json_atomically
from unipetl.bench import machine_description
from unipetl.training import train_task

OUT = Path("benchmarks/results/sweep_head_rate")
RUNS = OUT / "runs"
HEAD_RATE = 3e-3


class Candidate(NamedTuple):
    preset: str
    head_learning_rate: float
    overrides: tuple[tuple[str, object], ...] = ()  # design-config fields over the preset's (--set)
    label: str = ""


# In the order they train: those whose CoLA collapse the faster head ended first.
CANDIDATES = {
    "mam_glue_head3e-3": Candidate("mam_glue", HEAD_RATE, label="`mam_glue`, head 3e-3"),
    "proprefix_head3e-3": Candidate("proprefix", HEAD_RATE, label="`proprefix`, head 3e-3"),
    "prefix_l30_head3e-3": Candidate("prefix", HEAD_RATE, (("attn_bn", 30),),
                                     "`prefix` l=30, head 3e-3 (the preset `prefix_glue` since)"),
}


def run_dir(task: str, name: str, seed: int) -> Path:
    return RUNS / name / task / f"seed{seed}"


def train(task: str, name: str, seed: int) -> None:
    candidate = CANDIDATES[name]
    samples, epochs, length, _ = reproduce.TASKS[task]
    options = reproduce.grid_options(samples, epochs, length, seed)
    options.head_learning_rate = candidate.head_learning_rate
    out = run_dir(task, name, seed)
    result = train_task(task, candidate.preset, None, str(reproduce.GLUE), str(out), options,
                        dict(candidate.overrides) or None, overwrite=True, log=lambda m: print(m, flush=True))
    write_json_atomically(out / "results.json", {**result, "machine": machine_description()})


def plan(names) -> list[tuple[str, str, int]]:
    """Candidate by candidate, so that each row is whole as early as it can be: its tasks at their
    first seed from the cheapest, then the small tasks' other seeds."""
    by_cost = sorted(reproduce.TASKS, key=reproduce.COST_ORDER.index)
    return [run for n in names for run in [(t, n, reproduce.TASKS[t][3][0]) for t in by_cost]
            + [(t, n, s) for t in by_cost for s in reproduce.TASKS[t][3][1:]]]


def cell(paths: list[Path]) -> tuple[float | None, int, int]:
    """(mean main score x 100 over the seeds that ran, runs that predicted one class, runs)."""
    results = [json.loads(p.read_text()) for p in paths if p.exists()]
    if not results:
        return None, 0, 0
    return (100 * sum(r["main_score"] for r in results) / len(results),
            sum(bool(r.get("test_collapse")) for r in results), len(results))


def row(label: str, folder, name: str) -> tuple[str, float | None]:
    scores, texts = [], []
    for task, (_, _, _, seeds) in reproduce.TASKS.items():
        score, one_class, runs = cell([folder(task, name, s) / "results.json" for s in seeds])
        if score is None:
            texts.append("")
            continue
        if runs == len(seeds):
            scores.append(score)
        mark = f" ({one_class} of {runs} one class)" if one_class else ""
        texts.append(f"{score:.2f}{mark}" + ("" if runs == len(seeds) else f" [{runs} of {len(seeds)} seeds]"))
    complete = len(scores) == len(reproduce.TASKS)
    mean = sum(scores) / len(scores) if complete else None
    return f"| {label} | " + " | ".join(texts) + f" | {'' if mean is None else f'{mean:.2f}'} |", mean


def grid_before(preset: str) -> Path:
    """Where the preset's grid cells from before its default changed are kept (moved here when it did,
    since the grid then trains the new default); <task>/seed<S>/results.json under it, as in run_dir."""
    return RUNS / f"{preset}_grid_before"


def baseline(preset: str) -> tuple[str, object, str]:
    """The row a candidate is measured against: the preset's grid cells from before its default
    changed, else the grid's own."""
    if grid_before(preset).is_dir():
        return f"grid `{preset}` before (head at its rate)", run_dir, grid_before(preset).name
    return f"grid `{preset}`", reproduce.run_dir, preset


def summary() -> str:
    machines = {json.loads(p.read_text()).get("machine") for p in RUNS.glob("*/*/seed*/results.json")} - {None}
    tasks = list(reproduce.TASKS)
    lines = ["Command: `python benchmarks/sweep_head_rate.py --jobs 2`", "",
             f"Machine: {'; '.join(sorted(machines)) or 'no runs yet'}, one thread per run.  ",
             "The reproduction grid's settings, seeds and order (benchmarks/reproduce.py); each candidate's row "
             "under its preset's own grid row (head at the method's rate). Main score x 100 on the test split, "
             "mean over the seeds (CB, COPA, WSC: 42-44; the rest 42); \"one class\": runs that predicted one "
             "class for every test example; mean: over the seven tasks, once every seed of each has run; "
             "change: the candidate's mean minus the grid row's.", "",
             "| run | " + " | ".join(tasks) + " | mean | change |",
             "|---|" + "---:|" * (len(tasks) + 2)]
    for name, candidate in CANDIDATES.items():
        grid_line, grid_mean = row(*baseline(candidate.preset))
        line, mean = row(candidate.label, run_dir, name)
        change = "" if mean is None or grid_mean is None else f"{mean - grid_mean:+.2f}"
        lines += [grid_line + " |", line + f" {change} |"]
    return "\n".join(lines) + "\n"


def main():
    parser = reproduce.grid_parser(__doc__, "rewrite summary.md only")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    os.chdir(reproduce.ROOT.parent)  # the paths above are relative to the repository root
    if args.one:
        return train(args.one[0], args.one[1], int(args.one[2]))
    failed = [] if args.report_only else reproduce.run_all(
        [r for r in plan(args.candidates) if not (run_dir(*r) / "results.json").exists()], max(1, args.jobs),
        ready=lambda run: True, folder=run_dir, script=__file__)
    text = summary()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.md").write_text(text)
    print(text)
    reproduce.exit_if_failed(failed)


if __name__ == "__main__":
    sys.exit(main())
