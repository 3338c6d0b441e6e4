"""A teacher engine slowed on purpose, for overload tests (tests/ is on sys.path via conftest).

It stands in for vLLM where the test needs control over speed that no real engine on a
shared 2-core machine gives: it decodes like a compute-bound LLM engine with continuous
batching - steps of `step_s + per_request_s * running` seconds, one token for every running
request per step, at most `max_batch` running and the rest queued - so latency grows with
the load and throughput saturates, as vLLM's do. Like vLLM's `generate`, it aborts a request
whose caller is cancelled. Every request it starts and every abort is appended to a log
file, so a test counts the engine's work across replicas and restarts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from dsbs.teachers.base import TeacherReply, TeacherRequest

ANSWER = "Add the two numbers. The answer is (1 + 1)."


@dataclass
class _Job:
    request_id: str
    tokens_left: int
    done: asyncio.Future = field(repr=False)


class SlowEngine:
    """A `Teacher` whose speed the test sets (see the module docstring)."""

    def __init__(self, log: str, step_s: float, per_request_s: float, max_batch: int = 256) -> None:
        self.log = Path(log)
        self.step_s = step_s
        self.per_request_s = per_request_s
        self.max_batch = max_batch
        self.queue: list[_Job] = []
        self.running: list[_Job] = []
        self._loop_task: asyncio.Task | None = None

    def _write(self, event: str, request_id: str) -> None:
        with self.log.open("a") as handle:
            handle.write(f"{event} {request_id}\n")

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        """Queues the request, decodes `sampling.max_tokens` tokens, answers."""
        job = _Job(request.request_id, request.sampling.max_tokens, asyncio.Future())
        self._write("start", request.request_id)
        self.queue.append(job)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._decode())
        try:
            await job.done
        except asyncio.CancelledError:
            for jobs in (self.queue, self.running):
                if job in jobs:
                    jobs.remove(job)
            self._write("abort", request.request_id)
            raise
        return TeacherReply(
            texts=(ANSWER,), prompt_tokens=100, output_tokens=request.sampling.max_tokens
        )

    async def _decode(self) -> None:
        while self.queue or self.running:
            while self.queue and len(self.running) < self.max_batch:
                self.running.append(self.queue.pop(0))
            await asyncio.sleep(self.step_s + self.per_request_s * len(self.running))
            for job in list(self.running):
                job.tokens_left -= 1
                if job.tokens_left <= 0:
                    self.running.remove(job)
                    if not job.done.done():
                        job.done.set_result(None)

    async def check_health(self) -> None:
        """Always healthy."""


def engine_counts(log: str) -> dict[str, int]:
    """How many requests the engine started and aborted, from its log."""
    lines = Path(log).read_text().split() if Path(log).exists() else []
    events = lines[0::2]
    return {"start": events.count("start"), "abort": events.count("abort")}


def make_engine(cfg: object, log: str, step_s: float, per_request_s: float) -> SlowEngine:
    """A teacher loader (`TeacherServer(cfg, loader)`): ignores the config, as a test engine."""
    return SlowEngine(log, step_s, per_request_s)
