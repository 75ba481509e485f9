"""PostgreSQL's write statements: COPY straight into ``klines`` where nothing is stored, COPY staging
where something is, and a multi-row INSERT for a few candles.

Checked blocks of a page or more (REST pages of 1,000, archive files) whose range holds nothing yet are
COPYed into ``klines``; an archive block goes as the lines it was checked from, with no Python
formatting of its values. Otherwise a write smaller than ``COPY_ROWS`` is one multi-row
``INSERT … ON CONFLICT DO UPDATE``, its values inlined as literals where they are plain digits (bound
parameters made the server four times slower), and from ``COPY_ROWS`` on the batches are streamed by
one COPY into the session's temporary staging table and moved into ``klines`` by one statement:
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
_NEVER = 2**63
"""Past every open time: where stored candles begin when none is stored after a point."""


def upsert_batches(conn: Connection, batches: Iterable[Sequence[Kline]]) -> Kline | None:
    """Checked blocks go straight into ``klines`` while their range holds nothing (see
    :meth:`Staging.copy_directly`); then a write smaller than ``COPY_ROWS`` is inserted, and once the
    batches add up to that many they are all staged and upserted together, in order (staging is
    flushed before a key repeats)."""
    waiting: list[Sequence[Kline]] = []
    waiting_rows = 0
    last: Kline | None = None
    with Staging(conn) as staging:
        for batch in batches:
            rows = _last_of_each(batch)
            last = rows[-1]
            if not waiting and staging.copy_directly(rows):
                continue
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


class _OpenCopy:
    """One ``COPY … FROM STDIN`` in progress on the driver's connection, and the rows sent through it."""

    def __init__(self, driver: PgConnection, statement: str) -> None:
        self._stack = contextlib.ExitStack()
        self._cursor = driver.cursor()
        with _as_dbapi_error("COPY"):
            self._copy = self._stack.enter_context(self._cursor.copy(statement))
        self.rows = 0

    def send(self, klines: Sequence[Kline]) -> None:
        """``klines`` as COPY rows: a checked block's lines as they are, other values formatted."""
        with _as_dbapi_error("COPY"):
            _write_rows(self._copy, klines)
        self.rows += len(klines)

    def close(self) -> None:
        """End the COPY; raises unless the server took every row sent."""
        with _as_dbapi_error("COPY"):
            self._stack.close()
        _expect_rows(self.rows, self._cursor.rowcount)

    def abandon(self, *exc: Any) -> None:
        with contextlib.suppress(psycopg.Error):
            self._stack.__exit__(*exc)  # psycopg tells the server the COPY failed


