"""Training and evaluation on transformers' Trainer.

The Trainer brings the schedule, checkpoints and resume, mixed precision, several GPUs through
`accelerate launch`/`torchrun`, logging and progress bars. `PetlTrainer` overrides only what the
methods need: optimizer groups with their own rates (`PetlModel.parameter_groups`), extra loss
terms (`PetlModel.extra_loss`), and checkpoints that hold the trainable tensors only.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

from .backbone import Backbone, load_backbone
from .collapse import KINDS as COLLAPSE_KINDS
from .collapse import (CollapseWatch, class_share_loss, collapsed, is_evaluation, long_prefix, long_prefix_warning,
                       train_loss_since_last_evaluation)
from .config import PetlConfig
from .encoding import collator_for, encode
from .errors import ConfigError, DataError
from .heads import regression_output
from .atomic import write_json_atomically
from .model import PetlModel, get_petl_model
from .options import TrainOptions
from .presets import default_head_learning_rate, default_learning_rate
from .registry import methods_for
from .sites import max_positions
from .runfolder import (CHECKPOINT_DIR, ELAPSED_FILE, MODULE_DIR, RESULTS_FILE, RunFolder, check_output_dir,
                        elapsed_seconds, latest_complete_checkpoint, run_arguments)
from .storage import PROTOTYPE_FILE, save_family
from .taskio import ClassificationIO, MultiLabelIO, TaskIO, is_file_format_task, task_io_for, task_io_from_header
from .taskio.classification import metrics_function
from .tasks import get_task, main_score, make_splits
from .transfer import TRANSFER_METHODS, get_transfer_model



class PetlTrainer(Seq2SeqTrainer):
    task_batch_sampler = None  # multi-task: one task per batch (multitask.TaskBatchSampler)
    task_evals: list | None = None  # multi-task: (task name, eval dataset, metrics function) per task
    generation_kwargs: dict = {}  # the task's decoding settings (beam, lengths, n-gram blocking) for every evaluation
    head_learning_rate: float | None = None  # the head's own rate (TrainOptions.head_learning_rate)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test", **kwargs):
        return super().predict(test_dataset, ignore_keys, metric_key_prefix, **{**self.generation_kwargs, **kwargs})

    def get_train_dataloader(self):
        if self.task_batch_sampler is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        loader = DataLoader(self.train_dataset, batch_sampler=self.task_batch_sampler, collate_fn=self.data_collator)
        return self.accelerator.prepare(loader)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **kwargs):
        kwargs = {**self.generation_kwargs, **kwargs}
        if self.task_evals is None or eval_dataset is not None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **kwargs)
        metrics, scores = {}, []
        for name, dataset, function in self.task_evals:
            previous, self.compute_metrics = self.compute_metrics, function
            try:
                metrics.update(super().evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}", **kwargs))
            finally:
                self.compute_metrics = previous
            scores.append(metrics[f"{metric_key_prefix}_{name}_main_score"])
        # Checkpoint selection on the unweighted mean of the tasks' main scores.
        metrics[f"{metric_key_prefix}_main_score"] = float(np.mean(scores))
        self.log({f"{metric_key_prefix}_main_score": metrics[f"{metric_key_prefix}_main_score"]})
        return metrics

    def _pad_tensors_to_max_len(self, tensor, max_length):
        # Generated ids are padded with the backbone's pad id (the Trainer looks on the wrapper's config).
        config = self.accelerator.unwrap_model(self.model).model.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        padded = torch.full((tensor.shape[0], max_length), pad, dtype=tensor.dtype, device=tensor.device)
        padded[:, :tensor.shape[-1]] = tensor
        return padded

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            petl = self.accelerator.unwrap_model(self.model)
            groups = petl.parameter_groups(self.args.learning_rate, self.args.weight_decay,
                                           head_learning_rate=self.head_learning_rate)
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, petl)
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            extra = self.accelerator.unwrap_model(model).extra_loss()
            if extra is not None:
                loss = loss + extra
        return (loss, outputs) if return_outputs else loss

    seconds_before, started = 0.0, None  # training seconds of earlier processes (resume), this one's start

    def train_seconds(self) -> float:
        return self.seconds_before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def _save(self, output_dir=None, state_dict=None):
        # A checkpoint holds what --resume needs beside the Trainer's optimizer, scheduler and RNG state: the
        # trainable tensors. Not the frozen backbone (the same in every one), not the tokenizer.
        from safetensors.torch import save_file
        from transformers.utils import SAFE_WEIGHTS_NAME

        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        petl = self.accelerator.unwrap_model(self.model)
        state_dict = {n: p.detach().cpu().contiguous() for n, p in petl.named_parameters() if p.requires_grad}
        save_file(state_dict, str(output_dir / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        (output_dir / ELAPSED_FILE).write_text(json.dumps({"train_seconds": self.train_seconds()}) + "\n")

    def _load_trainable(self, checkpoint_dir: str) -> None:
        from safetensors.torch import load_file
        from transformers.utils import SAFE_WEIGHTS_NAME

        try:
            state = load_file(str(Path(checkpoint_dir) / SAFE_WEIGHTS_NAME))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise DataError(f"checkpoint {checkpoint_dir} is damaged ({err}); resume from an earlier one by "
                            "removing it, or start again with --overwrite") from None
        params = dict(self.accelerator.unwrap_model(self.model).named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state]
        unknown = [n for n in state if n not in params]
        if missing or unknown:
            raise DataError(f"checkpoint {checkpoint_dir} does not match this model: missing {missing[:3]}, unknown {unknown[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_trainable(resume_from_checkpoint)

    def _load_best_model(self):
        self._load_trainable(self.state.best_model_checkpoint)


def uses_gpu(options: TrainOptions) -> bool:
    return torch.cuda.is_available() and not options.cpu


def _precision_flags(options: TrainOptions) -> dict:
    precision = options.precision
    if precision == "auto":
        precision = "bf16" if uses_gpu(options) and torch.cuda.is_bf16_supported() else "fp32"
    if precision != "fp32" and not uses_gpu(options):
        where = "--cpu was given" if options.cpu else "this machine has none"
        raise ConfigError(f"--precision {precision} needs a GPU; {where} (use fp32)")
    return {"fp16": precision == "fp16", "bf16": precision == "bf16"}


def with_task_defaults(options: TrainOptions, io: TaskIO) -> TrainOptions:
    """The options with the task type's defaults where the user left a field unset (None)."""
    defaults = io.training_defaults()
    return replace(options, **{k: v for k, v in defaults.items() if getattr(options, k) is None})


