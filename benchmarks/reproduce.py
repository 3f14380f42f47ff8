"""The reproduction table: MiniLM on the GLUE/SuperGLUE tasks in ../shared/data/glue x seventeen methods.

    python benchmarks/reproduce.py --jobs 2   # train what is missing (2 runs at a time), then regenerate
    python benchmarks/reproduce.py --report-only

Each run writes benchmarks/reproduction/runs/<task>/<method>/seed<S>/results.json (committed; the
task modules and logs beside them are not). A run whose results.json exists is skipped and a run
stopped after an epoch's checkpoint continues from it, so the command resumes an interrupted
reproduction and, once every run is there, only regenerates
benchmarks/reproduction/report.{md,csv,json,png} with `unipetl report` and copies report.md into the
README between its reproduction markers. The first grid (ten methods, before the pooler trained by
default and before the sweep's learning rates) is kept as history in benchmarks/reproduction/history/v1.

Fitted to a 2-core CPU (see TASKS): SST-2 and WiC train on a seeded subset of 2,000 examples and
CoLA and STS-B on all their training data, for 2 epochs with one seed; the small tasks (CB, COPA, WSC) on all their examples for 6 epochs with
three seeds. Sequence length 64 (CB 128: its premises are long). Splits follow ScaLearn's protocol:
the official dev set is the test set and a stratified 10 % of the training data is the validation
set that picks the best epoch (at most 1,000 examples: SST-2's would be 6,735 and is evaluated every
epoch), so no test label chooses a checkpoint; QNLI is left out because only
its dev split is here. ScaLearn and AdapterFusion combine the seed-42
`pfeiffer` modules of all seven tasks (the target's own included, as in the paper). Every method
runs its preset as `unipetl train --method NAME` would, learning rate included. Diff pruning runs as
`diffprune_short`: the paper's rates (`diffprune`: diff lr 1e-5, gate lr 0.1) need the paper's long
runs and on this budget close almost every gate (SST-2 50.9 %,
benchmarks/results/diffprune_quality_gates_cpu.md).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

from unipetl.errors import ConfigError
from unipetl.report import build_report
from unipetl.runfolder import CHECKPOINT_DIR
from unipetl.training import TrainOptions, train_task

ROOT = Path(__file__).resolve().parent
GLUE = ROOT.parents[1] / "shared" / "data" / "glue"
RUNS = Path("benchmarks/reproduction/runs")  # relative, so report.json names the same paths on every checkout
REPORT = Path("benchmarks/reproduction")
README = ROOT.parent / "README.md"
MARKERS = ("<!-- reproduction table: start -->", "<!-- reproduction table: end -->")

# task -> (training examples or None for all, epochs, max length, seeds)
SMALL_SEEDS = (42, 43, 44)
TASKS = {
    # CoLA and STS-B on all their training data: on 2,000 examples CoLA stayed at the majority class
    # (MCC 0) even for full fine-tuning and the adapters barely learned STS-B (pearson 6-14 against 74).
    "cola": (None, 2.0, 64, (42,)), "sst2": (2000, 2.0, 64, (42,)), "stsb": (None, 2.0, 64, (42,)),
    "wic": (2000, 2.0, 64, (42,)),
    "cb": (None, 6.0, 128, SMALL_SEEDS), "copa": (None, 6.0, 64, SMALL_SEEDS), "wsc": (None, 6.0, 64, SMALL_SEEDS),
}
METHODS = ("full", "pfeiffer", "houlsby", "parallel", "lora", "bitfit", "prefix", "prefix_glue", "prompt_tuning", "mam",
           "mam_glue",
           "proadapter", "prolora", "proprefix", "diffprune_short", "scalearn", "adapterfusion")
TRANSFER = ("scalearn", "adapterfusion")


def run_dir(task: str, method: str, seed: int) -> Path:
    return RUNS / task / method / f"seed{seed}"


# Cheapest first, so an interrupted reproduction covers as many tasks x methods as it can.
COST_ORDER = ("cb", "copa", "wsc", "wic", "sst2", "stsb", "cola")


def plan(tasks, methods) -> list[tuple[str, str, int]]:
    """The seed-42 sources first, then every task at its first seed, task by task from the cheapest,
    then the small tasks' other seeds: an unfinished grid has one run of every cell it reached."""
    order = [(t, "pfeiffer", 42) for t in tasks if "pfeiffer" in methods or set(methods) & set(TRANSFER)]
    by_cost = sorted(tasks, key=COST_ORDER.index)
    order += [(t, m, TASKS[t][3][0]) for t in by_cost for m in methods]
    order += [(t, m, s) for t in by_cost for m in methods for s in TASKS[t][3][1:]]
    return list(dict.fromkeys(order))


