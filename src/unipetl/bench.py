"""Training-step benchmark of PETL methods, ours and PEFT's, each measured in a fresh process.

Each measurement runs in its own subprocess so that peak memory (the process's max RSS) belongs to
one method only; rounds interleave the methods so that machine noise spreads over all of them, and
results are reported as medians and as ratios to full fine-tuning measured in the same run.
`paired_benchmark` instead trains each row side by side with its references in one process, a step of
each in turn, for step-time ratios that the machine's drift between processes does not skew.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class MethodSpec:
    label: str
    library: str  # "unipetl", "peft", "floor" (no method: see floor_model) or "plain" (transformers' model, all trained)
    method: str  # preset name, "lora"/"prefix" for PEFT, or a key of FLOOR_SITES
    overrides: dict = field(default_factory=dict)
    stage: str = ""  # "fixed_mask": a diff-pruning model projected to its density before timing (stage 3)
    fast_cpu_dropout: bool = True  # ours and the floor rows: unipetl.dropout's sampler (PEFT rows: torch's)
    first_position_only: bool = True  # ours and the floor rows: the last layer's FFN at [CLS] only (first_position.py)

    def to_json(self) -> str:
        return json.dumps({"label": self.label, "library": self.library, "method": self.method, "overrides": self.overrides,
                           "stage": self.stage, "fast_cpu_dropout": self.fast_cpu_dropout,
                           "first_position_only": self.first_position_only})


PEFT_MISSING_NOTE = "PEFT is not installed: its rows are left out; pip install peft"


def peft_available() -> bool:
    """Whether PEFT imports here: it is only in the test extra, so an ordinary install may lack it."""
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def drop_unavailable(specs: list[MethodSpec]) -> tuple[list[MethodSpec], list[str]]:
    """(the rows that can run here, notes on the rows left out): PEFT's rows need PEFT installed."""
    if any(spec.library == "peft" for spec in specs) and not peft_available():
        return [spec for spec in specs if spec.library != "peft"], [PEFT_MISSING_NOTE]
    return specs, []


def _query_value_names(base) -> list[str]:
    """The module names of the query and value projections, as PEFT's target_modules: `query`/`value` in
    BERT and RoBERTa, `q`/`v` in MPNet (from sites.py, the one place that knows them)."""
    from .sites import resolve_sites

    attention = resolve_sites(base).family.stacks[0].attention[0]
    return [attention.q.rsplit(".", 1)[-1], attention.v.rsplit(".", 1)[-1]]


def _peft_model(base, spec: MethodSpec):
    import peft

    if spec.method == "lora":
        config = peft.LoraConfig(task_type="SEQ_CLS", r=spec.overrides.get("r", 8), lora_alpha=spec.overrides.get("lora_alpha", 16),
                                 lora_dropout=spec.overrides.get("lora_dropout", 0.0), target_modules=_query_value_names(base))
    elif spec.method == "prefix":
        config = peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=spec.overrides.get("num_virtual_tokens", 200),
                                         prefix_projection=True, encoder_hidden_size=spec.overrides.get("encoder_hidden_size", 800))
    elif spec.method == "prompt_tuning":
        config = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=spec.overrides.get("num_virtual_tokens", 200))
    else:
        raise ValueError(f"no PEFT equivalent for {spec.method!r}")
    return peft.get_peft_model(base, config)


# The lowest point a method's parameters sit at in the first layer, as what the gradient must reach there.
FLOOR_SITES = {
    "attention": ("q", "v"),  # LoRA on q,v and prefix tuning: backward through layer 0's attention
    "ffn_output": ("ffn_out",),  # sequential and parallel FFN adapters: backward down to layer 0's FFN output
}


# Fused AdamW, as `unipetl train` steps: transformers' Trainer defaults to it from torch 2.8 on. Peer
# benchmarks in other environments read this to step the same optimizer.
FUSED_ADAMW = True

# Full fine-tuning as transformers runs it: the baseline PEFT's and adapters' step ratios are relative to.
PLAIN_FULL = "full (plain transformers)"


