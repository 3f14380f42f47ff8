"""Scale-out serving with Ray Serve's model multiplexing: many replicas, each one backbone and a cache of tasks.

pip install 'unipetl[ray]'. Each replica of the deployment holds one `TaskBank` (one frozen backbone) and
loads task modules into it on demand through ``@serve.multiplexed``: the multiplexed model id of a request
is the name of its task, Serve's router sends it to a replica that already holds that task when one does,
and a replica holding ``max_tasks_per_replica`` tasks unloads its least recently used one from the bank
before loading another (memory follows the cache).

    from ray import serve
    from unipetl.serving.ray_serve import build_app

    modules = {"sst2": "modules/sst2", "cola": "modules/cola"}   # NAME -> task module directory
    handle = serve.run(build_app(modules, max_tasks_per_replica=16, num_replicas=2))

The directories must be readable at the same paths on every node that runs a replica; every module must be
trained on the same backbone (``model``; None: the one recorded in the first module a replica loads).

Clients name the task as the multiplexed model id:

    handle.options(multiplexed_model_id="sst2").predict.remote([{"text": "a gem"}]).result()
    curl -H "serve_multiplexed_model_id: sst2" -d '[{"text": "a gem"}]' http://127.0.0.1:8000/

A body is one record or a list of them, in the layout of `TaskBank.predict`; a record's "task" may be left
out (it is the routed task) and must not name another. The answer is one output (or a list), as
`TaskBank.predict` gives it. HTTP errors are ``{"detail": message}``: 404 unknown task, 422 malformed
body or record, 500 a configured module that cannot be loaded. Through a handle the bank's own errors
(UnknownTaskError, DataError) are raised. A request serves one task: batches mixing tasks are the
single-machine server's (`unipetl serve`), since Serve's batching splits batches by model id.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..errors import ConfigError, DataError, UnknownTaskError
from ..extras import optional_import
from ..module_format import HEADER_FILE
from .bank import TaskBank

DEPLOYMENT_NAME = "unipetl-taskbank"


def _serve():
    return optional_import("ray.serve", "ray", "scale-out serving with Ray Serve")


class LoadedTask:
    """What the multiplexer caches for a task. Serve calls ``__del__`` when it evicts it (and Python calls it
    again when the object is collected): the first call removes the task from the bank, later ones do nothing."""

    def __init__(self, bank: TaskBank, name: str):
        self.bank, self.name = bank, name

    def __del__(self):
        bank = self.__dict__.pop("bank", None)
        if bank is not None:
            try:
                bank.remove(self.name)
            except UnknownTaskError:
                pass


class TaskBankReplica:
    """One replica: a TaskBank, and the task modules it may load (NAME -> directory)."""

    def __init__(self, modules: dict, model: str | None = None, max_tasks: int = 16, max_length: int | None = None):
        serve = _serve()
        self.modules = dict(modules)
        self.bank = TaskBank(model, max_length=max_length)
        # Loads, evictions and predictions one at a time: an eviction never lands between a request's load and
        # its forward (the bank's own lock serializes the forwards anyway).
        self.serial = asyncio.Lock()

        @serve.multiplexed(max_num_models_per_replica=max_tasks)
        async def load_task(name: str) -> LoadedTask:
            await asyncio.to_thread(self.bank.add, self.modules[name], name)
            return LoadedTask(self.bank, name)

        self.load_task = load_task

    async def predict(self, records):
        """Outputs for ``records`` (one record or a list) of the task named by the multiplexed model id."""
        name = _serve().get_multiplexed_model_id()
        single = isinstance(records, dict)
        rows = [records] if single else records
        if not isinstance(rows, list) or not rows:
            got = "an empty list" if isinstance(rows, list) else type(records).__name__
            raise DataError(f"body: expected a record (an object) or a non-empty list of them, got {got}")
        if name not in self.modules:
            given = f"unknown task {name!r}" if name else "no task named (set the multiplexed model id to its name)"
            raise UnknownTaskError(f"{given}; tasks: {', '.join(sorted(self.modules))}")
        rows = [_routed(i, row, name) for i, row in enumerate(rows)]
        async with self.serial:
            await self.load_task(name)
            outputs = await asyncio.to_thread(self.bank.predict, rows)
        return outputs[0] if single else outputs

    async def __call__(self, request):
        """HTTP: POST a record or a list of them, the task in the ``serve_multiplexed_model_id`` header."""
        from starlette.responses import JSONResponse

        try:
            try:
                body = await request.json()
            except ValueError as err:
                raise DataError(f"body: not valid JSON ({err})") from None
            return JSONResponse(await self.predict(body))
        except UnknownTaskError as err:
            return JSONResponse({"detail": err.args[0]}, status_code=404)
        except DataError as err:
            return JSONResponse({"detail": str(err)}, status_code=422)
        except Exception as err:
            return JSONResponse({"detail": f"{type(err).__name__}: {err}"}, status_code=500)

    async def tasks(self) -> dict:
        """The tasks this replica's bank holds now (those in its multiplexed cache)."""
        return self.bank.tasks()


def _routed(i: int, record, name: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"record {i}: expected an object, got {type(record).__name__}")
    if record.get("task", name) != name:
        raise DataError(f"record {i}: task {record['task']!r} is not the routed task {name!r} (one task per request)")
    return {**record, "task": name}


def build_app(modules: dict, model: str | None = None, max_tasks_per_replica: int = 16, num_replicas: int = 1,
              max_length: int | None = None, ray_actor_options: dict | None = None):
    """The bound Serve application (for ``serve.run``): ``num_replicas`` replicas, each caching up to
    ``max_tasks_per_replica`` of ``modules`` (NAME -> module directory). ``ray_actor_options``: a replica's
    resources, e.g. {"num_cpus": 2}."""
    serve = _serve()
    if not isinstance(modules, dict) or not modules:
        raise ConfigError("modules: expected a non-empty mapping NAME -> task module directory")
    resolved = {}
    for name, directory in modules.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"modules: task name {name!r} is not a non-empty string")
        path = Path(directory).resolve()
        if not (path / HEADER_FILE).is_file():
            raise ConfigError(f"modules: {name}={directory} is not a task module directory (no {HEADER_FILE})")
        resolved[name] = str(path)
    options = {"name": DEPLOYMENT_NAME, "num_replicas": num_replicas}
    if ray_actor_options is not None:
        options["ray_actor_options"] = ray_actor_options
    deployment = serve.deployment(TaskBankReplica).options(**options)
    return deployment.bind(resolved, model, max_tasks_per_replica, max_length)
