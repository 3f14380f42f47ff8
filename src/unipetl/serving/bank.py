"""`TaskBank`: one frozen backbone, many task modules, batches that mix tasks row by row.

Interface (the server and the CLI build on exactly this):

    bank = TaskBank(model=None, max_length=None)
        model: backbone path or hub name; None: the model recorded in the first module added
        (else the embedded MiniLM). max_length: tokens per input; None: the largest max_length
        recorded by the modules loaded (128 when none records one).
    bank.add(directory, name=None) -> dict
        Load a task module; name defaults to the directory's name (the run folder's name for a
        folder called "module", as `unipetl train` writes them). Encoders' modules with a
        sequence-classification head, or a decoder's classification modules (label words scored
        under the bank's own LM head) and instruction modules (generated); one backbone kind per
        bank. Returns its description
        (as in tasks()). Raises ConfigError (name already loaded, or a method/head the bank cannot
        serve), ModuleFormatError (not a module, trained on another backbone: the fingerprint reason),
        DataError. Nothing changes in the bank when it raises.
    bank.remove(name) -> None
        Unload a task. Raises UnknownTaskError naming the loaded tasks.
    bank.tasks() -> dict[str, dict]
        name -> {"task": task name in the module header, "kind": "classification" | "regression",
                 "labels": list of label names or None, "method": preset, "directory": str,
                 "stored_bytes": int, "sources": source module folders of a transfer module}
    bank.predict(records, on_error="raise") -> list[dict]
        records: [{"task": NAME, ...inputs}], inputs in the single-module `unipetl predict` layout
        ("text"/"text_pair", "texts", or the task's own fields; "prompt" or "messages" for a
        decoder's instruction task). Output per record, in order:
        {"task": NAME, "prediction": ..., "probabilities": {...}} (classification),
        {"task": NAME, "prediction": float} (regression) or {"task": NAME, "prediction": text}
        (instruction tasks: greedy completions, generated in mixed batches), plus "truncated": true
        when the input had more tokens than max_length (it is truncated, never refused).
        on_error="raise": the first bad record raises UnknownTaskError (unknown task, naming the
        loaded ones) or DataError (malformed record: its index and field). on_error="return": a bad
        record's place in the list holds the exception instead, and the other records are served.
        Either way the exception's ``record`` attribute is the record's index.
    bank.max_length -> int
    bank.lock: threading.RLock held by add/remove/predict (they are safe to call from several threads).
"""

from __future__ import annotations

import copy
import threading
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

from .. import first_position
from .. import attention as prefix_attention
from ..backbone import decoder_tokenizer
from ..encoding import collator_for, encode
from ..errors import ConfigError, DataError, ModuleFormatError, UnknownTaskError
from ..insertion import InputCapture, set_module
from ..label_words import LabelWordFormat, answer_position
from ..mixing import Installed, LinearDeltaOp, MixedLinear, MixedOp, MixedPfeifferLayerNorm, Part, Routing
from ..module_format import HEADER_FILE, WEIGHTS_FILE
from ..linear_views import install_linear_views
from ..predict import examples_from_row, format_prediction
from ..sites import family_for, family_for_config, head_table_for, resolve_sites
from ..storage import load_petl_model, read_module
from ..taskio import task_io_from_header
from ..taskio.classification import ClassificationIO
from ..taskio.instruction import MAX_NEW_TOKENS, InstructionIO, InstructionLayout
from ..tasks.instructions import example_from_row
from .decoding import greedy_rows

DEFAULT_MAX_LENGTH = 128
MAX_BATCH_ROWS = 64  # rows per forward; a longer request list is served in several


def _stored_bytes(directory) -> int:
    return sum((Path(directory) / name).stat().st_size for name in (HEADER_FILE, WEIGHTS_FILE))


def default_task_name(directory) -> str:
    """A module's task name when none is given: its folder's name, or the run folder's for `unipetl train`'s
    OUTPUT/module layout (every such module's folder is called "module")."""
    path = Path(directory).resolve()
    return path.parent.name if path.name == "module" and path.parent.name else path.name


