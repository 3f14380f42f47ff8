"""Scale-out serving with Ray Serve's model multiplexing (serving/ray_serve.py), on a local Ray instance.

Three task modules on the real MiniLM (a classification, a sentence-pair and a regression task). Through a
deployment handle and over HTTP, every answer equals `TaskBank.predict` in this process (to 1e-5), whichever
task the multiplexed model id names; with one task per replica, loading a second task unloads the first
from the replica's bank (the bank follows Serve's cache) and the answers stay right; with two replicas of one
task each, every task's requests go to the replica that holds it (no reloads). Slow: about a minute,
most of it starting Ray; skipped when ray is not installed (pip install 'unipetl[ray]').
"""

import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from unipetl import get_petl_model  # noqa: E402
from unipetl.errors import DataError, UnknownTaskError  # noqa: E402
from unipetl.serving import TaskBank  # noqa: E402
from unipetl.serving.ray_serve import TaskBankReplica, build_app  # noqa: E402

pytestmark = pytest.mark.slow

TIME_LIMIT_S = 240  # the whole module; a hung deployment fails the test instead of the run
RESULT_TIMEOUT_S = 120
TOLERANCE = 1e-5
TASKS = {  # module name -> (task in the header, kind, labels)
    "sst2": ("sst2", "classification", 2),
    "rte": ("rte", "classification", 2),
    "stsb": ("stsb", "regression", 1),
}
RECORDS = {
    "sst2": [{"text": "a gripping, beautifully acted film"}, {"text": "dull and far too long"}],
    "rte": [{"text": "The cat sat on the mat.", "text_pair": "A cat is sitting."}],
    "stsb": [{"text": "A man plays a guitar.", "text_pair": "Someone is playing music."}],
}


def make_module(directory, path: str, name: str, seed: int):
    from transformers import AutoModelForSequenceClassification

    task, kind, labels = TASKS[name]
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=labels)
    if kind == "regression":
        model.config.problem_type = "regression"
    petl = get_petl_model(model, "lora")
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in petl.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    petl.save(directory, task={"name": task, "kind": kind, "mode": "classify", "max_length": 64})
    petl.unload()
    return str(directory)


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    from unipetl.defaults import default_model_path

    path = default_model_path()
    root = tmp_path_factory.mktemp("ray_modules")
    return {name: make_module(root / name, path, name, seed) for seed, name in enumerate(TASKS)}


@pytest.fixture(scope="module")
def expected(modules):
    """Each task's outputs for its records, from a TaskBank in this process."""
    bank = TaskBank()
    for name, directory in modules.items():
        bank.add(directory, name)
    return {name: bank.predict([{"task": name, **r} for r in records]) for name, records in RECORDS.items()}


def _timeout(signum, frame):
    raise TimeoutError(f"test_ray_serve ran past {TIME_LIMIT_S}s")


@pytest.fixture(scope="module")
def http_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray(http_port):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(TIME_LIMIT_S)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        yield
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


def assert_same(got: list, want: list, where: str):
    assert len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["task"] == w["task"] and g.keys() == w.keys(), (where, i, g, w)
        if isinstance(w["prediction"], float):
            assert g["prediction"] == pytest.approx(w["prediction"], abs=TOLERANCE), (where, i)
        else:
            assert g["prediction"] == w["prediction"], (where, i)
        for label, p in w.get("probabilities", {}).items():
            assert g["probabilities"][label] == pytest.approx(p, abs=TOLERANCE), (where, i, label)


def ask(handle, name, records):
    return handle.options(multiplexed_model_id=name).predict.remote(records).result(timeout_s=RESULT_TIMEOUT_S)


def post(port: int, body, name: str | None):
    headers = {"Content-Type": "application/json"}
    if name is not None:
        headers["serve_multiplexed_model_id"] = name
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=RESULT_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_requests_routed_by_task_match_the_bank_in_process(local_ray, modules, expected, http_port):
    handle = serve.run(build_app(modules, max_tasks_per_replica=3), name="bank3", route_prefix="/")
    for name in ["sst2", "rte", "stsb", "sst2", "stsb"]:  # tasks in turn, some twice (a cache hit)
        assert_same(ask(handle, name, RECORDS[name]), expected[name], f"handle {name}")
    assert set(handle.tasks.remote().result(timeout_s=RESULT_TIMEOUT_S)) == set(TASKS)

    # A single record (not a list) gets a single output; a record may name its task, if it is the routed one.
    one = ask(handle, "rte", {"task": "rte", **RECORDS["rte"][0]})
    assert_same([one], expected["rte"], "single record")

    with pytest.raises(UnknownTaskError, match="sst2"):  # names the tasks there are
        ask(handle, "nope", RECORDS["sst2"])
    with pytest.raises(DataError, match="routed task"):
        ask(handle, "sst2", [{"task": "rte", "text": "x"}])

    # Over HTTP, the task in the serve_multiplexed_model_id header.
    status, body = post(http_port, RECORDS["sst2"], "sst2")
    assert status == 200, body
    assert_same(body, expected["sst2"], "http sst2")
    status, body = post(http_port, RECORDS["stsb"][0], "stsb")
    assert status == 200, body
    assert_same([body], expected["stsb"], "http stsb")
    status, body = post(http_port, RECORDS["sst2"], None)
    assert status == 404 and "multiplexed model id" in body["detail"], body
    status, body = post(http_port, [{"txet": "typo"}], "sst2")
    assert status == 422, body
    serve.delete("bank3")


def test_eviction_unloads_the_task_from_the_bank(local_ray, modules, expected):
    handle = serve.run(build_app(modules, max_tasks_per_replica=1), name="bank1", route_prefix=None)

    def held():
        return set(handle.tasks.remote().result(timeout_s=RESULT_TIMEOUT_S))

    for name in ["sst2", "rte", "sst2", "stsb"]:
        assert_same(ask(handle, name, RECORDS[name]), expected[name], f"cache of one, {name}")
        assert held() == {name}  # the one before was evicted from Serve's cache and so from the bank

    # Requests for different tasks at once: each load evicts another task, never one a request is using.
    names = ["sst2", "rte", "stsb"] * 3
    pending = [handle.options(multiplexed_model_id=n).predict.remote(RECORDS[n]) for n in names]
    for name, response in zip(names, pending):
        assert_same(response.result(timeout_s=RESULT_TIMEOUT_S), expected[name], f"concurrent, {name}")
    assert len(held()) == 1
    serve.delete("bank1")


class WhichReplica(TaskBankReplica):
    """Answers with the serving replica's id and the tasks its bank holds, beside the outputs."""

    async def predict(self, records):
        outputs = await super().predict(records)
        return serve.get_replica_context().replica_id.unique_id, sorted(self.bank.tasks()), outputs


def test_requests_go_to_the_replica_that_holds_their_task(local_ray, modules, expected):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # WhichReplica: not importable by the replicas
    two = {name: modules[name] for name in ("sst2", "rte")}
    app = serve.deployment(WhichReplica, name="which").options(num_replicas=2).bind(two, None, 1, None)
    handle = serve.run(app, name="replicas2", route_prefix=None)
    served = {}
    for i in range(12):
        name = ["sst2", "rte"][i % 2]
        replica, held, outputs = ask(handle, name, RECORDS[name])
        assert_same(outputs, expected[name], f"two replicas, {name}")
        if i >= 2:  # after each task's first load
            assert held == [name], (i, name, held)  # a cache of one
            served.setdefault(name, set()).add(replica)
        time.sleep(0.1)
    assert len(served["sst2"]) == len(served["rte"]) == 1 and served["sst2"] != served["rte"], served
    serve.delete("replicas2")
