"""Stage 1 on real components: a Ray head, Ray Serve, vLLM's CPU build, the embedded model.

The teacher app stays up across the tests of this module (`teacher.keep_running`), as a
long-lived teacher would, so that its model loads once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from chaos_record import record
from local_ray import assert_no_ray_poller
from ports import free_port

from dsbs import storage
from dsbs.cluster import start_serve
from dsbs.config import load_config
from dsbs.data.synth import synth
from dsbs.generate import generate_rationales
from dsbs.generate.deployment import APP_NAME
from dsbs.generate.stage import config_hash
from dsbs.records import read_records

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
ROWS = 24
HTTP_PORT = free_port()
"""Serve's HTTP proxy for this module's cluster (never Serve's default 8000, which may be taken)."""


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head started with `ray start`, as a cluster that jobs connect to.

    Ray 2.60's `ray start` turns token authentication on, and a driver presents the token only
    with RAY_AUTH_MODE=token set before `ray` is imported; this test cluster turns it off
    instead, since this process imported ray long before the fixture runs.
    """
    import ray

    port = free_port()
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--disable-usage-stats",
            "--include-dashboard=false",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    address = f"127.0.0.1:{port}"
    ray.init(address=address, log_to_driver=False)
    start_serve("127.0.0.1", HTTP_PORT)
    try:
        yield address
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        assert_no_ray_poller()


def _config(tmp_path: Path, name: str, address: str, extra: tuple[str, ...] = (), rows: int = ROWS):
    source = tmp_path / f"{name}.jsonl"
    synth("arithmetic", rows, 11, str(source))
    with source.open("a") as handle:  # two bad rows: they must end up in the quarantine
        handle.write('{"input": "cut off\n{"label": "( 1.0 + 1.0 )"}\n')
    overrides = [
        f"data.source={source}",
        f"pipeline.run_dir={tmp_path / name / 'run'}",
        f"pipeline.ray_address={address}",
        "teacher.max_tokens=48",
        "teacher.keep_running=true",
        "generate.shard_rows=4",
        "generate.max_in_flight=8",
        "generate.max_error_fraction=0.1",
        f"serve.port={HTTP_PORT}",
        *extra,
    ]
    return load_config(None, overrides), overrides


def _generate(cfg, address: str):
    """The generate stage on this module's cluster, Serve's proxy on its port."""
    return generate_rationales(
        cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir, address, serve_http=cfg.serve
    )


def _out_dir(cfg) -> str:
    return storage.join(
        cfg.pipeline.run_dir, "generate", config_hash(cfg.data, cfg.teacher, cfg.generate)
    )


def _ids(cfg) -> tuple[list[str], list[str], list[dict]]:
    """(input ids, data ids, quarantine rows) of a run."""
    out = _out_dir(cfg)
    inputs = [r.id for r in read_records(storage.join(out, "inputs"))]
    data = (
        [r.id for r in read_records(storage.join(out, "data"))]
        if storage.list_files(storage.join(out, "data"))
        else []
    )
    quarantine = []
    for file in storage.list_files(storage.join(out, "quarantine")):
        quarantine += [json.loads(line) for line in Path(file).read_text().splitlines()]
    return inputs, data, quarantine


def _any_file(folder: Path) -> bool:
    """Whether a shard is done (its counts file is the last thing written)."""
    return folder.is_dir() and any(folder.glob("*.json"))


def _assert_exactly_once(cfg, rows: int = ROWS) -> tuple[list[str], list[dict]]:
    inputs, data, quarantine = _ids(cfg)
    bad = [q for q in quarantine if q["reason"] == "bad row"]
    assert len(inputs) == rows and len(bad) == 2
    ended = data + [q["id"] for q in quarantine]
    assert sorted(ended) == sorted(inputs + [q["id"] for q in bad])  # each id exactly once
    return data, quarantine


def _record_exactly_once(cfg, scenario: str, injected: str) -> None:
    """The chaos record of a generation run: rows in, written, errors, rows lost."""
    inputs, data, quarantine = _ids(cfg)
    ended = set(data) | {q["id"] for q in quarantine}
    record(
        scenario=scenario,
        injected=injected,
        sent=len(inputs) + sum(q["reason"] == "bad row" for q in quarantine),
        answered=len(data),
        errors=sum(q["reason"] == "teacher error" for q in quarantine),
        lost=len(set(inputs) - ended),
        detail="quarantined with a reason: "
        + ", ".join(
            f"{n} {r}" for r, n in sorted(Counter(q["reason"] for q in quarantine).items())
        ),
    )


def test_every_input_ends_up_exactly_once_and_rerun_calls_no_teacher(ray_head, tmp_path):
    cfg, _ = _config(tmp_path, "e2e", ray_head)
    summary = _generate(cfg, ray_head)
    data, _ = _assert_exactly_once(cfg)
    assert summary.teacher_calls == ROWS and summary.rows_in == ROWS + 2
    assert summary.written == len(data) > 0
    stats = json.loads(Path(_out_dir(cfg), "stats.json").read_text())
    for key in (
        "rows_in",
        "written",
        "quarantined",
        "parse_rate",
        "agreement_with_gold",
        "prompt_tokens",
        "output_tokens",
    ):
        assert key in stats
    assert stats["output_tokens"] > 0 and stats["this_run"]["output_tokens_per_s"] > 0
    manifest = json.loads(Path(cfg.pipeline.run_dir, "generate", "manifest.json").read_text())
    assert manifest["config_hash"] == config_hash(cfg.data, cfg.teacher, cfg.generate)
    assert json.loads(Path(_out_dir(cfg), "manifest.json").read_text())["complete"] is True
    record = read_records(storage.join(_out_dir(cfg), "data"))[0]
    assert record.teacher_raw and record.meta["teacher_tokens"]["output_tokens"] > 0

    again = _generate(cfg, ray_head)
    assert again.teacher_calls == 0 and again.skipped == ROWS and again.written == summary.written
    _assert_exactly_once(cfg)


@pytest.mark.chaos
def test_resume_after_the_driver_is_killed(ray_head, tmp_path):
    # Few requests in flight and more rows, so that answers trickle in and the kill lands
    # part-way through.
    rows = 32
    cfg, overrides = _config(tmp_path, "resume", ray_head, ("generate.max_in_flight=4",), rows)
    done_dir = Path(_out_dir(cfg), "done")
    job = subprocess.Popen(
        [sys.executable, str(REPO / "ray_jobs" / "generate_rationales.py"), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 400
    while not _any_file(done_dir) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)  # not politely: no flush, no cleanup
    job.wait()
    assert _any_file(done_dir), "the job finished no shard before the deadline"
    # Done is what has counts: a shard killed between its files and its counts is sent again.
    done_before = sum(json.loads(f.read_text())["rows"] for f in done_dir.glob("*.json"))
    assert done_before < rows, "the job finished before it could be killed; use more rows"

    summary = _generate(cfg, ray_head)
    assert summary.teacher_calls == rows - done_before  # only the missing ones
    assert summary.skipped == done_before
    _assert_exactly_once(cfg, rows)
    _record_exactly_once(
        cfg, "generation: driver killed, rerun", "SIGKILL of the job's driver after a shard"
    )


def _replica_pid() -> int:
    """The teacher replica's process: Ray titles it `ray::ServeReplica:<app>:<deployment>`."""
    import psutil

    title = f"ray::ServeReplica:{APP_NAME}:TeacherServer"
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        # Forked children (vLLM's engine core) start with their parent's title: skip them.
        if cmdline and cmdline[0].startswith(title) and proc.pid != os.getpid():
            parent = proc.parent()
            if parent is None or not " ".join(parent.cmdline()).startswith(title):
                return proc.pid
    raise AssertionError("no teacher replica is alive")


@pytest.mark.chaos
def test_a_killed_teacher_replica_loses_nothing(ray_head, tmp_path):
    cfg, _ = _config(tmp_path, "replica", ray_head)
    done_dir = Path(_out_dir(cfg), "done")
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = _generate(cfg, ray_head)
        except BaseException as err:  # surfaced by the assertion below
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 400
    while not _any_file(done_dir) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(_replica_pid(), signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive(), "the run did not finish after the replica was killed"
    assert "error" not in result, result.get("error")
    _, quarantine = _assert_exactly_once(cfg)
    # Requests in flight on the dead replica were retried on its replacement.
    assert not [q for q in quarantine if q["reason"] == "teacher error"]
    assert result["summary"].teacher_calls == ROWS
    _record_exactly_once(
        cfg, "generation: teacher replica killed", "SIGKILL of the vLLM replica mid-run"
    )


def test_the_teacher_app_answers_openai_routes_over_http(ray_head, tmp_path):
    """The long-lived mode: the same app with an HTTP route, as a RayService would run it."""
    import urllib.request

    from ray import serve

    from dsbs.generate.deployment import teacher_app

    cfg, _ = _config(tmp_path, "http", ray_head)
    serve.run(teacher_app(cfg.teacher), name=APP_NAME, route_prefix="/")

    def call(path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{HTTP_PORT}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    assert call("/healthz") == {"status": "ok"}
    assert call("/v1/models")["data"][0]["id"] == cfg.teacher.model
    chat = call(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
    )
    assert chat["choices"][0]["message"]["content"] and chat["usage"]["completion_tokens"] > 0
    text = call("/v1/completions", {"prompt": ["Q: 1 + 1?\nA:", "Q: 2 + 2?\nA:"], "max_tokens": 8})
    assert len(text["choices"]) == 2 and text["object"] == "text_completion"


def test_the_teacher_engine_computes_on_every_core(ray_head, tmp_path):
    """vLLM's CPU build keeps a core of its own for its polling scheduler by default, which on
    a 2-core node left the model one thread; dsbs shares the cores (1.45-1.8x the tokens/s)."""
    import psutil
    from ray import serve

    from dsbs.generate.deployment import teacher_app

    cfg, _ = _config(tmp_path, "cores", ray_head)
    serve.run(teacher_app(cfg.teacher), name=APP_NAME, route_prefix="/")
    workers = [
        p
        for p in psutil.Process(_replica_pid()).children(recursive=True)
        if p.name() == "VLLM::Worker"
    ]
    assert workers, "the replica has no vLLM worker process"
    cores = set().union(*(os.sched_getaffinity(t.id) for w in workers for t in w.threads()))
    assert cores == os.sched_getaffinity(0)


def _wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_work_the_caller_gives_up_on_is_aborted_on_the_replica(ray_head):
    """The real vLLM engine: a request past its timeout is aborted by the replica itself, and
    a call the caller cancels ends on the replica too (vLLM aborts a cancelled `generate`)."""
    from ray import serve

    from dsbs.generate.deployment import DEPLOYMENT_NAME
    from dsbs.teachers.base import Sampling, TeacherRequest, TeacherTimeout

    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, APP_NAME)
    counting = "Count from 1 to 5000, one number per line, with no other text."

    def request(request_id: str, timeout_s: float | None) -> TeacherRequest:
        return TeacherRequest(
            request_id,
            messages=(("user", counting),),
            sampling=Sampling(max_tokens=2000),
            timeout_s=timeout_s,
        )

    started = time.monotonic()
    with pytest.raises(TeacherTimeout, match="aborted in the engine"):
        handle.complete.remote(request("count#0", timeout_s=2.0)).result(timeout_s=120)
    assert time.monotonic() - started < 30  # 2,000 tokens would take minutes on 2 cores
    assert handle.running.remote().result(timeout_s=30) == []

    response = handle.complete.remote(request("count#1", timeout_s=None))
    assert _wait_until(lambda: handle.running.remote().result() == ["count#1"], 60)
    response.cancel()
    assert _wait_until(lambda: handle.running.remote().result() == [], 10)


def test_health_check_fails_when_the_engine_dies(ray_head):
    import psutil
    import ray
    from ray import serve

    from dsbs.generate.deployment import DEPLOYMENT_NAME

    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, APP_NAME)
    handle.check_health.remote().result(timeout_s=60)
    replica = psutil.Process(_replica_pid())
    engine = [p for p in replica.children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
    assert engine, "the replica runs no vLLM engine core"
    for process in engine:
        process.kill()  # the engine core alone; the replica must notice and report it

    def unhealthy() -> bool:
        try:
            handle.check_health.remote().result(timeout_s=60)
        except ray.exceptions.RayTaskError:
            return True
        return False

    assert _wait_until(unhealthy, 60), "the replica still reports healthy after its engine died"


def test_a_teacher_no_node_can_hold_fails_after_the_startup_timeout(ray_head, tmp_path):
    """It waited forever: a GPU teacher on a cluster without GPUs (last: it removes the app)."""
    from dsbs.generate.stage import GenerationError

    extra = ("teacher.use_gpu=true", "teacher.dtype=bfloat16", "teacher.startup_timeout_s=8")
    cfg, _ = _config(tmp_path, "unplaceable", ray_head, extra)
    started = time.monotonic()
    with pytest.raises(GenerationError) as caught:
        _generate(cfg, ray_head)
    assert time.monotonic() - started < 120
    message = str(caught.value)
    assert "teacher.startup_timeout_s=8" in message
    assert "'GPU': 1" in message and "the cluster's nodes have [{'CPU': 2.0}]" in message, message
