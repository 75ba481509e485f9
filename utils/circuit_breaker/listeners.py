"""Who hears what a breaker does: listeners (no-op base class), the metrics every breaker keeps, tracing."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from utils.circuit_breaker.state import CircuitState

if TYPE_CHECKING:
    from utils.circuit_breaker.core import CircuitBreaker

_log = logging.getLogger("utils.circuit_breaker")

RECENT_TRANSITIONS = 100
"""How many transitions ``CircuitBreakerMetrics.recent_transitions`` keeps."""


class CircuitBreakerListener:
    """Hears what a breaker does; subclass and override what you need (every method here is a no-op).

    Listeners are called outside the breaker's lock, after the outcome is booked: a slow listener delays
    its caller, never the other calls.
    """

    def state_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        """This breaker moved from ``old`` to ``new`` (transitions made by other processes are theirs)."""

    def success(self, breaker: CircuitBreaker, duration: float) -> None:
        """A guarded call returned after ``duration`` seconds."""

    def failure(self, breaker: CircuitBreaker, exc: BaseException, duration: float) -> None:
        """A guarded call raised a counting exception (or was too slow) after ``duration`` seconds."""

    def rejection(self, breaker: CircuitBreaker) -> None:
        """A call was refused without being made."""


def tell(event: Callable[..., None], *args: Any) -> None:
    """A listener's bug must not change the outcome of the guarded call."""
    try:
        event(*args)
    except Exception:
        _log.exception("circuit breaker listener %r failed", event)


class CircuitBreakerMetrics:
    """Counts outcomes and transitions; every breaker keeps one as ``breaker.metrics``.

    The counters are plain ints, changed only under ``lock``: the breaker shares its own lock with its
    metrics and increments them while it holds it; the ``record_*`` methods take it themselves.
    """

    def __init__(
        self, wall_clock: Callable[[], float] = time.time, *, lock: threading.Lock | None = None
    ) -> None:
        self.state_transitions = 0
        self.recent_transitions: list[dict[str, Any]] = []
        self.failure_count = 0
        self.success_count = 0
        self.rejection_count = 0
        self._wall_clock = wall_clock
        self._lock = threading.Lock() if lock is None else lock

    def record_state_transition(self, from_state: CircuitState | str, to_state: CircuitState | str) -> None:
        with self._lock:
            self.count_transition(CircuitState.parse(from_state), CircuitState.parse(to_state))

    def record_failure(self) -> None:
        with self._lock:
            self.failure_count += 1

    def record_success(self) -> None:
        with self._lock:
            self.success_count += 1

    def record_rejection(self) -> None:
        with self._lock:
            self.rejection_count += 1

    @property
    def total_requests(self) -> int:
        """Calls that were made: successes and failures (a rejection is not a request)."""
        return self.success_count + self.failure_count

    def get_success_rate(self) -> float:
        """Successes over calls made (rejections are not calls); 0.0 before the first call."""
        total = self.total_requests
        return self.success_count / total if total else 0.0

    def count_transition(self, from_state: CircuitState, to_state: CircuitState) -> None:
        """``record_state_transition`` for a caller that holds the lock already."""
        self.state_transitions += 1
        recent = self.recent_transitions
        moment = self._wall_clock()
        recent.append({"from_state": from_state.value, "to_state": to_state.value, "timestamp": moment})
        if len(recent) > RECENT_TRANSITIONS:
            del recent[0]


class OpenTelemetryListener(CircuitBreakerListener):
    """Puts each guarded call's outcome on the current OpenTelemetry span, when one is recording.

    ``current_span`` defaults to ``opentelemetry.trace.get_current_span`` (ImportError if it is missing).
    """

    def __init__(self, current_span: Callable[[], Any] | None = None) -> None:
        if current_span is None:
            current_span = importlib.import_module("opentelemetry.trace").get_current_span
        self._current_span: Callable[[], Any] = current_span

    def success(self, breaker: CircuitBreaker, duration: float) -> None:
        self._mark(breaker, None)

    def failure(self, breaker: CircuitBreaker, exc: BaseException, duration: float) -> None:
        self._mark(breaker, f"{type(exc).__name__}: {exc}")

    def rejection(self, breaker: CircuitBreaker) -> None:
        self._mark(breaker, "CircuitBreakerError")

    def _mark(self, breaker: CircuitBreaker, error: str | None) -> None:
        span = self._current_span()
        if not span.is_recording():
            return
        span.set_attribute("circuit_breaker.name", breaker.name)
        span.set_attribute("circuit_breaker.state", breaker.state.value)
        span.set_attribute("circuit_breaker.failure_count", breaker.failure_count)
        span.set_attribute("circuit_breaker.success", error is None)
        if error is not None:
            span.set_attribute("circuit_breaker.error", error)
