"""The breaker in one process: its transitions, what counts, and every form a guarded call takes."""

from __future__ import annotations

import asyncio
import inspect
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from tests.breaker_helpers import (
    WALL_START,
    Clock,
    ExchangeDown,
    Recorder,
    fail,
    fail_times,
    make_breaker,
    opened,
    succeed,
    unknown_symbol,
)
from utils.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitState,
)

# -- transitions ----------------------------------------------------------------------------------------


def test_closed_breaker_calls_through_and_returns_the_result() -> None:
    breaker = make_breaker(Clock())
    assert breaker.call(succeed) == "fetched"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics.success_count == 1


def test_threshold_consecutive_failures_open_it_and_calls_are_refused_without_running() -> None:
    breaker = make_breaker(Clock(), failure_threshold=3, name="api")
    fail_times(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.OPEN
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
    assert breaker.state is CircuitState.CLOSED


def test_open_reads_half_open_once_the_recovery_timeout_has_passed() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.advance(59.9)
    assert breaker.state is CircuitState.OPEN
    assert not breaker._should_attempt_reset()
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    clock.advance(0.1)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker._should_attempt_reset()


def test_a_trial_success_closes_it() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.advance(60)
    assert breaker.call(succeed) == "fetched"
    assert (breaker.state, breaker.failure_count) == (CircuitState.CLOSED, 0)


def test_a_trial_failure_reopens_it_with_a_fresh_timeout() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.advance(100)
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.OPEN
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
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.call(succeed)
    assert breaker.state is CircuitState.CLOSED


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
        ("failure", "exchange down", 0.0),
        ("failure", "exchange down", 0.0),
        ("state", "CLOSED", "OPEN"),
        ("rejection",),
        ("state", "OPEN", "HALF_OPEN"),
        ("failure", "exchange down", 0.0),
        ("state", "HALF_OPEN", "OPEN"),
        ("state", "OPEN", "HALF_OPEN"),
        ("success", 0.0),
        ("state", "HALF_OPEN", "CLOSED"),
    ]
    assert breaker.metrics.state_transitions == 5
    assert breaker.metrics.recent_transitions == [
        {"from_state": "CLOSED", "to_state": "OPEN", "timestamp": WALL_START},
        {"from_state": "OPEN", "to_state": "HALF_OPEN", "timestamp": WALL_START + 30},
        {"from_state": "HALF_OPEN", "to_state": "OPEN", "timestamp": WALL_START + 30},
        {"from_state": "OPEN", "to_state": "HALF_OPEN", "timestamp": WALL_START + 60},
        {"from_state": "HALF_OPEN", "to_state": "CLOSED", "timestamp": WALL_START + 60},
    ]


def test_listeners_hear_how_long_each_call_took_on_the_breakers_clock() -> None:
    clock = Clock()
    recorder = Recorder()
    breaker = make_breaker(clock, listeners=[recorder])

    def slow_fetch() -> str:
        clock.advance(2.5)
        return "fetched"

    def slow_failure() -> str:
        clock.advance(0.5)
        raise ExchangeDown("timeout")

    breaker.call(slow_fetch)
    with pytest.raises(ExchangeDown):
        breaker.call(slow_failure)
    assert recorder.events == [("success", 2.5), ("failure", "timeout", 0.5)]


def test_a_failing_listener_does_not_change_the_outcome_of_the_call() -> None:
    class Broken(CircuitBreakerListener):
        def success(self, breaker: CircuitBreaker, duration: float) -> None:
            raise RuntimeError("listener bug")

    breaker = make_breaker(Clock(), listeners=[Broken()])
    assert breaker.call(succeed) == "fetched"
    assert breaker.metrics.success_count == 1


def test_an_added_listener_hears_the_calls_after_it() -> None:
    breaker = make_breaker(Clock(), failure_threshold=1)
    breaker.call(succeed)
    recorder = Recorder()
    breaker.add_listener(recorder)
    fail_times(breaker, 1)
    assert recorder.events == [("failure", "exchange down", 0.0), ("state", "CLOSED", "OPEN")]


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
    assert (breaker.failure_count, breaker.state) == (2, CircuitState.CLOSED)
    assert (breaker.metrics.failure_count, breaker.metrics.success_count) == (2, 0)
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.OPEN


