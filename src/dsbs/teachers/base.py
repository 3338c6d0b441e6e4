"""The teacher seam: a request (prompt or chat messages plus sampling) -> sampled texts.

Engines implement `Teacher`; the generate stage and the teacher's Serve deployment only
see this protocol, so a test can hand them any small real engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters shared by every engine."""

    n: int = 1
    """Samples per prompt (self-consistency when above 1)."""
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 192
    stop: tuple[str, ...] = ()
    seed: int | None = None
    """Per-request seed, so that sampled outputs repeat across runs."""


@dataclass(frozen=True)
class TeacherRequest:
    """One input for the teacher: a completion prompt or chat messages (exactly one)."""

    request_id: str
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    """(role, content) pairs; the engine applies the model's chat template."""
    sampling: Sampling = field(default_factory=Sampling)
    timeout_s: float | None = None
    """Seconds the engine may work on this request once it has started it; past them the
    request is aborted in the engine and fails with `TeacherTimeout`. None: no limit."""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a teacher request needs exactly one of prompt or messages")


@dataclass(frozen=True)
class TeacherReply:
    """The sampled texts and token counts for one request."""

    texts: tuple[str, ...]
    prompt_tokens: int
    output_tokens: int
    finish_reasons: tuple[str | None, ...] = ()
    """Why each text ended ("stop", "length"), in the order of `texts`; empty where the
    engine does not say."""


@dataclass(frozen=True)
class TextDelta:
    """A piece of one sample while it is written (streaming)."""

    index: int
    """Which of the request's `n` samples."""
    text: str
    finish_reason: str | None = None
    """Set on a sample's last piece."""
    new_tokens: int = 0
    prompt_tokens: int = 0


class TeacherError(RuntimeError):
    """The teacher failed for one request after its retries."""


class TeacherRequestError(TeacherError, ValueError):
    """The engine refused the request itself: retrying cannot help.

    A prompt past the context or a value out of the engine's range; over HTTP, the client's 400.
    """


class Teacher(Protocol):
    """Anything that answers teacher requests."""

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        """Samples `request.sampling.n` texts for one request."""
        ...

    async def check_health(self) -> None:
        """Raises when the engine cannot serve."""
        ...


@runtime_checkable
class StreamingTeacher(Teacher, Protocol):
    """A teacher that can also hand out its samples piece by piece as they are written."""

    def stream(self, request: TeacherRequest) -> AsyncIterator[TextDelta]:
        """The request's samples as `TextDelta`s; cancelling the iteration aborts the request."""
        ...


class RetryableError(RuntimeError):
    """A failure worth another try (429, 5xx, timeout, a replica that went away)."""


class TeacherTimeout(RetryableError):
    """One attempt ran out of time; its work in the engine was aborted (or never started)."""


def backoff_delay(attempt: int, base_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].

    Full jitter keeps many callers that failed together from retrying together.
    """
    import random

    return random.uniform(0.0, min(cap_s, base_s * 2**attempt))  # noqa: S311 - jitter, not security


async def with_retries(
    call: Callable[[int], Awaitable[T]], max_retries: int, what: str, base_s: float = 1.0
) -> tuple[T, int]:
    """Awaits `call(attempt)`, retrying `RetryableError`s with backoff; returns (result, attempts).

    `attempt` counts from 0, so that each attempt can carry its own request id.

    Raises:
        TeacherError: after `max_retries` retries, or at once for a non-retryable error.
    """
    for attempt in range(max_retries + 1):
        try:
            return await call(attempt), attempt + 1
        except RetryableError as err:
            if attempt == max_retries:
                raise TeacherError(f"{what}: gave up after {attempt + 1} attempts: {err}") from err
            delay = backoff_delay(attempt, base_s)
            log.info("%s: %s; retrying in %.1f s", what, err, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
