"""What the breaker tests share: a clock that moves only when told, a recording listener, failing calls."""

from __future__ import annotations

from typing import Any

import pytest

from utils.circuit_breaker import CircuitBreaker, CircuitBreakerListener, CircuitState

WALL_START = 1_700_000_000.0


class Clock:
    """Drives both clocks of a breaker; only ``advance`` (or ``step_wall``) moves time."""

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

    def step_wall(self, seconds: float) -> None:
        """The wall clock alone jumps, as NTP or an operator would make it."""
        self.wall_now += seconds


class ExchangeDown(Exception):
    """What the guarded dependency raises when it fails: counted."""


class Recorder(CircuitBreakerListener):
    """Keeps every event in order, as a monitoring listener would see them."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def state_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        self.events.append(("state", old.value, new.value))

    def success(self, breaker: CircuitBreaker, duration: float) -> None:
        self.events.append(("success", duration))

    def failure(self, breaker: CircuitBreaker, exc: BaseException, duration: float) -> None:
        self.events.append(("failure", str(exc), duration))

    def rejection(self, breaker: CircuitBreaker) -> None:
        self.events.append(("rejection",))


def make_breaker(clock: Clock, **settings: Any) -> CircuitBreaker:
    settings.setdefault("expected_exception", ExchangeDown)
    return CircuitBreaker(clock=clock.monotonic, wall_clock=clock.wall, timer=clock.monotonic, **settings)


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
    """A breaker just opened by one failure, with a 60 s timeout."""
    settings = {"failure_threshold": 1, "recovery_timeout": 60, **settings}
    breaker = make_breaker(clock, **settings)
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.OPEN
    return breaker
