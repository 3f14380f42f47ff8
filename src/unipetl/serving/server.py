"""HTTP serving of a `TaskBank`: FastAPI endpoints, dynamic micro-batching (batcher.py), Prometheus metrics.

    app = create_app(bank, max_batch_size=32, max_wait_ms=5.0)
    uvicorn.run(app, host="127.0.0.1", port=8000)      # or: unipetl serve --modules a=DIR b=DIR

Every error answer is ``{"detail": message}``; the message names the record and field at fault and what
was expected. Statuses: 404 unknown task / directory / route, 409 a task name already loaded, 413 body
too large, 422 malformed body or record or a refused module, 500 only for a failure of the server itself
(with its message), 503 while shutting down. No request can stop the server: every endpoint answers.

The app's view of the loaded tasks (for /health, /v1/tasks and the unknown-task check of /v1/predict)
is a snapshot renewed by its own load/unload endpoints, so those answers never wait on the bank's lock
while a batch runs; after changing the bank outside the app, call ``app.state.refresh_tasks()``.

POST /v1/tasks loads any module directory the server process can read: keep the server on a loopback or
otherwise trusted interface (`unipetl serve` binds 127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

from ..errors import ConfigError, DataError, ModuleFormatError, UnknownTaskError
from .batcher import Batcher, BatcherClosed, BatchError, check_record, describe_type

MAX_BODY_BYTES = 8 * 1024 * 1024
DRAIN_BYTES = 64 * 1024 * 1024  # of an oversized body, read and dropped before answering 413
MAX_RECORDS = 1024  # per request; a bigger job is a file for `unipetl predict --modules`
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")  # addressable as /v1/tasks/{name}
PUBLIC_FIELDS = ("task", "kind", "labels", "method", "stored_bytes")  # of a task's description (not its path)


class RequestError(Exception):
    """An answer other than 200: its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(bank, max_batch_size: int = 32, max_wait_ms: float = 5.0, *, max_body_bytes: int = MAX_BODY_BYTES,
               max_records: int = MAX_RECORDS) -> FastAPI:
    """A FastAPI app serving ``bank`` (see the module docstring); its batcher thread stops with the app."""
    metrics = _Metrics(CollectorRegistry())  # per app: two apps in one process never share counts
    batcher = Batcher(bank, max_batch_size, max_wait_ms, on_batch=metrics.batch_rows.observe)
    metrics.queued_rows.set_function(batcher.queued_rows)
    snapshot: dict[str, dict] = {}

    def refresh_tasks() -> dict[str, dict]:
        nonlocal snapshot
        snapshot = bank.tasks()
        metrics.tasks_loaded.set(len(snapshot))
        return snapshot

    refresh_tasks()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="unipetl task bank", lifespan=lifespan)
    app.state.bank, app.state.batcher, app.state.registry = bank, batcher, metrics.registry
    app.state.refresh_tasks = refresh_tasks

    @app.middleware("http")
    async def answer_and_count(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug of ours: answered with its message, the server stays up
            response = _error(500, f"internal error: {type(exc).__name__}: {exc}")
        route = request.scope.get("route")
        endpoint = f"{request.method} {route.path if route is not None else 'unmatched'}"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.get("/health")
    async def health():
        return {"status": "ok", "tasks": len(snapshot)}

    @app.get("/v1/tasks")
    async def list_tasks():
        return {"tasks": [_public(name, d) for name, d in snapshot.items()]}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict")
    async def predict(request: Request):
        """One record ``{"task": NAME, ...inputs}`` -> ``{"task", "prediction", ...}``; a list of them (tasks may
        differ) -> ``{"predictions": [...]}`` in order. Inputs as in `unipetl predict`: "text" (+ "text_pair"),
        "texts", or the task's own fields. Classification answers carry "probabilities".

        Inputs longer than the bank's max_length are truncated to it, not refused, and their answer carries
        ``"truncated": true``: a long review still gets a label, and the flag tells the client that only its
        beginning was read.
        """
        try:
            body = _json_body(await _read_body(request, max_body_bytes))
            records, single = _records(body, max_records)
            known = snapshot
            for where, record in _places(records, single):
                if record["task"] not in known:
                    raise RequestError(404, f"{where}: unknown task {record['task']!r}; "
                                            f"loaded tasks: {_names(known)}")
            try:
                outputs = await batcher.predict(records)
            except (UnknownTaskError, DataError) as err:
                raise _row_error(err, records, single, known, snapshot) from None
            except BatcherClosed as err:
                raise RequestError(503, str(err)) from None
            except BatchError as err:
                raise RequestError(500, str(err)) from None
            return outputs[0] if single else {"predictions": outputs}
        except RequestError as err:
            return _error(err.status, str(err))

    @app.post("/v1/tasks", status_code=201)
    async def load_task(request: Request):
        """Load a task module at run time: ``{"directory": DIR, "name": NAME}`` (name: default the folder's
        name). 201 with its description; 404 no such directory; 409 the name is taken; 422 the bank refuses
        the module (e.g. trained on another backbone: the fingerprint reason)."""
        try:
            body = _json_body(await _read_body(request, max_body_bytes))
            directory, name = _load_request(body)
            if name in snapshot:
                raise RequestError(409, f"name: task {name!r} is already loaded; unload it first "
                                        f"(DELETE /v1/tasks/{name}) or choose another name")
            try:
                description = await run_in_threadpool(bank.add, directory, name)  # takes the bank's lock
            except ConfigError as err:
                if name in await run_in_threadpool(bank.tasks):  # loaded meanwhile by another request
                    raise RequestError(409, f"name: {err}") from None
                raise RequestError(422, f"directory: {err}") from None
            except (ModuleFormatError, DataError) as err:
                raise RequestError(422, f"directory: {err}") from None
            except OSError as err:  # unreadable folder or file
                raise RequestError(422, f"directory: {directory}: cannot read the module ({err.strerror or err})") from None
            finally:
                await run_in_threadpool(refresh_tasks)
            return JSONResponse(_public(name, description), status_code=201)
        except RequestError as err:
            return _error(err.status, str(err))

    @app.delete("/v1/tasks/{name}")
    async def unload_task(name: str):
        """Unload a task; requests for it still waiting in a batch get 404 "task NAME was unloaded"."""
        try:
            await run_in_threadpool(bank.remove, name)  # takes the bank's lock: never mid-batch
        except UnknownTaskError as err:
            return _error(404, str(err))
        finally:
            await run_in_threadpool(refresh_tasks)
        return {"unloaded": name, "tasks": len(snapshot)}

    @app.exception_handler(404)
    async def unknown_route(request: Request, exc):
        return _error(404, f"no such endpoint: {request.method} {request.url.path}; endpoints: GET /health, "
                           "GET /v1/tasks, POST /v1/tasks, DELETE /v1/tasks/{name}, POST /v1/predict, GET /metrics")

    return app


class _Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter("unipetl_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.batch_rows = Histogram("unipetl_batch_rows", "rows per model batch (bank.predict call)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry)
        self.latency = Histogram("unipetl_request_latency_seconds", "time to answer a request, by endpoint",
                                 ["endpoint"], registry=registry)
        self.tasks_loaded = Gauge("unipetl_tasks_loaded", "task modules loaded in the bank", registry=registry)
        self.queued_rows = Gauge("unipetl_queued_rows", "rows waiting for a model batch", registry=registry)


# ------------------------------------------------------------------ reading requests
async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 once it passes ``limit``. The rest of an oversized body is read and dropped (up to
    DRAIN_BYTES), so that the client, still sending, gets the answer instead of a reset connection."""
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if too_big:
            if size > DRAIN_BYTES:
                break
            continue
        chunks.append(chunk)
    if too_big:
        raise RequestError(413, f"body: {int(declared) if declared and declared.isdigit() else size:,} bytes; "
                                f"at most {limit:,}")
    return b"".join(chunks)


def _json_body(raw: bytes):
    if not raw.strip():
        raise RequestError(422, "body: empty; expected JSON")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also bad UTF-8 and absurdly deep nesting
        raise RequestError(422, f"body: not valid JSON ({getattr(exc, 'msg', exc)})") from None


def _records(body, max_records: int) -> tuple[list[dict], bool]:
    """The records of a predict body and whether it was a single object; every field checked."""
    if isinstance(body, dict):
        records, single = [body], True
    elif isinstance(body, list):
        if not body:
            raise RequestError(422, "body: an empty list; expected at least one {\"task\": NAME, ...} object")
        if len(body) > max_records:
            raise RequestError(422, f"body: {len(body):,} records; at most {max_records:,} per request "
                                    f"(`unipetl predict --modules` serves files)")
        records, single = body, False
    else:
        raise RequestError(422, f"body: expected a {{\"task\": NAME, ...}} object or a list of them, "
                                f"got {_type(body)}")
    for where, record in _places(records, single):
        try:
            check_record(record, where)
        except DataError as err:
            raise RequestError(422, str(err)) from None
    return records, single


def _load_request(body) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise RequestError(422, f"body: expected an object {{\"directory\": DIR, \"name\": NAME}}, got {_type(body)}")
    unknown = sorted(set(body) - {"directory", "name"})
    if unknown:
        raise RequestError(422, f"body: unknown field {unknown[0]!r}; expected 'directory' and optionally 'name'")
    directory = body.get("directory")
    if not isinstance(directory, str) or not directory:
        raise RequestError(422, f"directory: expected the path of a task module folder (a string), "
                                f"got {_type(directory)}")
    if "\0" in directory or not Path(directory).exists():
        raise RequestError(404, f"directory: {directory} does not exist")
    name = body.get("name")
    if name is None:
        name = Path(directory).resolve().name
    elif not isinstance(name, str):
        raise RequestError(422, f"name: expected a string, got {_type(name)}")
    if not NAME_PATTERN.fullmatch(name):
        raise RequestError(422, f"name: {name!r} is not a usable task name; expected letters, digits, '_', '.' or "
                                f"'-' (up to 100, not starting with '.' or '-')")
    return directory, name


# ------------------------------------------------------------------ answers
def _row_error(err: Exception, records: list, single: bool, before: dict, now: dict) -> RequestError:
    """A bank refusal of one row, told in the caller's terms (the bank counts rows within its batch)."""
    row = getattr(err, "row", 0)
    where = "body" if single else f"record {row}"
    if isinstance(err, UnknownTaskError):
        task = records[row]["task"]
        if task in before:
            return RequestError(404, f"{where}: task {task!r} was unloaded before the request was served; "
                                     f"loaded tasks: {_names(now)}")
        return RequestError(404, f"{where}: unknown task {task!r}; loaded tasks: {_names(now)}")
    return RequestError(422, f"{where}: {re.sub(r'^record [0-9]+:? ?', '', str(err))}")


def _places(records: list, single: bool):
    return (("body" if single else f"record {i}", r) for i, r in enumerate(records))


def _public(name: str, description: dict) -> dict:
    return {"name": name, **{key: description.get(key) for key in PUBLIC_FIELDS}}


def _names(tasks: dict) -> str:
    return ", ".join(sorted(tasks)) or "none"


_type = describe_type


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)