class Staging:
    """Rows streamed by one COPY into the session's temporary table, then moved into ``klines`` by one
    statement: a plain INSERT when none of their keys is stored yet (a third faster than ON CONFLICT),
    else the upsert. The table empties itself at commit (or rollback). Before anything is staged,
    checked blocks over a range that holds nothing go straight into ``klines`` by a COPY of their own.
    A context manager: leaving it on an error abandons the COPYs."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.used = False
        self._first: Kline | None = None
        self._last: Kline | None = None
        self._staging: _OpenCopy | None = None
        self._direct: _OpenCopy | None = None
        self._free: tuple[tuple[str, ...], int, int] | None = None
        """A series key and a range of open times ``[lo, hi)`` that holds nothing and that no COPY of
        this transaction has sent to yet."""

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: Any) -> None:
        for copying in (self._staging, self._direct):
            if copying is not None:
                copying.abandon(*exc)
        self._staging = self._direct = None

    def add(self, klines: Sequence[Kline]) -> None:
        first = klines[0]
        if self._last is not None and (
            first[:3] != self._last[:3] or first.open_time <= self._last.open_time
        ):
            self.flush(more=True)  # one statement must not meet a key twice
        (self._staging or self._start()).send(klines)
        self._first = self._first or first
        self._last = klines[-1]

    def copy_directly(self, klines: Sequence[Kline]) -> bool:
        """COPY a checked block straight into ``klines`` (its archive lines as they are, or its values
        formatted), when it carries lines or fills a page, nothing is staged yet and none of its keys is
        stored: True when sent. No staging table and no second statement; one COPY carries consecutive
        blocks, and one query per series finds where stored candles begin (the series lock keeps other
        writers out)."""
        if self.used or not isinstance(klines, KlineBlock):
            return False
        if klines.text is None and len(klines) < COPY_ROWS:
            return False
        times = klines.open_times
        if not self._claim_free(klines.key, times[0], times[-1]):
            return False
        if self._direct is None:
            self._direct = _OpenCopy(self._driver(), f"COPY klines ({_COLUMNS}) FROM STDIN")
        self._direct.send(klines)
        return True

    def _claim_free(self, key: tuple[str, ...], first: int, last: int) -> bool:
        """True when ``[first, last]`` of the series holds nothing, this transaction's COPYs included;
        the range is then taken, so a later block that repeats one of its keys asks again (and is then
        staged and upserted)."""
        free = self._free
        if free is None or free[0] != key or not free[1] <= first < free[2]:
            self._end_direct()  # no other statement while a COPY is open
            found = self._first_stored(key, first)
            free = (key, first, _NEVER if found is None else found)
        if last >= free[2]:
            self._free = free
            return False
        self._free = (key, last + 1, free[2])
        return True

    def _first_stored(self, key: tuple[str, ...], start: int) -> int | None:
        """The oldest stored open time of the series at or after ``start``, or None."""
        market, symbol, interval = key
        found = self._conn.exec_driver_sql(
            'SELECT min(open_time) FROM klines WHERE market = %s AND symbol = %s AND "interval" = %s '
            "AND open_time >= %s",
            (market, symbol, interval, start),
        ).scalar()
        return None if found is None else int(found)

    def _end_direct(self) -> None:
        if self._direct is not None:
            direct, self._direct = self._direct, None
            direct.close()

    def _driver(self) -> PgConnection:
        driver = self._conn.connection.dbapi_connection
        if not isinstance(driver, PgConnection):
            raise StorageError(f"expected a psycopg connection, got {type(driver).__name__}")
        return driver

    def _start(self) -> _OpenCopy:
        self._end_direct()
        driver = self._driver()
        # each time: a rolled-back transaction takes the table it created with it
        with _as_dbapi_error("CREATE TEMPORARY TABLE"):
            driver.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (LIKE klines INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS"
            )
        self.used = True
        self._staging = _OpenCopy(driver, f"COPY {_STAGING} ({_COLUMNS}) FROM STDIN")
        return self._staging

    def flush(self, *, more: bool = False) -> None:
        """End the COPYs and move what is staged into ``klines``; ``more``: rows follow in this
        transaction, so empty the table now (the commit empties it otherwise, more cheaply than a
        TRUNCATE)."""
        self._end_direct()
        staging, self._staging = self._staging, None
        if staging is not None:
            staging.close()
        if staging is None or self._first is None or self._last is None:
            return
        move = f"INSERT INTO klines ({_COLUMNS}) SELECT {_COLUMNS} FROM {_STAGING}"
        stored = self._first_stored(self._first[:3], self._first.open_time)
        if stored is not None and stored <= self._last.open_time:
            moved = self._conn.exec_driver_sql(move + _ON_CONFLICT).rowcount
        else:
            try:
                with self._conn.begin_nested():
                    moved = self._conn.exec_driver_sql(move).rowcount
            except sa_exc.IntegrityError:  # another writer stored some of these meanwhile
                moved = self._conn.exec_driver_sql(move + _ON_CONFLICT).rowcount
        _expect_rows(staging.rows, moved)
        if more:
            self._conn.exec_driver_sql(f"TRUNCATE {_STAGING}")
        self._first = self._last = None


def _write_rows(copy: Copy, klines: Sequence[Kline]) -> None:
    """``klines`` as COPY rows of ``klines``' columns: a checked block's lines with the key in front,
    others formatted in bulk where every value is plain, else by psycopg row by row."""
    if isinstance(klines, KlineBlock) and klines.text is not None:
        copy.write(_copy_lines(klines.key, klines.text))
        return
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


def _copy_lines(key: tuple[str, ...], text: str) -> str:
    """A checked block's lines (:attr:`KlineBlock.text`) as COPY rows of ``klines``: the key in front,
    tabs for commas. They hold only digits, points, commas and newlines: nothing needs escaping."""
    front = "\t".join(key) + "\t"
    return front + text[:-1].replace(",", "\t").replace("\n", "\n" + front) + "\n"


def _expect_rows(sent: int, stored: int) -> None:
    """The server stored as many rows as were sent, or the transaction must not commit."""
    if stored != sent:
        raise StorageError(f"sent {sent:,} candles to klines, and the server stored {stored:,}")


def _last_of_each(klines: Sequence[Kline]) -> Sequence[Kline]:
    """The batch with only the last of any repeated open time, as a row-by-row upsert would leave it."""
    times = open_times(klines)
    if isinstance(klines, KlineBlock) or all(map(operator.lt, times, times[1:])):
        return klines
    return sorted({k.open_time: k for k in klines}.values(), key=lambda k: k.open_time)
