"""The Ray Data side of generation: rows -> teacher requests -> teacher texts.

`TeacherCaller` is an async callable class for `Dataset.map_batches`: one actor holds a
bounded number of requests in flight (a semaphore) to the teacher, which is either the
Serve deployment (through its handle) or an OpenAI-compatible URL. Failures are retried
with backoff; a row whose teacher call finally fails comes back with an `error`, to be
quarantined rather than failing the job.

Why not `ray.data.llm`'s `ServeDeploymentProcessorConfig`: it treats a lost replica as a
fatal error for the whole batch (only ValueError/TypeError/ValidationError/TimeoutError are
recoverable, with no retry), and this stage must ride out a replica being killed mid-run.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa

from dsbs.config import TeacherConfig
from dsbs.tasks import get_task
from dsbs.tasks.base import STOP_SEQUENCES, build_messages, build_prompt
from dsbs.teachers.base import (
    RetryableError,
    Sampling,
    Teacher,
    TeacherError,
    TeacherReply,
    TeacherRequest,
    with_retries,
)

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("input", pa.string()),
        ("label", pa.string()),
        ("meta", pa.string()),
        ("texts", pa.list_(pa.string())),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("error", pa.string()),
    ]
)


def sampling_for(cfg: TeacherConfig, num_samples: int, row_id: str) -> Sampling:
    """Sampling for one input; the seed comes from the id so reruns sample the same texts."""
    seed = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) if num_samples > 1 else None
    return Sampling(num_samples, cfg.temperature, cfg.top_p, cfg.max_tokens, STOP_SEQUENCES, seed)


def teacher_request(
    cfg: TeacherConfig, task_name: str, row_id: str, input_text: str, num_samples: int
) -> TeacherRequest:
    """The request for one input, in the configured prompt style."""
    task = get_task(task_name)
    sampling = sampling_for(cfg, num_samples, row_id)
    if cfg.prompt_style == "chat":
        return TeacherRequest(row_id, messages=build_messages(task, input_text), sampling=sampling)
    return TeacherRequest(row_id, prompt=build_prompt(task, input_text), sampling=sampling)


class ServeTeacher:
    """A `Teacher` that forwards to the teacher deployment through its handle."""

    def __init__(self, app_name: str, deployment_name: str, cfg: TeacherConfig) -> None:
        from ray import serve

        self.handle = serve.get_deployment_handle(deployment_name, app_name)
        self.cfg = cfg

    async def _once(self, request: TeacherRequest) -> TeacherReply:
        import ray.exceptions
        from ray.serve.exceptions import RayServeException

        try:
            return await asyncio.wait_for(
                self.handle.complete.remote(request), self.cfg.request_timeout_s
            )
        except asyncio.TimeoutError as err:
            raise RetryableError(f"no answer in {self.cfg.request_timeout_s} s") from err
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, ValueError | TypeError):  # a bad request: retrying won't help
                raise TeacherError(str(err.cause)) from err
            raise RetryableError(f"{type(err.cause).__name__}: {err.cause}") from err
        except (ray.exceptions.RayError, RayServeException) as err:
            # A replica died or is unavailable: Serve starts another; try again after a pause.
            raise RetryableError(f"{type(err).__name__}: {str(err)[:200]}") from err

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        """One request, retried with backoff while replicas come and go."""
        reply, _ = await with_retries(
            lambda: self._once(request),
            self.cfg.max_retries,
            f"teacher request {request.request_id}",
        )
        return reply

    async def check_health(self) -> None:
        """The deployment's own health is Serve's business; nothing to check from here."""


class TeacherCaller:
    """`map_batches` UDF: sends each row to the teacher, at most `max_in_flight` at a time."""

    def __init__(
        self, cfg: TeacherConfig, num_samples: int, max_in_flight: int, app_name: str
    ) -> None:
        self.cfg = cfg
        self.num_samples = num_samples
        self.max_in_flight = max_in_flight
        self.app_name = app_name
        # Created on first use, inside the actor's event loop (Ray Data runs one per actor).
        self._teacher: Teacher | None = None
        self._slots: asyncio.Semaphore | None = None

    def _client(self) -> Teacher:
        if self._teacher is None:
            if self.cfg.engine == "openai":
                from dsbs.teachers.openai import OpenAITeacher

                self._teacher = OpenAITeacher(self.cfg, self.max_in_flight)
            else:
                from dsbs.generate.deployment import DEPLOYMENT_NAME

                self._teacher = ServeTeacher(self.app_name, DEPLOYMENT_NAME, self.cfg)
            self._slots = asyncio.Semaphore(self.max_in_flight)
        return self._teacher

    async def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        teacher = self._client()
        assert self._slots is not None
        out = {name: row.get(name) for name in ("id", "task", "input", "label", "meta")}
        request = teacher_request(self.cfg, row["task"], row["id"], row["input"], self.num_samples)
        try:
            async with self._slots:
                reply = await teacher.complete(request)
        except TeacherError as err:
            return {
                **out,
                "texts": [],
                "prompt_tokens": 0,
                "output_tokens": 0,
                "error": str(err)[:1000],
            }
        return {
            **out,
            "texts": list(reply.texts),
            "prompt_tokens": reply.prompt_tokens,
            "output_tokens": reply.output_tokens,
            "error": None,
        }

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        """Answers one batch of input rows (arrow) with one output table."""
        rows = batch.to_pylist()
        results = await asyncio.gather(*(self._one(row) for row in rows))
        yield pa.Table.from_pylist(list(results), schema=OUTPUT_SCHEMA)
