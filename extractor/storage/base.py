"""The KlineStore interface: one contract over SQLite, MySQL, PostgreSQL and MongoDB.

Every call that touches the server goes through the DB circuit breaker, one breaker call per try;
each backend translates its driver's exceptions into ours inside the guarded call, so the breaker
counts ``StorageUnavailable`` (the server is gone) and never ``StorageError`` (the data or the code is
wrong). A lost server is tried again until the breaker opens, so an outage ends in ``BreakerOpen``.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from extractor.errors import BadInputError, BreakerOpen, RunLocked, StorageUnavailable
from extractor.intervals import Interval
from extractor.klines import Kline, KlineBlock, Series, validate_symbol
from extractor.markets import Market
from extractor.secrets import mask_url
from extractor.storage.records import ExchangeGap, SeriesLocks, SeriesSummary
from extractor.storage.telemetry import TelemetryListener, TelemetrySink
from utils.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState

P = ParamSpec("P")
T = TypeVar("T")

PAGE_ROWS = 10_000
"""Rows per server round trip when iterating; each page is one guarded call."""
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Seconds before each further try of a round trip that found the server unavailable."""
MAX_TRIES_WITHOUT_BREAKER = 5
"""With the breaker disabled nothing else stops the tries."""

_LOCK_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")


class KlineStore(ABC):
    """Where klines live: idempotent batch upserts, range queries, gap bookkeeping and run locks.

    Times are UTC epoch ms; ranges are half-open ``[start, end)``. Symbols are validated before any
    query. A context manager: leaving it calls ``close()``.
    """

    url: str
    breaker: CircuitBreaker

    def __init__(
        self,
        url: str,
        breaker: CircuitBreaker,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = mask_url(url)
        self.breaker = breaker
        self.sleep = sleep
        self.wall_clock = wall_clock
        self._telemetry = TelemetryListener(self._telemetry_sink(), where=self.url)
        self._opened = False
        self._closed = False

    # -- the public contract --------------------------------------------------------------------------

    def write(self, klines: Sequence[Kline]) -> int:
        """Upsert one batch of one series in one transaction (values updated on conflict)."""
        if not klines:
            return 0
        self._check_batch(klines)
        self._guard(self._write_batches, [klines])
        return len(klines)

    def write_all(self, batches: Iterable[Sequence[Kline]]) -> int:
        """Upsert every batch (each of one series) in one transaction: all or, if the iterator raises, none.

        An iterator runs inside the transaction (an archive file is parsed while it is written), so
        that round trip is not retried: a lost server raises at once. A list is tried again like a write.
        """
        if isinstance(batches, list | tuple):
            for batch in batches:
                if batch:
                    self._check_batch(batch)
            self._guard(self._write_batches, [b for b in batches if b])
            return sum(len(b) for b in batches)
        pending = (batch for batch in batches if batch)
        first = next(pending, None)
        if first is None:
            return 0
        self._check_batch(first)  # before the breaker is asked, as for write()
        written = 0

        def checked() -> Iterator[Sequence[Kline]]:
            nonlocal written
            for batch in itertools.chain([first], pending):
                self._check_batch(batch)
                written += len(batch)
                yield batch

        self._guard(self._write_batches, checked(), tries=1)
        return written

    def last_open_time(self, series: Series, before: int | None = None) -> int | None:
        """The newest stored open time of the series (below ``before`` if given), or None."""
        self._check_series(series)
        return self._guard(self._last_open_time_before, series, before)

    def first_open_time(self, series: Series, start: int = 0) -> int | None:
        """The oldest stored open time of the series at or after ``start``, or None."""
        self._check_series(series)
        return self._guard(self._first_open_time_from, series, start)

    def count(self, series: Series, start: int, end: int) -> int:
        """How many candles are stored with ``start <= open_time < end``."""
        self._check_series(series)
        return self._guard(self._count, series, start, end)

    def missing_ranges(self, series: Series, start: int, end: int) -> list[tuple[int, int]]:
        """Holes ``[first missing open time, next stored open time or end)`` in the expected grid.

        ``3d`` has no anchor: its grid follows a stored 3d candle (the newest before ``end``, else the
        oldest after it); with none stored the whole range is missing.
        """
        self._check_series(series)
        grid = self._grid(series, start, end)
        if grid is None:
            return [(start, end)] if start < end else []
        stored = self.open_times(series, start, end)
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

    def open_times(self, series: Series, start: int, end: int) -> Iterator[int]:
        """Stored open times in ``[start, end)``, ascending, fetched a page per round trip."""
        self._check_series(series)
        return self._paged(self._open_times_page, series, start, end, lambda t: t)

    def read(self, series: Series, start: int, end: int) -> Iterator[Kline]:
        """Stored klines in ``[start, end)``, ascending by open time, fetched a page per round trip."""
        self._check_series(series)
        return self._paged(self._read_page, series, start, end, lambda k: k.open_time)

    def record_exchange_gap(
        self, series: Series, start: int, end: int, *, confirmations: int, confirmed_at: int
    ) -> None:
        """Remember that the exchange answered ``[start, end)`` with no rows ``confirmations`` times.

        Touching and overlapping gaps merge; the merged one keeps the fewest confirmations among them.
        """
        self._check_series(series)
        if start < end:
            self._guard(
                self._record_exchange_gap, series, ExchangeGap(start, end, confirmations, confirmed_at)
            )

    def exchange_gaps(self, series: Series, start: int, end: int) -> list[ExchangeGap]:
        """Remembered empty ranges overlapping ``[start, end)``: clipped to it, merged, ascending."""
        self._check_series(series)
        if start >= end:
            return []
        stored = self._guard(self._exchange_gaps, series, start, end)
        merged: list[ExchangeGap] = []
        for gap in sorted(stored, key=lambda g: g.start):
            lo, hi = max(gap.start, start), min(gap.end, end)
            if lo >= hi:
                continue
            if merged and lo <= merged[-1].end:
                last = merged[-1]
                merged[-1] = ExchangeGap(
                    last.start,
                    max(hi, last.end),
                    min(last.confirmations, gap.confirmations),
                    _latest(last.confirmed_at, gap.confirmed_at),
                )
            else:
                merged.append(ExchangeGap(lo, hi, gap.confirmations, gap.confirmed_at))
        return merged

    def forget_exchange_gaps(self, series: Series, start: int, end: int) -> None:
        """Drop what is remembered of ``[start, end)``; parts of gaps outside it are kept."""
        self._check_series(series)
        if start < end:
            self._guard(self._forget_exchange_gaps, series, start, end)

    def series(self, market: Market | None = None) -> list[SeriesSummary]:
        """Every stored series (of ``market``) with its first and last candle, count and last write."""
        return sorted(
            self._guard(self._series_summaries, None if market is None else market.name),
            key=lambda s: (s.market, s.symbol, s.interval),
        )

    def telemetry(self) -> TelemetryListener:
        """This store's one listener: add it to any breaker whose transitions and calls should be kept."""
        return self._telemetry

    def run_lock(self, name: str) -> AbstractContextManager[None]:
        """Hold the ``name`` lock of this database; raises RunLocked at once if another run holds it."""
        if not _LOCK_NAME.fullmatch(name):
            raise BadInputError(f"invalid lock name {name!r}: use 1-64 of a-z 0-9 _ . : -")
        return self._run_lock(name)

    def open(self) -> None:
        """Create the tables or collections if missing, migrating those of an older release; then write
        the telemetry an earlier run spooled while the database was down."""
        self._guard(self._create_schema)
        self._opened = True
        self._telemetry.flush()

    @contextlib.contextmanager
    def lock_series(self, series: Sequence[Series]) -> Iterator[SeriesLocks]:
        """Hold the lock of each series no other run holds; says which are held and which are busy."""
        for one in series:
            self._check_series(one)
        locks = self._lock_series(list(series))
        held = self._guard(locks.__enter__, tries=1)
        try:
            yield held
        finally:
            locks.__exit__(None, None, None)

    def exists(self) -> bool:
        """False when the database is a file not created yet (read-only commands then create nothing)."""
        return True

    def check_writable(self) -> str:
        """Connect and write a probe in a transaction that is rolled back (creating nothing); raises if
        that fails, else says what was checked."""
        return self._guard(self._probe)

    def close(self) -> None:
        """Flush telemetry and release connections; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._opened:
                return
            if self.breaker.state is CircuitState.OPEN:  # a server known to be down would only time out
                self._telemetry.spill()
            else:
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
    def _create_schema(self) -> None:
        """Create what is missing; bring a database of an older release up to date, once."""

    @abstractmethod
    def _write_batches(self, batches: Iterable[Sequence[Kline]]) -> None:
        """Upsert every batch in one transaction, recording the series' last write time."""

    @abstractmethod
    def _last_open_time_before(self, series: Series, before: int | None) -> int | None:
        """The newest stored open time below ``before`` (None: no bound)."""

    @abstractmethod
    def _first_open_time_from(self, series: Series, start: int) -> int | None: ...

    @abstractmethod
    def _count(self, series: Series, start: int, end: int) -> int: ...

    @abstractmethod
    def _open_times_page(self, series: Series, start: int, end: int, limit: int) -> list[int]:
        """At most ``limit`` stored open times from ``start`` (inclusive) below ``end``, ascending."""

    @abstractmethod
    def _read_page(self, series: Series, start: int, end: int, limit: int) -> list[Kline]: ...

    @abstractmethod
    def _record_exchange_gap(self, series: Series, gap: ExchangeGap) -> None: ...

    @abstractmethod
    def _exchange_gaps(self, series: Series, start: int, end: int) -> list[ExchangeGap]:
        """Stored gaps overlapping ``[start, end)``, unclipped."""

    @abstractmethod
    def _forget_exchange_gaps(self, series: Series, start: int, end: int) -> None: ...

    @abstractmethod
    def _series_summaries(self, market: str | None) -> list[SeriesSummary]: ...

    @abstractmethod
    def _run_lock(self, name: str) -> AbstractContextManager[None]: ...

    @abstractmethod
    def _lock_series(self, series: list[Series]) -> AbstractContextManager[SeriesLocks]: ...

    @abstractmethod
    def _probe(self) -> str: ...

    @abstractmethod
    def _telemetry_sink(self) -> TelemetrySink:
        """Writes a batch of telemetry rows directly, outside the breaker."""

    @abstractmethod
    def _dispose(self) -> None: ...

    # -- shared machinery -----------------------------------------------------------------------------

    def _guard(self, func: Callable[..., T], *args: Any, tries: int | None = None) -> T:
        """One guarded round trip: translated inside the breaker, tried again while the server is lost.

        Every round trip is a whole transaction or a read, so running it again is safe. Each try is one
        breaker call, so an outage opens the breaker within the run and ``BreakerOpen`` ends it; a
        breaker that is disabled (or counts no outage) would never open, so then at most 5 tries.
        """

        def attempt() -> T:
            return self._translated(func, *args)

        if tries is None and not self._breaker_ends_outages:
            tries = MAX_TRIES_WITHOUT_BREAKER
        made = 0
        last_error: str | None = None
        while True:
            made += 1
            try:
                return self.breaker.call(attempt)
            except CircuitBreakerError as exc:
                subject = f"the database at {self.url}"
                raise BreakerOpen("db", exc.retry_at, subject, last_error or exc.reason) from exc
            except StorageUnavailable as exc:
                last_error = str(exc)
                if tries is not None and made >= tries:
                    raise
                if self.breaker.state is not CircuitState.OPEN:  # else the next call is refused at once
                    self.sleep(RETRY_DELAYS[min(made, len(RETRY_DELAYS)) - 1])

    @property
    def _breaker_ends_outages(self) -> bool:
        """True when the breaker counts a lost server and so, opening, ends the tries of a round trip."""
        return self.breaker.enabled and issubclass(StorageUnavailable, self.breaker.expected_exception)

    def _check_series(self, series: Series) -> None:
        validate_symbol(series.symbol)

    def _check_batch(self, klines: Sequence[Kline]) -> None:
        first = klines[0]
        validate_symbol(first.symbol)
        Interval.parse(first.interval)
        Market.parse(first.market)
        key = first[:3]
        if not isinstance(klines, KlineBlock) and any(k[:3] != key for k in klines):
            raise BadInputError("a write batch must hold the candles of one series")

    def _grid(self, series: Series, start: int, end: int) -> Iterator[int] | None:
        """The open times expected in ``[start, end)``, or None when a 3d series has no phase yet."""
        interval = series.interval
        phase = self._phase(series, end)
        if phase is None and not interval.is_anchored:
            return None
        if phase is None:
            return interval.open_times(start, end)
        step = interval.length_ms
        first = start + (phase - start) % step
        return iter(range(first, end, step))

    def _phase(self, series: Series, end: int) -> int | None:
        """A stored 3d open time fixing the grid phase; None for anchored intervals or nothing stored."""
        if series.interval.is_anchored:
            return None
        known = self._guard(self._last_open_time_before, series, end)
        if known is None:
            known = self._guard(self._first_open_time_from, series, end)
        return known

    def _paged(
        self,
        fetch: Callable[[Series, int, int, int], list[T]],
        series: Series,
        start: int,
        end: int,
        open_time: Callable[[T], int],
    ) -> Iterator[T]:
        lo = start
        while lo < end:
            page = self._guard(fetch, series, lo, end, PAGE_ROWS)
            yield from page
            if len(page) < PAGE_ROWS:
                return
            lo = open_time(page[-1]) + 1

    def _now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    def _locked(self, name: str, holder: str) -> RunLocked:
        return RunLocked(
            f"another binance-extractor run holds the {name} lock on {self.url} ({holder}); "
            "try again when it finishes"
        )


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