def test_slow_calls_count_as_failures_but_still_return_their_result() -> None:
    clock = Clock()
    recorder = Recorder()
    breaker = make_breaker(clock, failure_threshold=2, slow_call_seconds=2, listeners=[recorder])

    def fetch(seconds: float) -> str:
        clock.advance(seconds)
        return "fetched"

    assert breaker.call(fetch, 2) == "fetched"
    assert breaker.failure_count == 0
    assert breaker.call(fetch, 2.5) == "fetched"
    assert breaker.call(fetch, 3) == "fetched"
    assert breaker.state is CircuitState.OPEN
    assert recorder.events[1] == ("failure", "call took 2.500 s, over the slow-call limit of 2 s", 2.5)
    assert breaker.metrics.failure_count == 2


# -- the forms of a call ------------------------------------------------------------------------------


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


def via_async_decorator(breaker: CircuitBreaker, func: Callable[[], str]) -> str:
    @breaker
    async def guarded() -> str:
        await asyncio.sleep(0)
        return func()

    return asyncio.run(guarded())


def via_async_call(breaker: CircuitBreaker, func: Callable[[], str]) -> str:
    async def guarded() -> str:
        return func()

    async def scenario() -> str:
        return await breaker.call(guarded)

    return asyncio.run(scenario())


def via_generator(breaker: CircuitBreaker, func: Callable[[], str]) -> str:
    @breaker
    def pages() -> Any:
        yield func()

    return "".join(pages())


def via_async_generator(breaker: CircuitBreaker, func: Callable[[], str]) -> str:
    @breaker
    async def pages() -> Any:
        await asyncio.sleep(0)
        yield func()

    async def scenario() -> str:
        return "".join([page async for page in pages()])

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "use",
    [
        via_decorator,
        via_wrapper,
        via_context_manager,
        via_call,
        via_async_decorator,
        via_async_call,
        via_generator,
        via_async_generator,
    ],
)
def test_every_form_of_call_counts_opens_and_refuses_alike(
    use: Callable[[CircuitBreaker, Callable[[], str]], str],
) -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=2, recovery_timeout=10)
    assert use(breaker, succeed) == "fetched"
    for _ in range(2):
        with pytest.raises(ExchangeDown):
            use(breaker, fail)
    assert breaker.state is CircuitState.OPEN
    ran: list[str] = []

    def record_run() -> str:
        ran.append("ran")
        return "ran"

    with pytest.raises(CircuitBreakerError):
        use(breaker, record_run)
    assert ran == []
    clock.advance(10)
    assert use(breaker, succeed) == "fetched"
    assert breaker.state is CircuitState.CLOSED
    assert (breaker.metrics.success_count, breaker.metrics.failure_count) == (2, 2)


def test_decorator_keeps_name_docstring_and_kind() -> None:
    breaker = make_breaker(Clock())

    @breaker
    def fetch_klines(symbol: str) -> str:
        """Fetch one page of klines."""
        return symbol

    @breaker
    async def fetch_async() -> str:
        """Fetch asynchronously."""
        return "x"

    @breaker
    def pages() -> Any:
        yield 1

    @breaker
    async def stream() -> Any:
        yield 1

    assert (fetch_klines.__name__, fetch_klines.__doc__) == ("fetch_klines", "Fetch one page of klines.")
    assert fetch_klines("BTCUSDT") == "BTCUSDT"
    assert inspect.iscoroutinefunction(fetch_async)
    assert (fetch_async.__name__, fetch_async.__doc__) == ("fetch_async", "Fetch asynchronously.")
    assert inspect.isgeneratorfunction(pages)
    assert inspect.isasyncgenfunction(stream)


def test_a_decorated_method_still_binds_self() -> None:
    breaker = make_breaker(Clock())

    class Client:
        symbol = "ETHBTC"

        @breaker
        def fetch(self, limit: int) -> str:
            return f"{self.symbol}:{limit}"

    assert Client().fetch(500) == "ETHBTC:500"


@CircuitBreaker(name="module level")
def guarded_at_module_level() -> str:
    return "fetched"


def test_a_decorated_function_pickles_by_name_like_the_function_it_replaces() -> None:
    assert pickle.loads(pickle.dumps(guarded_at_module_level)) is guarded_at_module_level
    assert repr(guarded_at_module_level) == "<guarded function guarded_at_module_level>"


