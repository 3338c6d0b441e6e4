"""The caller's side of a teacher: how many requests to keep in flight, and retries.

A fixed number of requests in flight is either too few for a fast teacher or too many for a
slow one. Too many is the dangerous side: every request waits behind the others, latency
passes the timeout, and retried requests pile more work onto an engine that is still busy
with their first attempts (a congestion collapse; issue: 64 requests against a CPU teacher
that needed 600 s each). `InFlightLimit` therefore adapts, as TCP's congestion window does,
to one signal every engine gives: how long answers take against the timeout.

- It starts low and grows per round trip while answers come back within 3/8 of the
  timeout (slow start) by `3/8 timeout / latency`, at least 2x and at most 16x: a batching
  engine's latency grows at most in proportion to its load, so the load that answers at the
  bound is at least that much higher. The latency it grows by is that of a full-length
  answer (`teacher.max_tokens`), scaled from the answer's own output tokens: a short answer
  comes back early and would otherwise promise room that a long one does not have. Then it
  adds one request per round trip while answers stay under 3/4.
- An answer slower than 3/4 of the timeout (the target) cuts the limit to
  `limit * target / latency`: for an engine that is saturated, latency grows in proportion
  to the requests it holds (Little's law), so that is the load at which answers take 3/4.
- A timeout halves it. Cuts happen at most once per round trip: answers to requests sent
  before a cut still show the load before it.

So a slow teacher makes the stage slow, never wasteful: at most `generate.max_in_flight`,
and in practice as many as the engine answers within 3/4 of `teacher.request_timeout_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from dsbs.teachers.base import (
    Teacher,
    TeacherReply,
    TeacherRequest,
    TeacherTimeout,
    with_retries,
)

INITIAL_IN_FLIGHT = 8
"""Requests in flight before any answer came back; slow start multiplies it per round trip."""
SLOW_START_GROWTH = 16.0
"""Most growth per round trip in slow start. Answers are judged at full length, so their
room is what the engine can take; the cap guards against an answer that met an idle engine.
Doubling took 5 round trips (30 s on CPU) to fill a 256-sequence batch from 8, and 4x still
left the engine below its batch for a third of a 512-row run."""
LATENCY_TARGET = 0.75
"""Answers should take at most this share of the timeout: room for the slower ones (long
outputs) before any times out. Higher keeps more requests in the engine: vLLM's throughput
grows with its batch, and at half the timeout a real CPU engine ran at half its speed."""
SLOW_START_END = 0.375
"""Slow start ends once answers take this share of the timeout; growing from below it to
at most twice its latency keeps answers under the target."""
RECENT = 64
"""Answers whose latencies make the reported percentiles."""


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile (`share` in [0, 1]) of `values`; None when empty."""
    ordered = sorted(values)
    return ordered[int(share * (len(ordered) - 1))] if ordered else None


@dataclass
class Attempt:
    """What the body of `InFlightLimit.slot()` tells the limit about its answer."""

    output_tokens: float | None = None
    """Output tokens of the answer, per sample; None when the engine did not say."""


