"""The Ray Data side of generation: input shards -> teacher requests -> teacher texts.

`TeacherCaller` is an async callable class for `Dataset.map_batches`: one actor reads the
input shards it is handed (one Ray Data task each) and keeps their rows' requests in flight
to the teacher, which is either the Serve deployment (through its handle)
or an OpenAI-compatible URL, as many as `InFlightLimit` finds the teacher answers in good
time (at most `generate.max_in_flight`). Failures are retried with backoff, each attempt
with its own request id; a row whose teacher call finally fails comes back with an `error`,
to be quarantined rather than failing the job. Every second the actor posts its counts to
the driver's `ProgressBoard`, so progress and overload warnings don't wait for a batch.

The actor reads its shards itself, rather than a Ray Data read stage before it: rows then
reach the actor as soon as Ray Data hands it a shard, and the rows of the several shards it
holds wait at its `InFlightLimit`, which refills the engine's batch on each answer. With a
read stage, rows arrived in waves as read tasks (new worker processes on cores busy with
the engine) finished, and the engine ran below its batch between them.

Why not `ray.data.llm`'s `ServeDeploymentProcessorConfig`: it treats a lost replica as a
fatal error for the whole batch (only ValueError/TypeError/ValidationError/TimeoutError are
recoverable, with no retry), and this stage must ride out a replica being killed mid-run.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa

from dsbs import storage
from dsbs.config import TeacherConfig
from dsbs.generate.engines import TEACHERS
from dsbs.tasks import get_task
from dsbs.tasks.base import STOP_SEQUENCES, build_messages, build_prompt
from dsbs.teachers.base import (
    RetryableError,
    Sampling,
    Teacher,
    TeacherError,
    TeacherReply,
    TeacherRequest,
    TeacherTimeout,
)
from dsbs.teachers.client import InFlightLimit, complete_with_retries

REPORT_EVERY_S = 1.0
"""Seconds between the caller's progress posts to the driver."""
UNANSWERED_AFTER = 2.0
"""The caller cancels an attempt the replica has not answered in this many times
`teacher.request_timeout_s` (the replica itself aborts at 1x; this catches a hung replica)."""

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("shard", pa.int64()),
        ("task", pa.string()),
        ("input", pa.string()),
        ("label", pa.string()),
        ("meta", pa.string()),
        ("texts", pa.list_(pa.string())),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("error", pa.string()),
        ("attempts", pa.int64()),
        ("latency_s", pa.float64()),
    ]
)


def read_shard(file: str, shard: int, only: list[str] | None) -> pa.Table:
    """One input shard's rows (arrow), tagged with the shard; `only` keeps those ids."""
    import pyarrow.compute as pc

    table = storage.read_table(file)
    if only is not None:  # a done shard's teacher errors, sent again
        table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(only, pa.string())))
    return table.append_column("shard", pa.array([shard] * len(table), pa.int64()))


def sampling_for(cfg: TeacherConfig, num_samples: int, row_id: str) -> Sampling:
    """Sampling for one input; the seed comes from the id so reruns sample the same texts."""
    seed = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) if num_samples > 1 else None
    return Sampling(num_samples, cfg.temperature, cfg.top_p, cfg.max_tokens, STOP_SEQUENCES, seed)


def teacher_request(
    cfg: TeacherConfig,
    task_name: str,
    row_id: str,
    input_text: str,
    num_samples: int,
    attempt: int = 0,
) -> TeacherRequest:
    """The request for one attempt at one input, in the configured prompt style.

    The request id names the attempt (`ID#0`, `ID#1`, ...): an engine that still knows an
    earlier attempt would refuse a second request under the same id. The sampling seed
    comes from the row id alone, so a retry samples what the first attempt would have.
    """
    task = get_task(task_name)
    common: dict[str, Any] = {
        "request_id": f"{row_id}#{attempt}",
        "sampling": sampling_for(cfg, num_samples, row_id),
        "timeout_s": cfg.request_timeout_s,
    }
    if cfg.prompt_style == "chat":
        return TeacherRequest(
            messages=build_messages(task, input_text, cfg.num_exemplars), **common
        )
    return TeacherRequest(prompt=build_prompt(task, input_text, cfg.num_exemplars), **common)


