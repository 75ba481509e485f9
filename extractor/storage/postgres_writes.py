"""PostgreSQL's write statements: a multi-row INSERT for a few candles, COPY staging for more.

A write smaller than ``COPY_ROWS`` is one multi-row ``INSERT … ON CONFLICT DO UPDATE``, its values
inlined as literals where they are plain digits (bound parameters made the server four times slower).
From ``COPY_ROWS`` on (a REST page of 1,000, a ``write_all`` of archive files) the batches are streamed
by one COPY into the session's temporary staging table and moved into ``klines`` by one statement:
measured here, parsing a 1,000-row VALUES list costs the server three times what COPY does.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import Connection as PgConnection
from psycopg import Copy
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from extractor.errors import StorageError
from extractor.klines import FIELDS, KEY_FIELDS, Kline, KlineBlock, open_times
from extractor.storage.tables import WIDTH, flat_values, unsigned_decimals

COPY_ROWS = 100
"""From this many rows on a write goes through COPY (measured: below it the extra round trips cost more)."""
ROWS_PER_STATEMENT = 1_000  # 14,000 parameters, under the protocol's 65,535
COPY_CHUNK_ROWS = 10_000  # rows of COPY text built at a time, so a year of 1m is never one string

_COLUMNS = ", ".join(f'"{name}"' for name in FIELDS)
_KEY = ", ".join(f'"{name}"' for name in KEY_FIELDS)
_UPDATES = ", ".join(f'"{name}" = EXCLUDED."{name}"' for name in FIELDS if name not in KEY_FIELDS)
_ON_CONFLICT = f" ON CONFLICT ({_KEY}) DO UPDATE SET {_UPDATES}"
_GROUP = "(" + ", ".join(["%s"] * WIDTH) + ")"
_INSERT = f"INSERT INTO klines ({_COLUMNS}) VALUES"
_INLINE_ROW = "('%s','%s','%s',%d,%s,%s,%s,%s,%s,%d,%s,%d,%s,%s)"
_COPY_ROW = "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n"
_STAGING = "klines_staging"


def upsert_batches(conn: Connection, batches: Iterable[Sequence[Kline]]) -> Kline | None:
    """A write smaller than ``COPY_ROWS`` is inserted; once the batches add up to that many, they are
    all staged and upserted together, in order (staging is flushed before a key repeats)."""
    waiting: list[Sequence[Kline]] = []
    waiting_rows = 0
    last: Kline | None = None
    with Staging(conn) as staging:
        for batch in batches:
            rows = _last_of_each(batch)
            last = rows[-1]
            if staging.used or waiting_rows + len(rows) >= COPY_ROWS:
                for held in [*waiting, rows]:
                    staging.add(held)
                waiting, waiting_rows = [], 0
            else:
                waiting.append(rows)
                waiting_rows += len(rows)
        staging.flush()
    for held in waiting:
        insert_page(conn, held)
    return last


def insert_page(conn: Connection, klines: Sequence[Kline]) -> None:
    """Multi-row INSERT … ON CONFLICT DO UPDATE, ``ROWS_PER_STATEMENT`` rows at a time, the values
    inlined as literals where they are plain: bound parameters made the server four times slower."""
    for lo in range(0, len(klines), ROWS_PER_STATEMENT):
        chunk = klines[lo : lo + ROWS_PER_STATEMENT]
        values = flat_values(chunk)
        inlined = _inlined_insert(chunk, values)
        if inlined is None:
            conn.exec_driver_sql(_parameter_insert(len(chunk)), tuple(values))
        else:
            conn.exec_driver_sql(inlined)


@functools.cache
def _parameter_insert(rows: int) -> str:
    return f"{_INSERT} {', '.join([_GROUP] * rows)}{_ON_CONFLICT}"


class Staging:
    """Rows streamed by one COPY into the session's temporary table, then moved into ``klines`` by one
    statement: a plain INSERT when none of their keys is stored yet (a third faster than ON CONFLICT),
    else the upsert. The table empties itself at commit (or rollback). A context manager: leaving it
    on an error abandons the COPY."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.used = False
        self.rows = 0
        self._first: Kline | None = None
        self._last: Kline | None = None
        self._copying: contextlib.ExitStack | None = None
        self._copy: Copy | None = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._copying is not None:
            self._copy = None
            with contextlib.suppress(psycopg.Error):
                self._copying.__exit__(*exc)  # psycopg tells the server the COPY failed

    def add(self, klines: Sequence[Kline]) -> None:
        first = klines[0]
        if self._last is not None and (
            first[:3] != self._last[:3] or first.open_time <= self._last.open_time
        ):
            self.flush(more=True)  # one statement must not meet a key twice
        with _as_dbapi_error("COPY"):
            self._write(self._copy or self._start(), klines)
        self.rows += len(klines)
        self._first = self._first or first
        self._last = klines[-1]

    def _start(self) -> Copy:
        driver = self._conn.connection.dbapi_connection
        if not isinstance(driver, PgConnection):
            raise StorageError(f"expected a psycopg connection, got {type(driver).__name__}")
        # each time: a rolled-back transaction takes the table it created with it
        driver.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (LIKE klines INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        self.used = True
        self._copying = contextlib.ExitStack()
        self._copy = self._copying.enter_context(
            driver.cursor().copy(f"COPY {_STAGING} ({_COLUMNS}) FROM STDIN")
        )
        return self._copy

    @staticmethod
    def _write(copy: Copy, klines: Sequence[Kline]) -> None:
        for lo in range(0, len(klines), COPY_CHUNK_ROWS):
            chunk = klines[lo : lo + COPY_CHUNK_ROWS]
            values = flat_values(chunk)
            if unsigned_decimals(chunk, values):
                try:
                    copy.write((_COPY_ROW * len(chunk)) % tuple(values))
                    continue
                except TypeError:  # not an integer where %d wants one: let psycopg write the rows
                    pass
            for kline in chunk:
                copy.write_row(kline)

    def flush(self, *, more: bool = False) -> None:
        """Move what is staged into ``klines``; ``more``: rows follow in this transaction, so empty the
        table now (the commit empties it otherwise, more cheaply than a TRUNCATE)."""
        if self._copying is not None:
            copying, self._copying, self._copy = self._copying, None, None
            with _as_dbapi_error("COPY"):
                copying.close()
        if self._first is None or self._last is None:
            return
        move = f"INSERT INTO klines ({_COLUMNS}) SELECT {_COLUMNS} FROM {_STAGING}"
        if self._stored_between(self._first, self._last):
            self._conn.exec_driver_sql(move + _ON_CONFLICT)
        else:
            try:
                with self._conn.begin_nested():
                    self._conn.exec_driver_sql(move)
            except sa_exc.IntegrityError:  # another writer stored some of these meanwhile
                self._conn.exec_driver_sql(move + _ON_CONFLICT)
        if more:
            self._conn.exec_driver_sql(f"TRUNCATE {_STAGING}")
        self.rows = 0
        self._first = self._last = None

    def _stored_between(self, first: Kline, last: Kline) -> bool:
        found = self._conn.exec_driver_sql(
            'SELECT 1 FROM klines WHERE market = %s AND symbol = %s AND "interval" = %s '
            "AND open_time BETWEEN %s AND %s LIMIT 1",
            (first.market, first.symbol, first.interval, first.open_time, last.open_time),
        ).first()
        return found is not None


def _inlined_insert(klines: Sequence[Kline], values: list[Any]) -> str | None:
    """The upsert with the values as SQL literals, or None unless every one is safe there: market,
    symbol and interval are validated before any write, decimals are plain digits, integers go
    through ``%d``; anything else is bound as a parameter and left to the server's refusal."""
    if not unsigned_decimals(klines, values):
        return None
    try:
        literals = ",".join([_INLINE_ROW] * len(klines)) % tuple(values)
    except TypeError:  # not an integer where %d wants one
        return None
    return f"{_INSERT} {literals}{_ON_CONFLICT}"


@contextlib.contextmanager
def _as_dbapi_error(statement: str) -> Iterator[None]:
    """psycopg's own errors, from COPY on the driver's connection, as SQLAlchemy would have wrapped them."""
    try:
        yield
    except psycopg.Error as exc:
        raise sa_exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def _last_of_each(klines: Sequence[Kline]) -> Sequence[Kline]:
    """The batch with only the last of any repeated open time, as a row-by-row upsert would leave it."""
    times = open_times(klines)
    if isinstance(klines, KlineBlock) or all(map(operator.lt, times, times[1:])):
        return klines
    return sorted({k.open_time: k for k in klines}.values(), key=lambda k: k.open_time)
