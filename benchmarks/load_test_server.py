"""A bounded load test of `unipetl serve` on 127.0.0.1: concurrent clients, mixed tasks, every answer checked.

Starts `unipetl serve` with K task modules of several methods on MiniLM (built by bench_serving.py's
builder into --workdir), then runs --clients threads for --seconds. Each request is one record or a
list of up to four records drawn from a fixed pool that mixes the tasks; every answer is compared with
what an in-process `TaskBank` gave for the same record before the server started (task name, predicted
label and probabilities to 1e-5), so a lost answer or one for the wrong task is counted. Reports
requests served, rows, latency percentiles and errors.

    python benchmarks/load_test_server.py [--clients 8] [--seconds 30] [--output benchmarks/results/serving_load_cpu]
"""

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import backbone, build_modules  # noqa: E402  (the serving benchmark's task modules)

from unipetl.bench import machine_description  # noqa: E402
from unipetl.serving import TaskBank  # noqa: E402

METHODS = {"lora": 4, "pfeiffer": 2, "bitfit": 2, "prefix": 2, "proadapter": 2, "diffprune": 2}  # method -> tasks
SENTENCES = ["a gripping, beautifully acted film", "dull and far too long", "an honest, funny script",
             "the plot never comes together", "one of the year's best", "I want those two hours back",
             "a quiet film that stays with you", "noisy, empty and loud"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body, timeout: float = 60.0):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def same(answer: dict, expected: dict) -> bool:
    if answer.get("task") != expected["task"] or answer.get("prediction") != expected["prediction"]:
        return False
    return all(abs(answer["probabilities"][k] - v) <= 1e-5 for k, v in expected["probabilities"].items())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workdir", default="/tmp/unipetl_bench_serving")
    parser.add_argument("--output", default="benchmarks/results/serving_load_cpu")
    args = parser.parse_args()
    model = backbone()
    modules = {f"{method}{i}": path for method, count in METHODS.items()
               for i, path in enumerate(build_modules(method, count, Path(args.workdir), model)[:count])}
    del model
    pool = [{"task": name, "text": SENTENCES[i % len(SENTENCES)]} for i, name in
            enumerate(n for n in modules for _ in range(3))]
    bank = TaskBank()
    for name, path in modules.items():
        bank.add(path, name)
    expected = bank.predict(pool)
    del bank
    port = free_port()
    command = [sys.executable, "-m", "unipetl.cli", "serve", "--port", str(port), "--max-batch-size", "32",
               "--max-wait-ms", "5", "--modules", *[f"{n}={p}" for n, p in modules.items()]]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
        latencies, rows, wrong, errors, lock = [], [0], [0], [], threading.Lock()
        stop = time.time() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.time() < stop:
                picks = rng.sample(range(len(pool)), rng.randint(1, 4))
                body = [pool[i] for i in picks] if len(picks) > 1 else pool[picks[0]]
                start = time.perf_counter()
                try:
                    status, answer = post(port, body)
                except Exception as err:  # every failure is counted, none stops the test
                    with lock:
                        errors.append(repr(err)[:200])
                    continue
                elapsed = time.perf_counter() - start
                answers = answer["predictions"] if len(picks) > 1 else [answer]
                bad = status != 200 or len(answers) != len(picks) or not all(
                    same(a, expected[i]) for a, i in zip(answers, picks))
                with lock:
                    latencies.append(elapsed)
                    rows[0] += len(picks)
                    wrong[0] += bad

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.terminate()
        server.wait(30)
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    batches = [line for line in metrics.splitlines() if line.startswith("unipetl_batch_rows_count")]
    batch_rows = [line for line in metrics.splitlines() if line.startswith("unipetl_batch_rows_sum")]
    result = {"command": "python benchmarks/load_test_server.py " + " ".join(sys.argv[1:]), "machine": machine_description(),
              "clients": args.clients, "seconds": args.seconds, "tasks": len(modules),
              "methods": METHODS, "requests_served": len(latencies), "rows_served": rows[0],
              "wrong_or_incomplete_answers": wrong[0], "errors": len(errors), "error_samples": errors[:5],
              "latency_ms": {"p50": percentile(0.50), "p90": percentile(0.90), "p99": percentile(0.99),
                             "mean": statistics.mean(latencies) * 1000 if latencies else None},
              "model_batches": float(batches[0].split()[-1]) if batches else None,
              "model_batch_rows": float(batch_rows[0].split()[-1]) if batch_rows else None}
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Command: `{result['command'].strip()}`", "", f"Machine: {result['machine']}  ",
             f"`unipetl serve` on 127.0.0.1 with {len(modules)} task modules on MiniLM "
             f"({', '.join(f'{n} x{c}' for n, c in METHODS.items())}), max batch 32 rows, max wait 5 ms; "
             f"{args.clients} clients for {args.seconds:g} s, each request 1-4 records of mixed tasks, every answer "
             "checked against an in-process TaskBank.", "",
             "| requests | rows | wrong or incomplete answers | errors | p50 (ms) | p90 (ms) | p99 (ms) | model batches | rows per batch |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {len(latencies)} | {rows[0]} | {wrong[0]} | {len(errors)} | {result['latency_ms']['p50']:.0f} | "
             f"{result['latency_ms']['p90']:.0f} | {result['latency_ms']['p99']:.0f} | {result['model_batches'] or 0:.0f} | "
             f"{(result['model_batch_rows'] or 0) / max(1, result['model_batches'] or 1):.1f} |"]
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
