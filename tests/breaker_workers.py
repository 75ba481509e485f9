"""Processes that share one breaker state file, driven command by command from a test.

Each worker owns a breaker on the file the test names, reads one clock shared by every process (so time
moves only when the test moves it), and reports each call's outcome on one queue shared by all workers.
A "hold" call signals ``entered`` and waits for ``release``: that is how a test keeps a call in flight.
Replies carry the generation of the ``use`` they answer, so a test that failed half-way cannot leave
replies that a later test would read.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

from tests.breaker_helpers import WALL_START, ExchangeDown
from utils.circuit_breaker import CircuitBreaker, CircuitBreakerError, JsonFileStateStore

WALL_OFFSET = WALL_START - 1_000.0
SAFETY_TIMEOUT = 60.0
"""Seconds a test waits for a process before it gives up: a safety net, never part of what is tested."""


@dataclass
class Channels:
    commands: Queue[tuple[Any, ...]]
    entered: Event
    release: Event


def serve(
    worker: int,
    channels: Channels,
    replies: Queue[tuple[Any, ...]],
    clock: Synchronized[float],
    reached: Synchronized[int],
) -> None:
    def monotonic() -> float:
        return clock.value

    def wall() -> float:
        return clock.value + WALL_OFFSET

    def guarded(behaviour: str) -> str:
        with reached.get_lock():
            reached.value += 1
        if behaviour.startswith("hold"):
            channels.entered.set()
            channels.release.wait(SAFETY_TIMEOUT)
        if behaviour.endswith("fail"):
            raise ExchangeDown(f"worker {worker}")
        return "ok"

    breaker: CircuitBreaker | None = None
    generation = 0
    while True:
        command, *arguments = channels.commands.get(timeout=SAFETY_TIMEOUT)
        if command == "stop":
            return
        if command == "use":
            generation, path, threshold = arguments
            breaker = CircuitBreaker(
                failure_threshold=threshold,
                recovery_timeout=60,
                expected_exception=ExchangeDown,
                name="api",
                state_store=JsonFileStateStore(path),
                clock=monotonic,
                wall_clock=wall,
            )
            replies.put((generation, worker, "ready"))
        elif command == "call":
            assert breaker is not None
            behaviour, times = arguments
            for _ in range(times):
                replies.put((generation, worker, *attempt(breaker, guarded, behaviour)))


def attempt(breaker: CircuitBreaker, guarded: Callable[[str], str], behaviour: str) -> tuple[Any, ...]:
    try:
        return (breaker.call(guarded, behaviour),)
    except ExchangeDown:
        return ("failed",)
    except CircuitBreakerError as refused:
        return ("refused", refused.retry_after)


@dataclass
class Pool:
    """Worker processes and the shared clock and counter; the test's handle on them."""

    size: int
    context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))

    def __post_init__(self) -> None:
        self.clock: Synchronized[float] = self.context.Value("d", 1_000.0)
        self.reached: Synchronized[int] = self.context.Value("i", 0)
        self.replies: Queue[tuple[Any, ...]] = self.context.Queue()
        self.generation = 0
        self.channels = [
            Channels(self.context.Queue(), self.context.Event(), self.context.Event())
            for _ in range(self.size)
        ]
        self.processes: list[SpawnProcess] = [
            self.context.Process(
                target=serve, args=(n, self.channels[n], self.replies, self.clock, self.reached), daemon=True
            )
            for n in range(self.size)
        ]
        for process in self.processes:
            process.start()

    def use(self, path: str, threshold: int = 1) -> None:
        """Every worker builds a fresh breaker on ``path``; counters and events start again."""
        for channel in self.channels:
            channel.release.set()  # a call a failed test left held ends, and its reply is dropped
        self.generation += 1
        for channel in self.channels:
            channel.commands.put(("use", self.generation, path, threshold))
        for channel in self.channels:
            channel.entered.clear()
            channel.release.clear()
        self.reached.value = 0
        assert sorted(self.collect(self.size)) == [(n, "ready") for n in range(self.size)]

    def send(self, worker: int, behaviour: str, times: int = 1) -> None:
        self.channels[worker].commands.put(("call", behaviour, times))

    def call(self, worker: int, behaviour: str) -> tuple[Any, ...]:
        self.send(worker, behaviour)
        (reply,) = self.collect(1)
        assert reply[0] == worker
        return reply[1:]

    def collect(self, count: int) -> list[tuple[Any, ...]]:
        """The next ``count`` replies of this generation, as (worker, outcome...)."""
        replies: list[tuple[Any, ...]] = []
        while len(replies) < count:
            generation, *reply = self.replies.get(timeout=SAFETY_TIMEOUT)
            if generation == self.generation:
                replies.append(tuple(reply))
        return replies

    def advance(self, seconds: float) -> None:
        with self.clock.get_lock():
            self.clock.value += seconds

    def close(self) -> None:
        for channel in self.channels:
            channel.release.set()
            channel.commands.put(("stop",))
        for process in self.processes:
            process.join(SAFETY_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join(SAFETY_TIMEOUT)
