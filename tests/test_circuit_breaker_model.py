"""Random sequences of calls, clock moves and resets, checked against a reference model of the breaker.

The model is written from the rules in the README, not from the code: the state a caller meets, the
failure count, whether a call is refused and for how long. It runs in every mode: consecutive failures,
a failure rate over the last N calls, and a failure rate over the last seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.breaker_helpers import Clock, ExchangeDown, make_breaker, succeed
from utils.circuit_breaker import CircuitBreakerError, CircuitState
from utils.circuit_breaker.window import TIME_BUCKETS

THRESHOLD, TIMEOUT, SUCCESSES = 3, 30.0, 2
RATE, MINIMUM_CALLS, WINDOW_SIZE, WINDOW_SECONDS = 0.5, 4, 6, 20.0


@dataclass
class Model:
    """The breaker as its documentation describes it, for calls made one after another."""

    mode: str
    now: float = 0.0
    state: str = "CLOSED"
    failures: int = 0
    last_failure: float = -math.inf
    trial_successes: int = 0
    window: list[tuple[float, bool]] = field(default_factory=list)

    def call(self, outcome: str) -> float | None:
        """Books one call; the seconds until the next trial if it is refused, else None."""
        if self.state == "OPEN":
            if self.now < self.last_failure + TIMEOUT:
                return self.last_failure + TIMEOUT - self.now
            self.state, self.trial_successes = "HALF_OPEN", 0
        if outcome == "uncounted":
            return None
        failed = outcome == "failure"
        self.failures = self.failures + 1 if failed else 0
        if failed:
            self.last_failure = self.now
        if self.state == "HALF_OPEN":
            if failed:
                self.state = "OPEN"
            else:
                self.trial_successes += 1
                if self.trial_successes == SUCCESSES:
                    self.close()
            return None
        self.window.append((self.now, failed))
        if failed and self.trips():  # a success never opens it, whatever the rate
            self.state = "OPEN"
        return None

    def trips(self) -> bool:
        if self.mode == "consecutive":
            return self.failures >= THRESHOLD
        if self.mode == "count":
            recent = self.window[-WINDOW_SIZE:]
        else:
            width = WINDOW_SECONDS / TIME_BUCKETS
            oldest = math.floor(self.now / width) - TIME_BUCKETS
            recent = [(t, failed) for t, failed in self.window if math.floor(t / width) > oldest]
        failed_calls = sum(failed for _, failed in recent)
        return bool(recent) and len(recent) >= MINIMUM_CALLS and failed_calls / len(recent) >= RATE

    def close(self) -> None:
        self.state, self.failures, self.window = "CLOSED", 0, []

    def reset(self) -> None:
        self.close()
        self.last_failure = -math.inf

    def visible_state(self) -> str:
        due = self.state == "OPEN" and self.now >= self.last_failure + TIMEOUT
        return "HALF_OPEN" if due else self.state


class BreakerAgainstModel(RuleBasedStateMachine):
    mode = "consecutive"

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(monotonic_start=0.0, wall_start=1_700_000_000.0)
        self.model = Model(self.mode)
        settings_by_mode: dict[str, dict[str, Any]] = {
            "consecutive": {"failure_threshold": THRESHOLD},
            "count": {
                "failure_rate_threshold": RATE,
                "minimum_calls": MINIMUM_CALLS,
                "window_size": WINDOW_SIZE,
            },
            "time": {
                "failure_rate_threshold": RATE,
                "minimum_calls": MINIMUM_CALLS,
                "window_seconds": WINDOW_SECONDS,
            },
        }
        self.breaker = make_breaker(
            self.clock, recovery_timeout=TIMEOUT, success_threshold=SUCCESSES, **settings_by_mode[self.mode]
        )

    def call(self, outcome: str) -> None:
        def guarded() -> str:
            if outcome == "failure":
                raise ExchangeDown("exchange down")
            if outcome == "uncounted":
                raise KeyError("BTCUSDX")
            return succeed()

        expected_wait = self.model.call(outcome)
        try:
            self.breaker.call(guarded)
        except CircuitBreakerError as refused:
            assert expected_wait is not None, "refused a call the model lets through"
            assert refused.retry_after == pytest.approx(expected_wait)
        except (ExchangeDown, KeyError):
            assert expected_wait is None, "let through a call the model refuses"
        else:
            assert expected_wait is None, "let through a call the model refuses"

    @rule()
    def success(self) -> None:
        self.call("success")

    @rule()
    def counted_failure(self) -> None:
        self.call("failure")

    @rule()
    def uncounted_exception(self) -> None:
        self.call("uncounted")

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 10.0, 29.0, 30.0]))
    def advance_the_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.reset()

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.breaker.state is CircuitState(self.model.visible_state())
        assert self.breaker.failure_count == self.model.failures


class CountWindowAgainstModel(BreakerAgainstModel):
    mode = "count"


class TimeWindowAgainstModel(BreakerAgainstModel):
    mode = "time"


MACHINE_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None)

TestConsecutiveMode = BreakerAgainstModel.TestCase
TestConsecutiveMode.settings = MACHINE_SETTINGS
TestCountWindowMode = CountWindowAgainstModel.TestCase
TestCountWindowMode.settings = MACHINE_SETTINGS
TestTimeWindowMode = TimeWindowAgainstModel.TestCase
TestTimeWindowMode.settings = MACHINE_SETTINGS
