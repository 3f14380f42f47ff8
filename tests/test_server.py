"""`unipetl serve` as users run it: a real server process on 127.0.0.1 and a real HTTP client (urllib),
every endpoint and every kind of bad request. Modules: three quick MiniLM modules of different methods
and kinds trained once, plus one of a tiny random BERT (the "other backbone")."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import transformers as T

from unipetl.cli import main, module_specs
from unipetl.defaults import default_model_path
from unipetl.training import TrainOptions, train_task

STARTUP_TIMEOUT_S = 180
_BUILT: dict[str, Path] = {}  # shared with test_predict_mixed_cli.py: the modules are trained once per session


def _write_csv(path, rows, header):
    path.write_text(header + "\n" + "".join(f'"{t}",{y}\n' for t, y in rows))


def build_modules(root: Path) -> dict[str, Path]:
    """sentiment (LoRA, 2 labels, column 'review'), score (BitFit, regression, column 'sentence'), topic
    (Pfeiffer, 3 labels, column 'text') on the real MiniLM; alien: a module of a tiny random BERT."""
    sentiment = [(f"good movie number {i}", "pos") if i % 2 else (f"bad movie number {i}", "neg") for i in range(24)]
    _write_csv(root / "sentiment.csv", sentiment, "review,stars")
    _write_csv(root / "score.csv", [(f"a sentence of length {i}", i / 4) for i in range(24)], "sentence,score")
    _write_csv(root / "topic.csv", [(f"a story about {w} {i}", w) for i in range(12) for w in ("sport", "music", "food")],
               "text,topic")
    tiny = root / "tiny-bert"  # same architecture and tokenizer as MiniLM, other weights: another fingerprint
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    T.set_seed(0)
    T.BertModel(T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=128)).save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)
    options = TrainOptions(max_steps=2, batch_size=8, eval_batch_size=64, max_length=32, progress=False)
    modules = {}
    for name, data, column, label, kind, method, model in [
            ("sentiment", "sentiment", "review", "stars", "classification", "lora", None),
            ("score", "score", "sentence", "score", "regression", "bitfit", None),
            ("topic", "topic", "text", "topic", "classification", "pfeiffer", None),
            ("alien", "sentiment", "review", "stars", "classification", "bitfit", str(tiny))]:
        custom = {"train_file": str(root / f"{data}.csv"), "validation_file": None, "test_file": None,
                  "text_columns": [column], "label_column": label, "kind": kind, "name": name,
                  "skip_missing_labels": False}
        train_task("polarity", method, model, None, str(root / f"run-{name}"), options, custom=custom, log=lambda m: None)
        modules[name] = root / f"run-{name}" / "module"
    return modules


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    if not _BUILT:
        _BUILT.update(build_modules(tmp_path_factory.mktemp("serving-modules")))
    return dict(_BUILT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port, process, log):
        self.url, self.process, self.log = f"http://127.0.0.1:{port}", process, log

    def call(self, method, path, body=None, raw=None, timeout=60):
        """(status, JSON answer or text); ``body`` is sent as JSON, ``raw`` as given."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                status, text = answer.status, answer.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def metric(self, name, **labels):
        """The value of one sample in /metrics (0 when it is not there yet)."""
        status, text = self.call("GET", "/metrics")
        assert status == 200
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def start_server(tmp_path_factory, modules: list[str], *options) -> Server:
    port = free_port()
    log = tmp_path_factory.mktemp("server-log") / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "unipetl.cli", "serve", "--modules", *modules,
                                    "--port", str(port), *options], stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Server(port, process, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if server.call("GET", "/health", timeout=2)[0] == 200:
                return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.25)
    process.kill()
    pytest.fail(f"the server did not answer /health within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(10)


@pytest.fixture(scope="module")
def server(modules, tmp_path_factory):
    server = start_server(tmp_path_factory, [f"sentiment={modules['sentiment']}", f"score={modules['score']}"])
    yield server
    stop_server(server)


# ------------------------------------------------------------------ reading endpoints
def test_health_and_task_list(server):
    assert server.call("GET", "/health") == (200, {"status": "ok", "tasks": 2})
    status, body = server.call("GET", "/v1/tasks")
    assert status == 200
    tasks = {t["name"]: t for t in body["tasks"]}
    assert set(tasks) == {"sentiment", "score"}
    assert tasks["sentiment"]["task"] == "sentiment" and tasks["sentiment"]["kind"] == "classification"
    assert tasks["sentiment"]["labels"] == ["neg", "pos"] and tasks["sentiment"]["method"] == "lora"
    assert tasks["score"]["kind"] == "regression" and tasks["score"]["labels"] is None
    assert tasks["score"]["method"] == "bitfit"
    assert all(isinstance(t["stored_bytes"], int) and t["stored_bytes"] > 0 for t in tasks.values())
    assert all(set(t) == {"name", "task", "kind", "labels", "method", "stored_bytes"} for t in tasks.values())


# ------------------------------------------------------------------ predictions
def test_one_record_and_a_mixed_list(server):
    status, one = server.call("POST", "/v1/predict", {"task": "sentiment", "text": "a good movie"})
    assert status == 200 and one["task"] == "sentiment" and one["prediction"] in ("neg", "pos")
    assert set(one["probabilities"]) == {"neg", "pos"} and "truncated" not in one
    status, body = server.call("POST", "/v1/predict", [
        {"task": "score", "sentence": "a sentence of length 3"},
        {"task": "sentiment", "text": "a good movie"},
        {"task": "score", "text": "another one"},
        {"task": "sentiment", "review": "a bad movie"}])
    assert status == 200
    rows = body["predictions"]
    assert [r["task"] for r in rows] == ["score", "sentiment", "score", "sentiment"]
    assert all(isinstance(r["prediction"], float) and "probabilities" not in r for r in rows[::2])
    assert all(r["prediction"] in ("neg", "pos") for r in rows[1::2])
    # a row's answer does not depend on the other rows of its batch
    assert rows[1]["prediction"] == one["prediction"]
    assert rows[1]["probabilities"] == pytest.approx(one["probabilities"], abs=1e-4)


def test_unknown_task_is_404_naming_the_loaded_tasks(server):
    status, body = server.call("POST", "/v1/predict", {"task": "nope", "text": "x"})
    assert status == 404 and "unknown task 'nope'" in body["detail"] and "loaded tasks: score, sentiment" in body["detail"]
    status, body = server.call("POST", "/v1/predict", [{"task": "sentiment", "text": "x"}, {"task": "nope", "text": "y"}])
    assert status == 404 and body["detail"].startswith("record 1: unknown task 'nope'")


@pytest.mark.parametrize("raw,message", [
    (b"not json", "body: not valid JSON"),
    (b"", "body: empty"),
    (b"[" * 100_000, "body: not valid JSON"),
    (b'"just text"', "body: expected a {\"task\": NAME, ...} object or a list of them, got string"),
    (b"[]", "body: an empty list"),
    (b"[1]", "record 0: expected a {\"task\": NAME, ...} object, got number"),
    (b'{"text": "x"}', "body: missing field 'task'"),
    (b'[{"task": "sentiment", "text": "x"}, {"text": "y"}]', "record 1: missing field 'task'"),
    (b'{"task": 3, "text": "x"}', "body: field 'task' must be a string"),
    (b'{"task": "sentiment", "text": 5}', "body: field 'text' must be a string, got number"),
    (b'{"task": "sentiment", "text": null}', "body: field 'text' must be a string, got null"),
    (b'{"task": "sentiment", "texts": "x"}', "body: field 'texts' must be a non-empty list of strings, got string"),
    (b'{"task": "sentiment", "texts": []}', "field 'texts' must be a non-empty list of strings, got an empty list"),
    (b'{"task": "sentiment", "texts": ["a", 2]}', "got a list holding a number"),
    (b'{"task": "sentiment"}', "body: no inputs"),
    # would reach the tokenizer and fail the whole batch, other clients' rows too
    (b'{"task": "sentiment", "text": "\\ud800"}', "body: field 'text' holds a lone surrogate"),
    (b'{"task": "sentiment", "review": 3}', "body: field 'review' must be a string, got int"),
    # refused by the bank (the task's own field is missing): the caller's own record number is named
    (b'{"task": "sentiment", "comment": "x"}', "body: missing field 'review'"),
    (b'[{"task": "sentiment", "text": "x"}, {"task": "score", "comment": "x"}]', "record 1: missing field 'sentence'"),
])
def test_malformed_requests_are_422_naming_the_field(server, raw, message):
    status, body = server.call("POST", "/v1/predict", raw=raw)
    assert status == 422, body
    assert message in body["detail"]


def test_too_many_records_and_too_large_bodies_are_refused(server):
    status, body = server.call("POST", "/v1/predict", [{"task": "score", "text": "x"}] * 1025)
    assert status == 422 and "1,025 records; at most 1,024" in body["detail"]
    status, body = server.call("POST", "/v1/predict", raw=b'{"task": "score", "text": "' + b"a" * (9 << 20) + b'"}')
    assert status == 413 and "at most 8,388,608" in body["detail"]


def test_an_over_long_input_is_truncated_and_flagged(server):
    status, body = server.call("POST", "/v1/predict", [{"task": "sentiment", "text": "a good movie " * 300},
                                                       {"task": "score", "text": "short"}])
    assert status == 200
    long, short = body["predictions"]
    assert long["truncated"] is True and long["prediction"] in ("neg", "pos")
    assert "truncated" not in short


def test_unknown_routes_and_methods_are_answered(server):
    status, body = server.call("GET", "/v2/predict")
    assert status == 404 and "no such endpoint: GET /v2/predict" in body["detail"]
    assert server.call("POST", "/health")[0] == 405


# ------------------------------------------------------------------ loading and unloading at run time
def test_load_predict_unload_at_run_time(server, modules):
    status, body = server.call("POST", "/v1/tasks", {"name": "topic", "directory": str(modules["topic"])})
    assert status == 201, body
    assert body == {"name": "topic", "task": "topic", "kind": "classification", "labels": ["food", "music", "sport"],
                    "method": "pfeiffer", "stored_bytes": body["stored_bytes"]}
    assert server.call("GET", "/health")[1]["tasks"] == 3
    assert server.metric("unipetl_tasks_loaded") == 3
    status, body = server.call("POST", "/v1/predict", [{"task": "topic", "text": "a story about food"},
                                                       {"task": "sentiment", "text": "a good movie"}])
    assert status == 200 and [r["task"] for r in body["predictions"]] == ["topic", "sentiment"]
    assert body["predictions"][0]["prediction"] in ("food", "music", "sport")

    status, body = server.call("DELETE", "/v1/tasks/topic")
    assert status == 200 and body == {"unloaded": "topic", "tasks": 2}
    status, body = server.call("POST", "/v1/predict", {"task": "topic", "text": "a story about food"})
    assert status == 404 and "unknown task 'topic'; loaded tasks: score, sentiment" in body["detail"]
    status, body = server.call("DELETE", "/v1/tasks/topic")
    assert status == 404 and "unknown task 'topic'; loaded tasks: score, sentiment" in body["detail"]
    assert [t["name"] for t in server.call("GET", "/v1/tasks")[1]["tasks"]] == ["sentiment", "score"]


def test_loading_refusals(server, modules, tmp_path):
    status, body = server.call("POST", "/v1/tasks", {"name": "alien", "directory": str(modules["alien"])})
    assert status == 422 and "trained on another backbone checkpoint (fingerprint" in body["detail"]
    status, body = server.call("POST", "/v1/tasks", {"directory": str(tmp_path / "missing")})
    assert status == 404 and f"{tmp_path / 'missing'} does not exist" in body["detail"]
    status, body = server.call("POST", "/v1/tasks", {"name": "sentiment", "directory": str(modules["topic"])})
    assert status == 409 and "task 'sentiment' is already loaded" in body["detail"]
    status, body = server.call("POST", "/v1/tasks", {"directory": str(tmp_path)})  # a folder, not a module
    assert status == 422 and "is not a unipetl task module" in body["detail"]
    for bad, message in [({"directory": 5}, "directory: expected the path"), ([], "body: expected an object"),
                         ({"directory": str(modules["topic"]), "name": "a/b"}, "name: 'a/b' is not a usable task name"),
                         ({"directory": str(modules["topic"]), "nmae": "x"}, "unknown field 'nmae'")]:
        status, body = server.call("POST", "/v1/tasks", bad)
        assert status == 422 and message in body["detail"], (bad, body)
    assert server.call("GET", "/health")[1]["tasks"] == 2  # nothing was loaded


# ------------------------------------------------------------------ metrics and staying up
def test_metrics_name_every_series_and_count_requests(server):
    before = server.metric("unipetl_requests_total", endpoint="GET /health", status="200")
    bad = server.metric("unipetl_requests_total", endpoint="POST /v1/predict", status="422")
    batches = server.metric("unipetl_batch_rows_count")
    server.call("GET", "/health")
    server.call("GET", "/health")
    server.call("POST", "/v1/predict", raw=b"{")
    server.call("POST", "/v1/predict", [{"task": "score", "text": "a"}, {"task": "sentiment", "text": "b"}])
    assert server.metric("unipetl_requests_total", endpoint="GET /health", status="200") == before + 2
    assert server.metric("unipetl_requests_total", endpoint="POST /v1/predict", status="422") == bad + 1
    assert server.metric("unipetl_batch_rows_count") == batches + 1  # two tasks, one model batch
    status, text = server.call("GET", "/metrics")
    for name in ("unipetl_requests_total", "unipetl_batch_rows_bucket", "unipetl_request_latency_seconds_bucket",
                 "unipetl_tasks_loaded", "unipetl_queued_rows"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    assert server.metric("unipetl_tasks_loaded") == 2


def test_the_server_still_answers_after_every_bad_request(server):
    for raw in (b"\xff\xfe\x00", b"{" * 50_000, b"1e999999", b'{"task": "sentiment", "text": "\\ud800"}', b"null"):
        assert server.call("POST", "/v1/predict", raw=raw)[0] == 422
    assert server.call("POST", "/v1/tasks", raw=b"nonsense")[0] == 422
    assert server.call("DELETE", "/v1/tasks/" + "x" * 300)[0] == 404
    assert server.process.poll() is None
    assert server.call("GET", "/health") == (200, {"status": "ok", "tasks": 2})
    status, body = server.call("POST", "/v1/predict", {"task": "sentiment", "text": "still here"})
    assert status == 200 and body["task"] == "sentiment"


# ------------------------------------------------------------------ batching across requests (a second server)
@pytest.fixture(scope="module")
def batching_server(modules, tmp_path_factory):
    """Batches of 2 rows and a long wait: a batch runs exactly when two rows are queued."""
    server = start_server(tmp_path_factory, [f"sentiment={modules['sentiment']}", f"score={modules['score']}",
                                             f"topic={modules['topic']}"],
                          "--max-batch-size", "2", "--max-wait-ms", "20000", "--max-length", "8")
    yield server
    stop_server(server)


def in_thread(function, *args):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function(*args)), daemon=True)
    thread.start()
    return thread, result


