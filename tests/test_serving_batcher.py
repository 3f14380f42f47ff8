"""Dynamic micro-batching (serving/batcher.py) against a fake bank: who gets which rows, how requests share
bank calls, and how failures stay with their batch or request. Behaviour only, no timing claims."""

import asyncio
import threading

import pytest

from unipetl.errors import DataError, UnknownTaskError
from unipetl.serving.batcher import Batcher, BatchError

TIMEOUT = 10


class FakeBank:
    """bank.predict's contract: one output per record in order, a bad record's exception in its place."""

    def __init__(self, tasks=("a", "b"), gate=None, fail_when=None):
        self.known = set(tasks)
        self.calls = []  # the records of every predict call
        self.gate = gate  # a threading.Event the first call waits on (to let requests queue up)
        self.fail_when = fail_when  # records -> True: raise for the whole batch
        self.lock = threading.RLock()

    def predict(self, records, on_error="raise"):
        assert on_error == "return"
        self.calls.append(list(records))
        if self.gate is not None and len(self.calls) == 1:
            assert self.gate.wait(TIMEOUT)
        if self.fail_when is not None and self.fail_when(records):
            raise RuntimeError("the backbone ran out of memory")
        out = []
        for i, record in enumerate(records):
            if record["task"] not in self.known:
                out.append(UnknownTaskError(f"unknown task {record['task']!r}; loaded tasks: a, b"))
            elif not isinstance(record.get("text"), str):
                out.append(DataError(f"record {i}: field 'text' must be a string"))
            else:
                out.append({"task": record["task"], "prediction": record["text"].upper()})
        return out


def rows(task, *texts):
    return [{"task": task, "text": t} for t in texts]


@pytest.fixture
def make():
    made = []

    def build(bank, **kw):
        batcher = Batcher(bank, **kw)
        made.append(batcher)
        return batcher

    yield build
    for batcher in made:
        batcher.close()


def queue_behind_a_held_call(bank, batcher):
    """Start a first request that holds the bank (bank.gate), so that the next ones queue up together. It fills a
    batch, so it goes at once."""
    first = batcher.submit(rows("a", *["first"] * batcher.max_batch_size))
    for _ in range(1000):
        if bank.calls:
            return first
        threading.Event().wait(0.005)
    raise AssertionError("the first call never reached the bank")


def test_concurrent_requests_get_their_own_rows_back_in_order(make):
    bank = FakeBank()
    batcher = make(bank, max_batch_size=64, max_wait_ms=20)

    async def main():
        requests = [rows("ab"[i % 2], *(f"r{i}-{j}" for j in range(1 + i % 4))) for i in range(20)]
        answers = await asyncio.gather(*(batcher.predict(r) for r in requests))
        return requests, answers

    requests, answers = asyncio.run(main())
    for request, answer in zip(requests, answers):
        assert [o["prediction"] for o in answer] == [r["text"].upper() for r in request]
        assert [o["task"] for o in answer] == [r["task"] for r in request]


def test_requests_of_different_tasks_share_one_bank_call(make):
    bank = FakeBank(gate=threading.Event())
    batcher = make(bank, max_batch_size=32, max_wait_ms=1000)
    first = queue_behind_a_held_call(bank, batcher)
    futures = [batcher.submit(rows("a", "x", "y")), batcher.submit(rows("b", "z")), batcher.submit(rows("a", "w"))]
    bank.gate.set()
    assert first.result(TIMEOUT)[0]["prediction"] == "FIRST"
    answers = [f.result(TIMEOUT) for f in futures]
    assert len(bank.calls) == 2  # the held one, then all three queued requests together
    assert [r["task"] for r in bank.calls[1]] == ["a", "a", "b", "a"]
    assert [[o["prediction"] for o in a] for a in answers] == [["X", "Y"], ["Z"], ["W"]]


def test_max_batch_size_is_respected_and_big_requests_are_split(make):
    sizes = []
    bank = FakeBank(gate=threading.Event())
    batcher = make(bank, max_batch_size=4, max_wait_ms=1000, on_batch=sizes.append)
    first = queue_behind_a_held_call(bank, batcher)
    big = batcher.submit(rows("a", *(f"t{i}" for i in range(10))))
    small = [batcher.submit(rows("b", f"s{i}")) for i in range(3)]
    bank.gate.set()
    first.result(TIMEOUT)
    assert [o["prediction"] for o in big.result(TIMEOUT)] == [f"T{i}" for i in range(10)]
    assert [f.result(TIMEOUT)[0]["prediction"] for f in small] == ["S0", "S1", "S2"]
    assert all(len(call) <= 4 for call in bank.calls)
    assert sum(len(call) for call in bank.calls) == 4 + 10 + 3
    assert sizes == [len(call) for call in bank.calls]  # every bank call is recorded for metrics
    assert sizes[1:] == [4, 4, 4, 1]  # full batches while rows wait


