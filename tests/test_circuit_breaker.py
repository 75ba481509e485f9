"""The breaker library: design §8 literally, plus the behaviour issue 2 adds. Time is a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from utils.circuit_breaker import (
    BreakerSnapshot,
    CircuitBreaker,
    CircuitBreakerConfigError,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitBreakerMetrics,
    CircuitState,
    JsonFileStateStore,
    MemoryStateStore,
)

ROOT = Path(__file__).resolve().parents[1]
WALL_START = 1_700_000_000.0


class Clock:
    """Drives both the monotonic clock and the wall clock of a breaker; only ``advance`` moves time."""

    def __init__(self, monotonic_start: float = 1_000.0, wall_start: float = WALL_START) -> None:
        self.now = monotonic_start
        self.wall_now = wall_start

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


class ExchangeDown(Exception):
    pass


class Recorder(CircuitBreakerListener):
    """Keeps every event in order, as a monitoring listener would see them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def state_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        self.events.append(("state", old.value, new.value))

    def success(self, breaker: CircuitBreaker, duration: float) -> None:
        assert duration >= 0
        self.events.append(("success",))

    def failure(self, breaker: CircuitBreaker, exc: BaseException, duration: float) -> None:
        assert duration >= 0
        self.events.append(("failure", str(exc)))

    def rejection(self, breaker: CircuitBreaker) -> None:
        self.events.append(("rejection",))


def make_breaker(clock: Clock, **settings: Any) -> CircuitBreaker:
    return CircuitBreaker(clock=clock.monotonic, wall_clock=clock.wall, **settings)


def fail() -> str:
    raise ExchangeDown("exchange down")


def succeed() -> str:
    return "fetched"


def unknown_symbol() -> str:
    raise KeyError("BTCUSDX")


def fail_times(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ExchangeDown):
            breaker.call(fail)


def opened(clock: Clock, **settings: Any) -> CircuitBreaker:
    breaker = make_breaker(clock, failure_threshold=1, recovery_timeout=60, **settings)
    fail_times(breaker, 1)
    assert breaker.state == CircuitState.OPEN
    return breaker


# -- transitions ----------------------------------------------------------------------------------------


def test_closed_breaker_calls_through_and_returns_the_result() -> None:
    breaker = make_breaker(Clock())
    assert breaker.call(succeed) == "fetched"
    assert breaker.state == CircuitState.CLOSED
    assert breaker.metrics.success_count == 1


def test_threshold_consecutive_failures_open_it_and_calls_are_refused_without_running() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=3, name="api")
    fail_times(breaker, 2)
    assert breaker.state == CircuitState.CLOSED
    fail_times(breaker, 1)
    assert breaker.state == CircuitState.OPEN
    ran: list[str] = []
    with pytest.raises(CircuitBreakerError) as refused:
        breaker.call(ran.append, "called")
    assert ran == []
    assert refused.value.breaker_name == "api"


def test_a_success_resets_the_count_so_only_consecutive_failures_open() -> None:
    breaker = make_breaker(Clock(), failure_threshold=3)
    fail_times(breaker, 2)
    breaker.call(succeed)
    assert breaker.failure_count == 0
    fail_times(breaker, 2)
    assert breaker.state == CircuitState.CLOSED


def test_open_reads_half_open_once_the_recovery_timeout_has_passed() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.advance(59.9)
    assert breaker.state == CircuitState.OPEN
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    clock.advance(0.1)
    assert breaker.state == CircuitState.HALF_OPEN
    assert breaker._should_attempt_reset()


def test_a_trial_success_closes_it() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.advance(60)
    assert breaker.call(succeed) == "fetched"
    assert breaker.state == CircuitState.CLOSED
    assert breaker.failure_count == 0


def test_a_trial_failure_reopens_it_with_a_fresh_timeout() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.advance(100)
    fail_times(breaker, 1)
    assert breaker.state == CircuitState.OPEN
    assert breaker.seconds_until_trial() == 60
    clock.advance(59)
    with pytest.raises(CircuitBreakerError) as refused:
        breaker.call(succeed)
    assert refused.value.retry_after == pytest.approx(1)
    clock.advance(1)
    assert breaker.call(succeed) == "fetched"


