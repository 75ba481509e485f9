"""Issue 16 points 3 and 3b: every admitted call returns its trial permit, stale outcomes change nothing,
and no clock can keep a breaker open longer than its timeout.

Each leak test opens a breaker whose half-open state admits one trial at a time, ends that trial the way
the test is about, and then checks that a second trial is admitted: a leaked permit would refuse it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from tests.breaker_helpers import (
    WALL_START,
    Clock,
    ExchangeDown,
    fail_times,
    make_breaker,
    opened,
    succeed,
)
from utils.circuit_breaker import (
    BreakerSnapshot,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    MemoryStateStore,
)


def half_open(**settings: Any) -> tuple[Clock, CircuitBreaker]:
    clock = Clock()
    breaker = opened(clock, **settings)
    clock.advance(60)
    return clock, breaker


def assert_a_trial_is_admitted(breaker: CircuitBreaker) -> None:
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.call(succeed) == "fetched"
    assert breaker.state is CircuitState.CLOSED


# -- point 3: every path returns the permit -------------------------------------------------------------


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt and friends without disturbing pytest."""


@pytest.mark.parametrize(
    "ending",
    [KeyError("BTCUSDX"), Interrupt(), SystemExit(143), asyncio.CancelledError(), GeneratorExit()],
    ids=["uncounted", "base-exception", "system-exit", "cancelled", "generator-exit"],
)
def test_a_trial_ending_in_an_uncounted_exception_returns_its_permit(ending: BaseException) -> None:
    _, breaker = half_open()

    def trial() -> str:
        raise ending

    with pytest.raises(type(ending)):
        breaker.call(trial)
    assert breaker.failure_count == 1  # neither a failure nor a success
    assert_a_trial_is_admitted(breaker)


def test_a_trial_with_wrong_arguments_to_a_plain_function_returns_its_permit() -> None:
    _, breaker = half_open()
    with pytest.raises(TypeError):
        breaker.call(succeed, "unexpected")  # type: ignore[call-arg]
    assert_a_trial_is_admitted(breaker)


def test_building_a_coroutine_with_wrong_arguments_returns_its_permit() -> None:
    _, breaker = half_open()

    async def fetch(symbol: str) -> str:
        return symbol

    with pytest.raises(TypeError):
        breaker.call(fetch)  # type: ignore[call-arg]

    async def decorated_form() -> None:
        with pytest.raises(TypeError):
            await breaker(fetch)()  # type: ignore[call-arg]

    asyncio.run(decorated_form())
    assert_a_trial_is_admitted(breaker)


def test_a_coroutine_that_is_never_awaited_returns_its_permit_when_collected() -> None:
    _, breaker = half_open()

    async def fetch() -> str:
        return "fetched"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited": true
        pending = breaker.call(fetch)
        with pytest.raises(CircuitBreakerError):
            breaker.call(succeed)  # the permit is taken by the pending coroutine
        del pending
        gc.collect()
    assert_a_trial_is_admitted(breaker)


def test_a_coroutine_closed_before_it_ran_returns_its_permit() -> None:
    _, breaker = half_open()

    async def fetch() -> str:
        return "fetched"

    pending = breaker.call(fetch)
    pending.close()
    assert_a_trial_is_admitted(breaker)


def test_a_decorated_coroutine_function_takes_no_permit_until_its_coroutine_runs() -> None:
    _, breaker = half_open()

    @breaker
    async def fetch() -> str:
        return "fetched"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        never_awaited = fetch()
        assert_a_trial_is_admitted(breaker)
        del never_awaited


@pytest.mark.parametrize("form", ["decorated", "call"])
def test_a_task_cancelled_before_its_first_step_returns_its_permit(form: str) -> None:
    _, breaker = half_open()

    async def fetch() -> str:
        return "fetched"

    async def scenario() -> None:
        coroutine = breaker(fetch)() if form == "decorated" else breaker.call(fetch)
        task = asyncio.create_task(coroutine)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert_a_trial_is_admitted(breaker)


def test_a_task_cancelled_while_awaiting_returns_its_permit() -> None:
    _, breaker = half_open()

    async def scenario() -> None:
        inside = asyncio.Event()

        @breaker
        async def fetch() -> str:
            inside.set()
            await asyncio.Event().wait()  # until cancelled
            return "never"

        task = asyncio.create_task(fetch())
        await inside.wait()
        with pytest.raises(CircuitBreakerError):
            breaker.call(succeed)  # the permit is held by the task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert_a_trial_is_admitted(breaker)


