"""One command for a short, rare GPU window: every measurement the project wants from a GPU, each part
within its own share of a fixed time budget, results on disk after every part.

    PYTHONPATH=src python3 benchmarks/gpu_suite.py --assets .gpu_assets --out OUT [--budget-seconds 600]
    python benchmarks/gpu_suite.py --dry-run --out /tmp/gs    # every part on the CPU with tiny models

Parts (PARTS, in order; a part is one function registered with @part):
  1. step_time: paired training step time of every preset and PEFT's LoRA, prefix and prompt tuning
     against full fine-tuning (ours and transformers' plain one), fp32 and bf16 autocast, peak CUDA memory.
  2. inference: no-grad latency (batch 1) and throughput per preset, unmerged, and merged where merge()
     folds the whole method into the weights (LoRA, BitFit, diff pruning, ProLoRA).
  3. mixed_task_serving: a TaskBank serving batches whose rows belong to K = 1 and 16 tasks (and 64 for LoRA
     and diff pruning, the two goals of issue 22 the CPU cannot settle) against one task's own model, per
     method: throughput, the largest logit difference to each row's task alone, bytes held; for LoRA also
     PEFT's adapter_names mixed batch over the same K adapters.
  4. training: SST-2, a seeded 4,000-example subset of train, 1 epoch, official dev as test, with
     full, lora, pfeiffer, proadapter and diffprune (at the README's short-budget rates).

The timing parts run on MPNet-base: the pretrained folder given with --model, else MPNet-base with
random weights built from its sizes here (timing does not depend on weight values). Training needs
pretrained weights: --train-model, else --model, else the MiniLM in --assets (benchmarks/gpu_prepare.py);
without any the part is skipped. OUT/gpu_suite.json and OUT/gpu_suite.md are rewritten (atomically)
after every measured row, so a run killed midway keeps what it finished.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts from here: imports and model preparation spend it too

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from functools import cached_property  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
try:
    import unipetl  # noqa: F401
except ImportError:  # run without PYTHONPATH=src or an install: the checkout's own source
    sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import transformers  # noqa: E402

from unipetl.bench import (PLAIN_FULL, MethodSpec, build, drop_unavailable, interleaved_step_seconds,  # noqa: E402
                           machine_description, random_batch, standard_specs, timed_forward, timed_step)
from unipetl.presets import list_presets  # noqa: E402

JSON_NAME, MARKDOWN_NAME = "gpu_suite.json", "gpu_suite.md"
RANDOM_MPNET = "random-initialised MPNet-base (timing only)"
TRAIN_PRESETS = ("full", "lora", "pfeiffer", "proadapter", "diffprune")
# README, "Diff pruning": the preset keeps the paper's rates, meant for long runs; on a short budget the
# gates close within an epoch at those, so short runs use these.
SHORT_BUDGET_RATES = {"diffprune": {"learning_rate": 1e-4, "overrides": {
    "gate_learning_rate": 0.01, "projection_gates": "expected", "fixmask_learning_rate": 1e-3}}}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # None: no autocast; bf16: autocast, weights stay fp32
FINISH_RESERVE_S = 5.0  # kept back from the parts for writing the last results
# A part stops itself between measurements once its budget is spent; one measurement that never returns
# is interrupted this long after the budget (or a quarter of the budget, if longer).
HARD_LIMIT_GRACE_S = 5.0

# all-mpnet-base-v2's sizes: the model the timing parts stand for when no pretrained folder is given.
MPNET_BASE = dict(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=514, relative_attention_num_buckets=32,
                  layer_norm_eps=1e-5, hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2)
# Dry run: the same architecture, tiny. Position embeddings stay at 514: prompt tuning prepends 200.
TINY_MPNET = {**MPNET_BASE, "vocab_size": 1200, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64}


@dataclass(frozen=True)
class Sizes:
    batch_size: int  # step time: batch x seq_len random tokens
    seq_len: int
    warmup: int  # untimed turns per dtype
    steps: int  # timed turns per round
    rounds: int  # a ratio is the median over rounds of the round's median steps
    throughput_batch: int  # inference: latency at batch 1, throughput at this batch
    inference_warmup: int
    inference_repeats: int
    train_samples: int  # training part: SST-2 rows, epochs, batch, length
    train_epochs: float
    train_batch_size: int
    train_max_length: int


GPU_SIZES = Sizes(batch_size=32, seq_len=128, warmup=3, steps=8, rounds=3, throughput_batch=64, inference_warmup=3,
                  inference_repeats=10, train_samples=4000, train_epochs=1.0, train_batch_size=16, train_max_length=128)
DRY_RUN_SIZES = Sizes(batch_size=2, seq_len=16, warmup=1, steps=2, rounds=2, throughput_batch=4, inference_warmup=1,
                      inference_repeats=2, train_samples=64, train_epochs=1.0, train_batch_size=8, train_max_length=32)


# ----------------------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class Part:
    name: str
    title: str
    share: float  # of the suite's budget; time a part leaves unused goes to the later parts
    run: Callable  # run(suite, record): fills record (a dict in the results) as it measures
    render: Callable | None = None  # record -> Markdown lines; None: the rows as a plain table


PARTS: list[Part] = []


def part(name: str, title: str, share: float, render: Callable | None = None):
    """Register the decorated function as the next part of the suite."""
    def register(function):
        PARTS.append(Part(name, title, share, function, render))
        return function
    return register


class PartOverrun(BaseException):
    """The hard limit of a part passed (a measurement that never returned). A BaseException, so that
    the per-row `except Exception` that records a failed row and moves on does not swallow it."""


class Clock:
    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def expired(self, reserve_s: float = 0.0) -> bool:
        """Whether the budget is spent, or all of it but ``reserve_s``."""
        return self.elapsed() >= self.budget_s - reserve_s


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:500]


def release_memory(device: torch.device) -> None:
    """Free what the last row's models left, so that the next row's peak memory is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def hard_limit(seconds: float):
    """Raise PartOverrun in this (the main) thread after ``seconds``, whatever the part is doing."""
    def on_alarm(signum, frame):
        raise PartOverrun(f"stopped at the part's hard limit ({seconds:.0f} s)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------- the suite
class Suite:
    """The run's settings, its results and the clock of the part running now."""

    def __init__(self, args, sizes: Sizes, device: torch.device, parts: list[Part]):
        self.args = args
        self.sizes = sizes
        self.device = device
        self.parts = parts
        self.out = Path(args.out)
        self.deadline = STARTED + args.budget_seconds
        self.scratch = Path(tempfile.mkdtemp(prefix="unipetl-gpu-suite-"))  # models and runs; removed at the end
        self.presets = presets_with_full(args.presets)
        self.clock = Clock(0.0)
        self.results = {"suite": "unipetl GPU suite", "header": self.header(), "parts": {}, "finished": False}

    # --- inputs ---------------------------------------------------------------------------
    @cached_property
    def timing_model(self) -> str:
        """The folder the timing parts build from: --model, or MPNet-base's architecture with random weights."""
        if self.args.model:
            return self.args.model
        folder = self.scratch / "random-mpnet"
        log(f"building {'a tiny' if self.args.dry_run else 'an'} MPNet with random weights in {folder}")
        torch.manual_seed(0)
        config = transformers.MPNetConfig(**(TINY_MPNET if self.args.dry_run else MPNET_BASE))
        transformers.MPNetModel(config).save_pretrained(folder)
        return str(folder)

    @cached_property
    def training_inputs(self) -> tuple[str | None, str | None, str]:
        """(model folder, GLUE-layout data folder, why not) for the training part."""
        args = self.args
        assets = read_assets(args.assets) if args.assets else {}
        model = args.train_model or args.model or assets.get("model")
        data = args.data_dir or assets.get("data_dir")
        if args.dry_run and not model:
            model = write_tiny_bert(self.scratch / "tiny-bert", synthetic_words())
        if args.dry_run and not data:
            data = write_synthetic_sst2(self.scratch / "glue", self.sizes.train_samples, 32)
        if not model:
            return None, data, ("no pretrained model: give --model (MPNet-base), --train-model or --assets "
                                "(benchmarks/gpu_prepare.py); random weights cannot show accuracy")
        if not data or not Path(data, "SST-2", "train.tsv").is_file():
            return model, None, f"no SST-2 data: give --data-dir or --assets with SST-2/train.tsv and dev.tsv (got {data})"
        return model, data, ""

    def header(self) -> dict:
        args = self.args
        cuda = self.device.type == "cuda"
        try:
            import peft
            peft_version = peft.__version__
        except ImportError:
            peft_version = None
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", *sys.argv]),
            "device": torch.cuda.get_device_name(self.device) if cuda else f"cpu ({machine_description()})",
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "peft": peft_version, "python": platform.python_version(), "unipetl_commit": git_commit(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
            "dry_run": args.dry_run, "budget_seconds": args.budget_seconds, "cpu_threads": torch.get_num_threads(),
            "timing_model": args.model or (RANDOM_MPNET if not args.dry_run else "tiny random-initialised MPNet (dry run)"),
            "sizes": asdict(self.sizes),
        }

    # --- time -----------------------------------------------------------------------------
    def part_budget(self, part: Part, later: list[Part]) -> float:
        """The part's share of the time left, among itself and the parts after it."""
        if part.name in self.args.part_budget:
            return self.args.part_budget[part.name]
        left = self.deadline - time.monotonic() - FINISH_RESERVE_S
        shares = part.share + sum(p.share for p in later)
        return max(0.0, left * part.share / shares) if shares > 0 else 0.0

    def within_budget(self, items, record: dict, label=lambda item: getattr(item, "label", str(item)),
                      reserve_s: float = 0.0):
        """The items, one by one, while the part's budget lasts; the rest are recorded as cut. The item
        being measured is in record["in_progress"] until the next is asked for, so that a hard stop
        shows what it interrupted."""
        items = list(items)
        for index, item in enumerate(items):
            if self.clock.expired(reserve_s):
                record.pop("in_progress", None)
                record["cut"] = {"reason": f"the part's budget of {self.clock.budget_s:.1f} s was spent",
                                 "left_out": [label(i) for i in items[index:]]}
                log(f"cut: {len(items) - index} left out")
                return
            record["in_progress"] = label(item)
            yield item
        record.pop("in_progress", None)

    # --- running --------------------------------------------------------------------------
    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        selected = [p for p in self.parts if not self.args.parts or p.name in self.args.parts]
        try:
            for index, current in enumerate(selected):
                self.run_part(current, selected[index + 1:])
            self.results["finished"] = True
            self.results["seconds"] = round(time.monotonic() - STARTED, 1)
            self.save()
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return self.results

    def run_part(self, current: Part, later: list[Part]) -> None:
        budget = self.part_budget(current, later)
        record = {"title": current.title, "status": "running", "budget_seconds": round(budget, 1)}
        self.results["parts"][current.name] = record
        self.clock = Clock(budget)
        # Soft budget: parts stop between measurements. Hard limit: a measurement that overruns by far.
        hard = min(budget + max(HARD_LIMIT_GRACE_S, 0.25 * budget), max(1.0, self.deadline - time.monotonic()))
        log(f"part {current.name}: budget {budget:.1f} s (hard limit {hard:.1f} s)")
        self.save()
        try:
            with hard_limit(hard):
                current.run(self, record)
            if record["status"] == "running":
                record["status"] = "cut" if "cut" in record else "ok"
        except PartOverrun as err:
            record["status"] = "cut"
            record["cut"] = {"reason": str(err) + (f" while measuring {record.pop('in_progress')}"
                                                   if "in_progress" in record else "")}
        except Exception as err:  # the part failed: record why, keep what it measured, go on
            record["status"] = "failed"
            record["error"] = error_text(err) + (f" (while measuring {record.pop('in_progress')})"
                                                 if "in_progress" in record else "")
            record["traceback"] = traceback.format_exc()[-3000:]
            log(f"part {current.name} failed: {record['error']}")
        finally:
            record["seconds"] = round(self.clock.elapsed(), 1)
            release_memory(self.device)
            self.save()
        log(f"part {current.name}: {record['status']} in {record['seconds']} s")

    def save(self) -> None:
        write_atomically(self.out / JSON_NAME, json.dumps(self.results, indent=1) + "\n")
        write_atomically(self.out / MARKDOWN_NAME, to_markdown(self.results, self.parts))


def presets_with_full(presets: list[str] | None) -> list[str]:
    """Full fine-tuning first (every ratio is to it), then the presets asked for (default: all)."""
    names = list(dict.fromkeys(presets or list_presets()))
    unknown = [n for n in names if n not in list_presets()]
    if unknown:
        raise SystemExit(f"gpu_suite.py: unknown preset(s) {unknown}; presets: {list_presets()}")
    return ["full", *[n for n in names if n != "full"]]


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------------- 1. step time
@dataclass
class Row:
    """One row's model, built on the device, with its optimizer (bench.build) and its peak memory."""
    spec: MethodSpec
    built: tuple  # (model, optimizer, params, extra_loss, vocab size)
    peak_memory_mb: dict  # dtype name -> MB, or None off CUDA

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.built[2])