def test_success_threshold_trial_successes_are_needed_to_close() -> None:
    clock = Clock()
    breaker = opened(clock, success_threshold=3)
    clock.advance(60)
    breaker.call(succeed)
    breaker.call(succeed)
    assert breaker.state == CircuitState.HALF_OPEN
    breaker.call(succeed)
    assert breaker.state == CircuitState.CLOSED


def test_every_transition_reaches_listeners_and_metrics_in_order() -> None:
    clock = Clock()
    recorder = Recorder()
    breaker = make_breaker(clock, failure_threshold=2, recovery_timeout=30, listeners=[recorder])
    fail_times(breaker, 2)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    clock.advance(30)
    fail_times(breaker, 1)
    clock.advance(30)
    breaker.call(succeed)
    assert recorder.events == [
        ("failure", "exchange down"),
        ("failure", "exchange down"),
        ("state", "CLOSED", "OPEN"),
        ("rejection",),
        ("state", "OPEN", "HALF_OPEN"),
        ("failure", "exchange down"),
        ("state", "HALF_OPEN", "OPEN"),
        ("state", "OPEN", "HALF_OPEN"),
        ("success",),
        ("state", "HALF_OPEN", "CLOSED"),
    ]
    assert breaker.metrics.state_transitions == [
        {"from_state": "CLOSED", "to_state": "OPEN", "timestamp": WALL_START},
        {"from_state": "OPEN", "to_state": "HALF_OPEN", "timestamp": WALL_START + 30},
        {"from_state": "HALF_OPEN", "to_state": "OPEN", "timestamp": WALL_START + 30},
        {"from_state": "OPEN", "to_state": "HALF_OPEN", "timestamp": WALL_START + 60},
        {"from_state": "HALF_OPEN", "to_state": "CLOSED", "timestamp": WALL_START + 60},
    ]


def test_a_failing_listener_does_not_change_the_outcome_of_the_call() -> None:
    class Broken(CircuitBreakerListener):
        def success(self, breaker: CircuitBreaker, duration: float) -> None:
            raise RuntimeError("listener bug")

    breaker = make_breaker(Clock(), listeners=[Broken()])
    assert breaker.call(succeed) == "fetched"


# -- which exceptions count -----------------------------------------------------------------------------


@pytest.mark.parametrize("expected", [ExchangeDown, (ConnectionError, ExchangeDown)])
def test_only_expected_exceptions_count_and_others_pass_through_untouched(
    expected: type[BaseException] | tuple[type[BaseException], ...],
) -> None:
    breaker = make_breaker(Clock(), failure_threshold=3, expected_exception=expected)
    fail_times(breaker, 2)
    wrong_symbol = KeyError("BTCUSDX")

    def lookup() -> str:
        raise wrong_symbol

    for _ in range(5):
        with pytest.raises(KeyError) as raised:
            breaker.call(lookup)
        assert raised.value is wrong_symbol
    assert breaker.failure_count == 2
    assert breaker.state == CircuitState.CLOSED
    assert (breaker.metrics.failure_count, breaker.metrics.success_count) == (2, 0)
    fail_times(breaker, 1)
    assert breaker.state == CircuitState.OPEN


def test_a_trial_ending_in_a_non_counting_exception_frees_its_slot() -> None:
    clock = Clock()
    breaker = opened(clock, expected_exception=ExchangeDown)
    clock.advance(60)
    with pytest.raises(KeyError):
        breaker.call(unknown_symbol)
    assert breaker.state == CircuitState.HALF_OPEN
    assert breaker.call(succeed) == "fetched"
    assert breaker.state == CircuitState.CLOSED


# -- the four ways to use it ----------------------------------------------------------------------------


def via_decorator(breaker: CircuitBreaker, func: Callable[[], str]) -> str:
    @breaker
    def guarded() -> str:
        return func()

    return guarded()


def via_wrapper(breaker: CircuitBreaker, func: Callable[[], str]) -> str:
    return breaker(func)()


def via_context_manager(breaker: CircuitBreaker, func: Callable[[], str]) -> str:
    with breaker:
        return func()


def via_call(breaker: CircuitBreaker, func: Callable[[], str]) -> str:
    return breaker.call(func)