def floor_model(base, site: str, fast_cpu_dropout: bool = True, first_position_only: bool = True):
    """A PETL step without a method: the backbone frozen, only the head trained, and the output of each
    linear layer in FLOOR_SITES[site] of the first layer multiplied by one trainable scalar (1.0), so that
    autograd must carry the input gradient down to where the method's parameters would be. Its step time
    is what any method of that kind pays before its own cost: full fine-tuning's minus the frozen
    weights' gradients and their optimizer step. With ``fast_cpu_dropout``, dropout is sampled as a
    PetlModel samples it (unipetl.dropout); with ``first_position_only``, the last layer's FFN runs at the
    first position only, as a PetlModel runs it for this head (unipetl.first_position)."""
    from . import first_position
    from .attention import enable_dropout_attention
    from .dropout import enable_fast_dropout
    from .heads import head_parameter_names
    from .sites import resolve_sites

    if fast_cpu_dropout:
        enable_fast_dropout(base)
        enable_dropout_attention(base)

    for param in base.parameters():
        param.requires_grad_(False)
    for name in head_parameter_names(base):
        base.get_parameter(name).requires_grad_(True)
    sites = resolve_sites(base)
    if first_position_only and first_position.applies(base, sites, {}):
        first_position.register(sites)  # for the model's lifetime: nothing else reads the other positions here
    layer = sites.layers[0]
    modules = {"q": layer.attention[0].q, "v": layer.attention[0].v, "ffn_out": layer.ffn_out}
    gate = torch.nn.Parameter(torch.ones(()))
    base.register_parameter("floor_gate", gate)
    for key in FLOOR_SITES[site]:
        modules[key].register_forward_hook(lambda module, args, output: output * gate)
    return base


def peft_equivalent(preset: str) -> MethodSpec | None:
    """PEFT's version of a preset with the preset's own sizes, where PEFT has the method (LoRA on q,v,
    prefix tuning with its reparametrisation MLP, prompt tuning); None elsewhere."""
    from .config import PetlConfig

    config = PetlConfig.from_preset(preset)
    if preset == "lora":
        overrides = {"r": config.attn_bn, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout}
    elif preset == "prefix":
        overrides = {"num_virtual_tokens": config.attn_bn, "encoder_hidden_size": config.mid_dim}
    elif preset == "prompt_tuning":
        overrides = {"num_virtual_tokens": config.attn_bn}
    else:
        return None
    return MethodSpec(f"peft {preset}", "peft", preset, overrides)


def stored_bytes(model, spec: MethodSpec) -> int | None:
    """What saving the trained method writes: our task module, or PEFT's adapter folder (None for a floor row)."""
    import tempfile
    from pathlib import Path

    if spec.library in ("floor", "plain"):
        return None
    if spec.library == "unipetl":
        if getattr(model, "diff", None) is not None and spec.stage != "fixed_mask":  # stored after projection to its density
            with torch.no_grad():
                model.diff.weight.normal_()
            model.project()
        return model.report()["stored_bytes"]
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def build(spec: MethodSpec, model_path: str, device=None):
    """The model of one row, in training mode, on ``device`` (default: the CPU), with its optimizer:
    (model, optimizer, trainable params, extra_loss, vocabulary size)."""
    from transformers import AutoModelForSequenceClassification

    import unipetl

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if spec.library == "peft":
        model = _peft_model(base, spec)
    elif spec.library == "floor":
        model = floor_model(base, spec.method, spec.fast_cpu_dropout, spec.first_position_only)
    elif spec.library == "plain":  # full fine-tuning as transformers runs it, the baseline peers report against
        model = base
    else:
        # BERT's pooler stays frozen, as in PEFT, so that both libraries' rows do the same work.
        overrides = {"train_pooler": False, **spec.overrides}
        model = unipetl.get_petl_model(base, unipetl.PetlConfig.from_preset(spec.method, **overrides),
                                       fast_cpu_dropout=spec.fast_cpu_dropout)
        model.first_position_only = spec.first_position_only
    if device is not None:
        model.to(device)  # before the projection and the optimizer: both run where the parameters are
    if spec.stage == "fixed_mask":
        with torch.no_grad():
            model.diff.weight.normal_()
        model.project()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # Our models: the method's own optimizer groups (gate logits, mask scores) as `unipetl train` uses them.
    groups = model.parameter_groups(1e-4, 0.0) if spec.library == "unipetl" else params
    optimizer = torch.optim.AdamW(groups, lr=1e-4, fused=FUSED_ADAMW)
    return model, optimizer, params, getattr(model, "extra_loss", lambda: None), base.config.vocab_size