def wait_for_queued_rows(server, rows, timeout=60):
    deadline = time.monotonic() + timeout
    while server.metric("unipetl_queued_rows") < rows:
        assert time.monotonic() < deadline, "the request never reached the batch queue"
        time.sleep(0.05)


def test_concurrent_requests_of_different_tasks_share_a_batch(batching_server):
    server = batching_server
    batches, rows = server.metric("unipetl_batch_rows_count"), server.metric("unipetl_batch_rows_sum")
    first, a = in_thread(server.call, "POST", "/v1/predict", {"task": "sentiment", "text": "a good movie"})
    wait_for_queued_rows(server, 1)
    second, b = in_thread(server.call, "POST", "/v1/predict", {"task": "score", "text": "a sentence"})
    first.join(60)
    second.join(60)
    assert a["value"][0] == 200 and a["value"][1]["task"] == "sentiment"
    assert b["value"][0] == 200 and b["value"][1]["task"] == "score"
    assert server.metric("unipetl_batch_rows_count") == batches + 1
    assert server.metric("unipetl_batch_rows_sum") == rows + 2


def test_max_length_option_sets_where_inputs_are_truncated(batching_server):
    status, body = batching_server.call("POST", "/v1/predict", [
        {"task": "sentiment", "text": "one two three four five six seven eight nine ten"},
        {"task": "score", "text": "one two"}])  # two rows: a full batch, served at once
    assert status == 200
    assert body["predictions"][0]["truncated"] is True and "truncated" not in body["predictions"][1]