@pytest.mark.parametrize("use", [via_decorator, via_wrapper, via_context_manager, via_call])
def test_every_usage_form_counts_opens_and_refuses(
    use: Callable[[CircuitBreaker, Callable[[], str]], str],
) -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=2, recovery_timeout=10)
    assert use(breaker, succeed) == "fetched"
    for _ in range(2):
        with pytest.raises(ExchangeDown):
            use(breaker, fail)
    assert breaker.state == CircuitState.OPEN
    ran: list[str] = []

    def record_run() -> str:
        ran.append("ran")
        return "ran"

    with pytest.raises(CircuitBreakerError):
        use(breaker, record_run)
    assert ran == []
    clock.advance(10)
    assert use(breaker, succeed) == "fetched"
    assert breaker.state == CircuitState.CLOSED


def test_decorator_keeps_name_and_docstring() -> None:
    breaker = make_breaker(Clock())

    @breaker
    def fetch_klines(symbol: str) -> str:
        """Fetch one page of klines."""
        return symbol

    assert fetch_klines.__name__ == "fetch_klines"
    assert fetch_klines.__doc__ == "Fetch one page of klines."
    assert fetch_klines("BTCUSDT") == "BTCUSDT"


def test_call_passes_positional_and_keyword_arguments() -> None:
    def page(symbol: str, *, limit: int) -> str:
        return f"{symbol}:{limit}"

    breaker = make_breaker(Clock())
    assert breaker.call(page, "ETHBTC", limit=1000) == "ETHBTC:1000"


def test_context_manager_refuses_entry_while_open_and_never_swallows() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=1)
    with pytest.raises(ExchangeDown), breaker:
        raise ExchangeDown("write failed")
    entered = False
    with pytest.raises(CircuitBreakerError), breaker:
        entered = True
    assert not entered
    assert breaker.metrics.rejection_count == 1


# -- design §8: assignable attributes and the internal hooks -------------------------------------------


def test_state_can_be_assigned_in_any_spelling() -> None:
    breaker = make_breaker(Clock())
    breaker.state = CircuitState.OPEN
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    breaker.state = "closed"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.call(succeed) == "fetched"


def test_assigned_last_failure_time_counts_the_timeout_from_then() -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60)
    breaker.state = CircuitState.OPEN
    assert not breaker._should_attempt_reset()
    breaker.last_failure_time = time.time() - 61
    assert breaker._should_attempt_reset()
    assert breaker.state == CircuitState.HALF_OPEN
    assert breaker.call(succeed) == "fetched"
    assert breaker.state == CircuitState.CLOSED


def test_assigned_thresholds_and_expected_exception_take_effect() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    breaker.failure_threshold = 1
    breaker.recovery_timeout = 5
    breaker.expected_exception = KeyError
    with pytest.raises(ExchangeDown):
        breaker.call(fail)
    assert breaker.state == CircuitState.CLOSED
    with pytest.raises(KeyError):
        breaker.call(unknown_symbol)
    assert breaker.state == CircuitState.OPEN
    clock.advance(5)
    assert breaker.state == CircuitState.HALF_OPEN


def test_assigned_failure_count_is_kept() -> None:
    breaker = make_breaker(Clock(), failure_threshold=3)
    breaker.failure_count = 2
    fail_times(breaker, 1)
    assert breaker.state == CircuitState.OPEN


def test_on_failure_counts_stamps_the_wall_clock_and_opens_at_the_threshold() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=2)
    breaker._on_failure()
    assert (breaker.failure_count, breaker.last_failure_time, breaker.state) == (1, WALL_START, "CLOSED")
    clock.advance(3)
    breaker._on_failure()
    assert (breaker.failure_count, breaker.last_failure_time, breaker.state) == (2, WALL_START + 3, "OPEN")


def test_on_failure_from_half_open_opens_at_once() -> None:
    breaker = make_breaker(Clock(), failure_threshold=5)
    breaker.state = CircuitState.HALF_OPEN
    breaker._on_failure()
    assert breaker.state == CircuitState.OPEN


def test_on_success_resets_the_count_and_closes_from_half_open() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=5)
    breaker._on_failure()
    breaker._on_success()
    assert breaker.failure_count == 0
    breaker.state = CircuitState.HALF_OPEN
    breaker._on_success()
    assert breaker.state == CircuitState.CLOSED
    fail_times(breaker, 5)
    breaker._on_success()
    assert (breaker.failure_count, breaker.state) == (0, CircuitState.OPEN)