def random_batch(vocab_size: int, batch_size: int, seq_len: int, device=None) -> dict:
    batch = {"input_ids": torch.randint(1000, vocab_size, (batch_size, seq_len)),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,))}
    return batch if device is None else {k: v.to(device) for k, v in batch.items()}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision as `Trainer` runs it (weights stay float32), or nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued kernels, so that a clock read after it covers them (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(model, extra_loss, batch, autocast_dtype: torch.dtype | None = None) -> None:
    """The loss (with the method's extra loss, if any) and its backward pass; the forward under autocast
    when ``autocast_dtype`` is given (the backward outside it, as torch recommends)."""
    with autocast(batch["input_ids"].device, autocast_dtype):
        loss = model(**batch).loss
        extra = extra_loss()
        if extra is not None:
            loss = loss + extra
    loss.backward()


def timed_step(model, optimizer, extra_loss, batch, autocast_dtype: torch.dtype | None = None) -> float:
    """Seconds of one forward + backward + optimizer step (on a GPU, from idle to all its kernels done)."""
    device = batch["input_ids"].device
    synchronize(device)
    start = time.perf_counter()
    forward_backward(model, extra_loss, batch, autocast_dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start


def timed_forward(model, inputs: dict, autocast_dtype: torch.dtype | None = None) -> float:
    """Seconds of one no-grad forward (on a GPU, from idle to all its kernels done)."""
    device = inputs["input_ids"].device
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast(device, autocast_dtype):
        model(**inputs)
    synchronize(device)
    return time.perf_counter() - start


def step_flops(spec: MethodSpec, model_path: str, batch_size: int, seq_len: int) -> int:
    """Floating-point operations of one forward + backward of the row (torch's FlopCounterMode: matrix
    products and attention; elementwise work is not counted). Unlike seconds, this count does not depend
    on the machine: its ratio to full fine-tuning's is the step ratio that an implementation running its
    matrix products as fast as full fine-tuning does would measure, before its other work."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _, _, extra_loss, vocab_size = build(spec, model_path)
    batch = random_batch(vocab_size, batch_size, seq_len)
    with FlopCounterMode(display=False) as counter:
        forward_backward(model, extra_loss, batch)
    return counter.get_total_flops()


def measure(spec: MethodSpec, model_path: str, batch_size: int, seq_len: int, steps: int, warmup: int) -> dict:
    """Train ``steps`` AdamW steps on random tokens; per-step seconds and memory. Runs in the worker."""
    model, optimizer, params, extra_loss, vocab_size = build(spec, model_path)
    batch = random_batch(vocab_size, batch_size, seq_len)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = [timed_step(model, optimizer, extra_loss, batch) for _ in range(warmup + steps)][warmup:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # training's peak, before inference
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    latencies = []
    with torch.no_grad():
        for step in range(warmup + steps):
            start = time.perf_counter()
            model(**inputs)
            if step >= warmup:
                latencies.append(time.perf_counter() - start)
    return {"label": spec.label, "step_seconds": statistics.median(times), "inference_seconds": statistics.median(latencies),
            "peak_rss_mb": peak / 1024, "training_rss_increase_mb": (peak - rss_before) / 1024,
            "trainable_params": sum(p.numel() for p in params), "stored_bytes": stored_bytes(model, spec)}


def measure_interleaved(specs: list[MethodSpec], model_path: str, batch_size: int, seq_len: int, steps: int,
                        warmup: int) -> dict:
    """Several rows trained in one process, one step of each in turn (the order reversed every other
    turn), so that the machine's drift over seconds falls on all of them alike: median seconds per label.
    Runs in the worker."""
    built = {spec.label: build(spec, model_path) for spec in specs}
    batch = random_batch(next(iter(built.values()))[4], batch_size, seq_len)
    times = interleaved_step_seconds(built, batch, steps, warmup)
    return {label: statistics.median(values) for label, values in times.items()}


def interleaved_step_seconds(built: dict[str, tuple], batch: dict, steps: int, warmup: int,
                             autocast_dtype: torch.dtype | None = None) -> dict[str, list[float]]:
    """Each built row (label -> `build`'s tuple) stepped in turn, the order reversed every other turn;
    the seconds of every step after ``warmup`` turns, per label."""
    times: dict[str, list[float]] = {label: [] for label in built}
    for turn in range(warmup + steps):
        for label in (list(built) if turn % 2 == 0 else list(built)[::-1]):
            model, optimizer, _, extra_loss, _ = built[label]
            seconds = timed_step(model, optimizer, extra_loss, batch, autocast_dtype)
            if turn >= warmup:
                times[label].append(seconds)
    return times


def run_worker(spec: MethodSpec, model_path: str, batch_size: int, seq_len: int, steps: int, warmup: int) -> dict:
    code = ("import json,sys; from unipetl.bench import MethodSpec, measure; s=json.loads(sys.argv[1]); "
            "print('RESULT'+json.dumps(measure(MethodSpec(**s), sys.argv[2], *map(int, sys.argv[3:]))))")
    return _worker_result(code, spec.to_json(), spec.label, model_path, batch_size, seq_len, steps, warmup)


def _worker_result(code: str, specs_json: str, label: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, specs_json, *map(str, args)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    return {"label": label, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


def paired_benchmark(specs: list[MethodSpec], references: list[MethodSpec], model_path: str, batch_size=16, seq_len=128,
                     steps=6, warmup=2, rounds=2, log=print) -> dict:
    """Step-time ratios of each row to each reference, the row and the references trained side by side in
    one fresh process (measure_interleaved); each ratio is the median over rounds of one process's ratio.
    Rows of a library that is not installed (PEFT) are left out, with a note in ``notes``."""
    specs, notes = drop_unavailable(specs)
    code = ("import json,sys; from unipetl.bench import MethodSpec, measure_interleaved; "
            "s=[MethodSpec(**x) for x in json.loads(sys.argv[1])]; "
            "print('RESULT'+json.dumps(measure_interleaved(s, sys.argv[2], *map(int, sys.argv[3:]))))")
    ratios: dict[str, dict[str, list[float]]] = {s.label: {r.label: [] for r in references} for s in specs}
    for round_index in range(rounds):
        for spec in specs:
            group = [spec, *references]
            group_json = json.dumps([json.loads(member.to_json()) for member in group])
            seconds = _worker_result(code, group_json, spec.label, model_path, batch_size, seq_len, steps, warmup)
            if "error" in seconds:
                log(f"round {round_index + 1}/{rounds} {spec.label}: FAILED {seconds['error']}")
                continue
            for ref in references:
                ratios[spec.label][ref.label].append(seconds[spec.label] / seconds[ref.label])
            log(f"round {round_index + 1}/{rounds} {spec.label}: {seconds[spec.label]:.3f} s/step; "
                + ", ".join(f"/ {r.label} {seconds[spec.label] / seconds[r.label]:.3f}" for r in references))
    rows = [{"label": s.label, "library": s.library,
             "ratios": {ref: {"median": statistics.median(values), "per_round": [round(v, 4) for v in values]}
                        for ref, values in ratios[s.label].items() if values}} for s in specs]
    return {"machine": machine_description(), "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
            "warmup": warmup, "rounds": rounds, "references": [r.label for r in references], "rows": rows,
            "notes": notes}


def benchmark(specs: list[MethodSpec], model_path: str, batch_size=16, seq_len=128, steps=6, warmup=2, rounds=2,
              reference="full", log=print) -> dict:
    """Every row measured in fresh processes (run_worker), rounds interleaved, medians and ratios to
    ``reference``. Rows of a library that is not installed (PEFT) are left out, with a note in ``notes``."""
    specs, notes = drop_unavailable(specs)
    for note in notes:
        log(note)
    runs: dict[str, list[dict]] = {s.label: [] for s in specs}
    for round_index in range(rounds):
        for spec in specs:
            result = run_worker(spec, model_path, batch_size, seq_len, steps, warmup)
            log(f"round {round_index + 1}/{rounds} {spec.label}: "
                + (f"{result['step_seconds']:.3f} s/step, peak {result['peak_rss_mb']:.0f} MB" if "error" not in result
                   else f"FAILED {result['error']}"))
            runs[spec.label].append(result)
    rows = []
    ref = _summary(runs[reference])
    for spec in specs:
        ours = spec.library not in ("peft", "plain")  # the rows built with our modules, where the savings apply
        row = {"label": spec.label, "library": spec.library, "method": spec.method, "overrides": spec.overrides,
               "fast_cpu_dropout": spec.fast_cpu_dropout and ours, "first_position_only": spec.first_position_only and ours}
        summary = _summary(runs[spec.label])
        row.update(summary)
        if "error" not in summary and "error" not in ref:
            row["step_ratio"] = summary["step_seconds"] / ref["step_seconds"]
            row["inference_ratio"] = summary["inference_seconds"] / ref["inference_seconds"]
            row["peak_rss_ratio"] = summary["peak_rss_mb"] / ref["peak_rss_mb"]
            if ref["training_rss_increase_mb"] > 0:  # a tiny model may not grow the process at all
                row["training_memory_ratio"] = summary["training_rss_increase_mb"] / ref["training_rss_increase_mb"]
        rows.append(row)
    return {"machine": machine_description(), "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
            "warmup": warmup, "rounds": rounds, "reference": reference, "rows": rows, "notes": notes}


def _summary(results: list[dict]) -> dict:
    ok = [r for r in results if "error" not in r]
    if not ok:
        return {"error": results[-1].get("error", "no result")}
    keys = ("step_seconds", "inference_seconds", "peak_rss_mb", "training_rss_increase_mb")
    out = {k: statistics.median(r[k] for r in ok) for k in keys}
    out["trainable_params"] = ok[0]["trainable_params"]
    out["stored_bytes"] = ok[0].get("stored_bytes")
    out["step_seconds_all"] = [round(r["step_seconds"], 4) for r in ok]
    return out


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu}), {torch.get_num_threads()} threads"
    return f"{device}; torch {torch.__version__}; python {platform.python_version()}"


def to_markdown(result: dict) -> str:
    def ratio(row, key):
        return f"{row[key]:.2f}" if key in row else "–"

    sampler_recorded = any("fast_cpu_dropout" in row for row in result["rows"])  # runs since unipetl.dropout
    lines = [f"Machine: {result['machine']}  ",
             f"Batch {result['batch_size']} x {result['seq_len']} tokens, {result['steps']} timed steps after "
             f"{result['warmup']} warm-up, {result['rounds']} rounds (medians); ratios are to `{result['reference']}` "
             "measured in the same run. Inference: a no-grad forward of the same batch (median over the timed steps). "
             "Training memory increase: "
             "peak RSS during training minus RSS before it." + (
                 " Dropout: our rows and the floor rows sample it with unipetl.dropout (CPU training) unless the "
                 "label says torch dropout; PEFT's rows with torch's." if sampler_recorded else "") + (
                 f" `{PLAIN_FULL}`: transformers' model trained as it is (torch's dropout sampler, the last layer at "
                 "every position), the baseline PEFT's and adapters' numbers are relative to."
                 if any(row["label"] == PLAIN_FULL for row in result["rows"]) else ""), "",
             *(f"Note: {note}  " for note in result.get("notes", [])), *([""] if result.get("notes") else []),
             "| method | library | trainable params | stored bytes | step (s) | step / full | inference (s) | inference / full "
             "| peak RSS (MB) | peak RSS / full | training memory increase (MB) | increase / full |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['label']} | {row['library']} | | | failed: {row['error']} | | | | | | | |")
            continue
        stored = f"{row['stored_bytes']:,}" if row.get("stored_bytes") is not None else "–"
        lines.append(f"| {row['label']} | {row['library']} | {row['trainable_params']:,} | {stored} | {row['step_seconds']:.3f} | "
                     f"{ratio(row, 'step_ratio')} | {row['inference_seconds']:.4f} | {ratio(row, 'inference_ratio')} | "
                     f"{row['peak_rss_mb']:.0f} | {ratio(row, 'peak_rss_ratio')} | {row['training_rss_increase_mb']:.0f} | "
                     f"{ratio(row, 'training_memory_ratio')} |")
    return "\n".join(lines) + "\n"


def standard_specs(presets: list[str] | None = None, with_peft: bool = True) -> list[MethodSpec]:
    """`full` as the reference and transformers' plain full fine-tuning beside it, then each preset (all by
    default) followed by PEFT's version where it exists."""
    from .errors import ConfigError
    from .presets import list_presets

    names = list_presets() if not presets else list(dict.fromkeys(presets))
    unknown = [n for n in names if n not in list_presets()]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(map(repr, unknown))}; presets: {', '.join(list_presets())}")
    specs = [MethodSpec("full", "unipetl", "full"), MethodSpec(PLAIN_FULL, "plain", "full")]
    for name in names:
        if name == "full":
            continue
        specs.append(MethodSpec(name, "unipetl", name))
        twin = peft_equivalent(name) if with_peft else None
        if twin is not None:
            specs.append(twin)
    return specs