def with_preset_head_rate(options: TrainOptions, preset: str | None) -> TrainOptions:
    """``options`` with the preset's own head rate where none was given and the preset sets one, so that
    results.json records the rate the head trained at (single-task and multi-task runs alike)."""
    if options.head_learning_rate is not None:
        return options
    return replace(options, head_learning_rate=default_head_learning_rate(preset))


def training_arguments(options: TrainOptions, output_dir: Path, learning_rate: float, train_size: int,
                       task_arguments: dict | None = None, select_best: bool = True) -> Seq2SeqTrainingArguments:
    """``task_arguments``: the task type's own settings (generation, label smoothing; TaskIO.trainer_arguments).
    ``select_best=False``: no evaluation, no checkpoints, the run ends with its last state."""
    options = replace(options, warmup_ratio=0.06 if options.warmup_ratio is None else options.warmup_ratio,
                      weight_decay=options.weight_decay or 0.0)
    steps_per_epoch = math.ceil(train_size / options.batch_size)
    total = options.max_steps if options.max_steps > 0 else math.ceil(steps_per_epoch * options.epochs)
    every = max(1, min(steps_per_epoch, total))  # evaluate and checkpoint once per epoch
    arguments = dict(
        output_dir=str(output_dir / CHECKPOINT_DIR),
        num_train_epochs=options.epochs, max_steps=options.max_steps,
        learning_rate=learning_rate, lr_scheduler_type="linear", warmup_steps=options.warmup_ratio,
        weight_decay=options.weight_decay,
        per_device_train_batch_size=options.batch_size, per_device_eval_batch_size=options.eval_batch_size,
        eval_strategy="steps" if select_best else "no", eval_steps=every,
        save_strategy="steps" if select_best else "no", save_steps=every, save_total_limit=2,
        load_best_model_at_end=select_best, metric_for_best_model="main_score", greater_is_better=True,
        logging_steps=options.logging_steps, report_to=[], disable_tqdm=not options.progress,
        seed=options.seed, data_seed=options.seed, remove_unused_columns=False, label_names=["labels"],
        dataloader_num_workers=0, dataloader_pin_memory=uses_gpu(options),
        # Without a GPU, torchrun's processes join one gloo process group only when told to use the CPU.
        use_cpu=not uses_gpu(options), **_precision_flags(options))
    return Seq2SeqTrainingArguments(**{**arguments, **(task_arguments or {})})