def build_row(spec: MethodSpec, suite: Suite, batch: dict) -> Row:
    """Build the row and take its peak training memory in each dtype: what its own model copy,
    gradients, optimizer state and activations hold at the top of a step (models already resident,
    such as the references, are not counted)."""
    cuda = suite.device.type == "cuda"
    before = torch.cuda.memory_allocated(suite.device) if cuda else 0
    built = build(spec, suite.timing_model, suite.device)
    model, optimizer, _, extra_loss, _ = built
    timed_step(model, optimizer, extra_loss, batch)  # the optimizer's state exists from here on
    peaks = {}
    for name, dtype in DTYPES.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats(suite.device)
        timed_step(model, optimizer, extra_loss, batch, dtype)
        peaks[name] = round((torch.cuda.max_memory_allocated(suite.device) - before) / 2**20, 1) if cuda else None
    return Row(spec, built, peaks)


def paired_rounds(rows: dict[str, Row], batch: dict, dtype, sizes: Sizes) -> list[dict[str, float]]:
    """Every round's median step seconds per label, the rows stepped in turn (bench.interleaved_step_seconds)."""
    built = {label: row.built for label, row in rows.items()}
    interleaved_step_seconds(built, batch, 0, sizes.warmup, dtype)
    return [{label: statistics.median(seconds) for label, seconds in
             interleaved_step_seconds(built, batch, sizes.steps, 0, dtype).items()} for _ in range(sizes.rounds)]