class InFlightLimit:
    """An adaptive bound on requests in flight to one teacher (see the module docstring)."""

    def __init__(
        self,
        maximum: int,
        timeout_s: float,
        max_tokens: int | None = None,
        initial: int = INITIAL_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = maximum
        self.max_tokens = max_tokens
        """The longest answer (teacher.max_tokens); None: judge answers as they came."""
        self._clock = clock
        self.target_s = LATENCY_TARGET * timeout_s
        self.slow_start_end_s = SLOW_START_END * timeout_s
        self.limit = float(min(maximum, initial))
        self.in_flight = 0
        self._waiting = 0  # attempts waiting for room
        self.timeouts = 0
        self.latencies: deque[float] = deque(maxlen=RECENT)
        self._slow_start = True
        self._sent = 0  # requests let through so far; numbers order requests against cuts
        self._cut_at = 0  # `_sent` when the limit was last cut
        self._started: dict[int, float] = {}  # in-flight request number -> start time
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Attempt]:
        """Waits for room, then holds one place for the body: one attempt of one request.

        The body's duration is the latency; a `TeacherTimeout` out of it counts as a timeout.
        The body may set the answer's output tokens on the `Attempt` it is given.
        """
        async with self._changed:
            self._waiting += 1
            try:
                await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            finally:
                self._waiting -= 1
            self.in_flight += 1
            self._sent += 1
            number = self._sent
        started = self._started[number] = self._clock()
        attempt = Attempt()
        try:
            yield attempt
        except TeacherTimeout:
            self._on_timeout(number)
            raise
        else:
            self._on_answer(self._clock() - started, number, attempt.output_tokens)
        finally:
            del self._started[number]
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    def _full_length(self, latency_s: float, tokens: float | None) -> float:
        """The latency of a full-length answer, were it as fast per token as this one."""
        if not tokens or not self.max_tokens or tokens >= self.max_tokens:
            return latency_s
        return latency_s * self.max_tokens / tokens

    def _on_answer(self, latency_s: float, number: int, tokens: float | None = None) -> None:
        self.latencies.append(latency_s)
        if latency_s > self.target_s:
            if number > self._cut_at:
                self._cut(self.limit * self.target_s / latency_s)
            return
        if not self._waiting and self.in_flight < int(self.limit):
            return  # the limit was not what held the load back: no evidence to grow on
        if self._slow_start and latency_s < self.slow_start_end_s:
            # A round trip brings `limit` answers, each adding factor - 1: x factor per trip.
            full_s = self._full_length(latency_s, tokens)
            factor = min(SLOW_START_GROWTH, self.slow_start_end_s / max(full_s, 1e-9))
            self.limit += max(1.0, factor - 1.0)
        else:
            self._slow_start = False
            self.limit += 1.0 / self.limit  # one more per round trip
        self.limit = min(self.limit, float(self.maximum))

    def _on_timeout(self, number: int) -> None:
        self.timeouts += 1
        if number > self._cut_at:
            self._cut(self.limit / 2)

    def _cut(self, limit: float) -> None:
        self.limit = max(1.0, min(self.limit, limit))
        self._slow_start = False
        self._cut_at = self._sent

    def snapshot(self) -> dict[str, Any]:
        """The limit's state for progress reports: in flight, limit, latencies, timeouts."""
        recent = list(self.latencies)
        now = self._clock()
        return {
            "in_flight": self.in_flight,
            "limit": int(self.limit),
            "maximum": self.maximum,
            "timeouts": self.timeouts,
            "latency_p50_s": percentile(recent, 0.5),
            "latency_p90_s": percentile(recent, 0.9),
            "oldest_in_flight_s": max((now - t for t in self._started.values()), default=0.0),
        }


async def complete_with_retries(
    teacher: Teacher,
    request_for: Callable[[int], TeacherRequest],
    max_retries: int,
    limit: InFlightLimit | None = None,
    what: str = "teacher request",
) -> tuple[TeacherReply, int]:
    """One input through the teacher: each attempt its own request, within the limit.

    Each attempt gets the request `request_for(attempt)` (its own id, so that a retry never
    collides with an earlier attempt the engine still knows) and holds a place in `limit`
    only while it runs, not during the backoff between attempts.

    Returns:
        (reply, attempts).

    Raises:
        TeacherError: after `max_retries` retries, or at once for a non-retryable error.
    """

    async def attempt(number: int) -> TeacherReply:
        request = request_for(number)
        if limit is None:
            return await teacher.complete(request)
        async with limit.slot() as used:
            reply = await teacher.complete(request)
            used.output_tokens = reply.output_tokens / max(1, len(reply.texts))
            return reply

    return await with_retries(attempt, max_retries, what)