def test_should_attempt_reset_only_for_an_open_breaker_past_its_timeout() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=1, recovery_timeout=60)
    assert not breaker._should_attempt_reset()
    breaker._on_failure()
    assert not breaker._should_attempt_reset()
    clock.advance(60)
    assert breaker._should_attempt_reset()


def test_get_state_info_reports_the_design_keys() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=3, recovery_timeout=45)
    breaker._on_failure()
    assert breaker.get_state_info() == {
        "state": "CLOSED",
        "failure_count": 1,
        "last_failure_time": WALL_START,
        "failure_threshold": 3,
        "recovery_timeout": 45,
    }
    fail_times(breaker, 2)
    clock.advance(45)
    assert breaker.get_state_info()["state"] == "HALF_OPEN"
    assert json.dumps(breaker.get_state_info()["state"]) == '"HALF_OPEN"'


def test_state_compares_equal_to_its_name_in_any_case() -> None:
    assert CircuitState("closed") is CircuitState.CLOSED
    assert CircuitState("half_open") is CircuitState.HALF_OPEN
    assert CircuitState.OPEN == "open"
    assert CircuitState.OPEN.value == "open"
    assert CircuitState.OPEN.value == "OPEN"
    assert CircuitState.OPEN != "closed"
    assert json.dumps({"state": CircuitState.OPEN.value}) == '{"state": "OPEN"}'
    assert f"{CircuitState.HALF_OPEN}" == "HALF_OPEN"
    with pytest.raises(ValueError):
        CircuitState("ajar")


# -- metrics and the refusal error ----------------------------------------------------------------------


def test_metrics_count_successes_failures_and_rejections() -> None:
    breaker = make_breaker(Clock(), failure_threshold=2)
    assert breaker.metrics.get_success_rate() == 0.0
    for _ in range(3):
        breaker.call(succeed)
    fail_times(breaker, 2)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    metrics = breaker.metrics
    assert (metrics.success_count, metrics.failure_count, metrics.rejection_count) == (3, 2, 1)
    assert metrics.total_requests == 5
    assert metrics.get_success_rate() == pytest.approx(0.6)


def test_metrics_record_methods_work_standalone() -> None:
    metrics = CircuitBreakerMetrics(wall_clock=lambda: 42.0)
    metrics.record_success()
    metrics.record_failure()
    metrics.record_rejection()
    metrics.record_state_transition(CircuitState.CLOSED, "open")
    assert (metrics.total_requests, metrics.rejection_count, metrics.get_success_rate()) == (2, 1, 0.5)
    assert metrics.state_transitions == [{"from_state": "CLOSED", "to_state": "OPEN", "timestamp": 42.0}]


def test_each_refusal_raises_a_fresh_error_saying_when_the_next_trial_is() -> None:
    clock = Clock()
    breaker = opened(clock, name="db")
    clock.advance(20)
    errors: list[CircuitBreakerError] = []
    for _ in range(2):
        with pytest.raises(CircuitBreakerError) as refused:
            breaker.call(succeed)
        errors.append(refused.value)
    assert errors[0] is not errors[1]
    assert (errors[0].breaker_name, errors[0].retry_after, errors[0].retry_at) == ("db", 40, WALL_START + 60)
    assert str(errors[0]) == "circuit breaker 'db' is open: next trial in 40.0 s (at 2023-11-14T22:14:20Z)"


def test_refusal_error_can_be_built_by_keyword() -> None:
    error = CircuitBreakerError(breaker_name="api", retry_after=5.0, retry_at=WALL_START)
    assert (error.breaker_name, error.retry_after, error.retry_at) == ("api", 5.0, WALL_START)


