"""A run's output folder: only ours is replaced, one run at a time, and an old run survives a failed new one.

- A folder is a unipetl run when it holds `unipetl_run.json` (written as a run starts, with the run's
  arguments) or, for runs from before that file existed, results.json or a saved module. `--overwrite`
  replaces only such a folder, and only once the new run has succeeded: the new run writes into a
  sibling `.NAME.overwrite` folder that is swapped in at the end; a failed run leaves the old one.
- One run at a time: an exclusive lock (`fcntl.flock`) on a sibling `.NAME.lock` file, which names the
  process holding it. A second run into the folder is refused with that process id.
- `--resume` takes the newest complete checkpoint (a kill during a checkpoint write leaves a partial
  one, which is skipped and removed) and refuses arguments that differ from the recorded run's.

Only the first of several launched processes (torchrun) checks, locks, creates and cleans up.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .atomic import write_json_atomically
from .errors import ConfigError, DataError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs into one folder are not locked against each other
    fcntl = None

RUN_FILE = "unipetl_run.json"
RESULTS_FILE = "results.json"
MODULE_DIR = "module"
CHECKPOINT_DIR = "checkpoints"
ELAPSED_FILE = "unipetl_elapsed.json"  # in each checkpoint: training seconds up to it
# Options that change how a run reports, not what it trains: a resumed run may change them.
NOT_RECORDED = ("progress", "keep_checkpoints", "logging_steps", "eval_batch_size")


def owns_output_dir() -> bool:
    """False in all but the first of several launched processes (torchrun and accelerate set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in (RUN_FILE, RESULTS_FILE, f"{MODULE_DIR}/unipetl_module.json",
                                                     f"{MODULE_DIR}/unipetl_family.json", CHECKPOINT_DIR))


def recorded_arguments(arguments: dict) -> dict:
    """The arguments as JSON stores them (tuples as lists, paths as strings), for comparing with a record."""
    return json.loads(json.dumps(arguments, default=str, sort_keys=True))


def check_output_dir(out: Path, resume: bool, overwrite: bool, arguments: dict | None = None, *,
                     locked: bool = False) -> None:
    """Refuse an output folder this run may not use, before anything is loaded or written (``locked``: the
    caller holds the folder's lock)."""
    if not owns_output_dir():
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file; give a folder")
    probe = FolderLock(out)
    if probe.path.exists() and not locked:  # a run in progress is named first, whatever the folder holds
        probe.acquire()
        probe.release()
    writable = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(writable, os.W_OK | os.X_OK):
        raise ConfigError(f"--output-dir {out}: {writable} is not writable")
    busy = out.exists() and any(out.iterdir())
    if resume:
        if (out / RESULTS_FILE).exists():
            raise ConfigError(f"the run in {out} has finished ({out / RESULTS_FILE}); there is nothing to resume")
        _check_same_arguments(out, arguments)
    elif busy and not overwrite:
        raise ConfigError(f"output directory {out} is not empty; pass --overwrite to replace it or --resume to continue")
    elif busy and not is_run_folder(out):
        raise ConfigError(f"--overwrite: {out} is not a unipetl run folder (no {RUN_FILE}, {RESULTS_FILE} or module); "
                          "refusing to delete it")