def grid_options(samples: int | None, epochs: float, length: int, seed: int) -> TrainOptions:
    """The grid's training options (ScaLearn's split protocol, batch 16, at most 1,000 validation examples)."""
    return TrainOptions(epochs=epochs, max_train_samples=samples, max_length=length, batch_size=16, seed=seed,
                        protocol="scalearn", max_validation_samples=1000, progress=False)


def train(task: str, method: str, seed: int, model: str | None = None, folder=run_dir, sources_of=None) -> None:
    """Train one run (on ``model``, the embedded MiniLM by default, into ``folder(task, method, seed)``);
    a run that an earlier process left with a checkpoint (a session that ended mid-run) continues from
    it, so an hour-long run loses at most an epoch."""
    samples, epochs, length, _ = TASKS[task]
    out = folder(task, method, seed)
    run = partial(train_task, task, method, model, str(GLUE), str(out), grid_options(samples, epochs, length, seed),
                  log=lambda m: print(m, flush=True), sources=(sources_of or sources)(method))
    if any((out / CHECKPOINT_DIR).glob("checkpoint-*")):
        try:
            return run(resume=True)
        except ConfigError as err:  # a staged method (no --resume), or the run's arguments changed since
            print(f"cannot resume {out} ({err}); training it again from the start", flush=True)
    run(overwrite=True)


def sources(method: str, folder=run_dir, tasks=TASKS) -> list[str] | None:
    """A transfer method's source adapters: the seed-42 `pfeiffer` module of every task."""
    return [str(folder(t, "pfeiffer", 42) / "module") for t in tasks] if method in TRANSFER else None


def ready(method: str, folder=run_dir, tasks=TASKS) -> bool:
    """Whether a run can start: a transfer run waits for every source adapter to be trained."""
    return all((Path(s).parent / "results.json").exists() and Path(s).is_dir() for s in sources(method, folder, tasks) or [])


def missing(runs: list[tuple[str, str, int]], folder=run_dir, tasks=TASKS) -> list[tuple[str, str, int]]:
    """The runs without results, plus any source adapter that a missing transfer run needs and that
    this checkout lacks (results.json is committed, modules are not): it is trained again, same seed."""
    todo = [r for r in runs if not (folder(*r) / "results.json").exists()]
    retrain = [(t, "pfeiffer", 42) for t in tasks if any(m in TRANSFER for _, m, _ in todo)
               and not (folder(t, "pfeiffer", 42) / "module").is_dir()]
    return list(dict.fromkeys(retrain + todo))


def run_all(todo: list[tuple[str, str, int]], jobs: int, ready=lambda run: ready(run[1]), folder=run_dir,
            script: str = __file__, wait=lambda: False) -> list[tuple[str, str, int]]:
    """Train ``todo`` in order, ``jobs`` runs at a time, each as ``script --one TASK METHOD SEED`` in its
    own process on one thread (two one-thread runs use a 2-core machine better than one two-thread
    run), its log beside its results. A run starts once ``ready(run)``; when none can start and none
    is running, ``wait()`` says whether something outside (another command) will make one ready.
    Returns the runs that failed or could never start."""
    pending, running, failed = list(todo), {}, []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while pending or running:
        while len(running) < jobs and (start := next((r for r in pending if ready(r)), None)):
            pending.remove(start)
            task, method, seed = start
            folder(task, method, seed).mkdir(parents=True, exist_ok=True)
            log = open(folder(task, method, seed).with_name(f"seed{seed}.log"), "w")
            print(f"== {task} / {method} / seed {seed} ({len(todo) - len(pending)} of {len(todo)} started)", flush=True)
            running[start] = (subprocess.Popen([sys.executable, script, "--one", task, method, str(seed)],
                                               stdout=log, stderr=subprocess.STDOUT, env=env), log)
        if not running and not wait():  # only runs whose inputs failed are left
            failed += pending
            break
        time.sleep(2 if running else 60)
        for run, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[run]
                if process.returncode:
                    failed.append(run)
                    print(f"!! {'/'.join(map(str, run))} failed (exit {process.returncode}); see its log", flush=True)
    return failed


def coverage(planned=None, folder=run_dir, tasks=TASKS) -> str:
    """One line saying how much of the planned grid (this grid's by default) the committed results cover."""
    planned = plan(list(TASKS), list(METHODS)) if planned is None else planned
    done = {r for r in planned if (folder(*r) / "results.json").exists()}
    line = f"Runs done: {len(done)} of {len(planned)} planned."
    missing = {}
    for task, method, seed in planned:
        if (task, method, seed) not in done:
            missing.setdefault(method, []).append(task if len(tasks[task][3]) == 1 else f"{task} seed {seed}")
    if missing:
        line += " Not yet run: " + "; ".join(
            f"{m} (all)" if len(v) == sum(len(t[3]) for t in tasks.values()) else f"{m} ({', '.join(v)})"
            for m, v in missing.items()) + "."
    return line + "\n"