def test_call_passes_positional_and_keyword_arguments() -> None:
    def page(symbol: str, *, limit: int) -> str:
        return f"{symbol}:{limit}"

    assert make_breaker(Clock()).call(page, "ETHBTC", limit=1000) == "ETHBTC:1000"

    def named(func: str) -> str:
        return func

    assert make_breaker(Clock()).call(named, func="a keyword of the guarded function") == (
        "a keyword of the guarded function"
    )


def test_context_manager_refuses_entry_while_open_and_never_swallows() -> None:
    breaker = make_breaker(Clock(), failure_threshold=1)
    with pytest.raises(ExchangeDown), breaker:
        raise ExchangeDown("write failed")
    entered = False
    with pytest.raises(CircuitBreakerError), breaker:
        entered = True
    assert not entered
    assert breaker.metrics.rejection_count == 1


def test_nested_with_blocks_each_settle_their_own_entry() -> None:
    clock = Clock()
    breaker = opened(clock, half_open_max_calls=2)
    clock.advance(60)
    with breaker:
        with pytest.raises(KeyError), breaker:
            unknown_symbol()  # the inner trial ends uncounted: its permit comes back
        with breaker:
            pass  # a trial again: the inner permit was returned, so there was room
        assert breaker.state is CircuitState.CLOSED


def test_a_generator_counts_failures_raised_while_it_is_iterated() -> None:
    breaker = make_breaker(Clock(), failure_threshold=1)

    @breaker
    def pages() -> Any:
        yield "page 1"
        raise ExchangeDown("connection reset on page 2")

    iterator = pages()
    assert next(iterator) == "page 1"
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(ExchangeDown):
        next(iterator)
    assert breaker.state is CircuitState.OPEN


def test_an_async_generator_counts_failures_raised_while_it_is_iterated() -> None:
    breaker = make_breaker(Clock(), failure_threshold=1)

    @breaker
    async def pages() -> Any:
        yield "page 1"
        raise ExchangeDown("connection reset on page 2")

    async def scenario() -> list[str]:
        seen = []
        with pytest.raises(ExchangeDown):
            async for page in pages():
                seen.append(page)
        return seen

    assert asyncio.run(scenario()) == ["page 1"]
    assert breaker.state is CircuitState.OPEN


def test_values_sent_into_a_guarded_generator_reach_it() -> None:
    breaker = make_breaker(Clock())

    @breaker
    def echo() -> Any:
        received = yield "ready"
        return f"got {received}"

    iterator = echo()
    assert next(iterator) == "ready"
    with pytest.raises(StopIteration) as finished:
        iterator.send("klines")
    assert finished.value.value == "got klines"
    assert breaker.metrics.success_count == 1


def test_a_sync_function_returning_a_failing_coroutine_counts_the_awaited_failure() -> None:
    recorder = Recorder()
    for listeners in ((), (recorder,)):
        breaker = make_breaker(Clock(), failure_threshold=1, listeners=listeners)

        async def write_batch() -> None:
            raise ExchangeDown("server gone")

        def start_write() -> Any:
            return write_batch()

        async def scenario(guarded: Callable[[], Any]) -> None:
            with pytest.raises(ExchangeDown):
                await guarded()

        asyncio.run(scenario(breaker(start_write)))
        assert (breaker.state, breaker.metrics.success_count) == (CircuitState.OPEN, 0)


def test_call_with_an_async_function_counts_the_awaited_outcome() -> None:
    breaker = make_breaker(Clock(), failure_threshold=1)

    async def write_batch() -> None:
        raise ExchangeDown("server gone")

    async def scenario() -> None:
        with pytest.raises(ExchangeDown):
            await breaker.call(write_batch)

    asyncio.run(scenario())
    assert breaker.state is CircuitState.OPEN


def test_a_guarded_coroutine_can_be_scheduled_as_a_task() -> None:
    breaker = make_breaker(Clock())

    async def fetch() -> str:
        await asyncio.sleep(0)
        return "fetched"

    async def scenario() -> str:
        return await asyncio.create_task(breaker.call(fetch))

    assert asyncio.run(scenario()) == "fetched"
    assert breaker.metrics.success_count == 1