def test_a_generator_closed_early_returns_its_permit_and_counts_nothing() -> None:
    _, breaker = half_open()

    @breaker
    def pages() -> Any:
        yield "page 1"
        yield "page 2"

    for page in pages():
        assert page == "page 1"
        break  # the for loop closes the generator
    gc.collect()
    assert breaker.metrics.success_count == 0
    assert_a_trial_is_admitted(breaker)


def test_a_generator_never_iterated_takes_no_permit() -> None:
    _, breaker = half_open()

    @breaker
    def pages() -> Any:
        yield "page 1"

    unused = pages()
    assert_a_trial_is_admitted(breaker)
    del unused


def test_a_generator_returned_by_call_and_dropped_returns_its_permit() -> None:
    _, breaker = half_open()

    def pages() -> Any:
        yield "page 1"

    dropped = breaker.call(pages)
    assert next(dropped) == "page 1"
    del dropped
    gc.collect()
    assert_a_trial_is_admitted(breaker)


def test_an_async_generator_closed_early_returns_its_permit() -> None:
    _, breaker = half_open()

    @breaker
    async def pages() -> Any:
        yield "page 1"
        yield "page 2"

    async def scenario() -> None:
        stream = pages()
        assert await stream.__anext__() == "page 1"
        await stream.aclose()

    asyncio.run(scenario())
    assert_a_trial_is_admitted(breaker)


def test_a_with_block_left_from_another_thread_settles_its_own_entry() -> None:
    _, breaker = half_open()
    breaker.__enter__()
    errors: list[BaseException] = []

    def leave() -> None:
        try:
            breaker.__exit__(None, None, None)
        except BaseException as exc:
            errors.append(exc)

    leaving = threading.Thread(target=leave)
    leaving.start()
    leaving.join(timeout=30)
    assert errors == []
    assert breaker.state is CircuitState.CLOSED  # the trial's success was booked


def test_with_blocks_interleaved_across_tasks_settle_their_own_entries() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=2)
    order: list[str] = []

    async def scenario() -> None:
        inside = asyncio.Event()
        go_on = asyncio.Event()

        async def failing_block() -> None:
            with pytest.raises(ExchangeDown), breaker:
                inside.set()
                await go_on.wait()
                order.append("failing leaves")
                raise ExchangeDown("write failed")

        async def succeeding_block() -> None:
            await inside.wait()
            with breaker:
                order.append("succeeding leaves")
            go_on.set()

        await asyncio.gather(failing_block(), succeeding_block())

    asyncio.run(scenario())
    assert order == ["succeeding leaves", "failing leaves"]
    assert (breaker.failure_count, breaker.metrics.success_count) == (1, 1)


# -- point 3: no stale outcomes ------------------------------------------------------------------------


def test_a_call_admitted_while_closed_that_returns_during_a_trial_does_not_close_the_breaker() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=1, recovery_timeout=60)

    async def fetch() -> str:
        return "fetched"

    late = breaker.call(fetch)  # admitted while closed, finishes later
    fail_times(breaker, 1)
    clock.advance(60)
    trial = breaker.call(fetch)  # the real trial, in flight
    assert asyncio.run(late) == "fetched"
    assert breaker.state is CircuitState.HALF_OPEN
    with pytest.raises(CircuitBreakerError) as refused:
        breaker.call(succeed)
    assert refused.value.retry_after == 0
    assert asyncio.run(trial) == "fetched"
    assert breaker.state is CircuitState.CLOSED


def test_a_failure_of_a_call_admitted_before_a_reset_does_not_count() -> None:
    breaker = make_breaker(Clock(), failure_threshold=1)

    async def fetch() -> str:
        raise ExchangeDown("late timeout")

    late = breaker.call(fetch)
    breaker.reset()
    with pytest.raises(ExchangeDown):
        asyncio.run(late)
    assert (breaker.state, breaker.failure_count) == (CircuitState.CLOSED, 0)


def test_a_late_failure_of_a_trial_after_a_reset_does_not_reopen() -> None:
    _, breaker = half_open()
    with pytest.raises(ExchangeDown), breaker:
        breaker.reset()
        raise ExchangeDown("late")
    assert breaker.state is CircuitState.CLOSED


# -- point 3b: time that cannot lie ------------------------------------------------------------------------