def _check_same_arguments(out: Path, arguments: dict | None) -> None:
    record = out / RUN_FILE
    if arguments is None or not record.is_file():
        return  # a run from before the record existed
    try:
        recorded = json.loads(record.read_text())["arguments"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{record} is damaged ({err}); start the run again with --overwrite") from None
    given = recorded_arguments(arguments)
    differ = sorted(k for k in set(recorded) | set(given) if recorded.get(k) != given.get(k))
    if differ:
        details = "; ".join(f"{k}: recorded {recorded.get(k)!r}, given {given.get(k)!r}" for k in differ[:4])
        raise ConfigError(f"--resume {out}: the arguments differ from the recorded run's ({details}); resume with the "
                          "same arguments, or start a new run")


class RunFolder:
    """Held for the whole run: ``with RunFolder(out, ...) as run:`` then write under ``run.work`` and call
    ``run.commit()`` once results.json is written."""

    def __init__(self, out: Path, resume: bool, overwrite: bool, arguments: dict):
        self.out, self.resume, self.overwrite, self.arguments = Path(out), resume, overwrite, arguments
        self.owner = owns_output_dir()
        self.staging = self.out.with_name(f".{self.out.name}.overwrite")
        replacing = overwrite and not resume and self.out.exists() and any(self.out.iterdir())
        self.work = self.staging if replacing else self.out  # the same path in every process
        self.created = False
        self._lock: FolderLock | None = None

    def __enter__(self) -> "RunFolder":
        if not self.owner:
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.out)
        self._lock.acquire()
        try:
            check_output_dir(self.out, self.resume, self.overwrite, self.arguments, locked=True)  # again, held
            if self.work == self.staging:
                shutil.rmtree(self.staging, ignore_errors=True)  # left by a killed run
            self.created = not self.work.exists()
            self.work.mkdir(parents=True, exist_ok=True)
            if not self.resume or not (self.work / RUN_FILE).exists():
                write_json_atomically(self.work / RUN_FILE,
                                      {"state": "running", "arguments": recorded_arguments(self.arguments)})
        except BaseException:
            self._lock.release()
            raise
        return self

    def commit(self) -> None:
        """The run succeeded: it replaces the old run (with --overwrite), which is deleted only now."""
        if not self.owner:
            return
        record = self.work / RUN_FILE
        if record.is_file():
            write_json_atomically(record, {**json.loads(record.read_text()), "state": "finished"})
        if self.work != self.staging:
            return
        old = self.out.with_name(f".{self.out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(self.out, old)
        os.replace(self.staging, self.out)
        shutil.rmtree(old, ignore_errors=True)
        self.work = self.out

    def __exit__(self, kind, error, trace) -> None:
        try:
            # A failed run removes what it created (an old run stays); an interrupted one (Ctrl-C) keeps its
            # checkpoints for --resume.
            failed = kind is not None and issubclass(kind, Exception)
            if failed and self.owner and (self.created or self.work == self.staging):
                shutil.rmtree(self.work, ignore_errors=True)
                if not self.out.exists():
                    self._lock.path.unlink(missing_ok=True)  # nothing left of a run that never was
        finally:
            if self._lock is not None:
                self._lock.release()

class FolderLock:
    """An exclusive lock on a run folder: `fcntl.flock` on the sibling file `.NAME.lock`, which names the
    holder. The kernel releases it when the holder exits, however it ends (kill -9 included)."""

    def __init__(self, out: Path):
        self.out, self.path, self.handle = out, out.with_name(f".{out.name}.lock"), None

    def acquire(self) -> None:
        if fcntl is None:
            return
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"output directory {self.out} is in use by {holder}; wait for that run to end or "
                              "choose another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"a unipetl run, process {os.getpid()}")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def latest_complete_checkpoint(folder: Path, log=print) -> Path | None:
    """The newest checkpoint that was written to the end; newer partial ones (a kill mid-write) are
    named, skipped and removed, so that the Trainer's own checkpoint rotation never meets them."""
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.rpartition("-")[2])
                         if p.name.rpartition("-")[2].isdigit() else -1, reverse=True)
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        log(f"--resume: skipping {checkpoint.name} ({problem}); it was being written when the run stopped")
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None. The Trainer writes trainer_state.json last."""
    from transformers.utils import SAFE_WEIGHTS_NAME

    for name in (SAFE_WEIGHTS_NAME, "optimizer.pt", "trainer_state.json", ELAPSED_FILE):
        if not (checkpoint / name).is_file():
            return f"{name} is missing"
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        return f"trainer_state.json is unreadable: {err}"
    return None


def elapsed_seconds(checkpoint: Path | None) -> float:
    """Training seconds recorded up to ``checkpoint`` (0 for a fresh run)."""
    if checkpoint is None:
        return 0.0
    try:
        return float(json.loads((checkpoint / ELAPSED_FILE).read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def run_arguments(**arguments: Any) -> dict:
    """What a run records of its arguments (and --resume compares): options without the reporting ones."""
    options = dict(arguments.pop("options"))
    for name in NOT_RECORDED:
        options.pop(name, None)
    return {**arguments, "options": options}
