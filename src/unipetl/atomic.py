"""Writes that never leave a half-written file or directory behind.

Replacing a module directory (issue 20). The on-disk format stays a plain folder (format-1 modules and
the committed compat fixtures are read as they are), so the folder itself is swapped:

- one writer at a time: an exclusive ``flock`` on ``.<name>.lock`` beside the folder, held for the whole
  replace. A second save waits for it (up to ``LOCK_TIMEOUT_S``, then a ModuleFormatError naming the
  folder), so nothing of the first is lost. The lock file is removed by its holder; a waiter that finds
  its locked file unlinked takes the lock anew (the usual flock + unlink pattern).
- under the lock, leftovers of writers killed mid-save (``.<name>.XXXXXXXX`` temporary folders,
  ``.<name>.old-<pid>`` moved-aside modules) are removed: no live writer can own them.
- the new folder is written beside the old one, then the two are exchanged in one step
  (Linux ``renameat2(RENAME_EXCHANGE)``), so the name holds the old or the new module at every
  instant; then the old one is deleted. Where the system cannot exchange (other OSes, some network
  file systems), the old folder is renamed aside and the new one renamed in, back to back under the
  lock; storage.read_module waits out that gap (`moved_aside`).

Not chosen: versioned subfolders or a symlink flipped in place would keep a name too, but would change
what a module folder is (format 1 is header + weights directly in it) and break copying it around.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .errors import ModuleFormatError

try:
    import fcntl
except ImportError:  # not POSIX: saves are not locked against each other
    fcntl = None

LOCK_TIMEOUT_S = 60.0


def write_directory_atomically(directory, files: dict[str, bytes], marker: str) -> None:
    """Write ``files`` into ``directory`` via a temporary sibling directory swapped into place (see above).

    An existing directory is replaced only if it holds ``marker`` (a module we wrote), so a wrong
    path never deletes a user's files.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        _remove_leftovers(directory)
        if directory.exists() and (not directory.is_dir()
                                   or (any(directory.iterdir()) and not (directory / marker).exists())):
            raise ModuleFormatError(
                f"{directory} exists and is not a module written by unipetl; refusing to overwrite it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            for name, data in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                with open(tmp / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())  # the data is on disk before the name points at it
            if not os.path.lexists(directory):
                os.replace(tmp, directory)
            elif not _exchange(tmp, directory):  # (after an exchange, tmp holds the old module)
                old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
                os.replace(directory, old)
                try:
                    os.replace(tmp, directory)
                except BaseException:
                    os.replace(old, directory)
                    raise
                _remove(old)
            _fsync_directory(directory.parent)
        finally:
            if os.path.lexists(tmp):
                _remove(tmp)


def moved_aside(directory) -> list[Path]:
    """Old modules a save renamed aside (``.<name>.old-<pid>``): while one exists and the name does not, a save
    is between its two renames (or was killed there)."""
    directory = Path(directory)
    pattern = re.compile(rf"\.{re.escape(directory.name)}\.old-\d+")
    try:
        return [p for p in directory.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []


@contextlib.contextmanager
def _locked(directory: Path):
    if fcntl is None:
        yield
        return
    lock = directory.with_name(f".{directory.name}.lock")
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ModuleFormatError(
                            f"{directory}: another save of this module is in progress (its lock {lock.name} is held "
                            f"for over {LOCK_TIMEOUT_S:g} s); refusing to write, try again when it is done") from None
                    time.sleep(0.01)
            if _same_file(fd, lock):  # else the holder before us unlinked it: lock the new file
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still holding it: no one else can hold this file now
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _remove_leftovers(directory: Path) -> None:
    """Under the lock: temporary and moved-aside folders of this name are a killed writer's (exact names only,
    so that module 'm.v2' keeps its own)."""
    pattern = re.compile(rf"\.{re.escape(directory.name)}\.([a-z0-9_]{{8}}|old-\d+)")
    for path in directory.parent.iterdir():
        if pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():  # a symlinked module: drop the link, never its target
        path.unlink()
    else:
        shutil.rmtree(path)


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # not possible everywhere; the renames are what matters
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the system or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def write_json_atomically(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