def test_a_bank_error_fails_only_its_batch_and_the_worker_survives(make):
    bank = FakeBank(gate=threading.Event(), fail_when=lambda records: any(r["text"] == "boom" for r in records))
    batcher = make(bank, max_batch_size=2, max_wait_ms=1000)
    first = queue_behind_a_held_call(bank, batcher)
    doomed = [batcher.submit(rows("a", "boom")), batcher.submit(rows("b", "same batch"))]
    spared = batcher.submit(rows("a", "next batch"))
    bank.gate.set()
    first.result(TIMEOUT)
    for future in doomed:
        with pytest.raises(BatchError, match="the model batch of 2 rows failed: RuntimeError: the backbone ran out of memory"):
            future.result(TIMEOUT)
    assert spared.result(TIMEOUT)[0]["prediction"] == "NEXT BATCH"
    assert batcher.submit(rows("b", "later")).result(TIMEOUT)[0]["prediction"] == "LATER"


def test_a_bad_row_fails_only_its_own_request(make):
    bank = FakeBank(gate=threading.Event())
    batcher = make(bank, max_batch_size=32, max_wait_ms=1000)
    first = queue_behind_a_held_call(bank, batcher)
    good = batcher.submit(rows("a", "fine"))
    unknown = batcher.submit(rows("a", "ok") + rows("nope", "who"))
    malformed = batcher.submit([{"task": "b", "text": 3}])
    also_good = batcher.submit(rows("b", "also fine"))
    bank.gate.set()
    first.result(TIMEOUT)
    assert good.result(TIMEOUT)[0]["prediction"] == "FINE"
    assert len(bank.calls) == 2  # the bad rows were in the same bank call as the good ones
    assert also_good.result(TIMEOUT)[0]["prediction"] == "ALSO FINE"
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'") as info:
        unknown.result(TIMEOUT)
    assert info.value.row == 1  # its index in its own request, not in the batch
    with pytest.raises(DataError, match="field 'text'") as info:
        malformed.result(TIMEOUT)
    assert info.value.row == 0


def test_a_cancelled_request_takes_no_bank_rows_and_close_fails_waiting_ones(make):
    bank = FakeBank(gate=threading.Event())
    batcher = make(bank, max_batch_size=32, max_wait_ms=1000)
    first = queue_behind_a_held_call(bank, batcher)
    cancelled = batcher.submit(rows("a", "never"))
    assert cancelled.cancel()
    kept = batcher.submit(rows("b", "kept"))
    bank.gate.set()
    first.result(TIMEOUT)
    assert kept.result(TIMEOUT)[0]["prediction"] == "KEPT"
    assert all(r["text"] != "never" for call in bank.calls for r in call)
    assert batcher.submit([]).result(TIMEOUT) == []

    batcher.close()
    with pytest.raises(Exception, match="closed"):
        batcher.submit(rows("a", "late"))


def test_the_worker_survives_a_failing_metrics_callback(make):
    def broken(size):
        raise ValueError("metrics down")

    batcher = make(FakeBank(), max_batch_size=8, max_wait_ms=1, on_batch=broken)
    assert batcher.submit(rows("a", "x")).result(TIMEOUT)[0]["prediction"] == "X"
    assert batcher.submit(rows("b", "y")).result(TIMEOUT)[0]["prediction"] == "Y"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size=0"):
        Batcher(FakeBank(), max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms=-1"):
        Batcher(FakeBank(), max_wait_ms=-1)


def test_the_event_loop_is_not_blocked_while_the_bank_runs(make):
    bank = FakeBank(gate=threading.Event())
    batcher = make(bank, max_batch_size=8, max_wait_ms=1)

    async def main():
        pending = asyncio.ensure_future(batcher.predict(rows("a", "held")))
        ticks = 0
        while not bank.calls:  # the loop keeps running while the worker is inside bank.predict
            await asyncio.sleep(0.005)
        for _ in range(5):
            await asyncio.sleep(0)
            ticks += 1
        bank.gate.set()
        return ticks, await asyncio.wait_for(pending, TIMEOUT)

    ticks, answer = asyncio.run(main())
    assert ticks == 5 and answer[0]["prediction"] == "HELD"
