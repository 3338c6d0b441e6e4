"""The student app on a real local Ray Serve, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from chaos_record import full_run, record

from dsbs import storage
from dsbs.config import ServeConfig
from dsbs.serve.runner import start_student, stop_student
from dsbs.student.decode import generate_texts
from dsbs.student.export import load_student

pytestmark = pytest.mark.slow

PREDICTOR = "StudentPredictor"


def _config(port: int, model: Path | str, **changes: object) -> ServeConfig:
    base = {"model": str(model), "port": port, "num_cpus": 0.5, "max_batch_size": 8}
    return ServeConfig.model_validate({**base, **changes})


def _request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json"} if body else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _predict(base: str, inputs: list[str], rationale: bool = False) -> tuple[int, dict]:
    return _request(
        f"{base}/v1/predict", json.dumps({"inputs": inputs, "rationale": rationale}).encode()
    )


def _questions(n: int, offset: int = 0) -> list[str]:
    return [f"What is {(i + offset) % 20} plus {(3 * i) % 20}?" for i in range(n)]


def test_http_answers_equal_the_exports_own_generate(serve_port, tiny_student, s3_bucket):
    # Served from s3://, as a cluster would: the replica downloads the export once.
    prefix = f"{s3_bucket}/student"
    for path in tiny_student.iterdir():
        storage.write_bytes(f"{prefix}/{path.name}", path.read_bytes())
    base = start_student(_config(serve_port, prefix), run_dir="unused")
    try:
        questions = _questions(12)
        status, body = _predict(base, questions, rationale=True)
        assert status == 200, body

        model, tokenizer, info = load_student(str(tiny_student))
        labels = generate_texts(
            model, tokenizer, [info.label_prefix + q for q in questions], 32, 16
        )
        rationales = generate_texts(
            model, tokenizer, [info.rationale_prefix + q for q in questions], 32, 16
        )
        assert [p["label"] for p in body["predictions"]] == labels
        assert [p["rationale"] for p in body["predictions"]] == rationales
        assert body["model"] == info.version

        status, body = _predict(base, questions[:2])
        assert status == 200 and all(p["rationale"] is None for p in body["predictions"])
        assert _request(f"{base}/healthz") == (200, {"status": "ok", "model": info.version})
        status, card = _request(f"{base}/v1/model")
        assert status == 200
        assert (card["task"], card["label_prefix"], card["backend"]) == ("svamp", "predict: ", "hf")
        assert card["parameters"] > 100_000
        status, openapi = _request(f"{base}/openapi.json")
        schema = openapi["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        assert status == 200 and "inputs" in schema["application/json"]["schema"]["properties"]
        assert urllib.request.urlopen(f"{base}/docs", timeout=10).status == 200
    finally:
        stop_student()


MALFORMED = [
    (b"{not json", 400, "body"),
    (b'{"inputs": "a string"}', 422, "inputs"),
    (b'{"inputs": []}', 422, "inputs"),
    (b'{"inputs": ["ok", 7]}', 422, "inputs[1]"),
    (b'{"inputs": ["ok", ""]}', 422, "inputs[1]"),
    (b'{"inputs": ["ok"], "rationale": "yes"}', 422, "rationale"),
    (json.dumps({"inputs": ["ok"] * 9}).encode(), 422, "inputs"),
    (json.dumps({"inputs": ["ok", "word " * 200]}).encode(), 422, "inputs[1]"),
    (json.dumps({"inputs": ["x" * 5000]}).encode(), 413, "body"),
]


class _Load:
    """Client threads posting valid requests until stopped, counting statuses."""

    def __init__(self, base: str, clients: int) -> None:
        self.base = base
        self.statuses: Counter[int] = Counter()
        self.answered_at: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                status, _ = _predict(self.base, _questions(2, offset=client + n))
            except OSError:
                status = 0  # connection refused or reset: counted as an error
            n += 1
            with self._lock:
                self.statuses[status] += 1
                if status == 200:
                    self.answered_at.append(time.monotonic())

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 200)

    def record(self, scenario: str, injected: str, detail: str = "") -> None:
        """The chaos record of this load: requests sent, answered, errors, never answered."""
        record(
            scenario=scenario,
            injected=injected,
            sent=sum(self.statuses.values()),
            answered=self.statuses[200],
            errors=self.errors(),
            lost=self.statuses[0],
            detail=detail or f"statuses {dict(sorted(self.statuses.items()))}",
        )

    def wait_answered(self, n: int, since: float = 0.0, timeout_s: float = 120) -> None:
        """Waits until `n` requests were answered after `since` (a time.monotonic())."""
        _wait_for(
            lambda: sum(t > since for t in list(self.answered_at)) >= n,
            timeout_s,
            f"{n} answers under load",
        )


def test_malformed_requests_get_their_4xx_and_valid_load_no_5xx(serve_port, tiny_student):
    cfg = _config(serve_port, tiny_student, max_items=8, max_input_tokens=64, max_body_bytes=4000)
    base = start_student(cfg, run_dir="unused")
    try:
        for raw, status, field in MALFORMED:
            got, body = _request(f"{base}/v1/predict", raw)
            assert (got, body["error"]["field"]) == (status, field), (raw[:60], body)
        with _Load(base, clients=8) as load:
            load.wait_answered(24)
        assert load.statuses[200] >= 24 and load.errors() == 0, load.statuses
        _assert_metrics_exported(
            [
                "dsbs_student_predictions",
                "dsbs_student_rejected_requests",
                "dsbs_student_batch_size",
            ]
        )
    finally:
        stop_student()


def _assert_metrics_exported(names: list[str], timeout_s: float = 60) -> None:
    """Waits for Ray's Prometheus endpoint on this node to show each metric name."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        if all(name in text for name in names):
            assert 'reason="too_many_items"' in text
            return
        time.sleep(2)
    missing = [name for name in names if name not in text]
    raise AssertionError(f"not exported to Prometheus after {timeout_s} s: {missing}")