def test_a_request_in_flight_when_its_task_is_unloaded_gets_404(batching_server):
    server = batching_server
    waiting, answer = in_thread(server.call, "POST", "/v1/predict", {"task": "topic", "text": "a story about sport"})
    wait_for_queued_rows(server, 1)
    assert server.call("DELETE", "/v1/tasks/topic")[0] == 200
    status, other = server.call("POST", "/v1/predict", {"task": "sentiment", "text": "a good movie"})  # fills the batch
    waiting.join(60)
    assert status == 200 and other["task"] == "sentiment"
    status, body = answer["value"]
    assert status == 404 and "task 'topic' was unloaded" in body["detail"]
    assert "loaded tasks: score, sentiment" in body["detail"]


# ------------------------------------------------------------------ the command line's refusals
def test_serve_refuses_bad_modules_with_one_line(modules, tmp_path, capsys):
    assert main(["serve", "--modules", f"a={modules['sentiment']}", f"a={modules['score']}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "task name 'a' is given twice" in err
    # `unipetl train` writes OUTPUT/module: such a module is named by its run folder, not "module"
    assert module_specs([str(modules["sentiment"]), str(modules["score"])]) == {
        modules["sentiment"].parent.name: str(modules["sentiment"]), modules["score"].parent.name: str(modules["score"])}
    assert main(["serve", "--modules", f"a={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unipetl serve: error: --modules a=") and "is not a directory" in err
    assert main(["serve", "--modules", f"a={modules['sentiment']}", "--max-batch-size", "0"]) == 2
    assert "--max-batch-size=0 must be a positive integer" in capsys.readouterr().err
    assert main(["serve", "--modules", f"a={modules['sentiment']}", f"b={modules['alien']}"]) == 2
    err = capsys.readouterr().err
    assert "unipetl serve: error:" in err and "trained on another backbone checkpoint (fingerprint" in err


def test_serve_without_its_extra_names_it(modules, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", "--modules", f"a={modules['sentiment']}"]) == 2
    assert "unipetl serve needs the 'uvicorn' package: pip install 'unipetl[serve]'" in capsys.readouterr().err