def step_time_row(row: Row, dtype_name: str, rounds: list[dict[str, float]], references: list[str]) -> dict:
    label = row.spec.label
    ratios = {}
    for ref in references:
        per_round = [r[label] / r[ref] for r in rounds]
        ratios[ref] = {"median": round(statistics.median(per_round), 4), "per_round": [round(v, 4) for v in per_round]}
    return {"label": label, "library": row.spec.library, "method": row.spec.method, "dtype": dtype_name,
            "trainable_params": row.trainable_params,
            "step_seconds": round(statistics.median(r[label] for r in rounds), 5),
            "ratio_to_full": ratios["full"]["median"], "ratio_to_plain_full": ratios[PLAIN_FULL]["median"],
            "ratios": ratios, "peak_memory_mb": row.peak_memory_mb[dtype_name]}


def error_rows(spec: MethodSpec, dtypes, err: BaseException) -> list[dict]:
    return [{"label": spec.label, "library": spec.library, "method": spec.method, "dtype": name,
             "error": error_text(err)} for name in dtypes]


def render_step_time(record: dict) -> list[str]:
    lines = []
    for dtype_name in DTYPES:
        rows = [r for r in record.get("rows", []) if r["dtype"] == dtype_name]
        if not rows:
            continue
        lines += ["", f"**{dtype_name}**" + (" (autocast; weights fp32)" if dtype_name != "fp32" else ""), "",
                  "| method | library | trainable params | step (ms) | step / full | step / plain full "
                  "| peak memory (MB) | ratio to full per round |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['label']} | {r['library']} | | failed: {r['error']} | | | | |")
                continue
            memory = f"{r['peak_memory_mb']:,.0f}" if r["peak_memory_mb"] is not None else "–"
            lines.append(f"| {r['label']} | {r['library']} | {r['trainable_params']:,} | {1000 * r['step_seconds']:.2f} | "
                         f"{r['ratio_to_full']:.3f} | {r['ratio_to_plain_full']:.3f} | {memory} | "
                         f"{', '.join(f'{v:.3f}' for v in r['ratios']['full']['per_round'])} |")
    return lines


