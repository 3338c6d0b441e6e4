"""The `openai` engine against vLLM's own OpenAI-compatible server on 127.0.0.1, behind a
real HTTP proxy that fails the first requests (503, 429, 503) and then recovers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from chaos_record import record
from ports import free_port

from dsbs import storage
from dsbs.config import load_config
from dsbs.data.synth import synth
from dsbs.generate import generate_rationales
from dsbs.generate.stage import config_hash
from dsbs.precision import resolve_dtype
from dsbs.records import read_records
from dsbs.teachers.base import Sampling, TeacherError, TeacherRequest
from dsbs.teachers.client import complete_with_retries
from dsbs.teachers.models import resolve_model
from dsbs.teachers.openai import OpenAITeacher

pytestmark = pytest.mark.slow
SERVED_NAME = "smollm2"
ROWS = 12


@pytest.fixture(scope="module")
def vllm_server():
    """vLLM's OpenAI server with the embedded model; yields its base URL."""
    model = resolve_model("embedded:smollm2-135m-instruct")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            resolve_dtype("auto", use_gpu=False),  # as a teacher replica would choose
            "--max-model-len",
            "2048",
            "--enforce-eager",
            "--enable-prefix-caching",
        ],
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/models", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("vLLM's OpenAI server exited during start-up") from None
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("vLLM's OpenAI server did not start in 300 s")
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


class FlakyProxy:
    """A real HTTP proxy: the first POSTs get the given error statuses, the rest go through."""

    def __init__(self, upstream: str, failures: list[int]) -> None:
        self.upstream = upstream
        self.failures = list(failures)
        self.seen: list[int] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and self.failures:
            status = self.failures.pop(0)
            self.seen.append(status)
            return web.json_response({"error": "injected"}, status=status)
        body = await request.read()
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path.removeprefix("/v1"),
                data=body,
                headers={"Content-Type": "application/json"},
            ) as upstream,
        ):
            self.seen.append(upstream.status)
            return web.Response(
                body=await upstream.read(), status=upstream.status, content_type="application/json"
            )

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()


def _teacher_cfg(base_url: str, **extra):
    overrides = [
        "teacher.engine=openai",
        f"teacher.base_url={base_url}",
        f"teacher.model={SERVED_NAME}",
        "teacher.max_tokens=48",
        *[f"teacher.{k}={v}" for k, v in extra.items()],
    ]
    return load_config(None, overrides)


def test_completions_and_chat_through_a_recovering_endpoint(vllm_server):
    proxy = FlakyProxy(vllm_server, [503, 429])
    teacher = OpenAITeacher(_teacher_cfg(proxy.base_url).teacher)
    sampling = Sampling(max_tokens=16, stop=("\nQ:",))

    async def run():
        completion, attempts = await complete_with_retries(
            teacher,
            lambda n: TeacherRequest(f"a#{n}", prompt="Q: 2 + 2?\nA:", sampling=sampling),
            max_retries=8,
        )
        chat = await teacher.complete(
            TeacherRequest("b", messages=(("user", "Say hi."),), sampling=sampling)
        )
        await teacher.aclose()
        return completion, attempts, chat

    completion, attempts, chat = asyncio.run(run())
    assert proxy.seen[:2] == [503, 429] and proxy.seen[2:] == [200, 200] and attempts == 3
    assert (
        completion.output_tokens > 0 and completion.prompt_tokens > 0 and len(completion.texts) == 1
    )
    assert chat.texts[0].strip()


def test_gives_up_with_a_teacher_error_when_the_endpoint_stays_down(vllm_server):
    proxy = FlakyProxy(vllm_server, [503] * 10)
    teacher = OpenAITeacher(_teacher_cfg(proxy.base_url).teacher)
    with pytest.raises(TeacherError, match="gave up after 3 attempts"):
        asyncio.run(
            complete_with_retries(
                teacher, lambda n: TeacherRequest(f"c#{n}", prompt="Q: hi\nA:"), max_retries=2
            )
        )
    assert proxy.seen == [503, 503, 503]


