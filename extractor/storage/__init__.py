"""The KlineStore interface and ``open_store(url)``: one contract over SQLite, MySQL and MongoDB.

The backend is chosen by the URL scheme and imported only then, so a SQL run never loads pymongo and
``--help`` loads neither driver. Every call that touches the server goes through the DB circuit breaker;
each backend translates its driver's exceptions into ours inside the guarded call, so the breaker counts
``StorageUnavailable`` (the server is gone) and never ``StorageError`` (the data or the code is wrong).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from extractor.errors import BadInputError, BreakerOpen, RunLocked, StorageUnavailable, format_utc
from extractor.intervals import Interval
from extractor.klines import Kline, validate_symbol
from extractor.storage.telemetry import TelemetryListener, TelemetrySink
from utils.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfigError,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitState,
)

__all__ = ["SUPPORTED_SCHEMES", "KlineStore", "mask_url", "open_store"]

P = ParamSpec("P")
T = TypeVar("T")

SUPPORTED_SCHEMES: tuple[str, ...] = ("sqlite", "mysql+pymysql", "mysql", "mongodb", "mongodb+srv")
PAGE_ROWS = 10_000
"""Rows per server round trip when iterating; each page is one guarded call."""

_LOCK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for every message and log line that shows it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hosts}{slash}{tail}"


def open_store(
    url: str, *, breaker: CircuitBreaker | None = None, sleep: Callable[[float], None] = time.sleep
) -> KlineStore:
    """Connect to the database named by ``url`` and create its tables or collections if missing.

    ``breaker`` defaults to ``CircuitBreaker.from_env("db")`` counting ``StorageUnavailable``; ``sleep``
    waits between tries of a round trip that found the server unavailable.
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in SUPPORTED_SCHEMES:
        raise BadInputError(
            f"unsupported database URL {mask_url(url)!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)} "
            "(e.g. sqlite:///klines.db, mysql+pymysql://user:pass@host:3306/db, mongodb://host:27017/db)"
        )
    if breaker is None:
        try:
            breaker = CircuitBreaker.from_env("db", expected_exception=StorageUnavailable)
        except CircuitBreakerConfigError as exc:
            raise BadInputError(str(exc)) from exc
    if scheme.startswith("mongodb"):
        from extractor.storage.mongo import MongoKlineStore

        return MongoKlineStore.connect(url, breaker, sleep)
    from extractor.storage.sql import SqlKlineStore

    return SqlKlineStore.connect(url, breaker, sleep)


