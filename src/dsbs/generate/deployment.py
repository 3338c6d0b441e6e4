"""The teacher as a Ray Serve deployment, with an OpenAI-compatible HTTP route.

One deployment (`TeacherServer`) wraps one engine per replica. The generate stage calls its
`complete` method through a deployment handle; deployed on its own (a RayService with
`import_path: dsbs.generate.deployment:build_app`), it also answers `/v1/completions`,
`/v1/chat/completions` and `/v1/models`, so other clusters can use it as an `openai` teacher.

Why not `ray.serve.llm`: with vLLM's CPU build, `build_openai_app` started the engine and then
hung without answering, while this deployment around `AsyncLLM` answers at once; it also keeps
the engine's arguments and the OpenAI routes under dsbs's own config and tests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from dsbs.auth import TEACHER_TOKEN_ENV, add_bearer_auth
from dsbs.cluster import serve_queue_bound
from dsbs.config import TeacherConfig
from dsbs.generate.openai_schema import (
    COMPLETION_RESPONSES,
    ChatBody,
    CompletionBody,
    OpenAIBody,
    finish_reason,
    openai_error,
    sse,
    usage,
    usage_of,
)
from dsbs.precision import dtype_choice
from dsbs.teachers.base import (
    StreamingTeacher,
    Teacher,
    TeacherError,
    TeacherReply,
    TeacherRequest,
    TeacherTimeout,
    TextDelta,
)
from dsbs.teachers.vllm import replica_gpus

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "TeacherServer"
APP_NAME = "dsbs-teacher"


def load_teacher(cfg: TeacherConfig) -> Teacher:
    """The in-replica engine for a config: vLLM (model resolved on the replica's node)."""
    from dsbs.teachers.vllm import VllmTeacher, engine_args

    return VllmTeacher(engine_args(cfg))


api = FastAPI(title="dsbs teacher", description="OpenAI-compatible teacher for dsbs")
add_bearer_auth(api, TEACHER_TOKEN_ENV, lambda message: openai_error(message, 401))


# Starlette's class, not FastAPI's subclass: FastAPI answers a body it cannot parse with
# Starlette's, which the subclass's handler missed ({"detail": ...} instead of OpenAI's body).
@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    # Its headers too: a 405 names the allowed methods (`Allow`, RFC 9110).
    return JSONResponse(
        openai_error(str(err.detail), err.status_code), err.status_code, headers=err.headers
    )


@api.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
    # A 400 as OpenAI's API and vLLM's server answer a bad parameter (FastAPI's own is a 422).
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'][1:])}: {e['msg']}" for e in err.errors()
    )
    return JSONResponse(openai_error(problems, 400), 400)


_ids = itertools.count()