# (claim, method, reference methods, tasks or None for all, tolerance in points for "matches")
CLAIMS = (
    ("ProPETL matches adapters at about a tenth of the storage", "proadapter", ("pfeiffer",), None, 1.0),
    ("ProPETL's LoRA matches LoRA at a fraction of the storage", "prolora", ("lora",), None, 1.0),
    # MAM's FFN part is a scaled parallel adapter; the grid's `parallel` (unscaled, r = d/2) stands in for it.
    ("MAM at least matches its parts (prefix; `parallel` for the FFN adapter)", "mam", ("prefix", "parallel"), None, 0.0),
    ("MAM's GLUE variant (prefix l = 16, scaled parallel adapter r = 16) at least matches the same parts",
     "mam_glue", ("prefix", "parallel"), None, 0.0),
    ("diff pruning at 0.5 % is close to full fine-tuning", "diffprune_short", ("full",), None, 2.0),
    ("ScaLearn beats single-task adapters on small targets", "scalearn", ("pfeiffer",), ("cb", "copa", "wsc"), 0.0),
    ("ScaLearn matches AdapterFusion with far fewer parameters", "scalearn", ("adapterfusion",), ("cb", "copa", "wsc"), 1.0),
)


def claims(report_dir: Path = REPORT, tasks: dict = TASKS) -> str:
    """Each paper claim checked on the runs (task, seed) that the method and its references all have:
    the mean over tasks of the main score x 100 (averaged over those seeds) and of the bytes per task with
    shared parts amortised (a ScaLearn task's share of its source adapters counts; see the report's footnote).
    A claim that does not hold gets the measured reasons under it (see `why_not`). A claim whose tasks
    are not among ``tasks`` is checked on those it has."""
    report = json.loads((report_dir / "report.json").read_text())
    amortised = {(cell["task"], cell["method"]): cell["bytes_amortised_mean"] for cell in report["cells"]}
    runs = {}
    for path in report["runs"]:
        result = json.loads(Path(path).read_text())
        runs[result["task"], result["method"], result["seed"]] = Run(
            100 * result["main_score"], amortised[result["task"], result["method"]], result.get("test_collapse"),
            result["test_examples"])
    lines = ["Against the papers' claims (each line over the runs, task and seed, that every method in it "
             "has: the mean over tasks of the seeds' mean score x 100; a claim holds when the method is at "
             "most the tolerance below each reference):", ""]
    for claim, method, references, claim_tasks, tolerance in CLAIMS:
        group = (method, *references)
        shared = {task: seeds for task in claim_tasks or tasks if task in tasks
                  if (seeds := [s for s in tasks[task][3] if all((task, m, s) in runs for m in group)])}
        if not shared:
            lines.append(f"- {claim}: not measured yet (no run shared by {', '.join(group)}).")
            continue
        mean = means(runs, shared, group, "score")
        size = means(runs, shared, group, "bytes")
        against = "; ".join(f"`{r}` {mean[r]:.2f} ({mean[method] - mean[r]:+.2f} points; {method} stores "
                            f"{100 * size[method] / size[r]:.1f} % of its bytes per task, shared parts amortised)" for r in references)
        holds = within(mean, method, references, tolerance)
        lines.append(f"- {claim} ({', '.join(shared)}): `{method}` {mean[method]:.2f} against {against}. "
                     f"{'Holds' if holds else 'Does not hold'} here (tolerance {tolerance:g} points).")
        if not holds:
            lines += why_not(runs, shared, method, references, tolerance)
    return "\n".join(lines) + "\n"


class Run(NamedTuple):
    score: float  # main score x 100
    bytes: float  # bytes per task, shared parts amortised
    collapse: str | None  # what every test prediction was, when they were all one
    test_examples: int


def means(runs: dict, shared: dict[str, list[int]], group, field: str) -> dict[str, float]:
    """Each method's mean over the shared tasks of its mean over the shared seeds."""
    return {m: sum(sum(getattr(runs[t, m, s], field) for s in seeds) / len(seeds) for t, seeds in shared.items())
            / len(shared) for m in group}


def within(mean: dict[str, float], method: str, references, tolerance: float) -> bool:
    """Whether the claim holds: the method at most ``tolerance`` points below every reference."""
    return all(mean[method] >= mean[r] - tolerance for r in references)