@part("step_time", "Training step time against full fine-tuning (paired, same process)", 0.38, render_step_time)
def step_time(suite: Suite, record: dict) -> None:
    """Each row trains side by side with our `full` and transformers' plain full fine-tuning, one step of
    each in turn (the order reversed every other turn), on one random batch; every ratio is the median
    over rounds of one round's median step over the reference's."""
    sizes = suite.sizes
    specs, notes = drop_unavailable(standard_specs(suite.presets, with_peft=True))
    references = specs[:2]  # full and PLAIN_FULL (standard_specs puts them first)
    record.update(model=suite.results["header"]["timing_model"], batch_size=sizes.batch_size, seq_len=sizes.seq_len,
                  warmup=sizes.warmup, steps=sizes.steps, rounds=sizes.rounds, references=[r.label for r in references],
                  notes=notes, memory=("peak torch.cuda.max_memory_allocated during a step, minus what was allocated "
                                       "before the row was built: its model, gradients, optimizer state, activations"),
                  rows=[])
    batch = random_batch(transformers.AutoConfig.from_pretrained(suite.timing_model).vocab_size, sizes.batch_size,
                         sizes.seq_len, suite.device)
    reference_rows: dict[str, Row] = {}
    for spec in suite.within_budget(specs, record):
        if spec in references:  # built first and kept: every later row steps beside them
            reference_rows[spec.label] = build_row(spec, suite, batch)
            if len(reference_rows) == len(references):
                record["rows"] += measure_references(reference_rows, suite, batch)
        else:
            record["rows"] += measure_against_references(spec, reference_rows, suite, batch)
        suite.save()


def measure_references(references: dict[str, Row], suite: Suite, batch: dict) -> list[dict]:
    """The references stepped against each other: their own rows (full's ratio to itself is 1)."""
    rows = []
    for dtype_name, dtype in DTYPES.items():
        rounds = paired_rounds(references, batch, dtype, suite.sizes)
        rows += [step_time_row(row, dtype_name, rounds, list(references)) for row in references.values()]
    return rows


def measure_against_references(spec: MethodSpec, references: dict[str, Row], suite: Suite, batch: dict) -> list[dict]:
    try:
        row = build_row(spec, suite, batch)
    except Exception as err:  # a row that cannot train here (PEFT's prefix tuning on MPNet, say)
        log(f"{spec.label}: FAILED {error_text(err)}")
        return error_rows(spec, DTYPES, err)
    rows = []
    for dtype_name, dtype in DTYPES.items():
        try:
            rounds = paired_rounds({spec.label: row, **references}, batch, dtype, suite.sizes)
            rows.append(step_time_row(row, dtype_name, rounds, list(references)))
            log(f"{spec.label} {dtype_name}: {1000 * rows[-1]['step_seconds']:.2f} ms/step, "
                f"{rows[-1]['ratio_to_full']:.3f} of full, peak {rows[-1]['peak_memory_mb']} MB")
        except Exception as err:
            log(f"{spec.label} {dtype_name}: FAILED {error_text(err)}")
            rows += error_rows(spec, [dtype_name], err)
    del row
    release_memory(suite.device)
    return rows


# ----------------------------------------------------------------------------------------- 2. inference
def left_attached(petl) -> list[str]:
    """What of the method still runs in the forward after merge(): wrapped linears, Pfeiffer layer norms,
    prefix attention, a prompt or a diff. Empty where merge() folded the whole method into the weights."""
    from unipetl.attention import PREFIX_ATTR
    from unipetl.insertion import LinearWithChanges, PfeifferLayerNorm

    left = [name for name, module in petl.model.named_modules()
            if isinstance(module, (LinearWithChanges, PfeifferLayerNorm)) or hasattr(module, PREFIX_ATTR)]
    return left + [key for key in ("prompt", "diff") if key in petl.methods]


