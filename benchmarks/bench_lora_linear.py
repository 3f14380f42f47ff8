"""Forward + backward of one frozen linear with a LoRA update, at MiniLM's attention size: the linear
alone, linear(x) + LowRank(x) as two autograd graphs (what autograd alone gives), and LowRank.add_to
(the fused function, unipetl.forms._FrozenLinearPlusLowRank). Also the thin products' layouts behind it.

    python benchmarks/bench_lora_linear.py [--calls 200] [--output benchmarks/results/lora_linear_cpu]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from unipetl.bench import machine_description
from unipetl.forms import LowRank, OwnedParams, lowrank_tensors


def median_microseconds(fn, calls: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--output", default="benchmarks/results/lora_linear_cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    d, r = args.hidden, args.rank
    linear = torch.nn.Linear(d, d).requires_grad_(False)
    tensors = lowrank_tensors(d, r, d, "bert")
    lora = LowRank(OwnedParams(tensors), rank=r, alpha=2 * r)
    x = torch.randn(args.batch_size, args.seq_len, d, requires_grad=True)
    upstream = torch.randn(args.batch_size, args.seq_len, d)
    tokens, thin = x.detach().reshape(-1, d), torch.randn(args.batch_size * args.seq_len, r)
    factor_rd, factor_dr = torch.randn(r, d), torch.randn(d, r)

    steps = {"frozen linear alone": lambda: linear(x).backward(upstream),
             "linear(x) + LowRank(x) (autograd)": lambda: (linear(x) + lora(x)).backward(upstream),
             "LowRank.add_to (fused)": lambda: lora.add_to(linear, x).backward(upstream)}
    products = {"(N x d) @ (r x d)^T  [fused: x A^T, grad B column-major]": lambda: tokens @ factor_rd.t(),
                "(N x d) @ (d x r)    [autograd: grad @ B]": lambda: tokens @ factor_dr,
                "(N x r)^T @ (N x d)  [fused: grad A, grad B^T]": lambda: thin.t() @ tokens,
                "(N x d)^T @ (N x r)  [autograd: grad^T @ hidden]": lambda: tokens.t() @ thin}
    # Interleaved rounds, so that the machine's drift falls on every variant alike.
    samples = {name: [] for name in (*steps, *products)}
    for _ in range(5):
        for name, fn in (*steps.items(), *products.items()):
            samples[name].append(median_microseconds(fn, args.calls // 5))
    result = {"machine": machine_description(), "shape": [args.batch_size, args.seq_len, d], "rank": r,
              "median_microseconds": {name: statistics.median(values) for name, values in samples.items()}}
    times = result["median_microseconds"]
    base = times["frozen linear alone"]
    lines = [f"Command: `python benchmarks/bench_lora_linear.py --calls {args.calls}`", "",
             f"Machine: {result['machine']}  ",
             f"x: {args.batch_size} x {args.seq_len} x {d}, rank {r}; median of 5 interleaved rounds of "
             f"{args.calls // 5} calls each.", "",
             "| forward + backward | microseconds | LoRA's extra over the linear alone |", "|---|---:|---:|"]
    lines += [f"| {name} | {times[name]:.0f} | {times[name] - base:+.0f} |" for name in steps]
    lines += ["", "| thin product (N = tokens) | microseconds |", "|---|---:|"]
    lines += [f"| {name} | {times[name]:.0f} |" for name in products]
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.output + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
