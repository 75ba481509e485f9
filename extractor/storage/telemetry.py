"""Breaker telemetry: transitions and guarded calls, buffered and written to the database in batches.

Rows go to ``circuit_breaker_events`` and ``circuit_breaker_operations`` (design §7). Writing them must
never break the call being watched: a failed flush is logged and its rows are kept (bounded) for the
next flush, which waits for another full batch or a transition, so the story of an outage survives it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from utils.circuit_breaker import CircuitBreaker, CircuitBreakerListener, CircuitState

log = logging.getLogger("extractor.storage")

FLUSH_EVERY = 500
MAX_KEPT_EVENTS = 1_000
KEPT_BATCHES = 10
ERROR_LENGTH = 500


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """One state transition; ``timestamp`` is naive UTC, as the DATETIME column holds it."""

    timestamp: datetime
    breaker: str
    from_state: str
    state: str
    failure_count: int
    failure_threshold: int


@dataclass(frozen=True, slots=True)
class BreakerOperation:
    """One guarded call: an API request or a database round trip."""

    timestamp: datetime
    breaker: str
    success: bool
    duration_ms: float
    error: str | None


TelemetrySink = Callable[[list[BreakerEvent], list[BreakerOperation]], None]


class TelemetryListener(CircuitBreakerListener):
    """Buffers what breakers report and hands it to ``sink`` every ``flush_every`` rows and on transitions."""

    def __init__(
        self,
        sink: TelemetrySink,
        *,
        where: str,
        flush_every: int = FLUSH_EVERY,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._where = where
        self._flush_every = flush_every
        self._wall_clock = wall_clock
        self._events: list[BreakerEvent] = []
        self._operations: list[BreakerOperation] = []
        self._max_kept = KEPT_BATCHES * flush_every
        self._due = flush_every
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), UTC).replace(tzinfo=None)

    def state_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        event = BreakerEvent(
            self._now(),
            breaker.name,
            str(old.value),
            str(new.value),
            breaker.failure_count,
            breaker.failure_threshold,
        )
        with self._buffer_lock:
            self._events.append(event)
        self.flush()

    def success(self, breaker: CircuitBreaker, duration: float) -> None:
        self._operation(BreakerOperation(self._now(), breaker.name, True, duration * 1000.0, None))

    def failure(self, breaker: CircuitBreaker, exc: BaseException, duration: float) -> None:
        error = f"{type(exc).__name__}: {exc}"[:ERROR_LENGTH]
        self._operation(BreakerOperation(self._now(), breaker.name, False, duration * 1000.0, error))

    def _operation(self, operation: BreakerOperation) -> None:
        with self._buffer_lock:
            self._operations.append(operation)
            due = len(self._operations) >= self._due
        if due:
            self.flush()

    @property
    def pending(self) -> int:
        """Rows buffered and not yet written."""
        with self._buffer_lock:
            return len(self._events) + len(self._operations)

    def flush(self, *, final: bool = False) -> None:
        """Write what is buffered; never raises. ``final``: no retry will follow, so a failure drops rows."""
        with self._flush_lock:
            with self._buffer_lock:
                events, self._events = self._events, []
                operations, self._operations = self._operations, []
            if not events and not operations:
                return
            try:
                self._sink(events, operations)
            except Exception as exc:
                fate = "dropped" if final else self._keep(events, operations)
                log.warning(
                    "could not record %d circuit-breaker rows in %s, %s: %s",
                    len(events) + len(operations),
                    self._where,
                    fate,
                    exc,
                )
            else:
                with self._buffer_lock:
                    self._due = self._flush_every

    def _keep(self, events: list[BreakerEvent], operations: list[BreakerOperation]) -> str:
        """Put unwritten rows back, oldest first, within bounds; the next try waits for a new batch."""
        with self._buffer_lock:
            self._events[:0] = events
            self._operations[:0] = operations
            dropped = max(0, len(self._events) - MAX_KEPT_EVENTS)
            del self._events[:dropped]
            excess = max(0, len(self._operations) - self._max_kept)
            del self._operations[:excess]
            self._due = len(self._operations) + self._flush_every
        dropped += excess
        return f"kept for the next flush ({dropped} oldest dropped)" if dropped else "kept for the next flush"