def perturb_trainable(model, scale: float = 0.02) -> None:
    """Move every trained value off its initialisation (LoRA's B and BitFit's deltas start at zero), so
    that merging has something to fold and the merged logits can be checked against the unmerged."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn_like(param))


def inference_timings(model, inputs_one: dict, inputs_many: dict, sizes: Sizes) -> dict[str, dict]:
    """dtype name -> latency of a batch of one and throughput of a full batch (medians over repeats)."""
    out = {}
    for dtype_name, dtype in DTYPES.items():
        for _ in range(sizes.inference_warmup):
            timed_forward(model, inputs_one, dtype)
            timed_forward(model, inputs_many, dtype)
        latency = statistics.median(timed_forward(model, inputs_one, dtype) for _ in range(sizes.inference_repeats))
        many = statistics.median(timed_forward(model, inputs_many, dtype) for _ in range(sizes.inference_repeats))
        out[dtype_name] = {"latency_ms": round(1000 * latency, 3),
                           "throughput_per_s": round(len(inputs_many["input_ids"]) / many, 1)}
    return out


def inference_rows(preset: str, suite: Suite, inputs_one: dict, inputs_many: dict) -> list[dict]:
    # Diff pruning is served as trained: projected to its density, the kept entries only.
    spec = MethodSpec(preset, "unipetl", preset, stage="fixed_mask" if preset == "diffprune" else "")
    model = build(spec, suite.timing_model, suite.device)[0]
    perturb_trainable(model)
    model.eval()
    rows = [{"label": preset, "merged": False, "dtype": d, **t}
            for d, t in inference_timings(model, inputs_one, inputs_many, suite.sizes).items()]
    if preset == "full":  # nothing to merge: the reference
        return rows
    with torch.no_grad():
        unmerged_logits = model(**inputs_many).logits
    model.merge()
    left = left_attached(model)
    if left:
        for row in rows:
            row["merge"] = f"not supported: {len(left)} part(s) stay attached (e.g. {left[0]})"
        return rows
    with torch.no_grad():
        change = (model(**inputs_many).logits - unmerged_logits).abs().max().item()
    for row in rows:
        row["merge"] = "supported"
    return rows + [{"label": preset, "merged": True, "dtype": d, **t, "max_abs_logit_change": change}
                   for d, t in inference_timings(model, inputs_one, inputs_many, suite.sizes).items()]


def add_inference_ratios(rows: list[dict], full_rows: list[dict]) -> None:
    full = {r["dtype"]: r for r in full_rows if "error" not in r}
    for row in rows:
        if "error" not in row and row["dtype"] in full:
            row["latency_ratio_to_full"] = round(row["latency_ms"] / full[row["dtype"]]["latency_ms"], 4)
            row["throughput_ratio_to_full"] = round(row["throughput_per_s"] / full[row["dtype"]]["throughput_per_s"], 4)


def render_inference(record: dict) -> list[str]:
    lines = ["", "| method | merged | dtype | latency, batch 1 (ms) | latency / full | throughput (examples/s) "
                 "| throughput / full | max abs logit change when merged |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in record.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['label']} | | {r.get('dtype', '')} | failed: {r['error']} | | | | |")
            continue
        merged = "yes" if r["merged"] else "no"
        change = f"{r['max_abs_logit_change']:.2e}" if "max_abs_logit_change" in r else ""
        lines.append(f"| {r['label']} | {merged} | {r['dtype']} | {r['latency_ms']:.3f} | {r.get('latency_ratio_to_full', float('nan')):.3f} "
                     f"| {r['throughput_per_s']:,.0f} | {r.get('throughput_ratio_to_full', float('nan')):.3f} | {change} |")
    return lines


@part("inference", "Inference latency and throughput (no grad, eval mode), unmerged and merged", 0.13, render_inference)
def inference(suite: Suite, record: dict) -> None:
    sizes = suite.sizes
    record.update(model=suite.results["header"]["timing_model"], seq_len=sizes.seq_len, latency_batch=1,
                  throughput_batch=sizes.throughput_batch, warmup=sizes.inference_warmup, repeats=sizes.inference_repeats,
                  merged=("merge() folds LoRA, BitFit and a diff into the weights; a merged row exists where "
                          "nothing of the method is left in the forward"), rows=[])
    vocab = transformers.AutoConfig.from_pretrained(suite.timing_model).vocab_size
    many = {k: v for k, v in random_batch(vocab, sizes.throughput_batch, sizes.seq_len, suite.device).items() if k != "labels"}
    one = {k: v[:1] for k, v in many.items()}
    full_rows: list[dict] = []
    for preset in suite.within_budget(suite.presets, record):
        try:
            rows = inference_rows(preset, suite, one, many)
        except Exception as err:
            log(f"inference {preset}: FAILED {error_text(err)}")
            rows = [{"label": preset, "merged": False, "dtype": d, "error": error_text(err)} for d in DTYPES]
        if preset == "full":
            full_rows = rows
        add_inference_ratios(rows, full_rows)
        record["rows"] += rows
        for r in rows:
            if "error" not in r:
                log(f"inference {preset}{' merged' if r['merged'] else ''} {r['dtype']}: {r['latency_ms']:.2f} ms, "
                    f"{r['throughput_per_s']:,.0f}/s")
        release_memory(suite.device)
        suite.save()


# ----------------------------------------------------------------------------------------- 3. mixed-task serving
MIXED_METHODS = ("lora", "pfeiffer", "proadapter", "prefix", "prompt_tuning", "bitfit", "diffprune")
MIXED_TASKS = (1, 16)  # K task modules loaded; a batch's rows drawn uniformly from them
MIXED_TASKS_GOALS = {"lora": (1, 16, 64), "diffprune": (1, 16, 64)}  # issue 22's goals are stated at K = 64


class BankCall:
    """A TaskBank forward over fixed row tasks, callable like a model (for timed_forward)."""

    def __init__(self, bank, names: list[str]):
        self.bank, self.names = bank, names

    def __call__(self, **inputs):
        return self.bank.forward(inputs, self.names)


def mixed_modules(method: str, suite: Suite, count: int) -> list[Path]:
    """``count`` distinct random task modules of ``method`` on the timing model (prefix at l = 30)."""
    from unipetl import PetlConfig, get_petl_model

    model = transformers.AutoModelForSequenceClassification.from_pretrained(suite.timing_model, num_labels=2)
    config = PetlConfig.from_preset(method, **({"attn_bn": 30} if method == "prefix" else {}))
    paths = []
    for i in range(count):
        petl = get_petl_model(model, config)
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for param in petl.parameters():
                if param.requires_grad:
                    param.add_(0.02 * torch.randn_like(param))
        if method == "diffprune":
            petl.project()
        if method == "proadapter":
            petl.freeze_masks()
        paths.append(suite.scratch / "mixed" / method / f"task{i}")
        petl.save(paths[-1], task={"name": "sst2", "kind": "classification", "mode": "classify", "max_length": 128})
        petl.unload()
    return paths


def mixed_rows(method: str, suite: Suite, inputs: dict) -> list[dict]:
    from unipetl.serving import TaskBank
    from unipetl.storage import load_petl_model

    def classifier():
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            suite.timing_model, num_labels=2).to(suite.device).eval()

    ks = MIXED_TASKS_GOALS.get(method, MIXED_TASKS)
    paths = mixed_modules(method, suite, max(ks))
    rows, alone = [], classifier()
    for k in ks:
        bank = TaskBank(classifier())
        for i, path in enumerate(paths[:k]):
            bank.add(path, f"t{i}")
        names = [f"t{random.Random(seed).randrange(k)}" for seed in range(len(inputs["input_ids"]))]
        mixed = BankCall(bank, names)
        single = load_petl_model(alone, paths[0]).eval()
        worst = 0.0  # the mixed batch against each row's own task alone, on the first rows
        for row in range(min(4, len(names))):
            task_model = load_petl_model(classifier(), paths[int(names[row][1:])]).eval()
            with torch.no_grad():
                expected = task_model(**{key: value[row:row + 1] for key, value in inputs.items()}).logits[0]
            worst = max(worst, (mixed(**inputs)[row] - expected).abs().max().item())
            task_model.unload()
        for _ in range(suite.sizes.inference_warmup):
            timed_forward(mixed, inputs)
            timed_forward(single, inputs)
        mixed_s = statistics.median(timed_forward(mixed, inputs) for _ in range(suite.sizes.inference_repeats))
        single_s = statistics.median(timed_forward(single, inputs) for _ in range(suite.sizes.inference_repeats))
        single.unload()
        peft_s = peft_mixed_seconds(classifier(), bank, names, inputs, suite.sizes) if method == "lora" else None
        memory = bank.memory()
        rows.append({"method": method, "k": k, "tasks_in_batch": len(set(names)),
                     "mixed_rows_per_s": round(len(names) / mixed_s, 1), "single_task_rows_per_s": round(len(names) / single_s, 1),
                     "mixed_over_single": round(single_s / mixed_s, 4), "max_abs_logit_difference": worst,
                     "held_over_stored_bytes": round(memory["tasks_held_bytes"] / memory["stored_bytes"], 4),
                     "served_task_by_task": any(entry.grouped for entry in bank.entries.values())})
        if peft_s is not None:
            rows[-1].update(peft_rows_per_s=round(len(names) / peft_s, 1), mixed_over_peft=round(peft_s / mixed_s, 4))
        log(f"mixed {method} K={k}: {rows[-1]['mixed_rows_per_s']}/s vs {rows[-1]['single_task_rows_per_s']}/s alone, "
            f"max |diff| {worst:.2e}")
        del bank
        release_memory(suite.device)
    return rows


def peft_mixed_seconds(model, bank, names: list[str], inputs: dict, sizes: Sizes) -> float:
    """Median seconds of PEFT's mixed batch (``adapter_names``) with one LoRA adapter per loaded task, of our
    preset's shape (rank, alpha and the linears the bank's LoRA parts sit on), on a fresh backbone."""
    from peft import LoraConfig, get_peft_model

    from unipetl import PetlConfig

    preset = PetlConfig.from_preset("lora")
    targets = sorted({part.site.rsplit(".", 1)[-1] for entry in bank.entries.values() for part in entry.parts
                      if part.role == "lora"})
    config = LoraConfig(r=preset.attn_bn, lora_alpha=preset.lora_alpha, target_modules=targets, lora_dropout=0.0,
                        init_lora_weights=False)
    tasks = list(bank.entries)
    peft = get_peft_model(model, config, adapter_name=tasks[0])
    for task in tasks[1:]:
        peft.add_adapter(task, config)
    peft.eval()

    def call(**batch):
        return peft(**batch, adapter_names=names)

    for _ in range(sizes.inference_warmup):
        timed_forward(call, inputs)
    return statistics.median(timed_forward(call, inputs) for _ in range(sizes.inference_repeats))


def render_mixed(record: dict) -> list[str]:
    lines = ["", "| method | K | tasks in a batch | mixed rows/s | single-task rows/s | mixed / single | max abs logit "
                 "difference | held / stored bytes | PEFT rows/s | mixed / PEFT |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['method']} | | | failed: {r['error']} | | | | | | |")
            continue
        task_by_task = " (task by task)" if r["served_task_by_task"] else ""
        lines.append(f"| {r['method']}{task_by_task} | {r['k']} | {r['tasks_in_batch']} | {r['mixed_rows_per_s']:,.1f} | "
                     f"{r['single_task_rows_per_s']:,.1f} | {r['mixed_over_single']:.3f} | {r['max_abs_logit_difference']:.2e} | "
                     f"{r['held_over_stored_bytes']:.2f} | " + (f"{r['peft_rows_per_s']:,.1f} | {r['mixed_over_peft']:.2f} |"
                                                                  if "peft_rows_per_s" in r else "- | - |"))
    return lines


@part("mixed_task_serving", "Mixed-task serving: a TaskBank batch of rows of K tasks against one task's own model",
      0.09, render_mixed)
def mixed_task_serving(suite: Suite, record: dict) -> None:
    sizes = suite.sizes
    record.update(model=suite.results["header"]["timing_model"], batch=sizes.throughput_batch, seq_len=sizes.seq_len,
                  repeats=sizes.inference_repeats, rows=[])
    vocab = transformers.AutoConfig.from_pretrained(suite.timing_model).vocab_size
    inputs = {k: v for k, v in random_batch(vocab, sizes.throughput_batch, sizes.seq_len, suite.device).items()
              if k != "labels"}
    for method in suite.within_budget(MIXED_METHODS, record, label=str):
        try:
            record["rows"] += mixed_rows(method, suite, inputs)
        except Exception as err:
            log(f"mixed {method}: FAILED {error_text(err)}")
            record["rows"].append({"method": method, "error": error_text(err)})
        suite.save()


# ----------------------------------------------------------------------------------------- 4. training
def evaluation_reserve(clock: Clock) -> float:
    """The end of a training part's budget kept for evaluating and saving a run stopped early."""
    return min(10.0, 0.1 * clock.budget_s)