def test_generate_with_the_openai_engine(vllm_server, ray_cluster, tmp_path):
    proxy = FlakyProxy(vllm_server, [503, 429, 503])
    source = tmp_path / "in.jsonl"
    synth("arithmetic", ROWS, 5, str(source))
    cfg = load_config(
        None,
        [
            "teacher.engine=openai",
            f"teacher.base_url={proxy.base_url}",
            f"teacher.model={SERVED_NAME}",
            "teacher.max_tokens=48",
            f"data.source={source}",
            f"pipeline.run_dir={tmp_path / 'run'}",
            "generate.shard_rows=4",
            "generate.max_in_flight=4",
        ],
    )
    summary = generate_rationales(cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir)
    out = storage.join(
        cfg.pipeline.run_dir, "generate", config_hash(cfg.data, cfg.teacher, cfg.generate)
    )
    data = [r.id for r in read_records(storage.join(out, "data"))]
    quarantine = [
        json.loads(line)
        for f in storage.list_files(storage.join(out, "quarantine"))
        for line in Path(f).read_text().splitlines()
    ]
    inputs = [r.id for r in read_records(storage.join(out, "inputs"))]
    assert sorted(data + [q["id"] for q in quarantine]) == sorted(inputs)
    assert not [q for q in quarantine if q["reason"] == "teacher error"]  # the retries recovered
    assert summary.teacher_calls == ROWS
    assert proxy.seen[:3] == [503, 429, 503] and proxy.seen.count(200) == ROWS


@pytest.mark.chaos
def test_a_rerun_after_a_teacher_outage_retries_the_rows_that_failed(
    vllm_server, ray_cluster, tmp_path
):
    """Teacher errors counted as done and against the budget: after one outage every rerun
    failed before its first call, and only deleting files by hand helped (issue 15, item 2)."""
    from dsbs.generate.stage import GenerationError

    proxy = FlakyProxy(vllm_server, [503] * 10_000)  # down
    source = tmp_path / "in.jsonl"
    synth("arithmetic", ROWS, 7, str(source))
    cfg = load_config(
        None,
        [
            "teacher.engine=openai",
            f"teacher.base_url={proxy.base_url}",
            f"teacher.model={SERVED_NAME}",
            "teacher.max_tokens=48",
            "teacher.max_retries=0",
            f"data.source={source}",
            f"pipeline.run_dir={tmp_path / 'run'}",
            "generate.shard_rows=2",
            "generate.max_in_flight=2",
        ],
    )

    def run():
        return generate_rationales(cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir)

    with pytest.raises(GenerationError, match=r"budget \(generate.max_error_fraction\)"):
        run()
    out = storage.join(
        cfg.pipeline.run_dir, "generate", config_hash(cfg.data, cfg.teacher, cfg.generate)
    )

    def quarantine() -> list[dict]:
        return [
            json.loads(line)
            for f in storage.list_files(storage.join(out, "quarantine"))
            for line in Path(f).read_text().splitlines()
        ]

    failed = [q["id"] for q in quarantine() if q["reason"] == "teacher error"]
    assert failed
    proxy.failures.clear()  # the teacher is back
    summary = run()
    data = [r.id for r in read_records(storage.join(out, "data"))]
    inputs = [r.id for r in read_records(storage.join(out, "inputs"))]
    final = quarantine()
    assert sorted(data + [q["id"] for q in final]) == sorted(inputs)  # each row exactly once
    assert not [q for q in final if q["reason"] == "teacher error"]
    assert set(failed) <= set(data) | {q["id"] for q in final}
    assert summary.teacher_calls == ROWS  # nothing final was quarantined by the outage
    record(
        scenario="generation: teacher unreachable, then back",
        injected="every teacher call answered 503 (run fails on its budget), then the rerun",
        sent=len(inputs),
        answered=len(data),
        errors=sum(q["reason"] == "teacher error" for q in final),
        lost=len(set(inputs) - set(data) - {q["id"] for q in final}),
        detail=f"{len(failed)} rows failed in the outage, all asked again by the rerun; "
        + "quarantined with a reason: "
        + ", ".join(f"{n} {r}" for r, n in sorted(Counter(q["reason"] for q in final).items())),
    )