def build_trainer(petl: PetlModel, backbone: Backbone, io: TaskIO, options: TrainOptions,
                  output_dir: Path, learning_rate: float, select_best: bool = True,
                  encoded: dict | None = None) -> tuple[PetlTrainer, dict]:
    """A trainer over ``io``'s splits; ``encoded`` reuses the features of an earlier stage (diff pruning)."""
    encoded = encoded or encode_splits(io, backbone, options.max_length)
    args = training_arguments(options, output_dir, learning_rate, len(encoded["train"]), io.trainer_arguments(backbone),
                              select_best)
    callbacks = [EarlyStoppingCallback(options.early_stopping_patience)] if options.early_stopping_patience else []
    trainer = PetlTrainer(model=petl, args=args, train_dataset=encoded["train"], eval_dataset=encoded["validation"],
                          data_collator=io.collator(backbone), compute_metrics=io.metrics_function("validation", backbone),
                          callbacks=callbacks, preprocess_logits_for_metrics=io.logits_reducer(backbone))
    trainer.generation_kwargs = io.generation_kwargs()
    trainer.head_learning_rate = options.head_learning_rate
    trainer.collapse_watch = None
    if io.kind in COLLAPSE_KINDS and backbone.mode != "text_to_text":  # a head of scores or values
        trainer.collapse_watch = CollapseWatch(
            io.kind, io.name, reference_loss=class_share_loss(io.kind, [e.label for e in io.splits["train"]]),
            recent_train_loss=lambda: train_loss_since_last_evaluation(trainer.state.log_history))
        trainer.compute_metrics = trainer.collapse_watch.wrap(trainer.compute_metrics)
    return trainer, encoded


def encode_splits(io: TaskIO, backbone: Backbone, max_length: int) -> dict:
    """Features of every split; evaluated splits that are the same list (dev as test) are encoded once.

    Training features may differ from evaluation features (QA windows), so train is never shared."""
    encoded, seen = {}, {}
    for name, examples in io.splits.items():
        if name != "train" and id(examples) in seen:
            encoded[name] = encoded[seen[id(examples)]]
            continue
        if name != "train":
            seen[id(examples)] = name
        encoded[name] = io.encode(name, backbone, max_length)
    return encoded


def evaluate_split(trainer: PetlTrainer, dataset, io: TaskIO, backbone: Backbone, split: str,
                   collapse: dict | None = None) -> dict[str, float]:
    """The split's task metrics; ``collapse``, when given, gets {split: what the predictions collapsed to,
    or None} for heads that give scores or a value (a one-class test set is read beside the score)."""
    previous = trainer.compute_metrics
    trainer.compute_metrics = io.metrics_function(split, backbone)
    try:
        output = trainer.predict(dataset, metric_key_prefix="test")
    finally:
        trainer.compute_metrics = previous
    if collapse is not None and io.kind in COLLAPSE_KINDS:
        collapse[split] = collapsed(output.predictions, io.kind, output.label_ids)
    return task_metrics(output.metrics, "test_")


TRAINER_FIGURES = ("runtime", "samples_per_second", "steps_per_second", "loss", "model_preparation_time")


def task_metrics(trainer_metrics: dict, prefix: str) -> dict[str, float]:
    """The task's metrics among the Trainer's figures (timings and loss left out), without the prefix."""
    return {k[len(prefix):]: v for k, v in trainer_metrics.items()
            if k.startswith(prefix) and k[len(prefix):] not in TRAINER_FIGURES}


def start_at_label_mean(model: torch.nn.Module, examples: list) -> float | None:
    """Set a regression head's output bias to the training labels' mean; returns it (None: no such bias).

    From transformers' 0 the first steps' gradient asks every input for a larger output, and an
    input-independent shift is what prefix-style methods learn fastest: on STS-B, `mam_glue` at its
    default rate lost the [CLS] representation's dependence on the input (pooler outputs nearly equal for
    every pair) and predicted about the mean for every pair; started at the mean it learns the task
    (benchmarks/diagnose_mam.py runs both)."""
    output = regression_output(model)
    if output is None:
        return None
    mean = float(np.mean([float(example.label) for example in examples]))
    with torch.no_grad():
        output.bias.fill_(mean)
    return mean


def validation_history(trainer) -> list[dict]:
    """The task's metrics at each evaluation during training (for staged methods, the last stage's),
    with the epoch and step: whether a run was still improving when its budget ended. Each entry also
    has the validation loss and the mean training loss logged since the evaluation before (None where
    none was logged), which tell a model that learned nothing from one whose predictions lag."""
    history, seen = [], []
    for entry in trainer.state.log_history:
        if not is_evaluation(entry):
            seen.append(entry)
            continue
        history.append({"epoch": entry.get("epoch"), "step": entry.get("step"), **task_metrics(entry, "eval_"),
                        "validation_loss": entry.get("eval_loss"), "train_loss": train_loss_since_last_evaluation(seen)})
        seen = []
    return history


