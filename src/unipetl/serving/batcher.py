"""Dynamic micro-batching: concurrent requests (each a list of records, possibly of several tasks) share
one `bank.predict` call.

One worker thread owns every model call, so the event loop never runs the model and the bank sees one
batch at a time. The worker takes queued rows until the batch holds ``max_batch_size`` rows or
``max_wait_ms`` have passed since the oldest of them was queued, calls ``bank.predict(rows,
on_error="return")`` once, and hands each request its own rows' outputs. A request larger than
``max_batch_size`` is split over consecutive batches (a bank call never gets more rows than that).

Failures stay with their request:
- a bad row (the bank returns its exception in the row's place) fails the request that sent it, with
  that exception (its ``row`` attribute: the row's index within the request); the other requests of the
  batch get their answers;
- an exception from the bank for the whole batch fails that batch's requests with a `BatchError` naming
  it; the worker carries on with the next batch. `check_record` refuses, before queueing, the faults
  known to do that (a number or lone surrogate where text goes reaches the tokenizer, which raises for
  the whole call).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from typing import Callable

from ..errors import DataError, UnipetlError


def check_record(record, where: str) -> None:
    """Refuse (DataError naming ``where`` and the field) a record whose fault would fail a whole bank call
    rather than its own row: a number, null or unencodable string where text goes reaches the tokenizer,
    which raises for the batch. Also: an object with a string "task" and at least one input."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a {{\"task\": NAME, ...}} object, got {describe_type(record)}")
    if "task" not in record:
        raise DataError(f"{where}: missing field 'task' (the name of a loaded task)")
    if not isinstance(record["task"], str):
        raise DataError(f"{where}: field 'task' must be a string (a task name), got {describe_type(record['task'])}")
    if len(record) == 1:
        raise DataError(f"{where}: no inputs; give 'text' (and 'text_pair'), 'texts', or the task's own fields")
    # The bank checks what reaches the tokenizer (every task's own fields too) per record; these are the
    # generic input fields, checked here to name them.
    for key, value in record.items():
        if key not in ("text", "text_pair", "texts"):
            continue
        texts = value if key == "texts" else [value]
        if key == "texts" and (not isinstance(value, list) or not value):
            got = "an empty list" if value == [] else describe_type(value)
            raise DataError(f"{where}: field 'texts' must be a non-empty list of strings, got {got}")
        for text in texts:
            if not isinstance(text, str):
                expected = "a non-empty list of strings" if key == "texts" else "a string"
                got = f"a list holding a {describe_type(text)}" if key == "texts" else describe_type(text)
                raise DataError(f"{where}: field {key!r} must be {expected}, got {got}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(f"{where}: field {key!r} holds a lone surrogate (\\ud800-\\udfff); expected "
                                f"valid Unicode text") from None


def describe_type(value) -> str:
    """A JSON value's type in JSON's words."""
    return "null" if value is None else {dict: "object", list: "list", str: "string", bool: "boolean",
                                         int: "number", float: "number"}.get(type(value), type(value).__name__)


class BatchError(UnipetlError):
    """The bank raised for a whole batch: every request in it fails with this (the cause is chained)."""


class BatcherClosed(UnipetlError):
    """The batcher was closed before the request was served."""


class _Request:
    __slots__ = ("records", "future", "queued_at", "outputs", "next_row", "pending", "failed")

    def __init__(self, records: list):
        self.records = records
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.queued_at = time.monotonic()
        self.outputs: list = [None] * len(records)
        self.next_row = 0  # first row not yet put into a batch
        self.pending = len(records)  # rows not yet answered
        self.failed = False