def test_a_request_past_the_timeout_gets_a_504_naming_it(serve_port, tiny_student):
    base = start_student(_config(serve_port, tiny_student, request_timeout_s=0.001), "unused")
    try:
        status, body = _predict(base, _questions(4))
        assert status == 504 and body["error"]["reason"] == "timeout", body
    finally:
        stop_student()


def test_ctranslate2_backend_answers_like_hf_over_http(serve_port, tiny_student):
    questions = _questions(10, offset=5)
    model, tokenizer, info = load_student(str(tiny_student))
    expected = generate_texts(model, tokenizer, [info.label_prefix + q for q in questions], 32, 16)
    cfg = _config(
        serve_port, tiny_student, backend="ctranslate2", ctranslate2_compute_type="float32"
    )
    base = start_student(cfg, run_dir="unused")
    try:
        status, body = _predict(base, questions)
        assert status == 200 and [p["label"] for p in body["predictions"]] == expected
        assert _request(f"{base}/v1/model")[1]["backend"] == "ctranslate2"
    finally:
        stop_student()


def _running_replicas() -> int:
    from ray import serve

    from dsbs.serve.app import APP_NAME

    deployment = serve.status().applications[APP_NAME].deployments[PREDICTOR]
    return deployment.replica_states.get("RUNNING", 0)


def _wait_for(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@pytest.mark.chaos
def test_replicas_scale_out_under_load_and_back_in_after(serve_port, tiny_student):
    cfg = _config(
        serve_port,
        tiny_student,
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        upscale_delay_s=1,
        downscale_delay_s=2,
    )
    base = start_student(cfg, run_dir="unused")
    try:
        assert _running_replicas() == 1
        with _Load(base, clients=6) as load:
            up = _wait_for(lambda: _running_replicas() >= 2, 90, "scale out to 2 replicas")
        down = _wait_for(lambda: _running_replicas() == 1, 120, "scale back in to 1 replica")
        print(f"scaled out after {up:.1f} s of load, back in {down:.1f} s after it stopped")
        assert load.errors() == 0, load.statuses
        load.record(
            "serving: scale out and in under load",
            "6 clients against 1 replica (target 1 ongoing request), then none",
            f"out to 2 replicas after {up:.0f} s, back to 1 {down:.0f} s after the load",
        )
    finally:
        stop_student()


@pytest.mark.chaos
def test_a_replica_killed_under_load_does_not_stop_the_answers(serve_port, tiny_student):
    import ray

    cfg = _config(serve_port, tiny_student, min_replicas=2, max_replicas=2)
    base = start_student(cfg, run_dir="unused")
    try:
        victims = [
            actor
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if PREDICTOR in actor["name"]
        ]
        assert len(victims) == 2
        with _Load(base, clients=6) as load:
            load.wait_answered(6)  # both replicas busy before one dies
            killed_at = time.monotonic()
            ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]))
            load.wait_answered(24, since=killed_at + 1)
        print(f"replica killed under load: {load.statuses[200]} answered, {load.errors()} errors")
        # The ingress retries a request whose replica died on the surviving one.
        assert load.errors() == 0, load.statuses
        load.record("serving: a replica killed under load", "ray.kill of 1 of 2 replicas")
    finally:
        stop_student()