async def _merged(
    teacher: StreamingTeacher, requests: list[TeacherRequest]
) -> AsyncIterator[tuple[int, TextDelta]]:
    """The pieces of several requests as they come, tagged with the request's position.

    Leaving the iteration (the client went away) cancels every request's stream, which
    aborts it in the engine.
    """
    queue: asyncio.Queue[tuple[int, TextDelta | BaseException | None]] = asyncio.Queue()

    async def pump(position: int, request: TeacherRequest) -> None:
        try:
            async for delta in teacher.stream(request):
                await queue.put((position, delta))
        except Exception as err:  # handed to the reader, which ends the stream with it
            await queue.put((position, err))
        finally:
            await queue.put((position, None))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        open_streams = len(tasks)
        while open_streams:
            position, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class TeacherServer:
    """One teacher engine per replica, reachable by handle and over HTTP."""

    def __init__(
        self, cfg: TeacherConfig, loader: Callable[[TeacherConfig], Teacher] = load_teacher
    ) -> None:
        self.model_name = cfg.model
        self.cfg = cfg
        dtype, why = dtype_choice(cfg.dtype, cfg.use_gpu)  # judged on this replica's node
        self.description = f"{cfg.model} in {dtype} ({why})"
        self.teacher = loader(cfg)
        self._running: set[str] = set()

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        """The handle method the generate stage calls.

        The request's `timeout_s` is enforced here, from the moment this replica starts the
        request (time spent queued at the caller or in Serve's router does not count), and
        a request past it is aborted in the engine before the caller hears of the timeout:
        so a retry never runs beside its first attempt. A caller that gives up (Serve
        cancels this coroutine) aborts it the same way; vLLM's `generate` aborts a request
        whose consumer is cancelled.

        Raises:
            TeacherTimeout: the engine did not finish within `request.timeout_s`.
        """
        self._running.add(request.request_id)
        try:
            return await asyncio.wait_for(self.teacher.complete(request), request.timeout_s)
        except asyncio.TimeoutError as err:
            raise TeacherTimeout(
                f"request {request.request_id}: no answer within {request.timeout_s} s of "
                "starting it; aborted in the engine"
            ) from err
        finally:
            self._running.discard(request.request_id)

    async def describe(self) -> str:
        """The model and the dtype this replica chose, with the reason (for the driver's log)."""
        return self.description

    async def running(self) -> list[str]:
        """Ids of the requests this replica is working on (for operators and tests)."""
        return sorted(self._running)

    async def check_health(self) -> None:
        """Serve's health check: raises (so Serve replaces the replica) if the engine died."""
        await self.teacher.check_health()

    def __del__(self) -> None:
        # Graceful shutdown: stop the engine's core process with the replica.
        shutdown = getattr(getattr(self, "teacher", None), "shutdown", None)
        if shutdown is not None:
            shutdown()

    def _check(self, body: OpenAIBody, prompts: int) -> None:
        """The HTTP routes' bounds: a 400 that says which, before any work is queued.

        Without them one request could hold the engine for hours (max_tokens=10**7) or
        queue thousands of prompts at once.
        """
        problems = []
        if body.stream and not isinstance(self.teacher, StreamingTeacher):
            problems.append(
                f"stream=true is not supported by this engine ({type(self.teacher).__name__}): "
                "ask without streaming"
            )
        if body.n > 1 and body.temperature == 0:
            problems.append(f"n={body.n} needs temperature > 0 (greedy samples are all the same)")
        if body.max_tokens > self.cfg.max_model_len:
            problems.append(
                f"max_tokens {body.max_tokens} is over the model's context "
                f"(teacher.max_model_len {self.cfg.max_model_len})"
            )
        if prompts > self.cfg.max_prompts_per_request:
            problems.append(
                f"{prompts} prompts in one request; at most "
                f"{self.cfg.max_prompts_per_request} (teacher.max_prompts_per_request)"
            )
        if problems:
            raise HTTPException(status_code=400, detail="; ".join(problems))

    async def _run(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        try:
            return list(await asyncio.gather(*(self.teacher.complete(r) for r in requests)))
        except (TeacherError, ValueError) as err:
            raise HTTPException(status_code=400, detail=str(err)) from err

    @api.get("/v1/models", responses={401: COMPLETION_RESPONSES[401]})
    async def models(self) -> dict[str, Any]:
        """The one model this server holds."""
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "owned_by": "dsbs"}],
        }

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness for probes."""
        await self.teacher.check_health()
        return {"status": "ok"}

    def _stream(
        self,
        body: OpenAIBody,
        requests: list[TeacherRequest],
        head: dict[str, Any],
        choice: Callable[[int, TextDelta, bool], dict[str, Any]],
    ) -> StreamingResponse:
        """Server-sent events: a chunk per piece, usage last if asked, then `[DONE]`.

        `choice(index, delta, first)` shapes one piece as the route's chunk choice; `index`
        counts samples across the request's prompts, `n` per prompt, as the whole answer does.
        """
        n = body.n
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        async def events() -> AsyncIterator[str]:
            started: set[int] = set()
            prompt_tokens: dict[int, int] = {}
            output_tokens = 0
            try:
                async for position, delta in _merged(self.teacher, requests):  # type: ignore[arg-type]
                    index = position * n + delta.index
                    prompt_tokens[position] = delta.prompt_tokens
                    output_tokens += delta.new_tokens
                    first = index not in started
                    started.add(index)
                    yield sse({**head, "choices": [choice(index, delta, first)]})
            except (TeacherError, ValueError) as err:
                # The status line went out with the first chunk: say it in the stream.
                yield sse({"error": {"message": str(err), "type": "invalid_request_error"}})
                return
            if include_usage:
                usage = usage_of(sum(prompt_tokens.values()), output_tokens)
                yield sse({**head, "choices": [], "usage": usage})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    @api.post("/v1/completions", response_model=None, responses=COMPLETION_RESPONSES)
    async def completions(self, body: CompletionBody) -> dict[str, Any] | StreamingResponse:
        """OpenAI text completions; a list of prompts gives n choices per prompt, in order."""
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        self._check(body, len(prompts))
        base = f"cmpl-{next(_ids)}"
        requests = [
            TeacherRequest(f"{base}-{i}", prompt=p, sampling=body.sampling())
            for i, p in enumerate(prompts)
        ]
        head = {
            "id": base,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
        }
        if body.stream:
            return self._stream(
                body,
                requests,
                head,
                lambda index, delta, first: {
                    "index": index,
                    "text": delta.text,
                    "finish_reason": delta.finish_reason,
                    "logprobs": None,
                },
            )
        replies = await self._run(requests)
        choices = [
            {
                "index": position * body.n + j,
                "text": text,
                "finish_reason": finish_reason(reply, j),
                "logprobs": None,
            }
            for position, reply in enumerate(replies)
            for j, text in enumerate(reply.texts)
        ]
        return {**head, "choices": choices, "usage": usage(replies)}

    @api.post("/v1/chat/completions", response_model=None, responses=COMPLETION_RESPONSES)
    async def chat_completions(self, body: ChatBody) -> dict[str, Any] | StreamingResponse:
        """OpenAI chat completions through the model's chat template."""
        self._check(body, 1)
        messages = tuple((m.role, m.content) for m in body.messages)
        request = TeacherRequest(f"chat-{next(_ids)}", messages=messages, sampling=body.sampling())
        head = {"id": request.request_id, "created": int(time.time()), "model": self.model_name}
        if body.stream:

            def choice(index: int, delta: TextDelta, first: bool) -> dict[str, Any]:
                piece = (
                    {"role": "assistant", "content": delta.text}
                    if first
                    else {"content": delta.text}
                )
                return {"index": index, "delta": piece, "finish_reason": delta.finish_reason}

            return self._stream(
                body, [request], {**head, "object": "chat.completion.chunk"}, choice
            )
        [reply] = await self._run([request])
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(reply, i),
            }
            for i, text in enumerate(reply.texts)
        ]
        return {**head, "object": "chat.completion", "choices": choices, "usage": usage([reply])}


