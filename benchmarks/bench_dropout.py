"""Dropout on the CPU: torch's sampler against unipetl.dropout's, forward and backward, on the tensors a
MiniLM training step drops (batch 16 x 128: attention probabilities 16 x 12 x 128 x 128, hidden states
16 x 128 x 384). The two run interleaved, call by call; each cell is the median of --calls timings.

    python benchmarks/bench_dropout.py [--calls 40] [--output benchmarks/results/dropout_cpu]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unipetl import dropout as fast
from unipetl.bench import machine_description

SHAPES = {"attention probabilities": (16, 12, 128, 128), "hidden states": (16, 128, 384)}
SAMPLERS = {"torch": lambda x, p: F.dropout(x, p, True), "unipetl": fast.dropout}


def time_call(sampler, x: torch.Tensor, p: float) -> tuple[float, float]:
    """Seconds of one forward and of its backward."""
    start = time.perf_counter()
    out = sampler(x, p)
    middle = time.perf_counter()
    out.backward(torch.ones_like(out))
    return middle - start, time.perf_counter() - middle


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--output", default="benchmarks/results/dropout_cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for shape_name, shape in SHAPES.items():
        x = torch.randn(shape, requires_grad=True)
        timings = {name: ([], []) for name in SAMPLERS}
        for call in range(args.calls + 3):  # 3 warm-up calls
            for name, sampler in SAMPLERS.items():
                forward, backward = time_call(sampler, x, args.p)
                if call >= 3:
                    timings[name][0].append(forward)
                    timings[name][1].append(backward)
            x.grad = None
        medians = {name: (statistics.median(f), statistics.median(b)) for name, (f, b) in timings.items()}
        for name, (forward, backward) in medians.items():
            rows.append({"tensor": shape_name, "shape": list(shape), "sampler": name, "forward_ms": forward * 1e3,
                         "backward_ms": backward * 1e3,
                         "total_ratio_to_torch": (forward + backward) / sum(medians["torch"])})
    result = {"machine": machine_description(), "p": args.p, "calls": args.calls,
              "command": "python " + " ".join(sys.argv), "rows": rows}
    lines = [f"Command: `{result['command']}`", "", f"Machine: {result['machine']}  ",
             f"Dropout p = {args.p}; forward and backward (all-ones gradient) of each sampler, interleaved call by call; "
             f"medians of {args.calls} calls after 3 warm-up.", "",
             "| tensor | shape | sampler | forward (ms) | backward (ms) | forward + backward / torch |",
             "|---|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['tensor']} | {' x '.join(map(str, row['shape']))} | {row['sampler']} | {row['forward_ms']:.2f} "
                     f"| {row['backward_ms']:.2f} | {row['total_ratio_to_torch']:.2f} |")
    text = "\n".join(lines) + "\n"
    Path(args.output + ".json").write_text(json.dumps(result, indent=1))
    Path(args.output + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
