"""B7: what a breaker costs per call, ours against pybreaker and circuitbreaker in the same run.

Run alone with ``python -m tests.bench.bench_breaker`` (or ``python -m tests.bench bench_breaker``).
The last row is what sharing state through a file adds to each closed call: one ``stat`` of the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import timeit
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import circuitbreaker
import pybreaker

from tests.bench.common import BenchRow, format_table
from utils.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState, JsonFileStateStore

CALLS = 100_000
REPEATS = 7
REFUSALS = 100_000


def fetch() -> None:
    """The guarded work: nothing, so only the breaker is measured."""


def fail() -> None:
    raise ConnectionError("exchange down")


def best_ns(runs: dict[str, Callable[[], object]], calls: int = CALLS) -> dict[str, float]:
    """Each run's best of REPEATS rounds, in nanoseconds per call: the least disturbed measurement.

    A round times every run once, so a burst of load from elsewhere on the machine falls on all of them
    alike instead of on whichever happened to be measured at the time.
    """
    best = dict.fromkeys(runs, math.inf)
    for _ in range(REPEATS):
        for name, run in runs.items():
            best[name] = min(best[name], timeit.timeit(run, number=calls))
    return {name: seconds / calls * 1e9 for name, seconds in best.items()}


def overheads(runs: dict[str, Callable[[], object]], bare: Callable[[], object]) -> dict[str, float]:
    """What each run costs beyond ``bare``, measured in the same rounds."""
    costs = best_ns({"bare": bare, **runs})
    return {name: costs[name] - costs["bare"] for name in runs}


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


def file_store_costs() -> tuple[float, float]:
    """Closed-path overhead of a breaker on a JsonFileStateStore, and of one bare stat of its file."""
    with tempfile.TemporaryDirectory() as directory:
        store = JsonFileStateStore(Path(directory) / "api-breaker.json")
        store.ensure_writable()
        breaker = CircuitBreaker(name="bench", state_store=store)
        breaker.reset()  # writes the file: a version to stat
        costs = overheads({"guarded": breaker(fetch), "stat": lambda: os.stat(store.path)}, fetch)
        return costs["guarded"], costs["stat"]


def peers_text(costs: dict[str, float]) -> str:
    ours = costs["ours"]
    return "; ".join(
        f"{name} {costs[name]:,.0f} ({costs[name] / ours:.1f}x)" for name in ("circuitbreaker", "pybreaker")
    )


def rows() -> list[BenchRow]:
    closed = overheads(closed_guards(), fetch)
    guards = open_guards()
    refusal = overheads(guards, refusing(fetch, CircuitBreakerError))
    grown = refusal_memory_bytes(guards["ours"]) / 1024
    with_file, stat = file_store_costs()
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
        BenchRow(
            "B7 breaker closed path, file store",
            with_file,
            "ns/call",
            "",
            f"one stat of the file alone: {stat:,.0f} ns",
        ),
    ]


if __name__ == "__main__":
    print(format_table(rows()))
