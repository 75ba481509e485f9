"""Breaker telemetry: transitions and guarded calls, buffered and written to the database in batches.

Rows go to ``circuit_breaker_events`` and ``circuit_breaker_operations`` (design §7). Writing them must
never break the call being watched: a failed flush is logged and its rows are kept for the next flush,
which waits for another full batch or a transition. With a ``spool`` file they are kept there, so the
story of an outage survives the run that saw it (the database is down when the db breaker opens) and
is written by the next flush or open that reaches the database; without one they stay in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from utils.circuit_breaker import CircuitBreaker, CircuitBreakerListener, CircuitState

log = logging.getLogger("extractor.storage")

FLUSH_EVERY = 500
MAX_KEPT_EVENTS = 1_000
KEPT_BATCHES = 10
ERROR_LENGTH = 500
MAX_SPOOL_BYTES = 16 * 1024 * 1024
"""About 60,000 rows: past this a long outage's newest rows are dropped rather than fill the disk."""


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
        spool: Path | None = None,
    ) -> None:
        self._sink = sink
        self._where = where
        self.spool = spool
        """A JSON-lines file for rows the database could not take; shared by runs on one database."""
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
        """Write what is buffered and spooled; never raises. ``final``: no retry follows in this process,
        so rows that fail are spooled, or dropped when there is no spool."""
        with self._flush_lock:
            with self._buffer_lock:
                events, self._events = self._events, []
                operations, self._operations = self._operations, []
            spooled_events, spooled_operations = self._take_spool()
            if not (events or operations or spooled_events or spooled_operations):
                return
            try:
                self._sink(spooled_events + events, spooled_operations + operations)
            except Exception as exc:
                self._spool_rows(spooled_events, spooled_operations)
                if self.spool is not None:
                    fate = self._spool_rows(events, operations)
                else:
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

    def spill(self) -> None:
        """Spool what is buffered without trying the database (known to be down); never raises."""
        with self._flush_lock, self._buffer_lock:
            events, self._events = self._events, []
            operations, self._operations = self._operations, []
        if events or operations:
            fate = self._spool_rows(events, operations) if self.spool is not None else "dropped"
            log.warning(
                "%d circuit-breaker rows not recorded in %s while it is down, %s",
                len(events) + len(operations),
                self._where,
                fate,
            )

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

    # -- the spool ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _spool_locked(self) -> Iterator[Path]:
        """The spool, under a lock file that every process writing to it takes."""
        assert self.spool is not None
        with open(self.spool.with_name(self.spool.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self.spool

    def _spool_rows(self, events: list[BreakerEvent], operations: list[BreakerOperation]) -> str:
        """Append rows to the spool; says what became of them."""
        if not events and not operations:
            return "nothing to spool"
        lines = [_line("event", e) for e in events] + [_line("operation", o) for o in operations]
        try:
            with self._spool_locked() as spool:
                size = spool.stat().st_size if spool.exists() else 0
                if size > MAX_SPOOL_BYTES:
                    return f"dropped (the spool {spool} is full)"
                with open(spool, "a", encoding="utf-8") as out:
                    out.write("".join(lines))
        except OSError as exc:
            return f"dropped (cannot write the spool: {exc.strerror or exc})"
        return f"spooled to {self.spool} for the next run that reaches the database"

    def _take_spool(self) -> tuple[list[BreakerEvent], list[BreakerOperation]]:
        """Empty the spool and return its rows (put back by the caller if they cannot be written)."""
        events: list[BreakerEvent] = []
        operations: list[BreakerOperation] = []
        if self.spool is None or not self.spool.exists():
            return events, operations
        try:
            with self._spool_locked() as spool:
                text = spool.read_text(encoding="utf-8")
                os.truncate(spool, 0)
        except OSError as exc:
            log.warning("cannot read the telemetry spool %s: %s", self.spool, exc.strerror or exc)
            return events, operations
        for line in text.splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):  # a line cut short by a crash
                fields = json.loads(line)
                kind = fields.pop("kind")
                fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
                if kind == "event":
                    events.append(BreakerEvent(**fields))
                else:
                    operations.append(BreakerOperation(**fields))
        return events, operations


def _line(kind: str, row: BreakerEvent | BreakerOperation) -> str:
    fields: dict[str, Any] = dataclasses.asdict(row)
    fields["timestamp"] = row.timestamp.isoformat()
    return json.dumps({"kind": kind, **fields}) + "\n"