def test_a_flood_past_the_queue_gets_503_overloaded_at_once(serve_port, tiny_student):
    """The ingress queued every request for the predictors without bound: a flood waited
    longer and longer instead of hearing that the student is full."""
    cfg = _config(
        serve_port,
        tiny_student,
        max_batch_size=1,
        target_ongoing_requests=1,  # a predictor takes 2 requests at once
        max_queued_requests=2,
        max_replicas=1,
    )
    base = start_student(cfg, run_dir="unused")
    try:
        gate = threading.Barrier(40)
        answers: list[tuple[int, dict, float]] = []

        def client(i: int) -> None:
            gate.wait()
            started = time.monotonic()
            status, body = _predict(base, _questions(8, offset=i), rationale=True)
            answers.append((status, body, time.monotonic() - started))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        statuses = Counter(status for status, _, _ in answers)
        overloaded = [(b, t) for status, b, t in answers if status == 503]
        assert len(answers) == 40 and set(statuses) <= {200, 503}, statuses
        assert overloaded and statuses[200] >= 4, statuses
        assert all(b["error"]["reason"] == "overloaded" for b, _ in overloaded)
        assert max(t for _, t in overloaded) < 10  # at once, not after a wait
        assert _predict(base, _questions(1))[0] == 200  # and it serves again
    finally:
        stop_student()


LOCUSTFILE = Path(__file__).parents[1] / "load" / "student_locustfile.py"
LOCUST_USERS = 24
LOCUST_SECONDS = 40 if full_run() else 15