def teacher_app(
    cfg: TeacherConfig,
    loader: Callable[[TeacherConfig], Teacher] = load_teacher,
    access_log: bool = True,
) -> serve.Application:
    """The deployment bound to a config (and an engine loader), scaled and placed by it.

    `access_log=False` drops Serve's line per request: the generate stage sends one request
    per row, and each line is written by the replica and shipped to the driver, CPU taken
    from the engine for lines nobody reads (the stage reports its own progress and counts).
    """
    return TeacherServer.options(  # type: ignore[attr-defined]
        autoscaling_config={
            "min_replicas": cfg.min_replicas,
            "initial_replicas": max(1, cfg.min_replicas),
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
        },
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=serve_queue_bound(cfg.max_queued_requests),
        ray_actor_options={
            "num_cpus": cfg.num_cpus,
            "num_gpus": replica_gpus(cfg),
        },
        health_check_period_s=10,
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=30,
        logging_config={"enable_access_log": access_log},
    ).bind(cfg, loader)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve's `import_path` entry for a long-lived teacher (a RayService's `serveConfigV2`).

    `args` is the `teacher` section of a dsbs config; k8s/render.py writes the overlay's.

    Raises:
        pydantic.ValidationError: when a key is not a `teacher` setting or a value is invalid.
    """
    return teacher_app(TeacherConfig.model_validate(args))