def full_model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def task_metadata(spec, backbone: Backbone, options: TrainOptions, metrics: dict, **extra) -> dict:
    """What a task module's header records about a registry task, so evaluate/predict can rebuild it."""
    return {**ClassificationIO(spec).header(backbone, options.max_length, metrics), **extra}


def data_record(data_dir) -> dict:
    """Where a run read its GLUE-layout data: recorded so that `unipetl evaluate` finds it again."""
    return {"data_dir": str(Path(data_dir).resolve())} if data_dir else {}


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def remove_checkpoints(out: Path, options: TrainOptions) -> None:
    """After a successful run the checkpoints only take space (optimizer state): they serve --resume alone."""
    if not options.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)


def resume_and_train(trainer: "PetlTrainer", work: Path, resume: bool, log) -> float:
    """Train, from the newest complete checkpoint with ``resume``; returns the run's training seconds in
    total (those recorded up to that checkpoint plus this process's)."""
    checkpoint = latest_complete_checkpoint(work / CHECKPOINT_DIR, log) if resume else None
    if checkpoint is not None and trainer.is_world_process_zero():
        log(f"--resume: continuing from {checkpoint.name}")
    trainer.seconds_before = elapsed_seconds(checkpoint)
    trainer.started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    return trainer.train_seconds()


def check_max_length(model, max_length: int, io: TaskIO, prompt_positions: int = 0) -> None:
    """Refuse --max-length beyond the positions the backbone has, before a long input crashes the run.
    Prompt tuning's prompt takes ``prompt_positions`` of them in front of every input."""
    limit = max_positions(model)
    if limit is None or io.kind == "seq2seq" or max_length + prompt_positions <= limit:
        return
    if prompt_positions:
        raise ConfigError(f"--max-length {max_length} plus prompt tuning's {prompt_positions} prompt positions is more "
                          f"than this {model.config.model_type} backbone's {limit} positions; give --max-length "
                          f"{max(limit - prompt_positions, 0)} or less, or a shorter prompt (--set attn_bn=N)")
    raise ConfigError(f"--max-length {max_length} is more than this {model.config.model_type} backbone's "
                      f"{limit} positions; give --max-length {limit} or less")


