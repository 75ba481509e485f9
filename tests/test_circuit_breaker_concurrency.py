"""One breaker under many threads, and one state file under several processes.

Nothing here waits for time to pass: clocks are fake (one shared by every process), and threads and
processes meet at barriers and events; the timeouts are safety nets for a hung test, never part of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.breaker_helpers import Clock, ExchangeDown, Recorder, fail_times, make_breaker, opened, succeed
from tests.breaker_workers import WALL_OFFSET, Pool
from utils.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    JsonFileStateStore,
)

TIMEOUT = 30.0


def run_threads(count: int, target: Callable[[], None]) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)


# -- threads ---------------------------------------------------------------------------------------------


def test_thirty_two_threads_open_it_at_the_threshold_and_are_then_refused() -> None:
    threads, threshold = 32, 5
    breaker = make_breaker(Clock(), failure_threshold=threshold)
    start = threading.Barrier(threads, timeout=TIMEOUT)
    counter = threading.Lock()
    reached = [0]
    refusals = [0]

    def failing_call() -> str:
        with counter:
            reached[0] += 1
        raise ExchangeDown("exchange down")

    def caller() -> None:
        start.wait()
        for _ in range(100):
            try:
                breaker.call(failing_call)
            except ExchangeDown:
                continue
            except CircuitBreakerError:
                with counter:
                    refusals[0] += 1
                return

    run_threads(threads, caller)
    assert threshold <= reached[0] <= threshold + threads - 1
    assert refusals[0] == threads
    assert breaker.state is CircuitState.OPEN
    assert (breaker.metrics.failure_count, breaker.metrics.rejection_count) == (reached[0], threads)
    assert breaker.metrics.state_transitions == 1


@pytest.mark.parametrize("store", ["memory", "file"])
def test_fifty_threads_arriving_in_half_open_let_exactly_the_permitted_trials_through(
    store: str, tmp_path: Path
) -> None:
    threads, permitted = 50, 3
    clock = Clock()
    state_store = JsonFileStateStore(tmp_path / "b.json") if store == "file" else None
    breaker = opened(clock, half_open_max_calls=permitted, state_store=state_store)
    clock.advance(60)
    start = threading.Barrier(threads, timeout=TIMEOUT)
    release = threading.Event()
    settled = threading.Condition()
    ran: list[int] = []
    refused: list[CircuitBreakerError] = []

    def trial() -> str:
        with settled:
            ran.append(1)
            settled.notify_all()
        release.wait(timeout=TIMEOUT)
        return "fetched"

    def caller() -> None:
        start.wait()
        try:
            breaker.call(trial)
        except CircuitBreakerError as exc:
            with settled:
                refused.append(exc)
                settled.notify_all()

    callers = threading.Thread(target=run_threads, args=(threads, caller))
    callers.start()
    with settled:
        all_settled = settled.wait_for(lambda: len(ran) + len(refused) == threads, timeout=TIMEOUT)
    release.set()
    callers.join(timeout=TIMEOUT)
    assert all_settled
    assert (len(ran), len(refused)) == (permitted, threads - permitted)
    assert all(error.retry_after == 0 for error in refused)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics.rejection_count == threads - permitted


def test_no_count_is_lost_among_threads() -> None:
    threads, calls = 16, 300
    recorder = Recorder()
    breaker = make_breaker(Clock(), failure_threshold=10**9, listeners=[recorder])
    start = threading.Barrier(threads, timeout=TIMEOUT)

    def caller() -> None:
        start.wait()
        for n in range(calls):
            if n % 3 == 0:
                with pytest.raises(ExchangeDown):
                    breaker.call(fail_call)
            elif n % 3 == 1:
                breaker.call(succeed)
            else:
                with pytest.raises(KeyError):
                    breaker.call(uncounted_call)

    run_threads(threads, caller)
    per_kind = threads * calls // 3
    assert (breaker.metrics.failure_count, breaker.metrics.success_count) == (per_kind, per_kind)
    assert breaker.metrics.total_requests == 2 * per_kind
    assert len(recorder.events) == 2 * per_kind


def fail_call() -> str:
    raise ExchangeDown("exchange down")


def uncounted_call() -> str:
    raise KeyError("BTCUSDX")


def test_threads_each_with_a_store_on_one_file_lose_no_failure(tmp_path: Path) -> None:
    threads, failures = 8, 20
    path = tmp_path / "breakers.json"
    clock = Clock()
    start = threading.Barrier(threads, timeout=TIMEOUT)

    def caller() -> None:
        breaker = make_breaker(
            clock, name="api", failure_threshold=10**6, state_store=JsonFileStateStore(path)
        )
        start.wait()
        fail_times(breaker, failures)

    run_threads(threads, caller)
    assert make_breaker(clock, name="api", state_store=JsonFileStateStore(path)).failure_count == 160


@pytest.mark.parametrize("path", ["closed", "closed-with-listener", "half-open-two-trials"])
def test_two_threads_run_inside_one_breaker_at_the_same_time(path: str) -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=1, half_open_max_calls=2)
    if path == "closed-with-listener":
        breaker.add_listener(Recorder())
    if path == "half-open-two-trials":
        breaker._on_failure()
        clock.advance(60)
    both_inside = threading.Barrier(2, timeout=TIMEOUT)
    results: list[object] = []

    def worker() -> None:
        try:
            results.append(breaker.call(both_inside.wait))
        except BaseException as exc:
            results.append(exc)

    run_threads(2, worker)
    assert sorted(results) == [0, 1]  # type: ignore[type-var]


# -- processes -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    workers = Pool(4)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def state_file(pool: Pool, tmp_path: Path) -> str:
    path = str(tmp_path / "api-breaker.json")
    pool.use(path)
    return path


def operator(pool: Pool, path: str) -> CircuitBreaker:
    """This process's breaker on the shared file: what ``breakers status`` and ``breakers reset`` use."""
    return CircuitBreaker(
        name="api",
        state_store=JsonFileStateStore(path),
        clock=lambda: pool.clock.value,
        wall_clock=lambda: pool.clock.value + WALL_OFFSET,
    )