def why_not(runs: dict, shared: dict[str, list[int]], method: str, references, tolerance: float) -> list[str]:
    """Measured reasons under a claim that does not hold: the gap task by task (with each test split's
    size, so a gap on 100 examples reads as what it is) and, where a reference predicted one class for
    every test example of a task, that task named and the claim checked again without it. With several
    seeds, each seed's gap too: a gap whose sign changes from seed to seed is within the seeds' noise."""
    lines = []
    for reference in references:
        per_task = []
        for task, seeds in shared.items():
            gaps = [runs[task, method, s].score - runs[task, reference, s].score for s in seeds]
            spread = f"; by seed {min(gaps):+.2f} to {max(gaps):+.2f}" if len(gaps) > 1 else ""
            per_task.append(f"{task} {sum(gaps) / len(gaps):+.2f} ({runs[task, method, seeds[0]].test_examples:,}{spread})")
        lines.append(f"  - By task, `{method}` minus `{reference}` (test examples): {', '.join(per_task)}.")
    collapsed = {}
    for task, seeds in shared.items():
        for reference in references:
            one_class = [s for s in seeds if runs[task, reference, s].collapse]
            if one_class:
                collapsed.setdefault(task, []).append(
                    f"`{reference}`, {runs[task, reference, one_class[0]].collapse}, in {len(one_class)} of {len(seeds)} seeds")
    if collapsed:
        kept = {t: s for t, s in shared.items() if t not in collapsed}
        where = "; ".join(f"{task}: {' and '.join(who)}" for task, who in collapsed.items())
        line = (f"  - A reference predicted one class (or about one value) for every test example ({where}), so its "
                f"score there is what that prediction alone scores.")
        if kept:
            mean = means(runs, kept, (method, *references), "score")
            holds = within(mean, method, references, tolerance)
            line += (f" Without {', '.join(collapsed)}: `{method}` {mean[method]:.2f} against "
                     + "; ".join(f"`{r}` {mean[r]:.2f} ({mean[method] - mean[r]:+.2f} points)" for r in references)
                     + f", which {'holds' if holds else 'does not hold'} (tolerance {tolerance:g} points).")
        lines.append(line)
    return lines


def collapses(report_dir: Path = REPORT) -> str:
    """The report's runs whose test predictions were all one class (or one value), by task and method."""
    report = json.loads((report_dir / "report.json").read_text())
    found, unrecorded = {}, []
    for path in report["runs"]:
        result = json.loads(Path(path).read_text())
        if "test_collapse" not in result:
            unrecorded.append(f"{result['task']}/{result['method']}/seed{result['seed']}")
        elif result["test_collapse"]:
            found.setdefault((result["task"], result["test_collapse"]), []).append(f"{result['method']} ({result['seed']})")
    lines = ["One predicted class (or about one value) for every test example: " + (
        "; ".join(f"{task}, {what}: {', '.join(runs)}" for (task, what), runs in sorted(found.items())) if found else "none")
        + "."]
    if unrecorded:
        lines.append(f"Not recorded (trained before results.json had `test_collapse`): {', '.join(unrecorded)}.")
    return "\n".join(lines) + "\n"


def readme_block() -> str:
    return "\n" + coverage() + "\n" + (REPORT / "report.md").read_text() + "\n" + claims() + "\n" + collapses()


def replace_readme_block(markers: tuple[str, str], block: str) -> None:
    """Put ``block`` into the README between the two markers, in place of what was there."""
    text = README.read_text()
    start, end = text.index(markers[0]) + len(markers[0]), text.index(markers[1])
    README.write_text(text[:start] + block + text[end:])


def grid_parser(doc: str, report_only_help: str) -> argparse.ArgumentParser:
    """The arguments every grid script takes: --jobs, --report-only and the hidden one-run --one."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, one thread each (default 1)")
    parser.add_argument("--report-only", action="store_true", help=report_only_help)
    parser.add_argument("--one", nargs=3, metavar=("TASK", "METHOD", "SEED"), help=argparse.SUPPRESS)
    return parser


def exit_if_failed(failed: list[tuple[str, str, int]]) -> None:
    """The report covers the runs that finished; say which did not, and exit non-zero."""
    if failed:
        sys.exit(f"{len(failed)} runs failed: {', '.join('/'.join(map(str, r)) for r in failed)} (see their logs)")


def main():
    parser = grid_parser(__doc__, "regenerate the table, plot and README only")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    os.chdir(ROOT.parent)  # the paths above are relative to the repository root
    if args.one:
        return train(args.one[0], args.one[1], int(args.one[2]))
    failed = [] if args.report_only else run_all(missing(plan(args.tasks, args.methods)), max(1, args.jobs))
    build_report([RUNS], REPORT, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    replace_readme_block(MARKERS, readme_block())
    print(readme_block())
    exit_if_failed(failed)


if __name__ == "__main__":
    main()
