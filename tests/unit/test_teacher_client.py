"""The caller's adaptive in-flight limit, on a clock the test moves (no Ray, no engine)."""

import asyncio
from contextlib import AsyncExitStack

import pytest

from dsbs.generate.progress import combine, load_warning
from dsbs.teachers.base import TeacherTimeout
from dsbs.teachers.client import InFlightLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _enter(limit: InFlightLimit, stack: AsyncExitStack, n: int) -> None:
    for _ in range(n):
        await stack.enter_async_context(limit.slot())


async def _blocked(limit: InFlightLimit) -> bool:
    """Whether one more attempt would have to wait for room."""
    try:
        async with asyncio.timeout(0.05):
            async with limit.slot():
                return False
    except TimeoutError:
        return True


async def _answer(limit: InFlightLimit, clock: Clock, latency_s: float) -> None:
    async with limit.slot():
        clock.now += latency_s


async def _slow_start(
    latency_s: float, round_trips: int, tokens: float | None = None, max_tokens: int = 64
) -> list[int]:
    """In flight at the start and after each round trip, every answer taking `latency_s`
    for `tokens` output tokens of at most `max_tokens`."""
    clock = Clock()
    limit = InFlightLimit(maximum=256, timeout_s=100, max_tokens=max_tokens, initial=4, clock=clock)
    gates = [asyncio.Event() for _ in range(400)]

    async def attempt(gate: asyncio.Event) -> None:
        async with limit.slot() as used:
            await gate.wait()
            used.output_tokens = tokens

    tasks = [asyncio.create_task(attempt(gate)) for gate in gates]
    await asyncio.sleep(0.01)
    counts = [limit.in_flight]
    answered = 0
    for _ in range(round_trips):  # a round trip answers what was in flight at its start
        clock.now += latency_s
        for gate in gates[answered : answered + counts[-1]]:
            gate.set()
            await asyncio.sleep(0.001)
        answered += counts[-1]
        counts.append(limit.in_flight)
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    return counts


def test_slow_start_grows_by_the_room_below_its_bound_between_2x_and_16x_per_round_trip():
    # The bound is 3/8 of the 100 s timeout: 37.5 s.
    assert asyncio.run(_slow_start(1.0, 2)) == [4, 64, 256]  # 37x room: at most 16x
    assert asyncio.run(_slow_start(12.5, 2)) == [4, 12, 36]  # 3x room: 3x
    assert asyncio.run(_slow_start(25.0, 2)) == [4, 8, 16]  # 1.5x room: at least 2x


def test_slow_start_judges_a_short_answer_by_what_a_full_length_one_would_take():
    # 16 of 64 tokens in 1.5 s: a full answer takes 6 s, 6.25x room below 37.5 s.
    assert asyncio.run(_slow_start(1.5, 2, tokens=16, max_tokens=64)) == [4, 25, 156]
    # Full-length answers are taken as they came.
    assert asyncio.run(_slow_start(12.5, 1, tokens=64, max_tokens=64)) == [4, 12]


def test_the_limit_grows_only_when_it_is_what_holds_the_load_back():
    async def run():
        clock = Clock()
        limit = InFlightLimit(maximum=64, timeout_s=100, initial=8, clock=clock)
        for _ in range(20):  # one request at a time: the window of 8 is never full
            await _answer(limit, clock, 1.0)
        return limit

    assert asyncio.run(run()).limit == 8


def test_a_slow_answer_cuts_to_the_load_that_answers_within_the_target():
    async def run():
        clock = Clock()
        limit = InFlightLimit(maximum=64, timeout_s=100, initial=16, clock=clock)
        async with AsyncExitStack() as stack:
            await _enter(limit, stack, 16)
            clock.now += 120.0  # target is 75 s: saturated, latency ~ in flight (Little's law)
        first_cut = limit.limit
        # The other 15 answers were sent before the cut: they don't cut again.
        await _answer(limit, clock, 120.0)  # sent after the cut: this one does
        return first_cut, limit.limit

    first_cut, second_cut = asyncio.run(run())
    assert first_cut == pytest.approx(16 * 75 / 120)
    assert second_cut == pytest.approx(first_cut * 75 / 120)


def test_a_timeout_halves_the_limit_once_per_round_trip_and_never_below_one():
    async def run():
        clock = Clock()
        limit = InFlightLimit(maximum=64, timeout_s=10, initial=8, clock=clock)
        async with AsyncExitStack() as stack:
            await _enter(limit, stack, 2)  # sent before the timeout: their answers cut nothing
            with pytest.raises(TeacherTimeout):
                async with limit.slot():
                    raise TeacherTimeout("t")
        halved = limit.limit
        for _ in range(10):
            with pytest.raises(TeacherTimeout):
                async with limit.slot():
                    raise TeacherTimeout("t")
        return halved, limit

    halved, limit = asyncio.run(run())
    assert halved == 4.0 and limit.limit == 1.0 and limit.timeouts == 11


def test_the_limit_never_passes_the_configured_maximum():
    async def run():
        clock = Clock()
        limit = InFlightLimit(maximum=5, timeout_s=100, initial=4, clock=clock)
        for _ in range(5):
            async with AsyncExitStack() as stack:
                await _enter(limit, stack, int(limit.limit))
                clock.now += 1.0
        return limit

    assert asyncio.run(run()).limit == 5


def test_an_overload_warning_names_the_cause_and_the_keys():
    quiet = {**combine([]), "latency_p90_s": 60.0, "limit": 8, "maximum": 64}
    assert load_warning(quiet, timeout_s=120) is None
    slow = {**quiet, "latency_p90_s": 100.0, "limit": 12}
    warning = load_warning(slow, timeout_s=120)
    assert "teacher.request_timeout_s=120" in warning and "generate.max_in_flight=64" in warning
    assert "now 12 of" in warning and "teacher.dtype" in warning
    stuck = {**quiet, "oldest_in_flight_s": 100.0}  # nothing answered yet, one request waits
    assert load_warning(stuck, timeout_s=120) is not None
    assert load_warning({**quiet, "timeouts": 1}, timeout_s=120) is not None


def test_callers_posts_add_up():
    posts = [
        {"answered": 3, "in_flight": 2, "limit": 4, "maximum": 8, "timeouts": 1,
         "latency_p50_s": 2.0, "latency_p90_s": 3.0, "oldest_in_flight_s": 1.0},
        {"answered": 5, "in_flight": 1, "limit": 2, "maximum": 8, "timeouts": 0,
         "latency_p50_s": None, "latency_p90_s": None, "oldest_in_flight_s": 4.0},
    ]  # fmt: skip
    total = combine(posts)
    assert (total["answered"], total["in_flight"], total["limit"], total["maximum"]) == (
        8,
        3,
        6,
        16,
    )
    assert (total["latency_p90_s"], total["oldest_in_flight_s"], total["timeouts"]) == (3.0, 4.0, 1)