def test_after_one_process_opens_it_no_process_calls_until_the_timeout_then_one_trial_at_a_time(
    pool: Pool, state_file: str
) -> None:
    assert pool.call(0, "ok") == ("ok",)
    assert pool.call(0, "fail") == ("failed",)
    for worker in (1, 2, 3):
        assert pool.call(worker, "ok") == ("refused", 60.0)
    pool.advance(59)
    for worker in (0, 1, 2, 3):
        assert pool.call(worker, "ok") == ("refused", 1.0)
    assert pool.reached.value == 2

    pool.advance(1)
    for worker in range(4):
        pool.send(worker, "hold")
    refused = pool.collect(3)
    (trial,) = {0, 1, 2, 3} - {worker for worker, *_ in refused}
    assert [reply[1:] for reply in refused] == [("refused", 0.0)] * 3
    assert pool.channels[trial].entered.wait(TIMEOUT)
    assert pool.reached.value == 3
    assert operator(pool, state_file).state is CircuitState.HALF_OPEN

    pool.channels[trial].release.set()
    assert pool.collect(1) == [(trial, "ok")]
    for worker in range(4):
        assert pool.call(worker, "ok") == ("ok",)
    assert operator(pool, state_file).state is CircuitState.CLOSED


def test_a_stale_success_from_another_process_never_recloses_the_breaker(pool: Pool, state_file: str) -> None:
    late, opener, trial, other = range(4)
    pool.send(late, "hold")  # admitted while closed
    assert pool.channels[late].entered.wait(TIMEOUT)
    assert pool.call(opener, "fail") == ("failed",)
    pool.advance(60)
    pool.send(trial, "hold")  # the real trial
    assert pool.channels[trial].entered.wait(TIMEOUT)

    pool.channels[late].release.set()
    assert pool.collect(1) == [(late, "ok")]
    assert pool.call(other, "ok") == ("refused", 0.0)  # still half-open: the trial is out
    assert operator(pool, state_file).state is CircuitState.HALF_OPEN

    pool.channels[trial].release.set()
    assert pool.collect(1) == [(trial, "ok")]
    assert pool.call(other, "ok") == ("ok",)


def test_a_stale_failure_from_another_process_never_reopens_the_breaker(pool: Pool, state_file: str) -> None:
    late, other = 0, 1
    pool.send(late, "hold-fail")  # admitted while closed, fails after a reset
    assert pool.channels[late].entered.wait(TIMEOUT)
    operator(pool, state_file).reset()
    pool.channels[late].release.set()
    assert pool.collect(1) == [(late, "failed")]
    status = operator(pool, state_file)
    assert (status.state, status.failure_count) == (CircuitState.CLOSED, 0)
    assert pool.call(other, "ok") == ("ok",)


def test_a_reset_from_another_process_is_seen(pool: Pool, state_file: str) -> None:
    assert pool.call(0, "fail") == ("failed",)
    assert pool.call(1, "ok") == ("refused", 60.0)
    operator(pool, state_file).reset()
    assert pool.call(1, "ok") == ("ok",)
    assert pool.call(0, "ok") == ("ok",)


def test_processes_failing_together_lose_no_count(pool: Pool, tmp_path: Path) -> None:
    path = str(tmp_path / "counted.json")
    pool.use(path, threshold=10**6)
    for worker in range(4):
        pool.send(worker, "fail", times=25)
    assert all(reply == "failed" for _, reply in pool.collect(100))
    assert operator(pool, path).failure_count == 100
