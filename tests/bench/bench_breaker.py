"""B7: what a breaker costs per call, ours against pybreaker and circuitbreaker in the same run.

Run alone with ``python -m tests.bench.bench_breaker``.
"""

from __future__ import annotations

import contextlib
import timeit
import tracemalloc
from collections.abc import Callable

import circuitbreaker
import pybreaker

from tests.bench.common import BenchRow, format_table
from utils.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState

CALLS = 100_000
REPEATS = 7
REFUSALS = 100_000


def fetch() -> None:
    """The guarded work: nothing, so only the breaker is measured."""


def fail() -> None:
    raise ConnectionError("exchange down")


def best_ns(run: Callable[[], object], calls: int = CALLS) -> float:
    """Best of several repeats, in nanoseconds per call: the least disturbed measurement."""
    return min(timeit.repeat(run, number=calls, repeat=REPEATS)) / calls * 1e9


def refusing(guarded: Callable[[], None], error: type[Exception]) -> Callable[[], None]:
    def attempt() -> None:
        with contextlib.suppress(error):
            guarded()

    return attempt


def closed_guards() -> dict[str, Callable[[], None]]:
    return {
        "ours": CircuitBreaker(name="bench")(fetch),
        "circuitbreaker": circuitbreaker.CircuitBreaker(name="bench-closed").decorate(fetch),
        "pybreaker": pybreaker.CircuitBreaker()(fetch),
    }


def open_guards() -> dict[str, Callable[[], None]]:
    ours = CircuitBreaker(recovery_timeout=3600, name="bench")
    ours.state = CircuitState.OPEN
    theirs = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600, name="bench-open")
    with contextlib.suppress(ConnectionError):
        theirs.decorate(fail)()
    peer = pybreaker.CircuitBreaker(reset_timeout=3600)
    peer.open()
    return {
        "ours": refusing(ours(fetch), CircuitBreakerError),
        "circuitbreaker": refusing(theirs.decorate(fetch), circuitbreaker.CircuitBreakerError),
        "pybreaker": refusing(peer(fetch), pybreaker.CircuitBreakerError),
    }


def refusal_memory_bytes(refuse: Callable[[], None]) -> int:
    for _ in range(1_000):
        refuse()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(REFUSALS):
            refuse()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def peers_text(costs: dict[str, float]) -> str:
    ours = costs["ours"]
    return "; ".join(
        f"{name} {costs[name]:,.0f} ({costs[name] / ours:.1f}x)" for name in ("circuitbreaker", "pybreaker")
    )


def rows() -> list[BenchRow]:
    bare = best_ns(fetch)
    closed = {name: best_ns(guarded) - bare for name, guarded in closed_guards().items()}
    guards = open_guards()
    bare_attempt = best_ns(refusing(fetch, CircuitBreakerError))
    refusal = {name: best_ns(attempt) - bare_attempt for name, attempt in guards.items()}
    grown = refusal_memory_bytes(guards["ours"]) / 1024
    return [
        BenchRow(
            "B7 breaker closed-path overhead",
            closed["ours"],
            "ns/call",
            "<= circuitbreaker",
            peers_text(closed),
            closed["ours"] <= closed["circuitbreaker"],
        ),
        BenchRow(
            "B7 breaker open-rejection cost",
            refusal["ours"],
            "ns/call",
            "<= circuitbreaker",
            peers_text(refusal),
            refusal["ours"] <= refusal["circuitbreaker"],
        ),
        BenchRow(
            "B7 breaker memory, 100k rejections",
            grown,
            "KiB",
            "< 1,024 KiB",
            "",
            grown < 1024,
        ),
    ]


if __name__ == "__main__":
    print(format_table(rows()))