# ----------------------------------------------------------------------- the whole run
def train_task(task: str, method: str = "lora", model: str | None = None, data_dir: str | None = None,
               output_dir: str = "runs/unipetl", options: TrainOptions | None = None,
               overrides: dict[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
               log=print, callbacks: list | None = None, custom: dict | None = None,
               sources: list | None = None, generation: dict | None = None, doc_stride: int | None = None) -> dict:
    """Train ``method`` on ``task``, evaluate on the test split, save the task module and results.json.

    ``task``: a GLUE/SuperGLUE name, ``squad`` (extractive QA) or a seq2seq task (xsum, wmt16_en_ro,
    wmt16_ro_en). ``custom`` trains on the user's own files instead: train_file, validation_file,
    test_file, and for their own task text_columns, label_column, kind (classification, regression,
    multi_label) and name (see `taskio.task_io_for`). ``generation`` overrides a seq2seq task's
    decoding settings; ``doc_stride`` sets QA's window overlap. Every input is checked (task,
    preset, config overrides, data files) before the output
    directory is created; a run that fails afterwards removes the directory it created. An
    interrupted run keeps its checkpoints: run again with ``resume=True``.
    """
    options = options or TrainOptions()
    options.validate()
    if method in TRANSFER_METHODS and not sources:  # stage 2: the preset is completed by its source adapters
        raise ConfigError(f"{method} combines source adapters: give their task-module directories (--sources)")
    config = PetlConfig.from_preset(method, **(overrides or {}))
    out = Path(output_dir)
    arguments = run_arguments(task=task, method=method, model=model, data_dir=data_dir, options=asdict(options),
                              overrides=overrides or {}, custom=custom, sources=sources, generation=generation,
                              doc_stride=doc_stride)
    check_output_dir(out, resume, overwrite, arguments)
    io = task_io_for(task, data_dir, options.protocol, options.seed, options.max_train_samples,
                     options.max_validation_samples, custom, generation, doc_stride)
    options = with_task_defaults(options, io)
    splits = io.splits
    for name in ("train", "validation", "test"):
        if not splits.get(name):
            raise DataError(f"task {io.name!r}: the {name} split is empty (protocol {options.protocol!r}, data {data_dir})")
    staged = [cls for cls in methods_for(config) if not cls.resumable]
    if resume and staged:
        raise ConfigError(f"--resume is not available for {staged[0].title} (its stages run in one go); start the run again")
    set_seed(options.seed)  # head and method initialisation (adapters, LoRA, mask scores) are part of the seeded run
    io.configure(options)
    backbone = io.load_backbone(model)
    if method in TRANSFER_METHODS:
        petl = get_transfer_model(backbone.model, sources, method, fast_cpu_dropout=options.fast_cpu_dropout,
                                  **(overrides or {}))
        config = petl.config
    else:
        petl = get_petl_model(backbone.model, config, fast_cpu_dropout=options.fast_cpu_dropout)
    learning_rate = options.learning_rate or default_learning_rate(config.preset)
    options = with_preset_head_rate(options, config.preset)
    bias_start = (start_at_label_mean(backbone.model, splits["train"])
                  if options.regression_bias_at_mean and io.kind == "regression" else None)
    check_max_length(backbone.model, options.max_length, io,
                     config.attn_bn if config.attn_mode == "prompt_tuning" else 0)

    with RunFolder(out, resume, overwrite, arguments) as run:
        work = run.work
        stage_results, prefix_note = {}, None  # staged methods (diff pruning) add no prefix
        if len(petl.training_stages()) > 1:  # not resumable: the stages run in one go
            start = time.perf_counter()
            trainer, encoded, stage_results = train_in_stages(petl, backbone, io, options, work, learning_rate,
                                                              callbacks, log)
            train_seconds = time.perf_counter() - start
        else:
            trainer, encoded = build_trainer(petl, backbone, io, options, work, learning_rate)
            prefix_note = long_prefix(config, encoded["train"])
            if prefix_note and trainer.is_world_process_zero():
                log(long_prefix_warning(io.name, prefix_note))
            for callback in callbacks or []:
                trainer.add_callback(callback)
            report = petl.report()
            if trainer.is_world_process_zero():
                log(f"{io.name}: {config.preset} on {backbone.name_or_path} | train {len(splits['train'])}, "
                    f"validation {len(splits['validation'])}, test {len(splits['test'])} | "
                    f"trainable {report['trainable_params']:,} (+ head {report['head_params']:,}) | lr {learning_rate:g}"
                    + (f" (head {options.head_learning_rate:g})" if options.head_learning_rate else ""))
            train_seconds = resume_and_train(trainer, work, resume, log)
        history = validation_history(trainer)  # before the evaluations below add their own entries
        test_collapse = {}
        metrics = evaluate_split(trainer, encoded["test"], io, backbone, "test", test_collapse)
        metrics.update(io.generated_metrics(petl, backbone, "test", options.max_length))
        extra_tests = {name: evaluate_split(trainer, encoded[name], io, backbone, name)
                       for name in splits if name.startswith("test_")}
        if splits["validation"] is splits["test"]:  # dev_as_test: the same examples, no second pass
            validation = dict(metrics)
        else:
            validation = task_metrics(trainer.evaluate(), "eval_")
        task_info = {**io.header(backbone, options.max_length, metrics), **data_record(data_dir)}
        if not trainer.is_world_process_zero():  # several processes (torchrun / accelerate): one writes
            return {"task": io.name, "metrics": metrics, "main_process": False}
        petl.save(work / MODULE_DIR, task=task_info)
        report = petl.report()
        results = {
            "task": io.name, "task_kind": io.kind, "method": config.preset, "model": backbone.name_or_path,
            "metrics": metrics, "main_score": io.main_score(metrics), "validation_metrics": validation, **extra_tests,
            "trainable_params": report["trainable_params"], "head_params": report["head_params"],
            "backbone_params": report["backbone_params"], "trainable_percent": report["trainable_percent"],
            "stored_bytes": report["stored_bytes"], "full_model_bytes": full_model_bytes(petl.model),
            "train_seconds": train_seconds, "train_examples": len(splits["train"]),
            "validation_examples": len(splits["validation"]), "test_examples": len(splits["test"]),
            "learning_rate": learning_rate, "config": config.to_dict(), "options": asdict(options), "seed": options.seed,
            "device": device_name(), **data_record(data_dir), **stage_results,
            "collapse": trainer.collapse_watch.record if trainer.collapse_watch else None,
            # what every test prediction was, when they were all one class or one value (else null)
            "test_collapse": test_collapse.get("test"),
            "long_prefix": prefix_note,  # a prefix of 4 or more positions per input token (null otherwise)
            "validation_history": history,
            # the training loss of predicting the labels' shares alone, the mark for the history's train_loss
            "class_share_loss": trainer.collapse_watch.reference_loss if trainer.collapse_watch else None,
            "regression_bias_start": bias_start,  # the head's output bias before training (None: transformers' 0)
        }
        write_json_atomically(work / RESULTS_FILE, results)
        remove_checkpoints(work, options)
        run.commit()
    return results


def split_budget(options: TrainOptions, first_fraction: float) -> tuple[TrainOptions, TrainOptions]:
    """Two stages sharing one training budget (steps or epochs): the first gets ``first_fraction``."""
    if options.max_steps > 0:
        first = min(options.max_steps - 1, max(1, round(first_fraction * options.max_steps)))
        if first < 1:
            raise ConfigError(f"--max-steps={options.max_steps} is too few for two training stages (need at least 2)")
        return replace(options, max_steps=first), replace(options, max_steps=options.max_steps - first)
    return (replace(options, epochs=options.epochs * first_fraction),
            replace(options, epochs=options.epochs * (1 - first_fraction)))


def train_in_stages(petl: PetlModel, backbone: Backbone, io: TaskIO, options: TrainOptions, out: Path,
                    learning_rate: float, callbacks, log) -> tuple[PetlTrainer, dict, dict]:
    """The method's training stages in one run, sharing the training budget (diff pruning: L0 training of
    the gated diff, projection to its density, then fine-tuning the kept entries with the mask fixed).

    An earlier stage keeps no checkpoint of its own; the last one is evaluated each epoch and its best
    checkpoint kept. Returns the last trainer, the encoded splits and what the stages record."""
    stages = petl.training_stages()
    if len(stages) != 2:
        raise ConfigError(f"{len(stages)} training stages: the budget is split between two stages only")
    budgets = split_budget(options, stages[0].fraction)
    encoded, records = None, {}
    for index, (stage, stage_options) in enumerate(zip(stages, budgets)):
        last = index == len(stages) - 1
        done = stage.before() if stage.before else None
        rate = stage.learning_rate or learning_rate
        folder = out if last else out / f"{stage.name}_stage"
        trainer, encoded = build_trainer(petl, backbone, io, stage_options, folder, rate,
                                         select_best=stage.checkpoints and last, encoded=encoded)
        if trainer.is_world_process_zero():
            if done is not None and stage.describe:
                log(stage.describe(done))
            log(f"{io.name}: {petl.config.preset} on {backbone.name_or_path} | train {len(io.splits['train'])} | "
                f"{stage.summary or stage.name}, lr {rate:g}")
        if done is not None and stage.record_as:
            records[stage.record_as] = done
        for callback in (callbacks or []) if last else []:
            trainer.add_callback(callback)
        trainer.train()
        if not last:
            shutil.rmtree(folder, ignore_errors=True)
    return trainer, encoded, records


# ----------------------------------------------------------------------- using a saved module
def load_task_module(module_dir: str, model: str | None = None):
    """(PetlModel, Backbone, TaskIO without splits, task metadata) of a saved module, on the backbone in its header."""
    from .storage import load_petl_model, read_module

    header, _ = read_module(module_dir)
    task_info = header.get("task") or {}
    if "name" not in task_info:
        raise DataError(f"{module_dir}: the module header names no task; it was not written by `unipetl train`")
    io = task_io_from_header(task_info)
    io.decoder_head = "sequence_classification" if task_info.get("mode") == "classify" else "label_words"
    backbone = io.load_backbone(model or task_info.get("model"))
    petl = load_petl_model(backbone.model, module_dir).eval()
    return petl, backbone, io, task_info


def load_module(module_dir: str, model: str | None = None):
    """(PetlModel, Backbone, task, metadata): the task is the TaskSpec for registry tasks, else the TaskIO."""
    petl, backbone, io, task_info = load_task_module(module_dir, model)
    return petl, backbone, getattr(io, "spec", io), task_info


def evaluate_module(module_dir: str, task: str | None = None, data_dir: str | None = None, split: str = "test",
                    protocol: str = "dev_as_test", seed: int = 42, batch_size: int = 64, model: str | None = None,
                    file: str | None = None, progress: bool = False, log=None) -> dict:
    """Metrics of a saved module on a split of its task, or on ``file`` (in the task's own format).

    Without ``data_dir`` the data folder the module was trained on is used when it still exists (its
    header records it), then $UNIPETL_GLUE_DIR, then the hub. ``progress`` shows progress bars."""
    petl, backbone, io, info = load_task_module(module_dir, model)
    if data_dir is None and info.get("data_dir") and Path(info["data_dir"]).is_dir():
        data_dir = info["data_dir"]
        if log:
            log(f"data: {data_dir} (recorded in the module; --data-dir to use another)")
    if task is not None and task.lower() != io.name:
        raise DataError(f"{module_dir} was trained for task {io.name!r}, not {task!r}")
    if file:  # the file is the test split, read with this module's label set
        examples, split = io.load_file(file), "test"
    else:
        if getattr(io, "spec", None) is not None and io.spec.benchmark == "custom" and io.name != "polarity" \
                or isinstance(io, MultiLabelIO):
            raise DataError(f"{module_dir} was trained on your own files (task {io.name!r}); give the data with --file")
        splits = task_io_for(io.name, data_dir, protocol, seed).splits
        if split not in splits:
            raise DataError(f"unknown split {split!r} for task {io.name!r}; valid: {', '.join(splits)}")
        examples = splits[split]
    if not examples:
        raise DataError(f"task {io.name!r}: the {split} split is empty")
    io.splits = {"train": examples, "validation": examples, split: examples}
    options = TrainOptions(eval_batch_size=batch_size, max_length=info.get("max_length", 128), progress=progress)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer, encoded = build_trainer(petl, backbone, io, options, Path(tmp), 1e-4)
        metrics = evaluate_split(trainer, encoded[split], io, backbone, split)
        return {**metrics, **io.generated_metrics(petl, backbone, split, options.max_length)}


# ----------------------------------------------------------------------- multi-task training
def train_multitask(tasks: list[str], method: str = "pfeiffer", model: str | None = None, data_dir: str | None = None,
                    output_dir: str = "runs/unipetl-multitask", options: TrainOptions | None = None,
                    overrides: dict[str, Any] | None = None, temperature: float = 1.0, resume: bool = False,
                    overwrite: bool = False, log=print) -> dict:
    """Train one method shared by ``tasks`` (a head per task), batches drawn by temperature sampling.

    Writes one task module per task under OUTPUT/module/<task>/ (each loads alone with
    `load_petl_model`) and one results.json with every task's test metrics and their mean.
    """
    from .multitask import MultiTaskModel, TaskBatchSampler, TaskTaggedCollator, TaggedDataset, concat_tagged, share_backbone

    options = options or TrainOptions()
    options.validate()
    if len(set(tasks)) < 2:
        raise ConfigError(f"multi-task training needs at least two different tasks, got {tasks}")
    config = PetlConfig.from_preset(method, **(overrides or {}))
    single = [cls for cls in methods_for(config) if not cls.multitask]
    if single:
        raise ConfigError(f"{single[0].title} trains one task at a time; run `unipetl train` per task")
    for name in tasks:
        if is_file_format_task(name):
            raise ConfigError(f"multi-task training takes GLUE/SuperGLUE tasks; {name!r} has its own task type "
                              "(train it alone with `unipetl train`)")
    specs = [get_task(t) for t in tasks]
    out = Path(output_dir)
    arguments = run_arguments(tasks=list(tasks), method=method, model=model, data_dir=data_dir, options=asdict(options),
                              overrides=overrides or {}, temperature=temperature)
    check_output_dir(out, resume, overwrite, arguments)
    options = with_preset_head_rate(options, config.preset)
    splits = {s.name: make_splits(s, data_dir, options.protocol, options.seed, options.max_train_samples,
                                  options.max_validation_samples) for s in specs}
    for name, task_splits in splits.items():
        for part in ("train", "validation", "test"):
            if not task_splits.get(part):
                raise DataError(f"task {name!r}: the {part} split is empty (protocol {options.protocol!r}, data {data_dir})")
    set_seed(options.seed)
    backbones = [load_backbone(model, s) for s in specs]
    if len({b.mode == "text_to_text" for b in backbones}) > 1:
        raise ConfigError("all tasks of a multi-task run must use the same backbone mode")
    share_backbone([b.model for b in backbones])
    bias_starts = {spec.name: start_at_label_mean(backbone.model, splits[spec.name]["train"])
                   if options.regression_bias_at_mean and spec.kind == "regression" else None
                   for spec, backbone in zip(specs, backbones)}
    petl = PetlModel(backbones[0].model, config, tasks=[s.name for s in specs],
                     fast_cpu_dropout=options.fast_cpu_dropout)
    joint = MultiTaskModel(petl, [s.name for s in specs], [b.model for b in backbones])
    learning_rate = options.learning_rate or default_learning_rate(config.preset)

    with RunFolder(out, resume, overwrite, arguments) as run:
        work = run.work
        encoded = {s.name: {part: encode(ex, s, b.tokenizer, b.mode, options.max_length) for part, ex in splits[s.name].items()}
                   for s, b in zip(specs, backbones)}
        train_sets = [encoded[s.name]["train"] for s in specs]
        args = training_arguments(options, work, learning_rate, sum(len(d) for d in train_sets),
                                  ClassificationIO(specs[0]).trainer_arguments(backbones[0]))
        # eval_dataset only satisfies the Trainer's check: evaluate() scores every task (task_evals).
        trainer = PetlTrainer(model=joint, args=args, train_dataset=concat_tagged(train_sets),
                              eval_dataset=TaggedDataset(encoded[specs[0].name]["validation"], 0),
                              data_collator=TaskTaggedCollator([collator_for(b.mode, b.tokenizer) for b in backbones]))
        trainer.head_learning_rate = options.head_learning_rate
        trainer.task_batch_sampler = TaskBatchSampler([len(d) for d in train_sets], options.batch_size, temperature, options.seed)
        trainer.task_evals = [(s.name, TaggedDataset(encoded[s.name]["validation"], i),
                               metrics_function(s, b.mode, b.tokenizer, splits[s.name]["validation"]))
                              for i, (s, b) in enumerate(zip(specs, backbones))]
        if trainer.is_world_process_zero():
            log(f"multi-task {', '.join(s.name for s in specs)}: {config.preset}, temperature {temperature}, "
                f"train sizes {[len(d) for d in train_sets]}, lr {learning_rate:g}"
                + (f" (heads {options.head_learning_rate:g})" if options.head_learning_rate else ""))
        train_seconds = resume_and_train(trainer, work, resume, log)
        test_metrics = {}
        for i, (s, b) in enumerate(zip(specs, backbones)):  # every process takes part in prediction
            petl.set_task(s.name)
            test_metrics[s.name] = evaluate_split(trainer, TaggedDataset(encoded[s.name]["test"], i),
                                                  ClassificationIO(s, splits[s.name]), b, "test")
        if not trainer.is_world_process_zero():  # several processes (torchrun / accelerate): one writes
            return {"tasks": [s.name for s in specs], "per_task": test_metrics, "main_process": False}
        per_task, members = {}, {}
        for s, b in zip(specs, backbones):
            metrics = test_metrics[s.name]
            view = petl.for_task_model(b.model, task=s.name)
            task_info = task_metadata(s, b, options, metrics, multitask_with=[x.name for x in specs],
                                      **data_record(data_dir))
            view.task = task_info
            members[s.name] = (view, task_info)
            per_task[s.name] = {"metrics": metrics, "main_score": main_score(s, metrics),
                                "head_params": view.report()["head_params"], "test_examples": len(splits[s.name]["test"]),
                                "regression_bias_start": bias_starts[s.name]}
        shares = bool(petl.shared_tensor_names())
        if shares:  # a part every task shares (ProPETL's prototype): stored once for the family
            save_family(members, work / MODULE_DIR)
        else:
            for name, (view, task_info) in members.items():
                view.save(work / MODULE_DIR / name, task=task_info)
        for name in per_task:
            per_task[name]["stored_bytes"] = sum(p.stat().st_size for p in (work / MODULE_DIR / name).iterdir())
        family_bytes = (work / MODULE_DIR / PROTOTYPE_FILE).stat().st_size if shares else None
        results = {
            "tasks": [s.name for s in specs], "task": "+".join(s.name for s in specs), "method": config.preset,
            "model": backbones[0].name_or_path, "multitask": True, "temperature": temperature, "per_task": per_task,
            "main_score": float(np.mean([v["main_score"] for v in per_task.values()])),
            "family_prototype_bytes": family_bytes,
            "trainable_params": petl.report()["trainable_params"], "train_seconds": train_seconds,
            "learning_rate": learning_rate, "config": config.to_dict(), "options": asdict(options), "seed": options.seed,
            "device": device_name(), **data_record(data_dir),
        }
        write_json_atomically(work / RESULTS_FILE, results)
        remove_checkpoints(work, options)
        run.commit()
    return results


def predict_file(module_dir: str, input_path: str, output_path: str | None = None, model: str | None = None) -> list[dict]:
    petl, backbone, io, info = load_task_module(module_dir, model)
    examples = io.read_inputs(input_path)
    predictions = io.predict(petl, backbone, examples, info.get("max_length", 128))
    text = "".join(json.dumps(p) + "\n" for p in predictions)
    if output_path:
        Path(output_path).write_text(text)
    else:
        sys.stdout.write(text)
    return predictions