def stop_at_deadline_callback(clock: Clock, note: dict):
    """A Trainer callback that ends training shortly before the part's budget is spent, leaving time to
    evaluate the run as it stands (it is then marked cut). Diff pruning gets it in its fixed-mask stage only."""
    from transformers import TrainerCallback

    class StopAtDeadline(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if clock.expired(evaluation_reserve(clock)):
                control.should_training_stop = True
                note["cut"] = f"training stopped at step {state.global_step} of {state.max_steps}: budget spent"
                log(note["cut"])
            return control

    return StopAtDeadline()


def train_one(preset: str, suite: Suite, model: str, data_dir: str, precision: str) -> dict:
    from unipetl.training import TrainOptions, train_task

    sizes = suite.sizes
    rates = SHORT_BUDGET_RATES.get(preset, {})
    options = TrainOptions(epochs=sizes.train_epochs, batch_size=sizes.train_batch_size, max_length=sizes.train_max_length,
                           max_train_samples=sizes.train_samples, learning_rate=rates.get("learning_rate"), seed=42,
                           precision=precision, progress=False)
    note: dict = {}
    output = suite.scratch / f"train-{preset}"
    try:
        results = train_task("sst2", preset, model, data_dir, str(output), options, rates.get("overrides"),
                             log=log, callbacks=[stop_at_deadline_callback(suite.clock, note)])
    finally:
        shutil.rmtree(output, ignore_errors=True)  # checkpoints of a full model are large
    row = {"preset": preset, "accuracy": results["metrics"]["accuracy"], "train_seconds": round(results["train_seconds"], 1),
           "learning_rate": results["learning_rate"], "overrides": rates.get("overrides", {}),
           "trainable_params": results["trainable_params"], "stored_bytes": results["stored_bytes"],
           "train_examples": results["train_examples"], "test_examples": results["test_examples"], **note}
    if "diff_projection" in results:
        row["diff_kept_entries"] = results["diff_projection"].get("kept_entries")
    return row


def render_training(record: dict) -> list[str]:
    lines = ["", "| preset | accuracy (%) | train seconds | learning rate | overrides | trainable params | stored bytes |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in record.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['preset']} | failed: {r['error']} | | | | | |")
            continue
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "–"
        cut = f" (cut: {r['cut']})" if "cut" in r else ""
        lines.append(f"| {r['preset']} | {100 * r['accuracy']:.2f}{cut} | {r['train_seconds']:.1f} | {r['learning_rate']:g} | "
                     f"{overrides} | {r['trainable_params']:,} | {r['stored_bytes']:,} |")
    return lines


@part("training", "Short real training run: SST-2", 0.40, render_training)
def training(suite: Suite, record: dict) -> None:
    model, data_dir, why_not = suite.training_inputs
    if why_not:
        record["status"] = f"skipped: {why_not}"
        return
    sizes = suite.sizes
    cuda = suite.device.type == "cuda"
    precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    record.update(task="sst2", model=model, data_dir=data_dir, train_samples=sizes.train_samples, seed=42,
                  epochs=sizes.train_epochs, batch_size=sizes.train_batch_size, max_length=sizes.train_max_length,
                  precision=precision, test="official dev (dev_as_test)",
                  rates=("each preset's default learning rate; diffprune at the README's short-budget rates: "
                         "--learning-rate 1e-4 --set gate_learning_rate=0.01 --set projection_gates=expected "
                         "--set fixmask_learning_rate=1e-3"), rows=[])
    if not cuda:
        os.environ.setdefault("UNIPETL_EAGER_GATES", "1")  # tiny diffs run eagerly anyway; skip compiling on CPU
    for preset in suite.within_budget(suite.args.train_presets or TRAIN_PRESETS, record,
                                      reserve_s=evaluation_reserve(suite.clock)):
        try:
            row = train_one(preset, suite, model, data_dir, precision)
            log(f"training {preset}: accuracy {100 * row['accuracy']:.2f} % in {row['train_seconds']} s")
        except Exception as err:
            log(f"training {preset}: FAILED {error_text(err)}")
            row = {"preset": preset, "error": error_text(err)}
        record["rows"].append(row)
        release_memory(suite.device)
        suite.save()


# ----------------------------------------------------------------------------------------- dry-run inputs
def synthetic_words() -> tuple[list[str], list[str], list[str]]:
    positive = ["good", "great", "lovely", "moving", "funny", "charming", "smart", "warm"]
    negative = ["bad", "dull", "boring", "awful", "flat", "tedious", "weak", "messy"]
    filler = ["the", "film", "movie", "story", "is", "was", "quite", "very", "and", "a", "plot", "cast", "its"]
    return positive, negative, filler


def write_synthetic_sst2(folder: Path, train_rows: int, dev_rows: int) -> str:
    """A GLUE-layout SST-2 folder of short sentences whose label is the polarity of one word in them."""
    positive, negative, filler = synthetic_words()
    rng = random.Random(0)
    (folder / "SST-2").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        lines = ["sentence\tlabel"]
        for i in range(rows):
            label = i % 2
            words = [rng.choice(filler) for _ in range(rng.randint(3, 8))]
            words.insert(rng.randint(0, len(words)), rng.choice(positive if label else negative))
            lines.append(f"{' '.join(words)} \t{label}")
        (folder / "SST-2" / name).write_text("\n".join(lines) + "\n")
    return str(folder)


def write_tiny_bert(folder: Path, words: tuple[list[str], ...]) -> str:
    """A tiny random-initialised BERT with a WordPiece vocabulary of the synthetic sentences' words."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for group in words for w in group})]
    tokenizer = transformers.BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def read_assets(folder: str) -> dict:
    """The train model and data folder that benchmarks/gpu_prepare.py wrote (its assets.json)."""
    path = Path(folder)
    manifest = json.loads((path / "assets.json").read_text()) if (path / "assets.json").is_file() else {}
    return {"model": str(path / manifest.get("model", "model")), "data_dir": str(path / manifest.get("data_dir", "glue"))}


# ----------------------------------------------------------------------------------------- Markdown
def to_markdown(results: dict, parts: list[Part]) -> str:
    h = results["header"]
    lines = ["# unipetl GPU suite", "",
             f"- Date: {h['date']}; command: `{h['command']}`",
             f"- Device: {h['device']}; torch {h['torch']} (CUDA {h['cuda']}), transformers {h['transformers']}, "
             f"peft {h['peft']}, python {h['python']}; unipetl commit {h['unipetl_commit']}",
             f"- Timing model: {h['timing_model']}; budget {h['budget_seconds']} s"
             + ("; finished" if results.get("finished") else "; not finished (results so far)")]
    renderers = {p.name: p.render for p in parts}
    for number, (name, record) in enumerate(results["parts"].items(), 1):
        lines += ["", f"## {number}. {record['title']} (`{name}`)", "",
                  f"Status: {record['status']}; {record.get('seconds', '?')} s of a {record['budget_seconds']} s budget."]
        if "error" in record:
            lines.append(f"Error: `{record['error']}`")
        if "cut" in record:
            left = record["cut"].get("left_out")
            lines.append(f"Cut: {record['cut']['reason']}" + (f"; left out: {', '.join(left)}" if left else ""))
        settings = {k: v for k, v in record.items() if v not in (None, [], {}, "")
                    and k not in ("title", "status", "budget_seconds", "seconds", "error", "traceback", "cut", "rows")}
        if settings:
            lines.append("Settings: " + "; ".join(f"{k} {v}" for k, v in settings.items()))
        if record.get("rows"):
            lines += (renderers.get(name) or plain_table)(record)
    return "\n".join(lines) + "\n"


def plain_table(record: dict) -> list[str]:
    keys = list(dict.fromkeys(k for row in record["rows"] for k in row))
    return ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in record["rows"])]


# ----------------------------------------------------------------------------------------- command line
def parse_part_budgets(pairs: list[str]) -> dict[str, float]:
    budgets = {}
    for pair in pairs:
        name, _, seconds = pair.partition("=")
        if name not in {p.name for p in PARTS}:
            raise SystemExit(f"gpu_suite.py: --part-budget {pair!r}: no part {name!r}; parts: {[p.name for p in PARTS]}")
        budgets[name] = float(seconds)
    return budgets


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where gpu_suite.json and gpu_suite.md go")
    parser.add_argument("--model", help="a pretrained MPNet-base folder (default: random weights for timing, "
                                        "training from --train-model or --assets)")
    parser.add_argument("--train-model", help="the pretrained model the training part uses (default: --model, "
                                              "else the one in --assets)")
    parser.add_argument("--data-dir", help="GLUE-layout folder with SST-2/train.tsv and dev.tsv (default: --assets')")
    parser.add_argument("--assets", help="the folder benchmarks/gpu_prepare.py wrote: train model and SST-2 data")
    parser.add_argument("--budget-seconds", type=float, default=600.0, help="the whole suite's time, from start (default 600)")
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU with tiny models and sizes")
    parser.add_argument("--device", help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--presets", nargs="+", help="presets of the timing parts (default: all; full always)")
    parser.add_argument("--train-presets", nargs="+", help=f"presets of the training part (default: {' '.join(TRAIN_PRESETS)})")
    parser.add_argument("--parts", nargs="+", help=f"run only these parts (default: all): {' '.join(p.name for p in PARTS)}")
    parser.add_argument("--part-budget", action="append", default=[], metavar="PART=SECONDS",
                        help="a part's budget in seconds instead of its share of the total")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.part_budget = parse_part_budgets(args.part_budget)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if args.dry_run:
        # Tiny matrices gain nothing from threads, and on a shared CPU idle OpenMP threads spinning against
        # other processes made a tiny step 100x slower.
        torch.set_num_threads(1)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_suite.py: error: no CUDA device here; --dry-run runs the suite on the CPU", file=sys.stderr)
        return 2
    sizes = DRY_RUN_SIZES if args.dry_run else GPU_SIZES
    suite = Suite(args, sizes, device, PARTS)
    log(f"{suite.results['header']['device']}; results in {suite.out}")
    results = suite.run()
    print((suite.out / MARKDOWN_NAME).read_text())
    failed = [name for name, record in results["parts"].items() if record["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