@pytest.mark.parametrize("store", [None, MemoryStateStore()])
def test_a_hundred_thousand_refusals_grow_memory_by_under_a_megabyte(store: MemoryStateStore | None) -> None:
    breaker = opened(Clock(), state_store=store)

    @breaker
    def fetch() -> str:
        return "never"

    def refuse(times: int) -> None:
        for _ in range(times):
            with contextlib.suppress(CircuitBreakerError):
                fetch()

    refuse(1_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        refuse(100_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert breaker.metrics.rejection_count == 101_000
    assert grown < 1_000_000


# -- concurrency ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["closed", "closed-with-listener", "half-open-two-trials"])
def test_two_threads_run_inside_one_breaker_at_the_same_time(path: str) -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=1, half_open_max_calls=2)
    if path == "closed-with-listener":
        breaker.add_listener(Recorder())
    if path == "half-open-two-trials":
        breaker._on_failure()
        clock.advance(60)
    both_inside = threading.Barrier(2, timeout=10)
    results: list[object] = []

    def worker() -> None:
        try:
            results.append(breaker.call(both_inside.wait))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [0, 1]  # type: ignore[type-var]


def test_half_open_lets_exactly_the_permitted_trials_run_among_eight_callers() -> None:
    clock = Clock()
    breaker = opened(clock, half_open_max_calls=3)
    clock.advance(60)
    start = threading.Barrier(8, timeout=10)
    release = threading.Event()
    settled = threading.Condition()
    ran: list[int] = []
    refused: list[CircuitBreakerError] = []

    def trial() -> str:
        with settled:
            ran.append(1)
            settled.notify_all()
        release.wait(timeout=10)
        return "fetched"

    def caller() -> None:
        start.wait()
        try:
            breaker.call(trial)
        except CircuitBreakerError as exc:
            with settled:
                refused.append(exc)
                settled.notify_all()

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    with settled:
        all_settled = settled.wait_for(lambda: len(ran) + len(refused) == 8, timeout=10)
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert all_settled
    assert (len(ran), len(refused)) == (3, 5)
    assert all(error.retry_after == 0 for error in refused)
    assert breaker.state == CircuitState.CLOSED


# -- disabled, and configuration from the environment -------------------------------------------------


def test_a_disabled_breaker_never_opens_or_refuses_but_keeps_metrics() -> None:
    breaker = make_breaker(Clock(), failure_threshold=1, enabled=False, listeners=[Recorder()])
    fail_times(breaker, 10)
    assert breaker.call(succeed) == "fetched"
    assert breaker.state == CircuitState.CLOSED
    assert (breaker.metrics.failure_count, breaker.metrics.success_count) == (10, 1)


def test_from_env_reads_the_shared_variables_and_per_breaker_overrides_win() -> None:
    environ = {
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "7",
        "CIRCUIT_BREAKER_RECOVERY_TIMEOUT": "90",
        "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "3",
        "CIRCUIT_BREAKER_API_SUCCESS_THRESHOLD": "2",
        "CIRCUIT_BREAKER_API_HALF_OPEN_MAX_CALLS": "4",
        "CIRCUIT_BREAKER_DB_ENABLED": "off",
        "CIRCUIT_BREAKER_DB_RECOVERY_TIMEOUT": "",
    }
    api = CircuitBreaker.from_env("api", environ=environ, expected_exception=ExchangeDown)
    db = CircuitBreaker.from_env("db", environ=environ, recovery_timeout=5)
    assert (api.name, api.failure_threshold, api.recovery_timeout) == ("api", 3, 90)
    assert (api.success_threshold, api.half_open_max_calls, api.enabled) == (2, 4, True)
    assert api.expected_exception is ExchangeDown
    assert (db.failure_threshold, db.recovery_timeout, db.enabled) == (7, 90, False)


def test_from_env_uses_the_defaults_when_nothing_is_set() -> None:
    breaker = CircuitBreaker.from_env("api", environ={}, failure_threshold=9)
    assert (breaker.failure_threshold, breaker.recovery_timeout, breaker.enabled) == (9, 60, True)


@pytest.mark.parametrize("word", ["true", "1", "YES", " on "])
def test_from_env_accepts_the_usual_boolean_words(word: str) -> None:
    assert CircuitBreaker.from_env("api", environ={"CIRCUIT_BREAKER_ENABLED": word}).enabled


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CIRCUIT_BREAKER_ENABLED", "maybe"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "five"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2.5"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "-1"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0"),
        ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "soon"),
        ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "-30"),
        ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "nan"),
        ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "0"),
        ("CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS", "x"),
        ("CIRCUIT_BREAKER_API_ENABLED", "2"),
        ("CIRCUIT_BREAKER_API_FAILURE_THRESHOLD", "0"),
        ("CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT", "-5"),
        ("CIRCUIT_BREAKER_API_SUCCESS_THRESHOLD", "-2"),
        ("CIRCUIT_BREAKER_API_HALF_OPEN_MAX_CALLS", "0"),
    ],
)
def test_from_env_names_the_variable_and_the_value_it_cannot_use(variable: str, value: str) -> None:
    with pytest.raises(CircuitBreakerConfigError) as bad:
        CircuitBreaker.from_env("api", environ={variable: value})
    assert isinstance(bad.value, ValueError)
    assert (bad.value.variable, bad.value.value) == (variable, value)
    assert variable in str(bad.value) and repr(value) in str(bad.value)


