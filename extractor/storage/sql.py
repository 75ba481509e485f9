"""The SQL backends' shared half: the queries every dialect runs on the tables of ``tables.py``.

Each dialect (``sqlite.py``, ``mysql.py``, ``postgres.py``) adds its engine, its upsert, its bulk path,
its run lock, its schema lock and the translation of its driver's errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Table, and_, delete, func, insert, inspect, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from extractor.errors import ExtractorError, StorageError, StorageUnavailable
from extractor.klines import Kline, Series
from extractor.secrets import MASK
from extractor.storage.base import KlineStore
from extractor.storage.records import ExchangeGap, SeriesSummary
from extractor.storage.tables import (
    UNMARKETED,
    events_table,
    exchange_gaps_table,
    kline_series_table,
    klines_table,
    metadata,
    operations_table,
)
from extractor.storage.telemetry import BreakerEvent, BreakerOperation, TelemetrySink
from utils.circuit_breaker import CircuitBreaker

P = ParamSpec("P")
T = TypeVar("T")

_TRANSACTION_ATTEMPTS = 3

_k = klines_table.c
_g = exchange_gaps_table.c
_s = kline_series_table.c


class SqlKlineStore(KlineStore):
    """The queries every SQL dialect shares; a dialect's subclass adds what differs."""

    def __init__(self, url: str, breaker: CircuitBreaker, engine: Engine, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets
        super().__init__(url, breaker)
        self._engine = engine
        self._writer = engine.execution_options(sql_write=True)

    def _create_schema(self) -> None:
        """Migrate and create in one transaction under the dialect's schema lock, so runs that start
        together on a new (or old) database never both create or both migrate a table."""
        with self._writer.begin() as conn, self._schema_lock(conn):
            inspector = inspect(conn)
            present = set(inspector.get_table_names())
            stale = [
                name
                for name in UNMARKETED
                if name in present and "market" not in {c["name"] for c in inspector.get_columns(name)}
            ]
            if stale:
                self._migrate_unmarketed(conn, stale)
            metadata.create_all(conn)
            self._complete_schema(conn)

    def _schema_lock(self, conn: Connection) -> AbstractContextManager[None]:
        """Held while the schema is checked and changed; SQLite's write transaction is lock enough."""
        return contextlib.nullcontext()

    def _complete_schema(self, conn: Connection) -> None:
        """What a dialect adds once the tables exist."""

    @abstractmethod
    def _migrate_unmarketed(self, conn: Connection, stale: list[str]) -> None:
        """Give the rows of the ``stale`` tables ``market = 'spot'`` and rebuild their keys, in one go.

        Each table is judged on its own, so a migration cut short between two tables is finished later.
        """

    # -- one round trip each --------------------------------------------------------------------------

    def _translated(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except sa_exc.DBAPIError as exc:
            raise self._translate(exc, self._reason(exc)) from exc
        except sa_exc.DisconnectionError as exc:
            raise StorageUnavailable(
                f"lost the connection to the database at {self.url}: {self._masked(str(exc))}"
            ) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise StorageError(
                f"the database at {self.url} refused the operation: {self._masked(str(exc))}"
            ) from exc

    @abstractmethod
    def _translate(self, exc: sa_exc.DBAPIError, reason: str) -> ExtractorError:
        """This dialect's words for a driver error: unavailable, refused input, or refused data."""

    def _reason(self, exc: sa_exc.DBAPIError) -> str:
        """The driver's words, masked, on one line: libpq adds an indented hint line after the error."""
        text = str(exc.orig) if exc.orig is not None else str(exc)
        return " ".join(self._masked(text).split())[:300]

    def _masked(self, text: str) -> str:
        """``text`` with the URL's password masked: drivers may quote the connection string."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def _write_batches(self, batches: Iterable[Sequence[Kline]]) -> None:
        def work(conn: Connection) -> None:
            last: dict[tuple[str, str, str], Kline] = {}

            def noted() -> Iterator[Sequence[Kline]]:
                for batch in batches:
                    last[batch[0][:3]] = batch[-1]
                    yield batch

            self._upsert_batches(conn, noted())
            for kline in last.values():
                self._touch_series(conn, kline)

        # An iterator is consumed by the first try: only a list of batches may be written again.
        self._transaction(work, rerunnable=isinstance(batches, list | tuple))

    def _upsert_batches(self, conn: Connection, batches: Iterable[Sequence[Kline]]) -> Kline | None:
        """Upsert the batches in turn inside the open transaction; returns the last kline written."""
        last: Kline | None = None
        for batch in batches:
            self._upsert(conn, batch)
            last = batch[-1]
        return last

    @abstractmethod
    def _upsert(self, conn: Connection, klines: Sequence[Kline]) -> None:
        """Insert or update one batch inside the open transaction."""

    @abstractmethod
    def _touch_series(self, conn: Connection, kline: Kline) -> None:
        """Record now as the series' last write, inside the open transaction."""

    def _series_row(self, kline: Kline) -> dict[str, Any]:
        return {
            "market": kline.market,
            "symbol": kline.symbol,
            "interval": kline.interval,
            "last_write_time": self._now_ms(),
        }

    def _transaction(self, work: Callable[[Connection], Any], *, rerunnable: bool = True) -> None:
        """Run ``work`` in one write transaction; one that lost a deadlock runs again when ``rerunnable``."""
        attempts = _TRANSACTION_ATTEMPTS if rerunnable else 1
        for attempt in range(1, attempts + 1):
            try:
                with self._writer.begin() as conn:
                    work(conn)
                return
            except sa_exc.DBAPIError as exc:
                if attempt == attempts or not self._lost_a_conflict(exc):
                    raise

    def _lost_a_conflict(self, exc: sa_exc.DBAPIError) -> bool:
        """True when the server rolled the transaction back to break a deadlock or a lock wait."""
        return False

    def _series(self, series: Series, table: Table = klines_table) -> ColumnElement[bool]:
        c = table.c
        return and_(
            c.market == series.market.name, c.symbol == series.symbol, c.interval == series.interval.name
        )

    def _scalar(self, query: Any) -> Any:
        with self._engine.connect() as conn:
            return conn.execute(query).scalar()

    def _last_open_time_before(self, series: Series, before: int | None) -> int | None:
        where = self._series(series)
        if before is not None:
            where = and_(where, _k.open_time < before)
        return _int(self._scalar(select(func.max(_k.open_time)).where(where)))

    def _first_open_time_from(self, series: Series, start: int) -> int | None:
        where = and_(self._series(series), _k.open_time >= start)
        return _int(self._scalar(select(func.min(_k.open_time)).where(where)))

    def _count(self, series: Series, start: int, end: int) -> int:
        where = and_(self._series(series), _k.open_time >= start, _k.open_time < end)
        return int(self._scalar(select(func.count()).select_from(klines_table).where(where)) or 0)

    def _open_times_page(self, series: Series, start: int, end: int, limit: int) -> list[int]:
        where = and_(self._series(series), _k.open_time >= start, _k.open_time < end)
        query = select(_k.open_time).where(where).order_by(_k.open_time).limit(limit)
        with self._engine.connect() as conn:
            return [int(t) for t in conn.execute(query).scalars()]

    def _read_page(self, series: Series, start: int, end: int, limit: int) -> list[Kline]:
        where = and_(self._series(series), _k.open_time >= start, _k.open_time < end)
        query = select(klines_table).where(where).order_by(_k.open_time).limit(limit)
        with self._engine.connect() as conn:
            return [Kline._make(row) for row in conn.execute(query)]

    def missing_ranges(self, series: Series, start: int, end: int) -> list[tuple[int, int]]:
        """Holes found by the database (a count, then LAG if short), so 1s candles never reach Python."""
        interval = series.interval
        if interval.is_calendar:
            return super().missing_ranges(series, start, end)
        self._check_series(series)
        if start >= end:
            return []
        step = interval.length_ms
        phase = interval.ceil(start) if interval.is_anchored else self._phase(series, end)
        if phase is None:
            return [(start, end)]
        first = start + (phase - start) % step
        if first >= end:
            return []
        return self._guard(self._holes_in_grid, series, first, end, step)

    def _holes_in_grid(self, series: Series, first: int, end: int, step: int) -> list[tuple[int, int]]:
        on_grid = and_(
            self._series(series),
            _k.open_time >= first,
            _k.open_time < end,
            (_k.open_time - first) % step == 0,
        )
        expected = (end - 1 - first) // step + 1
        gap = _k.open_time - func.lag(_k.open_time).over(order_by=_k.open_time)
        stepped = select(_k.open_time, gap.label("gap")).where(on_grid).subquery("stepped")
        after_gaps = (
            select(stepped.c.open_time, stepped.c.gap)
            .where(stepped.c.gap.is_(None) | (stepped.c.gap > step))
            .order_by(stepped.c.open_time)
        )
        with self._engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(klines_table).where(on_grid)).scalar()
            if stored == expected:
                return []
            if not stored:
                return [(first, end)]
            last = int(conn.execute(select(func.max(_k.open_time)).where(on_grid)).scalar_one())
            edges = conn.execute(after_gaps).all()
        holes: list[tuple[int, int]] = []
        for open_time, since_previous in edges:
            if since_previous is None:
                if open_time > first:
                    holes.append((first, int(open_time)))
            else:
                holes.append((int(open_time - since_previous) + step, int(open_time)))
        if last + step < end:
            holes.append((last + step, end))
        return holes

    def _record_exchange_gap(self, series: Series, gap: ExchangeGap) -> None:
        touching = and_(
            self._series(series, exchange_gaps_table), _g.start_time <= gap.end, _g.end_time >= gap.start
        )

        def merge(conn: Connection) -> None:
            known = [
                _gap(row)
                for row in conn.execute(
                    select(_g.start_time, _g.end_time, _g.confirmations, _g.confirmed_at)
                    .where(touching)
                    .with_for_update()
                )
            ]
            conn.execute(delete(exchange_gaps_table).where(touching))
            conn.execute(
                insert(exchange_gaps_table).values(
                    market=series.market.name,
                    symbol=series.symbol,
                    interval=series.interval.name,
                    start_time=min([gap.start, *(k.start for k in known)]),
                    end_time=max([gap.end, *(k.end for k in known)]),
                    confirmations=min([gap.confirmations, *(k.confirmations for k in known)]),
                    confirmed_at=gap.confirmed_at,
                )
            )

        self._transaction(merge)

    def _exchange_gaps(self, series: Series, start: int, end: int) -> list[ExchangeGap]:
        where = and_(self._series(series, exchange_gaps_table), _g.start_time < end, _g.end_time > start)
        query = select(_g.start_time, _g.end_time, _g.confirmations, _g.confirmed_at).where(where)
        with self._engine.connect() as conn:
            return [_gap(row) for row in conn.execute(query.order_by(_g.start_time))]

    def _forget_exchange_gaps(self, series: Series, start: int, end: int) -> None:
        overlapping = and_(
            self._series(series, exchange_gaps_table), _g.start_time < end, _g.end_time > start
        )

        def trim(conn: Connection) -> None:
            known = [
                _gap(row)
                for row in conn.execute(
                    select(_g.start_time, _g.end_time, _g.confirmations, _g.confirmed_at)
                    .where(overlapping)
                    .with_for_update()
                )
            ]
            conn.execute(delete(exchange_gaps_table).where(overlapping))
            kept = [(k.start, start, k) for k in known if k.start < start]
            kept += [(end, k.end, k) for k in known if k.end > end]
            for lo, hi, k in kept:
                conn.execute(
                    insert(exchange_gaps_table).values(
                        market=series.market.name,
                        symbol=series.symbol,
                        interval=series.interval.name,
                        start_time=lo,
                        end_time=hi,
                        confirmations=k.confirmations,
                        confirmed_at=k.confirmed_at,
                    )
                )

        self._transaction(trim)

    def _series_summaries(self, market: str | None) -> list[SeriesSummary]:
        key = (_k.market, _k.symbol, _k.interval)
        query = select(*key, func.min(_k.open_time), func.max(_k.open_time), func.count()).group_by(*key)
        writes = select(_s.market, _s.symbol, _s.interval, _s.last_write_time)
        if market is not None:
            query = query.where(_k.market == market)
            writes = writes.where(_s.market == market)
        with self._engine.connect() as conn:
            last_writes = {(m, s, i): int(t) for m, s, i, t in conn.execute(writes)}
            return [
                SeriesSummary(m, s, i, int(lo), int(hi), int(n), last_writes.get((m, s, i)))
                for m, s, i, lo, hi, n in conn.execute(query)
            ]

    def _telemetry_sink(self) -> TelemetrySink:
        def write(events: list[BreakerEvent], operations: list[BreakerOperation]) -> None:
            def insert_rows(conn: Connection) -> None:
                if events:
                    conn.execute(insert(events_table), [dataclasses.asdict(e) for e in events])
                if operations:
                    conn.execute(insert(operations_table), [dataclasses.asdict(o) for o in operations])

            self._translated(self._transaction, insert_rows)

        return write

    def _dispose(self) -> None:
        self._engine.dispose()


def _gap(row: Any) -> ExchangeGap:
    start, end, confirmations, confirmed_at = row
    return ExchangeGap(int(start), int(end), int(confirmations), _int(confirmed_at))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