class ServeTeacher:
    """A `Teacher` that forwards one attempt to the teacher deployment through its handle."""

    def __init__(self, app_name: str, deployment_name: str, cfg: TeacherConfig) -> None:
        from ray import serve

        self.handle = serve.get_deployment_handle(deployment_name, app_name)
        self.cfg = cfg

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        """One attempt. The replica enforces `request.timeout_s` and aborts in the engine.

        Raises:
            TeacherTimeout: the replica timed the request out, or never answered (then the
                call is cancelled, which aborts it on the replica if it ever started).
            RetryableError: a replica died or is unavailable.
            TeacherError: the request itself is bad.
        """
        import ray.exceptions
        from ray.serve.exceptions import RayServeException

        response = self.handle.complete.remote(request)
        unanswered = UNANSWERED_AFTER * self.cfg.request_timeout_s
        try:
            return await asyncio.wait_for(response, unanswered)
        except asyncio.TimeoutError as err:
            # Awaiting with a timeout does not stop the replica's work; cancelling does.
            response.cancel()
            raise TeacherTimeout(f"no answer from the teacher in {unanswered} s") from err
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, TeacherTimeout):
                raise TeacherTimeout(str(err.cause)) from err
            if isinstance(err.cause, ValueError | TypeError):  # a bad request: retrying won't help
                raise TeacherError(str(err.cause)) from err
            raise RetryableError(f"{type(err.cause).__name__}: {err.cause}") from err
        except (ray.exceptions.RayError, RayServeException) as err:
            # A replica died or is unavailable: Serve starts another; try again after a pause.
            raise RetryableError(f"{type(err).__name__}: {str(err)[:200]}") from err

    async def check_health(self) -> None:
        """The deployment's own health is Serve's business; nothing to check from here."""


class TeacherCaller:
    """`map_batches` UDF: sends each row to the teacher within an adaptive in-flight limit."""

    def __init__(
        self,
        cfg: TeacherConfig,
        num_samples: int,
        max_in_flight: int,
        app_name: str,
        board: Any = None,
    ) -> None:
        self.cfg = cfg
        self.num_samples = num_samples
        self.max_in_flight = max_in_flight
        self.app_name = app_name
        self.board = board
        """A `ProgressBoard` actor handle, or None."""
        self.answered = 0
        self._name = uuid.uuid4().hex[:8]
        # Created on first use, inside the actor's event loop (Ray Data runs one per actor).
        self._teacher: Teacher | None = None
        self._limit: InFlightLimit | None = None

    def _client(self) -> tuple[Teacher, InFlightLimit]:
        if self._teacher is None or self._limit is None:
            self._teacher = TEACHERS[self.cfg.engine].client(self.cfg, self.app_name)
            self._limit = InFlightLimit(
                self.max_in_flight, self.cfg.request_timeout_s, self.cfg.max_tokens
            )
            if self.board is not None:
                asyncio.get_running_loop().create_task(self._report_forever())
        return self._teacher, self._limit

    async def _report_forever(self) -> None:
        assert self._limit is not None
        while True:
            self.board.update.remote(
                self._name, {**self._limit.snapshot(), "answered": self.answered}
            )
            await asyncio.sleep(REPORT_EVERY_S)

    async def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        teacher, limit = self._client()
        started = time.monotonic()
        attempts = 0

        def request_for(attempt: int) -> TeacherRequest:
            nonlocal attempts
            attempts = attempt + 1
            return teacher_request(
                self.cfg, row["task"], row["id"], row["input"], self.num_samples, attempt
            )

        texts: list[str] = []
        prompt_tokens = output_tokens = 0
        error = None
        try:
            reply, _ = await complete_with_retries(
                teacher, request_for, self.cfg.max_retries, limit, what=f"row {row['id']}"
            )
            texts, prompt_tokens, output_tokens = (
                list(reply.texts),
                reply.prompt_tokens,
                reply.output_tokens,
            )
        except TeacherError as err:
            error = str(err)[:1000]
        self.answered += 1
        return {
            **{name: row.get(name) for name in ("id", "shard", "task", "input", "label", "meta")},
            "texts": texts,
            "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "error": error,
            "attempts": attempts,
            "latency_s": time.monotonic() - started,
        }

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        """Answers the input shards of one batch (`file`, `shard`, `only`): a table each."""
        for item in batch.to_pylist():
            # Read off the event loop: answers keep arriving (and refilling the limit) meanwhile.
            table = await asyncio.to_thread(read_shard, item["file"], item["shard"], item["only"])
            results = await asyncio.gather(*(self._one(row) for row in table.to_pylist()))
            yield pa.Table.from_pylist(list(results), schema=OUTPUT_SCHEMA)
