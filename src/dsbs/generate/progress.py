"""Live progress of generation: the callers post their counts, the driver shows and judges them.

Ray Data hands a batch's rows to the driver only when the whole batch is done, and under
overload no batch is ever done: a bar fed by batches sits at 0 while the teacher collapses.
So each `TeacherCaller` posts its counts every second to a `ProgressBoard` actor, and the
driver's `ProgressWatch` thread reads the board, moves the bar one row at a time, and warns
in words when answers approach the timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dsbs.teachers.client import LATENCY_TARGET

log = logging.getLogger(__name__)

POLL_S = 1.0
"""Seconds between the driver's reads of the board."""
WARN_EVERY_S = 60.0
"""Least seconds between two overload warnings (a new timeout warns at once)."""


class ProgressBoard:
    """The callers' latest counts, one post per caller (run as a zero-CPU Ray actor)."""

    def __init__(self) -> None:
        self.posts: dict[str, dict[str, Any]] = {}

    def update(self, caller: str, snapshot: dict[str, Any]) -> None:
        """Replaces one caller's post (`InFlightLimit.snapshot()` plus `answered`)."""
        self.posts[caller] = snapshot

    def read(self) -> dict[str, Any]:
        """All callers together: counts summed, latencies the worst caller's."""
        return combine(list(self.posts.values()))


def combine(posts: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for several callers: counts and limits add up, latencies take the max."""
    total: dict[str, Any] = {
        "answered": 0,
        "in_flight": 0,
        "limit": 0,
        "maximum": 0,
        "timeouts": 0,
        "latency_p50_s": None,
        "latency_p90_s": None,
        "oldest_in_flight_s": 0.0,
    }
    for post in posts:
        for key in ("answered", "in_flight", "limit", "maximum", "timeouts"):
            total[key] += post[key]
        for key in ("latency_p50_s", "latency_p90_s", "oldest_in_flight_s"):
            if post[key] is not None:
                total[key] = max(post[key], total[key] or 0.0)
    return total


def load_warning(snapshot: dict[str, Any], timeout_s: float) -> str | None:
    """A warning that names the cause when teacher answers approach the timeout, else None."""
    slowest = max(snapshot["latency_p90_s"] or 0.0, snapshot["oldest_in_flight_s"])
    if not snapshot["timeouts"] and slowest <= LATENCY_TARGET * timeout_s:
        return None
    return (
        f"the teacher is saturated: answers take up to {slowest:.0f} s against "
        f"teacher.request_timeout_s={timeout_s:g}, {snapshot['timeouts']} attempts timed out "
        f"(aborted and retried); requests in flight adapt to keep answers within 3/4 of the "
        f"timeout (now {snapshot['limit']} of generate.max_in_flight={snapshot['maximum']}), "
        "so the stage runs at the teacher's pace. To go faster: more teacher "
        "replicas, or a faster engine (on CPU, teacher.dtype=auto uses bfloat16 only where "
        "the CPU has it; emulated bfloat16 is about 4x slower)"
    )


class ProgressWatch:
    """A driver thread that moves a tqdm bar from the board and logs overload warnings."""

    def __init__(self, board: Any, bar: Any, timeout_s: float) -> None:
        self.board = board
        self.bar = bar
        self.timeout_s = timeout_s
        self.last: dict[str, Any] = combine([])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dsbs-progress", daemon=True)
        self._warned_at = float("-inf")
        self._warned_timeouts = 0

    def __enter__(self) -> ProgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._poll()  # the final counts, for the summary

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def _poll(self) -> None:
        import ray

        try:
            self.last = ray.get(self.board.read.remote(), timeout=10)
        except (ray.exceptions.RayError, TimeoutError) as err:
            log.debug("progress board unreadable: %s", err)
            return
        snap = self.last
        if not snap["maximum"]:
            return  # no caller has posted yet
        self.bar.n = min(self.bar.total, snap["answered"])
        p50 = snap["latency_p50_s"]
        self.bar.set_postfix_str(
            f"in flight {snap['in_flight']}/{snap['limit']}"
            + (f", answer p50 {p50:.1f} s" if p50 is not None else ""),
            refresh=True,
        )
        warning = load_warning(snap, self.timeout_s)
        now = time.monotonic()
        if warning and (
            snap["timeouts"] > self._warned_timeouts or now - self._warned_at > WARN_EVERY_S
        ):
            log.warning(warning)
            self._warned_at, self._warned_timeouts = now, snap["timeouts"]
