"""Failure-rate mode: the recent calls of a breaker in this process, and whether their failure rate trips it.

The window is kept per process (sharing every outcome through a file would cost a write per call); what it
decides, OPEN, is shared through the store like any transition. It restarts with each CLOSED episode.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque

from utils.circuit_breaker import config
from utils.circuit_breaker.errors import CircuitBreakerConfigError

TIME_BUCKETS = 20
"""A time-based window counts calls in this many buckets, each window_seconds / TIME_BUCKETS long."""


class FailureRateWindow(ABC):
    """Trips when at least ``minimum_calls`` calls are in the window and ``failure_rate`` of them failed."""

    def __init__(self, failure_rate: float, minimum_calls: int) -> None:
        self.failure_rate = failure_rate
        self.minimum_calls = minimum_calls
        self.episode = -1

    def record(self, failed: bool, now: float) -> bool:
        """Count one outcome; True when the window now trips the breaker."""
        calls, failures = self._add(failed, now)
        return calls >= self.minimum_calls and failures / calls >= self.failure_rate

    def restart(self, episode: int) -> None:
        """Forget every call: a new closed episode starts with an empty window."""
        self.episode = episode
        self._clear()

    @abstractmethod
    def _add(self, failed: bool, now: float) -> tuple[int, int]:
        """Count one outcome; the calls and failures now in the window."""

    @abstractmethod
    def _clear(self) -> None: ...


class CountWindow(FailureRateWindow):
    """The outcomes of the last ``size`` calls."""

    def __init__(self, failure_rate: float, minimum_calls: int, size: int) -> None:
        super().__init__(failure_rate, minimum_calls)
        self._outcomes: deque[bool] = deque(maxlen=size)
        self._failures = 0

    def _add(self, failed: bool, now: float) -> tuple[int, int]:
        outcomes = self._outcomes
        if len(outcomes) == outcomes.maxlen and outcomes[0]:
            self._failures -= 1
        outcomes.append(failed)
        self._failures += failed
        return len(outcomes), self._failures

    def _clear(self) -> None:
        self._outcomes.clear()
        self._failures = 0


class TimeWindow(FailureRateWindow):
    """The outcomes of the calls made in the last ``seconds`` seconds, counted in TIME_BUCKETS buckets."""

    def __init__(self, failure_rate: float, minimum_calls: int, seconds: float) -> None:
        super().__init__(failure_rate, minimum_calls)
        self._width = seconds / TIME_BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket number, calls, failures], oldest first

    def _add(self, failed: bool, now: float) -> tuple[int, int]:
        bucket = math.floor(now / self._width)
        buckets = self._buckets
        while buckets and buckets[0][0] <= bucket - TIME_BUCKETS:
            buckets.popleft()
        if buckets and buckets[-1][0] == bucket:
            buckets[-1][1] += 1
            buckets[-1][2] += failed
        else:
            buckets.append([bucket, 1, int(failed)])
        return sum(b[1] for b in buckets), sum(b[2] for b in buckets)

    def _clear(self) -> None:
        self._buckets.clear()


def make_window(
    failure_rate: float | None, minimum_calls: int, window_size: int, window_seconds: float | None
) -> FailureRateWindow | None:
    """The failure-rate window the settings ask for, or None in the default mode (consecutive failures)."""
    minimum = config.whole("minimum_calls", minimum_calls)
    size = config.whole("window_size", window_size)
    if failure_rate is None:
        return None
    rate = config.fraction("failure_rate_threshold", failure_rate)
    if window_seconds is not None:
        return TimeWindow(rate, minimum, config.seconds("window_seconds", window_seconds, positive=True))
    if minimum > size:
        raise CircuitBreakerConfigError("minimum_calls", minimum, f"is above window_size ({size})")
    return CountWindow(rate, minimum, size)