def _locust(base: str, out: Path) -> dict[str, str]:
    """Runs locust headless against `base`; its aggregated statistics row."""
    import csv
    import subprocess
    import sys

    prefix = out / "locust"
    command = [
        Path(sys.executable).parent / "locust",
        *("-f", LOCUSTFILE, "--host", base, "--headless", "--only-summary"),
        *("-u", str(LOCUST_USERS), "-r", str(LOCUST_USERS), "-t", f"{LOCUST_SECONDS}s"),
        *("--stop-timeout", "60", "--csv", prefix, "--loglevel", "WARNING"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=LOCUST_SECONDS + 120)
    assert (out / "locust_stats.csv").is_file(), done.stderr[-2000:]
    with open(out / "locust_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    return rows["Aggregated"]


@pytest.mark.chaos
@pytest.mark.parametrize("backend", ["hf", "ctranslate2"])
def test_locust_load_on_the_student_endpoint_gets_no_5xx(
    serve_port, tiny_student, tmp_path, backend
):
    """A real load tool, tens of users, thousands of requests: every valid one answered 200."""
    cfg = _config(serve_port, tiny_student, backend=backend, max_batch_size=16)
    base = start_student(cfg, run_dir="unused")
    try:
        stats = _locust(base, tmp_path)
        sent, failed = int(stats["Request Count"]), int(stats["Failure Count"])
        p50, p99 = stats["50%"], stats["99%"]
        print(f"locust {backend}: {sent} requests, {failed} failed, p50 {p50} ms, p99 {p99} ms")
        assert sent >= 20 * LOCUST_SECONDS, stats
        assert failed == 0, (tmp_path / "locust_failures.csv").read_text()
        assert _request(f"{base}/v1/model")[1]["backend"] == backend
        record(
            f"serving: locust load, {backend} backend",
            f"{LOCUST_USERS} locust users, no think time, {LOCUST_SECONDS} s, 1 replica",
            sent=sent,
            answered=sent - failed,
            errors=failed,
            lost=0,
            detail=f"p50 {p50} ms, p99 {p99} ms, {float(stats['Requests/s']):.0f} requests/s",
        )
    finally:
        stop_student()


CHUNKED_CAP = 400_000_000
"""Bytes the endless chunked body stops at if no answer came first."""


def _send_chunked(port: int, limit_s: float = 60) -> tuple[int, int]:
    """Streams an endless chunked body to /v1/predict; returns (status, bytes sent by then)."""
    import select
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b'{"inputs": ["' + b"x" * 65_000
        sent, deadline = 0, time.monotonic() + limit_s
        while time.monotonic() < deadline and sent < CHUNKED_CAP:
            ready, _, _ = select.select([sock], [], [], 0)
            if ready:
                head = sock.recv(200).decode(errors="replace")
                return int(head.split()[1]), sent
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server closed its side after answering
                break
            sent += len(chunk)
            chunk = b"x" * 65_000
        head = sock.recv(200).decode(errors="replace")
        return (int(head.split()[1]) if head else 0), sent


def test_limits_follow_the_export_and_bodies_count_as_they_arrive(serve_port, tiny_student):
    """Items 11 and 13 of issue 15: the trained input length, and chunked bodies."""
    cfg = _config(serve_port, tiny_student, max_input_tokens=512, max_body_bytes=100_000)
    base = start_student(cfg, run_dir="unused")
    try:
        status, card = _request(f"{base}/v1/model")
        assert status == 200 and card["max_input_tokens"] == 32  # the export's, not 512
        status, body = _predict(base, [" ".join(_questions(6))])
        assert status == 422 and body["error"]["reason"] == "input_too_long", body
        assert "serve.max_input_tokens 512" in body["error"]["message"]
        # A chunked body declares no length: it is refused once it passes the limit, not
        # read whole first (before, no answer came until the client stopped sending). Serve's
        # proxy takes in what the client sends until the replica's answer reaches it: about
        # 50 MB here.
        status, sent = _send_chunked(serve_port)
        assert status == 413 and sent < CHUNKED_CAP / 2, (status, sent)
    finally:
        stop_student()


def test_health_asks_a_predictor_and_turns_503_when_none_answers(serve_port, tiny_student):
    """It cached the first model card: OK forever, whatever became of the predictors."""
    import ray

    cfg = _config(serve_port, tiny_student, health_timeout_s=2)
    base = start_student(cfg, run_dir="unused")
    try:
        status, body = _request(f"{base}/healthz")
        assert status == 200 and body["status"] == "ok" and body["model"]
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if PREDICTOR in actor["name"]:
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
        seen, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline and seen[-1:] != [200]:
            status, body = _request(f"{base}/healthz")
            seen.append(status)
            if status == 503:
                assert body["status"] == "unavailable" and body["error"], body
        assert 503 in seen and seen[-1] == 200, seen  # down while the replica restarts, then up
    finally:
        stop_student()


@pytest.mark.chaos
def test_a_student_re_published_under_its_prefix_is_served_new_after_a_restart(
    serve_port, tiny_student, s3_bucket
):
    """The cache was keyed by the prefix: a node that had the student kept serving it old."""
    import ray

    prefix = f"{s3_bucket}/re-published"
    for path in tiny_student.iterdir():
        storage.write_bytes(f"{prefix}/{path.name}", path.read_bytes())
    base = start_student(_config(serve_port, prefix), run_dir="unused")
    try:
        status, before = _request(f"{base}/v1/model")
        assert status == 200 and before["source"] == prefix and before["files"]
        info = json.loads((tiny_student / "dsbs_student.json").read_text())
        storage.write_bytes(
            f"{prefix}/dsbs_student.json", json.dumps({**info, "version": "v2"}).encode()
        )
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if PREDICTOR in actor["name"]:
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
        deadline, after = time.monotonic() + 90, before
        while time.monotonic() < deadline and after.get("version") != "v2":
            time.sleep(1)
            after = _request(f"{base}/v1/model")[1]
        assert after["version"] == "v2" and after["files"] != before["files"], after
        status, body = _predict(base, _questions(1))
        assert status == 200 and body["model"] == "v2"
        record(
            scenario="serving: the model re-published while serving",
            injected="a new export under the same S3 prefix, then the replicas restarted",
            sent=1,
            answered=int(status == 200),
            errors=int(status != 200),
            lost=0,
            detail="the restarted replicas serve v2 with the new files' digest, none the old",
        )
    finally:
        stop_student()