class Batcher:
    """Queue requests from any thread or event loop; one worker thread serves them in micro-batches."""

    def __init__(self, bank, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None):
        if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size!r}: expected a positive integer")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms={max_wait_ms!r}: expected zero or more milliseconds")
        self.bank = bank
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch  # called with the row count of every bank call (metrics)
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="unipetl-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers' side
    def submit(self, records: list) -> concurrent.futures.Future:
        """A future of the per-row outputs of ``records`` (in order); it fails as described above."""
        request = _Request(list(records))
        if not request.records:
            request.future.set_result([])
            return request.future
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed; no more requests are taken")
            self._queue.append(request)
            self._cond.notify()
        return request.future

    async def predict(self, records: list) -> list:
        """``submit`` for an event loop: awaits the outputs without blocking the loop."""
        return await asyncio.wrap_future(self.submit(records))

    def queued_rows(self) -> int:
        """Rows waiting for a batch (metrics: how far behind the model is)."""
        with self._cond:
            return self._queued_rows()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking requests, fail the queued ones with BatcherClosed, and end the worker."""
        with self._cond:
            self._closed = True
            left, self._queue = list(self._queue), collections.deque()
            self._cond.notify_all()
        for request in left:
            self._fail(request, BatcherClosed("the batcher was closed before this request was served"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker's side
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._serve(batch)
            except Exception as exc:  # a bug of ours: fail the batch, keep the worker alive
                for request, _, _ in batch:
                    self._fail(request, BatchError(f"internal error while serving a batch: {type(exc).__name__}: {exc}"))

    def _next_batch(self) -> list[tuple[_Request, int, int]] | None:
        """(request, start, stop) slices of up to max_batch_size rows, once full or the oldest row waited long enough."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._queue:
                    deadline = self._queue[0].queued_at + self.max_wait_s
                    remaining = deadline - time.monotonic()
                    if self._queued_rows() >= self.max_batch_size or remaining <= 0:
                        return self._take()
                    self._cond.wait(remaining)
                else:
                    self._cond.wait()

    def _queued_rows(self) -> int:
        return sum(len(r.records) - r.next_row for r in self._queue)

    def _take(self) -> list[tuple[_Request, int, int]]:
        batch, room = [], self.max_batch_size
        while self._queue and room:
            request = self._queue[0]
            if request.next_row == 0 and not request.future.set_running_or_notify_cancel():
                self._queue.popleft()  # its caller gave up before any row ran: it takes no batch space
                continue
            start = request.next_row
            stop = min(len(request.records), start + room)
            batch.append((request, start, stop))
            request.next_row = stop
            room -= stop - start
            if stop == len(request.records):
                self._queue.popleft()
        return batch

    def _serve(self, batch: list[tuple[_Request, int, int]]) -> None:
        live = [(r, a, b) for r, a, b in batch if not r.failed]  # a failed request's later slices are skipped
        rows = [record for request, start, stop in live for record in request.records[start:stop]]
        if not rows:
            return
        if self.on_batch is not None:
            try:
                self.on_batch(len(rows))
            except Exception:  # metrics must never cost an answer
                pass
        try:
            outputs = self.bank.predict(rows, on_error="return")
            if not isinstance(outputs, list) or len(outputs) != len(rows):
                raise BatchError(f"bank.predict returned {type(outputs).__name__} of "
                                 f"{len(outputs) if hasattr(outputs, '__len__') else '?'} outputs for {len(rows)} rows")
        except Exception as exc:
            error = BatchError(f"the model batch of {len(rows)} rows failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            for request, _, _ in live:
                self._fail(request, error)
            return
        position = 0
        for request, start, stop in live:
            request.outputs[start:stop] = outputs[position:position + stop - start]
            position += stop - start
            request.pending -= stop - start
            bad = next(((i, o) for i, o in enumerate(request.outputs[start:stop], start) if isinstance(o, BaseException)),
                       None)
            if bad is not None:
                bad[1].row = bad[0]  # where in the caller's own list (the bank's message counts in the batch)
                self._fail(request, bad[1])
            elif request.pending == 0:
                _settle(request.future, result=request.outputs)

    def _fail(self, request: _Request, error: BaseException) -> None:
        request.failed = True
        with self._cond:  # its rows not yet batched are dropped
            if request in self._queue:
                self._queue.remove(request)
        _settle(request.future, error=error)


def _settle(future: concurrent.futures.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # failed by an earlier slice, or cancelled by its caller
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled in between
        pass