class KlineStore(ABC):
    """Where klines live: idempotent batch upserts, range queries, gap bookkeeping and a run lock.

    Interval arguments are ``Interval``; times are UTC epoch ms; ranges are half-open ``[start, end)``.
    Symbols are validated before any query. A context manager: leaving it calls ``close()``.
    """

    url: str
    breaker: CircuitBreaker
    attempts: int = 3
    """Tries per round trip when the server is unavailable; each try is one breaker call."""
    retry_delays: tuple[float, ...] = (0.25, 1.0)
    """Seconds to wait before the second and later tries."""

    def __init__(
        self, url: str, breaker: CircuitBreaker, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.url = mask_url(url)
        self.breaker = breaker
        self.sleep = sleep
        self._telemetry = TelemetryListener(self._telemetry_sink(), where=self.url)
        self._closed = False

    # -- the public contract --------------------------------------------------------------------------

    def write(self, klines: Sequence[Kline]) -> int:
        """Upsert one batch in one transaction (values are updated on conflict); returns ``len(klines)``."""
        if not klines:
            return 0
        for symbol in {k.symbol for k in klines}:
            validate_symbol(symbol)
        for name in {k.interval for k in klines}:
            Interval.parse(name)
        self._guard(self._write_batch, klines)
        return len(klines)

    def last_open_time(self, symbol: str, interval: Interval) -> int | None:
        """The newest stored open time of the series, or None when nothing is stored."""
        validate_symbol(symbol)
        return self._guard(self._last_open_time_before, symbol, interval, None)

    def first_open_time(self, symbol: str, interval: Interval) -> int | None:
        """The oldest stored open time of the series, or None when nothing is stored."""
        validate_symbol(symbol)
        return self._guard(self._first_open_time_from, symbol, interval, 0)

    def count(self, symbol: str, interval: Interval, start: int, end: int) -> int:
        """How many candles are stored with ``start <= open_time < end``."""
        validate_symbol(symbol)
        return self._guard(self._count, symbol, interval, start, end)

    def missing_ranges(self, symbol: str, interval: Interval, start: int, end: int) -> list[tuple[int, int]]:
        """Holes ``[first missing open time, next stored open time or end)`` in the expected grid.

        ``3d`` has no anchor: its grid follows a stored 3d candle (the newest before ``end``, else the
        oldest after it); with none stored the whole range is missing.
        """
        validate_symbol(symbol)
        grid = self._grid(symbol, interval, start, end)
        if grid is None:
            return [(start, end)] if start < end else []
        stored = self.open_times(symbol, interval, start, end)
        present = next(stored, None)
        holes: list[tuple[int, int]] = []
        hole_start: int | None = None
        for expected in grid:
            while present is not None and present < expected:
                present = next(stored, None)
            if present == expected:
                if hole_start is not None:
                    holes.append((hole_start, expected))
                    hole_start = None
            elif hole_start is None:
                hole_start = expected
        if hole_start is not None:
            holes.append((hole_start, end))
        return holes

    def open_times(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[int]:
        """Stored open times in ``[start, end)``, ascending, fetched a page per round trip."""
        validate_symbol(symbol)
        return self._paged(self._open_times_page, symbol, interval, start, end, lambda t: t)

    def read(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[Kline]:
        """Stored klines in ``[start, end)``, ascending by open time, fetched a page per round trip."""
        validate_symbol(symbol)
        return self._paged(self._read_page, symbol, interval, start, end, lambda k: k.open_time)

    def mark_exchange_gap(self, symbol: str, interval: Interval, start: int, end: int) -> None:
        """Remember that the exchange has no rows in ``[start, end)``; merged with touching ranges."""
        validate_symbol(symbol)
        if start >= end:
            return
        self._guard(self._mark_exchange_gap, symbol, interval, start, end)

    def exchange_gaps(self, symbol: str, interval: Interval, start: int, end: int) -> list[tuple[int, int]]:
        """Remembered empty ranges overlapping ``[start, end)``: clipped to it, merged, ascending."""
        validate_symbol(symbol)
        if start >= end:
            return []
        stored = self._guard(self._exchange_gaps, symbol, interval, start, end)
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted((max(lo, start), min(hi, end)) for lo, hi in stored):
            if lo >= hi:
                continue
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        return merged

    def telemetry(self) -> CircuitBreakerListener:
        """This store's one listener: add it to any breaker whose transitions and calls should be kept."""
        return self._telemetry

    def run_lock(self, name: str = "extract") -> AbstractContextManager[None]:
        """Hold the ``name`` lock of this database; raises RunLocked at once if another run holds it."""
        if not _LOCK_NAME.fullmatch(name):
            raise BadInputError(f"invalid lock name {name!r}: use 1-32 of a-z 0-9 _ -")
        return self._run_lock(name)

    def check_writable(self) -> None:
        """Connect and write a probe in a transaction that is rolled back; raises if that fails."""
        self._guard(self._probe)

    def close(self) -> None:
        """Flush telemetry and release connections; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.breaker.state is not CircuitState.OPEN:  # a server known to be down would only time out
                self._telemetry.flush(final=True)
        finally:
            self._dispose()

    def __enter__(self) -> KlineStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # -- what every backend provides; each runs one round trip and raises only our exceptions ---------

    @abstractmethod
    def _translated(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func``, turning driver exceptions into StorageUnavailable / StorageError / BadInputError."""

    @abstractmethod
    def _write_batch(self, klines: Sequence[Kline]) -> None: ...

    @abstractmethod
    def _last_open_time_before(self, symbol: str, interval: Interval, before: int | None) -> int | None:
        """The newest stored open time below ``before`` (None: no bound)."""

    @abstractmethod
    def _first_open_time_from(self, symbol: str, interval: Interval, start: int) -> int | None: ...

    @abstractmethod
    def _count(self, symbol: str, interval: Interval, start: int, end: int) -> int: ...

    @abstractmethod
    def _open_times_page(
        self, symbol: str, interval: Interval, start: int, end: int, limit: int
    ) -> list[int]:
        """At most ``limit`` stored open times from ``start`` (inclusive) below ``end``, ascending."""

    @abstractmethod
    def _read_page(
        self, symbol: str, interval: Interval, start: int, end: int, limit: int
    ) -> list[Kline]: ...

    @abstractmethod
    def _mark_exchange_gap(self, symbol: str, interval: Interval, start: int, end: int) -> None: ...

    @abstractmethod
    def _exchange_gaps(self, symbol: str, interval: Interval, start: int, end: int) -> list[tuple[int, int]]:
        """Stored gap ranges overlapping ``[start, end)``, unclipped."""

    @abstractmethod
    def _run_lock(self, name: str) -> AbstractContextManager[None]: ...

    @abstractmethod
    def _probe(self) -> None: ...

    @abstractmethod
    def _telemetry_sink(self) -> TelemetrySink:
        """Writes a batch of telemetry rows directly, outside the breaker."""

    @abstractmethod
    def _dispose(self) -> None: ...

    # -- shared machinery -----------------------------------------------------------------------------

    def _guard(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One guarded round trip: translated inside the breaker, an open breaker becomes BreakerOpen."""

        def attempt() -> T:
            return self._translated(func, *args, **kwargs)

        tries = 1
        last_error: str | None = None
        while True:
            try:
                return self.breaker.call(attempt)
            except CircuitBreakerError as exc:
                subject = f"the database at {self.url}"
                raise BreakerOpen(exc.breaker_name, exc.retry_at, subject, last_error) from exc
            except StorageUnavailable as exc:
                # Every round trip is a whole transaction or a read, so running it again is safe.
                last_error = str(exc)
                if tries >= self.attempts:
                    raise
                self.sleep(self.retry_delays[min(tries, len(self.retry_delays)) - 1])
                tries += 1

    def _grid(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[int] | None:
        """The open times expected in ``[start, end)``, or None when a 3d series has no phase yet."""
        phase = self._phase(symbol, interval, end)
        if phase is None and not interval.is_anchored:
            return None
        if phase is None:
            return interval.open_times(start, end)
        step = interval.length_ms
        first = start + (phase - start) % step
        return iter(range(first, end, step))

    def _phase(self, symbol: str, interval: Interval, end: int) -> int | None:
        """A stored 3d open time fixing the grid phase; None for anchored intervals or nothing stored."""
        if interval.is_anchored:
            return None
        known = self._guard(self._last_open_time_before, symbol, interval, end)
        if known is None:
            known = self._guard(self._first_open_time_from, symbol, interval, end)
        return known

    def _paged(
        self,
        fetch: Callable[[str, Interval, int, int, int], list[T]],
        symbol: str,
        interval: Interval,
        start: int,
        end: int,
        open_time: Callable[[T], int],
    ) -> Iterator[T]:
        lo = start
        while lo < end:
            page = self._guard(fetch, symbol, interval, lo, end, PAGE_ROWS)
            yield from page
            if len(page) < PAGE_ROWS:
                return
            lo = open_time(page[-1]) + 1

    def _locked(self, name: str, holder: str) -> RunLocked:
        return RunLocked(
            f"another binance-extractor run holds the {name} lock on {self.url} ({holder}); "
            "try again when it finishes"
        )


def this_holder() -> dict[str, object]:
    """Who is taking a run lock, as lock files and lease documents record it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def describe_holder(recorded: bytes | Mapping[str, Any] | None) -> str:
    """``pid 4242 on host-a, since 2026-01-01T00:00:00Z`` from what ``this_holder()`` recorded."""
    holder: Any = recorded
    if isinstance(recorded, bytes):
        try:
            holder = json.loads(recorded.decode())
        except ValueError:
            holder = None
    if not isinstance(holder, Mapping):
        return "holder unknown"
    text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = holder.get("since")
    if isinstance(since, datetime):
        since = since.timestamp()
    return f"{text}, since {format_utc(since)}" if isinstance(since, int | float) else text