def test_from_env_error_message_reads_as_a_sentence() -> None:
    with pytest.raises(CircuitBreakerConfigError) as bad:
        CircuitBreaker.from_env("db", environ={"CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "abc"})
    assert str(bad.value) == "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD='abc' is not a whole number"


# -- async functions ------------------------------------------------------------------------------------


def test_async_functions_are_guarded_and_stay_coroutine_functions() -> None:
    breaker = make_breaker(Clock(), failure_threshold=2)
    awaited: list[bool] = []

    @breaker
    async def fetch(ok: bool) -> str:
        """Fetch asynchronously."""
        awaited.append(ok)
        if not ok:
            raise ExchangeDown("timeout")
        return "fetched"

    async def scenario() -> None:
        assert await fetch(True) == "fetched"
        for _ in range(2):
            with pytest.raises(ExchangeDown):
                await fetch(False)
        with pytest.raises(CircuitBreakerError):
            await fetch(True)

    assert inspect.iscoroutinefunction(fetch)
    assert (fetch.__name__, fetch.__doc__) == ("fetch", "Fetch asynchronously.")
    asyncio.run(scenario())
    assert awaited == [True, False, False]
    assert breaker.state == CircuitState.OPEN


def test_call_with_an_async_function_counts_the_awaited_outcome() -> None:
    breaker = make_breaker(Clock(), failure_threshold=1)

    async def write_batch() -> None:
        raise ExchangeDown("server gone")

    async def scenario() -> None:
        with pytest.raises(ExchangeDown):
            await breaker.call(write_batch)

    asyncio.run(scenario())
    assert breaker.state == CircuitState.OPEN


# -- state stores ---------------------------------------------------------------------------------------


def snapshot(name: str, state: CircuitState = CircuitState.OPEN) -> BreakerSnapshot:
    return BreakerSnapshot(name, state, 5, WALL_START, WALL_START, 5, 60.0)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_stores_keep_every_breaker_by_name(kind: str, tmp_path: Path) -> None:
    store = (
        MemoryStateStore() if kind == "memory" else JsonFileStateStore(tmp_path / "state" / "breakers.json")
    )
    assert store.load("api") is None
    store.save(snapshot("api"))
    store.save(snapshot("db", CircuitState.CLOSED))
    assert store.load("api") == snapshot("api")
    assert store.load_all() == {"api": snapshot("api"), "db": snapshot("db", CircuitState.CLOSED)}
    store.clear("api")
    assert store.load_all() == {"db": snapshot("db", CircuitState.CLOSED)}


def test_file_store_treats_a_corrupt_file_as_empty_and_writes_over_it(tmp_path: Path) -> None:
    path = tmp_path / "breakers.json"
    path.write_text('{"api": {"state": "OPE', encoding="utf-8")
    store = JsonFileStateStore(path)
    breaker = CircuitBreaker(name="api", state_store=store, failure_threshold=1)
    assert breaker.state == CircuitState.CLOSED
    fail_times(breaker, 1)
    assert json.loads(path.read_text(encoding="utf-8"))["api"]["state"] == "OPEN"


def test_the_store_follows_every_failure_count_change_and_reset_clears_it() -> None:
    store = MemoryStateStore()
    breaker = make_breaker(Clock(), name="db", state_store=store)
    fail_times(breaker, 2)
    saved = store.load("db")
    assert saved is not None and (saved.failure_count, saved.last_failure_time) == (2, WALL_START)
    breaker.call(succeed)
    saved = store.load("db")
    assert saved is not None and saved.failure_count == 0
    fail_times(breaker, 5)
    breaker.reset()
    assert store.load("db") is None
    assert (breaker.state, breaker.failure_count, breaker.last_failure_time) == ("CLOSED", 0, None)


def test_a_breaker_opened_by_one_run_is_open_for_the_next_until_its_timeout(tmp_path: Path) -> None:
    store = JsonFileStateStore(tmp_path / "breakers.json")
    first_run = Clock(monotonic_start=5_000.0)
    opened(first_run, name="api", state_store=store)
    first_run.advance(40)
    next_run = Clock(monotonic_start=12.0, wall_start=first_run.wall_now)
    breaker = make_breaker(next_run, name="api", state_store=store, recovery_timeout=60)
    with pytest.raises(CircuitBreakerError) as refused:
        breaker.call(succeed)
    assert refused.value.retry_after == 20
    next_run.advance(20)
    assert breaker.state == CircuitState.HALF_OPEN
    assert breaker.call(succeed) == "fetched"
    saved = store.load("api")
    assert saved is not None and saved.state == CircuitState.CLOSED


def test_an_open_breaker_sees_a_reset_made_elsewhere_before_refusing() -> None:
    store = MemoryStateStore()
    clock = Clock()
    worker = opened(clock, name="api", state_store=store)
    operator = make_breaker(clock, name="api", state_store=store)
    assert operator.state == CircuitState.OPEN
    operator.reset()
    assert worker.call(succeed) == "fetched"
    assert worker.state == CircuitState.CLOSED


FAILING_RUN = """
import sys
from utils.circuit_breaker import CircuitBreaker, JsonFileStateStore
breaker = CircuitBreaker(2, 3600, name="api", state_store=JsonFileStateStore(sys.argv[1]))
for _ in range(2):
    try:
        breaker.call(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
print(breaker.state.value)
"""

WAITING_RUN = """
import sys
from utils.circuit_breaker import CircuitBreaker, CircuitBreakerError, JsonFileStateStore
breaker = CircuitBreaker(2, 3600, name="api", state_store=JsonFileStateStore(sys.argv[1]))
calls = []
for _ in sys.stdin:
    try:
        print(breaker.call(lambda: calls.append(1) or "called"), len(calls), flush=True)
    except CircuitBreakerError:
        print("refused", len(calls), flush=True)
"""


def test_the_file_store_shares_one_breaker_between_two_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "breakers.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(
        [sys.executable, "-c", FAILING_RUN, path], capture_output=True, text=True, env=env, timeout=60
    )
    assert first.stdout.strip() == "OPEN", first.stderr
    second = subprocess.Popen(
        [sys.executable, "-c", WAITING_RUN, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert second.stdin is not None and second.stdout is not None
    try:
        second.stdin.write("call\n")
        second.stdin.flush()
        assert second.stdout.readline() == "refused 0\n"
        CircuitBreaker(name="api", state_store=JsonFileStateStore(path)).reset()
        second.stdin.write("call\n")
        second.stdin.flush()
        assert second.stdout.readline() == "called 1\n"
    finally:
        second.stdin.close()
        second.wait(timeout=60)


# -- OpenTelemetry --------------------------------------------------------------------------------------

TRACED_RUN = """
import json
from opentelemetry.trace import span
from utils.circuit_breaker import CircuitBreaker
breaker = CircuitBreaker(1, 60, name="api")
breaker.call(lambda: "ok")
print(json.dumps(span.attributes, sort_keys=True))
try:
    breaker.call(lambda: {}["BTCUSDX"])
except KeyError:
    pass
print(json.dumps(span.attributes, sort_keys=True))
"""

FAKE_TRACE_MODULE = """
class RecordingSpan:
    attributes = {}
    def is_recording(self):
        return True
    def set_attribute(self, key, value):
        self.attributes[key] = value
span = RecordingSpan()
def get_current_span():
    return span
"""


def test_guarded_calls_set_span_attributes_when_opentelemetry_is_importable(tmp_path: Path) -> None:
    package = tmp_path / "opentelemetry"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "trace.py").write_text(textwrap.dedent(FAKE_TRACE_MODULE), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    run = subprocess.run(
        [sys.executable, "-c", TRACED_RUN], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    after_success, after_failure = (json.loads(line) for line in run.stdout.splitlines())
    assert after_success == {
        "circuit_breaker.name": "api",
        "circuit_breaker.state": "CLOSED",
        "circuit_breaker.failure_count": 0,
        "circuit_breaker.success": True,
    }
    assert after_failure == {
        "circuit_breaker.name": "api",
        "circuit_breaker.state": "OPEN",
        "circuit_breaker.failure_count": 1,
        "circuit_breaker.success": False,
        "circuit_breaker.error": "KeyError: 'BTCUSDX'",
    }