class _Precomputed(nn.Module):
    """Stands in for the backbone inside a task's own model, so that its head runs on outputs computed
    for the whole mixed batch (the head's own code: pooler output, dropout, dense layers)."""

    def __init__(self):
        super().__init__()
        self.outputs = None

    def forward(self, *args, **kwargs):
        return self.outputs


@dataclass
class TaskEntry:
    name: str
    directory: str
    spec: Any  # the task's TaskSpec (label names, kind)
    head: nn.Module  # the task's own model object, its backbone replaced by a _Precomputed
    parts: list[Part]
    max_length: int
    description: dict
    grouped: bool  # a part does not batch across tasks: served in forwards of its own
    layout: Any = None  # a decoder's task: LabelWordFormat (classification) or InstructionLayout (generation)
    max_new_tokens: int | None = None  # an instruction task's generation limit

    @property
    def generates(self) -> bool:
        return isinstance(self.layout, InstructionLayout)

    @property
    def stub(self) -> "_Precomputed":
        return getattr(self.head, self.head.base_model_prefix)


class TaskBank:
    """One frozen backbone and many task modules; forwards over batches that mix tasks row by row."""

    def __init__(self, model: str | nn.Module | None = None, *, tokenizer=None, max_length: int | None = None):
        self.lock = threading.RLock()
        self.entries: dict[str, TaskEntry] = {}
        self.routing = Routing()
        self.installed = Installed()
        self.prompt_ops: list[MixedOp] = []
        self.shared = weakref.WeakValueDictionary()  # what tasks share (a ProPETL prototype), held once
        self.max_length_override = max_length
        self.host: nn.Module | None = None  # the backbone, inside a model whose module paths the parts use
        self.causal = False  # a decoder-only LM: its tasks classify by label words under its own LM head
        self.tokenizer = tokenizer
        self.model_name = None
        if isinstance(model, nn.Module):
            self._set_host(model.eval())
        else:
            self.model_name = model

    # ------------------------------------------------------------------ tasks
    @property
    def max_length(self) -> int:
        if self.max_length_override is not None:
            return self.max_length_override
        return max((e.max_length for e in self.entries.values()), default=DEFAULT_MAX_LENGTH)

    def tasks(self) -> dict[str, dict]:
        with self.lock:
            return {name: dict(entry.description) for name, entry in self.entries.items()}

    def add(self, directory, name: str | None = None) -> dict:
        """Load the task module in ``directory`` as task ``name`` (default: the directory's name)."""
        directory = str(directory)
        name = name or default_task_name(directory)
        with self.lock:
            if name in self.entries:
                raise ConfigError(f"task name {name!r} is already loaded (from {self.entries[name].directory}); "
                                  f"choose another with NAME=DIR")
            header, _ = read_module(directory)
            info = header.get("task") or {}
            if "name" not in info:
                raise ModuleFormatError(f"{directory}: the module header names no task; it was not written by "
                                        f"`unipetl train`")
            io = task_io_from_header(info)
            architecture = header["backbone"].get("architecture", "")
            causal = info.get("mode") == "causal_lm"  # a decoder's task: label words, or instructions it answers
            generates = isinstance(io, InstructionIO)
            servable = head_table_for(architecture).peft_task_type == "CAUSAL_LM" if causal else \
                architecture.endswith("ForSequenceClassification") and io.kind in ("classification", "regression")
            if not isinstance(io, (ClassificationIO, InstructionIO)) or not servable:
                raise ConfigError(f"{directory}: a task bank serves classification and regression modules with a "
                                  f"sequence-classification head, and decoders' classification modules scored by "
                                  f"label words and instruction modules; this is a {info.get('kind')!r} task on a "
                                  f"{architecture or 'unknown'} model")
            if self.host is None:
                self._load_backbone(self.model_name or info.get("model"))
            if self.causal and not causal and header["backbone"].get("family") == self.sites.family.family:
                raise ConfigError(f"{directory}: a decoder's sequence-classification head reads the last token of "
                                  f"each input, which a task bank does not serve; train with label words (the default "
                                  f"--decoder-head) to serve it")
            if causal != self.causal:
                raise ConfigError(f"{directory}: a {architecture} module; this bank's backbone is a {type(self.host).__name__}")
            # A decoder's LM head is the backbone's: its tasks attach to the bank's model itself.
            head = self.host if causal else self._head_model(header)
            self._uninstall()  # a pristine backbone: the fingerprint check and the module's own attach need it
            try:
                petl = load_petl_model(head, directory).eval()  # refuses another backbone by its fingerprint
                try:
                    parts = []
                    for plugin in petl.plugins:
                        plugin.share_across_tasks(self.shared)
                        parts += plugin.mixed_parts()
                    parts += self._pooler_parts(petl)
                finally:
                    petl.unload()
            except BaseException:
                self._install()  # the bank as it was
                raise
            if not causal:
                setattr(head, head.base_model_prefix, _Precomputed())  # the head alone from now on
            layout = InstructionLayout(self.tokenizer) if generates else \
                LabelWordFormat(io.spec, self.tokenizer) if causal else None
            entry = TaskEntry(name, directory, getattr(io, "spec", None), None if causal else head, parts,
                              int(info.get("max_length", DEFAULT_MAX_LENGTH)), self._describe(header, io, directory),
                              any(not p.op.batched for p in parts), layout, info.get("max_new_tokens"))
            self.entries[name] = entry
            try:
                self._install()
            except BaseException:
                self._uninstall()
                del self.entries[name]
                self._install()
                raise
            return dict(entry.description)

    def remove(self, name: str) -> None:
        with self.lock:
            self._entry(name)
            self._uninstall()
            del self.entries[name]
            self._install()

    def _entry(self, name, where: str = "") -> TaskEntry:
        entry = self.entries.get(name) if isinstance(name, str) else None
        if entry is None:
            known = ", ".join(sorted(self.entries)) or "none"
            raise UnknownTaskError(f"{where}unknown task {name!r}; loaded tasks: {known}")
        return entry

    def memory(self) -> dict:
        """Bytes held: the backbone, and every tensor the loaded tasks hold (parts and heads; a tensor shared
        by several tasks counted once), beside the sum of their modules' stored bytes (a transfer module's
        source modules counted once, as they are held once)."""
        with self.lock:
            backbone = {t.untyped_storage().data_ptr() for t in list(self.host.parameters()) + list(self.host.buffers())}
            seen_objects, counted, per_task = {}, set(), {}
            for name, entry in self.entries.items():
                own = 0
                for tensor in _tensors([entry.parts, entry.head], seen_objects):
                    key = tensor.untyped_storage().data_ptr()
                    if key in backbone or key in counted or tensor.device.type == "meta":
                        continue
                    counted.add(key)
                    own += tensor.untyped_storage().nbytes()
                per_task[name] = own
            sources = {s for e in self.entries.values() for s in e.description["sources"]}  # stored once, shared
            return {"backbone_bytes": sum(p.numel() * p.element_size() for p in self.host.parameters()),
                    "tasks_held_bytes": sum(per_task.values()), "held_bytes_per_task": per_task,
                    "stored_bytes": sum(e.description["stored_bytes"] for e in self.entries.values())
                    + sum(_stored_bytes(s) for s in sources)}

    # ------------------------------------------------------------------ serving
    @torch.no_grad()
    def predict(self, records: list, on_error: str = "raise") -> list:
        """One output per record (see the module docstring); ``on_error``: "raise" or "return"."""
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        with self.lock:
            outputs: list = [None] * len(records)
            pending: dict[str, list] = {}  # task -> [(record index, example)]
            for i, record in enumerate(records):
                try:
                    entry, example = self._parse(i, record)
                except (UnknownTaskError, DataError) as err:
                    err.record = i  # the record's index in this call, for callers that number them otherwise
                    if on_error == "raise":
                        raise
                    outputs[i] = err
                    continue
                pending.setdefault(entry.name, []).append((i, example))
            generating = {task: items for task, items in pending.items() if self.entries[task].generates}
            for task in generating:
                del pending[task]
            for i, output in self._generate(generating):
                outputs[i] = output
            rows = []  # (record index, task, features, truncated)
            for task, items in pending.items():
                entry = self.entries[task]
                length = self.max_length_override or entry.max_length
                if entry.layout is not None:  # instruction + any label word: its labels mark where the answer starts
                    features, truncated = zip(*(entry.layout.features_and_truncation(ex, length) for _, ex in items))
                else:
                    features = encode([ex for _, ex in items], entry.spec, self.tokenizer, "classify", length).features
                    truncated = [self._untruncated_length(ex) > length for _, ex in items]
                for (i, _), feature, cut in zip(items, features, truncated):
                    if entry.layout is None:
                        feature.pop("labels", None)
                    rows.append((i, task, feature, cut))
            collate = collator_for("causal_lm" if self.causal else "classify", self.tokenizer)
            for start in range(0, len(rows), MAX_BATCH_ROWS):
                chunk = rows[start:start + MAX_BATCH_ROWS]
                batch = collate([feature for _, _, feature, _ in chunk])
                logits = self.forward(dict(batch), [task for _, task, _, _ in chunk])
                for (i, task, _, truncated), row in zip(chunk, logits):
                    outputs[i] = {"task": task, **format_prediction(self.entries[task].spec, row)}
                    if truncated:
                        outputs[i]["truncated"] = True
            return outputs

    def _parse(self, i: int, record):
        where = f"record {i}: "
        if not isinstance(record, dict):
            raise DataError(f"{where}expected an object with a 'task' field, got {type(record).__name__}")
        if not isinstance(record.get("task"), str):
            raise DataError(f"{where}'task' must be the name of a loaded task (a string), got {record.get('task')!r}")
        entry = self._entry(record["task"], where)
        inputs = {k: v for k, v in record.items() if k != "task"}
        if entry.generates:
            return entry, example_from_row(inputs, f"record {i}", need_completion=False)
        examples = examples_from_row(inputs, entry.spec, f"record {i}")
        if len(examples) != 1:
            raise DataError(f"{where}gives {len(examples)} inputs for task {entry.spec.name!r}; expected one")
        return entry, examples[0]

    def _generate(self, pending: dict[str, list]) -> list[tuple[int, dict]]:
        """Greedy completions of instruction tasks' records, in mixed batches (tasks whose parts do not batch
        in batches of their own): (record index, output) pairs."""
        if not pending:
            return []
        items = [(i, task, example) for task, task_items in pending.items() for i, example in task_items]
        # Prompt tuning's prompt goes in front of a row, where generation pads: its rows run one at a time.
        alone = {task for task in pending if self.entries[task].grouped or self._prompted(task)}
        groups = [[item for item in items if item[1] not in alone]]
        groups += [[item] for item in items if item[1] in alone]
        eos = self.host.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        results = []
        for group in (g for g in groups if g):
            for start in range(0, len(group), MAX_BATCH_ROWS):
                chunk = group[start:start + MAX_BATCH_ROWS]
                contexts, limits, truncated = [], [], []
                for _, task, example in chunk:
                    entry = self.entries[task]
                    context = entry.layout.context_ids(example.context)
                    length = self.max_length_override or entry.max_length
                    contexts.append(context[-length:])
                    truncated.append(len(context) > length)
                    limits.append(entry.max_new_tokens or MAX_NEW_TOKENS)
                self.routing.route([task for _, task, _ in chunk], next(self.base.parameters()).device)
                embed = self.base.get_input_embeddings()
                prepare = (lambda inputs: self._with_prompts(inputs, embed)) if self.prompt_ops else None
                try:
                    generated = greedy_rows(self.base, self.host.get_output_embeddings(), self.host.config, contexts,
                                            limits, eos_ids, self.tokenizer.pad_token_id, prepare)
                finally:
                    self.routing.slot = None
                for (i, task, _), ids, cut in zip(chunk, generated, truncated):
                    output = {"task": task, "prediction": self.tokenizer.decode(ids, skip_special_tokens=True).strip()}
                    results.append((i, {**output, "truncated": True} if cut else output))
        return results

    def _prompted(self, task: str) -> bool:
        return any(part.role == "prompt" for part in self.entries[task].parts)

    def _with_prompts(self, inputs: dict, embed) -> dict:
        for op in self.prompt_ops:
            inputs = op.prepare_inputs(inputs, embed)
        return inputs

    def _untruncated_length(self, example) -> int:
        texts = example.texts
        encoded = self.tokenizer(texts[0], texts[1] if len(texts) > 1 else None, truncation=False, verbose=False)
        return len(encoded["input_ids"])

    @torch.no_grad()
    def forward(self, inputs: dict, row_tasks: list[str]) -> list[torch.Tensor]:
        """Each row's logits in its own task's label space. Rows of tasks whose parts do not batch are served
        in forwards of their own, one task each; all other rows in one forward."""
        with self.lock:
            for task in set(row_tasks):
                self._entry(task)
            grouped = {t for t in row_tasks if self.entries[t].grouped}
            groups = [[i for i, t in enumerate(row_tasks) if t not in grouped]]
            groups += [[i for i, t in enumerate(row_tasks) if t == g] for g in sorted(grouped)]
            logits: list = [None] * len(row_tasks)
            for rows in [g for g in groups if g]:
                index = torch.tensor(rows)
                sub = {k: v[index] for k, v in inputs.items() if isinstance(v, torch.Tensor)}
                for i, row_logits in zip(rows, self._forward_rows(sub, [row_tasks[i] for i in rows])):
                    logits[i] = row_logits
            return logits

    def _forward_rows(self, inputs: dict, row_tasks: list[str]) -> list[torch.Tensor]:
        device = next(self.base.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        self.routing.route(row_tasks, device)
        kwargs = self._with_prompts(dict(inputs), self.base.get_input_embeddings())
        labels = kwargs.pop("labels", None)
        context = first_position.first_position_only(self.host, self.sites, kwargs) if not self.causal and all(
            first_position.applies(self.entries[t].head, self.sites, kwargs) for t in self.routing.present) else nullcontext()
        try:
            with context:
                outputs = self.base(**kwargs)
            if self.causal:  # the LM head too runs routed: a diff of tied embeddings corrects it per row
                return self._label_word_scores(outputs.last_hidden_state, labels, row_tasks)
        finally:
            self.routing.slot = None
        hidden, pooled = outputs.last_hidden_state, getattr(outputs, "pooler_output", None)
        slots = torch.tensor([self.routing.present.index(t) for t in row_tasks], device=device)
        logits: list = [None] * len(row_tasks)
        for i, task in enumerate(self.routing.present):
            rows = (slots == i).nonzero().squeeze(1)
            entry = self.entries[task]
            entry.stub.outputs = BaseModelOutputWithPoolingAndCrossAttentions(
                last_hidden_state=hidden[rows], pooler_output=None if pooled is None else pooled[rows])
            try:
                task_logits = entry.head().logits
            finally:
                entry.stub.outputs = None
            for row, value in zip(rows.tolist(), task_logits):
                logits[row] = value
        return logits

    def _label_word_scores(self, hidden: torch.Tensor, labels: torch.Tensor | None, row_tasks: list[str]) -> list:
        """A decoder's rows: the LM head at the position before each row's answer (shifted by the row's prompt
        where prompt tuning put one in front), read at its task's label words' first tokens."""
        if labels is None:
            raise DataError("a decoder's task bank needs each row's answer position: give the rows' labels "
                            "(TaskBank.predict builds them)")
        position = answer_position(labels)
        for op in self.prompt_ops:
            if op.row_lengths is not None:
                position = position + op.row_lengths
        rows = torch.arange(len(row_tasks), device=hidden.device)
        logits = self.host.get_output_embeddings()(hidden[rows, position])
        return [logits[i, self.entries[task].layout.first_tokens] for i, task in enumerate(row_tasks)]

    # ------------------------------------------------------------------ loading
    def _load_backbone(self, name_or_path: str | None) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        from ..backbone import load_model_config, quiet_transformers

        quiet_transformers()
        path, config = load_model_config(name_or_path)
        self.model_name = path
        head_class = AutoModelForCausalLM if family_for_config(config).causal_lm else AutoModelForSequenceClassification
        self._set_host(head_class.from_pretrained(path).eval())
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if self.causal:
                decoder_tokenizer(self.tokenizer)

    def _set_host(self, model: nn.Module) -> None:
        for param in model.parameters():
            param.requires_grad_(False)
        install_linear_views(model, family_for(model).fused_qkv)  # GPT-2's Conv1D as linears, as its tasks saw them
        self.host, self.base = model, model.base_model
        self.sites = resolve_sites(model)
        self.causal = self.sites.family.causal_lm
        if self.causal and self.tokenizer is not None:
            decoder_tokenizer(self.tokenizer)

    def _head_model(self, header: dict) -> nn.Module:
        """The task's own model class with the bank's backbone in it; its head is filled by loading the module."""
        import transformers

        architecture = header["backbone"]["architecture"]
        cls = getattr(transformers, architecture, None)
        if cls is None:
            raise ModuleFormatError(f"the module's head class {architecture!r} is not in this transformers")
        config = copy.deepcopy(self.host.config)
        config.num_labels = int(header["backbone"].get("num_labels", config.num_labels))
        if (header.get("task") or {}).get("kind") == "regression":
            config.problem_type = "regression"
        with torch.device("meta"):
            model = cls(config)
        if model.base_model_prefix != self.host.base_model_prefix or type(model.base_model) is not type(self.base):
            raise ModuleFormatError(f"the module was trained on a {architecture}; this bank's backbone is a "
                                    f"{type(self.host).__name__}")
        setattr(model, model.base_model_prefix, self.base)
        device = next(self.base.parameters()).device
        for name, child in model.named_children():
            if child is not self.base:
                child.to_empty(device=device)
                for module in child.modules():
                    model._init_weights(module)  # overwritten by the module's head; defined if it stores none
        return model.eval()

    @staticmethod
    def _pooler_parts(petl) -> list[Part]:
        """A pooler trained with the head: its change from the backbone's, as a per-row delta."""
        by_module: dict[str, dict] = {}
        for name, delta in petl.pooler_deltas().items():
            path, _, parameter = name.rpartition(".")
            by_module.setdefault(path, {})[parameter] = delta.clone()
        return [Part(LinearDeltaOp, path, "hook", {"bias": delta.get("bias", delta["weight"].new_zeros(delta["weight"].shape[0])),
                                                   "weight": delta["weight"]})
                for path, delta in by_module.items()]

    @staticmethod
    def _describe(header: dict, io, directory: str) -> dict:
        """What tasks() tells about a task; ``sources``: the module folders a transfer module combines."""
        sources = []
        for record in header["config"].get("transfer_sources") or []:
            path = Path(record.get("path") or "")
            sources.append(str((path if path.is_dir() else Path(directory) / path).resolve()))
        return {"task": io.name, "kind": io.kind,
                "labels": list(io.spec.label_names) if io.kind == "classification" else None,
                "method": header["config"].get("preset") or "custom", "directory": directory,
                "stored_bytes": _stored_bytes(directory), "sources": sources}

    # ------------------------------------------------------------------ the ops at their sites
    def _install(self) -> None:
        """Group every task's parts into ops and put them at their sites in the backbone."""
        if self.host is None:
            return
        ops: dict[tuple, MixedOp] = {}
        for name, entry in self.entries.items():
            for part in entry.parts:
                key = (part.op, part.site, part.role, part.capture, part.signature)
                if key not in ops:
                    ops[key] = part.op(self.routing, part.site, part.role, part.signature)
                ops[key].add(name, part.payload)
        captures: dict[str, InputCapture] = {}

        def capture(path):
            if path not in captures:
                captures[path] = InputCapture(self._original(path))
                self.installed.handles.append(captures[path])
            return captures[path]

        hooks = [(key, op) for key, op in ops.items() if key[2] == "hook"]
        for (_, site, _, _, _), op in hooks:  # on the original modules, before any is wrapped
            self.installed.handles.append(self._original(site).register_forward_hook(_idle_aware(op)))
        prefix_modules = []
        for (_, site, role, capture_path, _), op in ops.items():
            if role == "lora":
                self._linear(site).lowrank.append(op)
            elif role == "input":
                self._linear(site).inputs.append((op, capture(capture_path)))
            elif role.startswith("output:"):
                self._linear(site).outputs.append((op, role.partition(":")[2], capture(capture_path) if capture_path else None))
            elif role == "pfeiffer":
                self._pfeiffer(site).ops.append(op)
            elif role == "prefix":
                module = self.host.get_submodule(site)
                current = getattr(module, prefix_attention.PREFIX_ATTR, None)
                object.__setattr__(module, prefix_attention.PREFIX_ATTR, _ActivePrefix(current.ops + [op]) if current else
                                   _ActivePrefix([op]))
                if module not in prefix_modules:
                    prefix_modules.append(module)
                if capture_path:
                    op.bind_capture(capture(capture_path))
            elif role == "prompt":
                self.prompt_ops.append(op)
            elif role != "hook":
                raise ConfigError(f"a method gave a part with role {role!r}, which a task bank cannot place")
        if prefix_modules:
            self.installed.prefix = (prefix_modules, prefix_attention.enable_prefix_attention(
                self.base, prefix_modules, self.sites.family.manual_attention))

    def _uninstall(self) -> None:
        if self.host is None:
            return
        for path, original in self.installed.replaced.items():
            set_module(self.host, path, original)
        for handle in self.installed.handles:
            handle.remove()
        if self.installed.prefix is not None:
            modules, original = self.installed.prefix
            prefix_attention.disable_prefix_attention(self.base, modules, original, self.sites.family.manual_attention)
        self.installed = Installed()
        self.prompt_ops = []

    def _original(self, path: str) -> nn.Module:
        return self.installed.replaced.get(path) or self.host.get_submodule(path)

    def _linear(self, path: str) -> MixedLinear:
        return self._wrapped(path, MixedLinear)

    def _pfeiffer(self, path: str) -> MixedPfeifferLayerNorm:
        return self._wrapped(path, MixedPfeifferLayerNorm)

    def _wrapped(self, path: str, wrapper_class: type):
        """The ``wrapper_class`` at ``path``, wrapping the backbone's module there (once; undone by _uninstall)."""
        current = self.host.get_submodule(path)
        if isinstance(current, wrapper_class):
            return current
        wrapper = wrapper_class(current)
        self.installed.replaced[path] = current
        set_module(self.host, path, wrapper)
        return wrapper


class _ActivePrefix:
    """The prefix site of one attention module holding several prefix ops (a batched `concat` one, and
    fallback ones served task by task): the op with rows in this forward (at most one has)."""

    def __init__(self, ops: list[MixedOp]):
        self.ops = ops

    def __getattr__(self, name: str):
        active = next((op for op in self.ops if not op.idle), self.ops[0])
        return getattr(active, name)


def _tensors(obj, seen: dict):
    """Every tensor reachable from ``obj`` (modules, their attributes, dicts, lists, tuples), each once."""
    if id(obj) in seen:
        return
    seen[id(obj)] = obj  # held, so that no id is reused by a later object while walking
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, nn.Module):
        for value in [*obj._parameters.values(), *obj._buffers.values(), *obj._modules.values(), *vars(obj).values()]:
            yield from _tensors(value, seen)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value, seen)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value, seen)
    elif isinstance(obj, Part):
        yield from _tensors(obj.payload, seen)


def _idle_aware(op: MixedOp):
    """The op's forward hook, skipped when no row of the batch has a part there."""
    def hook(module, args, output):
        return output if op.idle else op.hook(module, args, output)
    return hook