def test_a_wall_clock_stepped_back_does_not_lengthen_an_opening() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.step_wall(-7_200)
    clock.advance(60)
    assert breaker.call(succeed) == "fetched"


def test_a_wall_clock_stepped_forward_is_followed_within_a_second() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.step_wall(3_600)
    clock.advance(1)
    assert breaker.state is CircuitState.HALF_OPEN


def stored(**fields: Any) -> MemoryStateStore:
    store = MemoryStateStore()
    snapshot = BreakerSnapshot(
        "api", **{"state": CircuitState.OPEN, "failure_count": 5, "version": 3, **fields}
    )
    assert store.compare_and_swap(snapshot, 0)
    return store


@pytest.mark.parametrize(
    "fields",
    [
        {"last_failure_time": WALL_START + 86_400, "opened_at": WALL_START + 86_400},
        {"last_failure_time": WALL_START + 7_200},
        {"last_failure_time": float("nan")},
        {"last_failure_time": float("inf")},
        {"last_failure_time": None},
    ],
    ids=["a-day-ahead", "two-hours-ahead", "nan", "infinity", "null"],
)
def test_a_stored_time_that_cannot_be_true_is_taken_as_now_and_corrected_in_the_store(
    fields: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    store = stored(**fields)
    clock = Clock()
    with caplog.at_level(logging.WARNING, logger="utils.circuit_breaker"):
        first_run = make_breaker(clock, name="api", state_store=store)
        with pytest.raises(CircuitBreakerError) as refused:
            first_run.call(succeed)
        assert first_run.seconds_until_trial() == 60
    assert refused.value.retry_after == 60
    assert [r.getMessage() for r in caplog.records] == [
        "circuit breaker 'api': stored times were not finite or lay ahead of now; taken as now"
    ]
    corrected = store.load("api")
    assert corrected is not None and corrected.last_failure_time == WALL_START and corrected.version == 4
    next_run = make_breaker(clock, name="api", state_store=store)
    assert next_run.seconds_until_trial() == 60
    clock.advance(60)
    assert next_run.call(succeed) == "fetched"


def test_a_forced_opening_keeps_no_more_than_the_length_it_was_given() -> None:
    store = stored(last_failure_time=None, opened_at=WALL_START + 7_200, open_until=WALL_START + 7_200 + 300)
    breaker = make_breaker(Clock(), name="api", state_store=store)
    assert breaker.seconds_until_trial() == 300


def test_a_permit_granted_ahead_of_now_lapses_like_one_granted_now() -> None:
    from utils.circuit_breaker.state import MIN_TRIAL_LEASE, Permit

    store = stored(
        state=CircuitState.HALF_OPEN,
        last_failure_time=WALL_START - 60,
        permits=(Permit(3, WALL_START + 86_400),),
    )
    clock = Clock()
    breaker = make_breaker(clock, name="api", state_store=store)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)  # a trial is out (its process may have died)
    clock.advance(MIN_TRIAL_LEASE)
    assert breaker.call(succeed) == "fetched"  # its permit lapsed a lease after now, not a day after


def test_times_in_the_past_are_kept_as_they_were_stored() -> None:
    store = stored(last_failure_time=WALL_START - 30, opened_at=WALL_START - 30)
    breaker = make_breaker(Clock(), name="api", state_store=store)
    assert breaker.seconds_until_trial() == 30
    assert breaker.last_failure_time == WALL_START - 30
    kept = store.load("api")
    assert kept is not None and kept.version == 3


class RacingClock(Clock):
    """A clock whose next reads run the given actions first: a race put exactly where a test wants it."""

    def __init__(self) -> None:
        super().__init__()
        self.before_reads: list[Callable[[], object] | None] = []

    def monotonic(self) -> float:
        if self.before_reads:
            action = self.before_reads.pop(0)
            if action is not None:
                action()
        return self.now


def test_a_refusal_of_a_breaker_reset_meanwhile_says_retry_at_once() -> None:
    clock = RacingClock()
    breaker = opened(clock)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)  # the refusal is remembered until the retry time
    clock.before_reads = [None, breaker.reset]  # decided on the memory, then reset before it is raised
    with pytest.raises(CircuitBreakerError) as refused:
        breaker.call(succeed)
    assert (refused.value.retry_after, refused.value.retry_at) == (0, WALL_START)
    assert breaker.call(succeed) == "fetched"
