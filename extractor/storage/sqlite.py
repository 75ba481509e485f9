"""SQLite, the embedded default: one file, WAL, multi-row upserts, a file lock per run lock name.

Decimals are stored as their exact text. A read-only file or directory is a bad environment (exit 2),
a busy or vanished file a temporary one (75).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.schema import CreateTable

from extractor.errors import (
    BadInputError,
    ExtractorError,
    StorageError,
    StorageFull,
    StorageUnavailable,
)
from extractor.klines import FIELDS, Kline, Series
from extractor.storage.records import SeriesLocks, describe_holder, this_holder
from extractor.storage.series_locks import file_locks
from extractor.storage.sql import SqlKlineStore
from extractor.storage.tables import WIDTH, exchange_gaps_table, flat_values, kline_series_table, klines_table
from utils.circuit_breaker import CircuitBreaker

ROWS_PER_STATEMENT = 1_000
_UNAVAILABLE = ("locked", "busy", "disk i/o", "unable to open", "no such table")


class SqliteKlineStore(SqlKlineStore):
    """A KlineStore in one SQLite file."""

    def __init__(self, url: str, breaker: CircuitBreaker, engine: Engine, path: Path) -> None:
        super().__init__(url, breaker, engine, ())
        self.path = path
        self._rows_per_statement = ROWS_PER_STATEMENT
        self._upsert_sql = _compile_upsert(engine)
        self._upsert_rows_sql: dict[int, str] = {}
        self._group = "(" + ", ".join(["?"] * WIDTH) + ")"
        if self._upsert_sql.count(self._group) != 1:
            raise ExtractorError(f"cannot find the one VALUES group in {self._upsert_sql}")

    @classmethod
    def connect(cls, url: str, sa_url: URL, breaker: CircuitBreaker) -> SqliteKlineStore:
        database = sa_url.database
        if database in (None, "", ":memory:"):
            raise BadInputError(
                f"{url} keeps nothing once the command ends: give a file, e.g. sqlite:///klines.db"
            )
        path = Path(database)
        _require_writable(path)
        return cls(url, breaker, _engine(sa_url), path)

    def _create_schema(self) -> None:
        super()._create_schema()
        with self._engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            limit = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._rows_per_statement = min(ROWS_PER_STATEMENT, limit // WIDTH)

    def _migrate_unmarketed(self, conn: Connection, stale: list[str]) -> None:
        """SQLite cannot change a primary key: copy into tables of the new shape, in this one transaction."""
        for table in (klines_table, exchange_gaps_table):
            if table.name not in stale:
                continue
            old = f"{table.name}_unmarketed"
            conn.exec_driver_sql(f'ALTER TABLE "{table.name}" RENAME TO "{old}"')
            conn.execute(CreateTable(table))
            kept = [
                c.name for c in table.columns if c.name not in ("market", "confirmations", "confirmed_at")
            ]
            names = ", ".join(f'"{name}"' for name in kept)
            conn.exec_driver_sql(
                f'INSERT INTO "{table.name}" ("market", {names}) SELECT \'spot\', {names} FROM "{old}"'
            )
            conn.exec_driver_sql(f'DROP TABLE "{old}"')

    def _upsert(self, conn: Connection, klines: Sequence[Kline]) -> None:
        """Many rows per statement: ``executemany`` gives up the GIL after every row and then queues for
        it behind the threads parsing the next pages, so it ran at a fraction of SQLite's speed."""
        values = flat_values(klines)
        per_statement = self._rows_per_statement * WIDTH
        for lo in range(0, len(values), per_statement):
            chunk = tuple(values[lo : lo + per_statement])
            conn.exec_driver_sql(self._upsert_rows(len(chunk) // WIDTH), chunk)

    def _upsert_rows(self, rows: int) -> str:
        sql = self._upsert_rows_sql.get(rows)
        if sql is None:
            sql = self._upsert_sql.replace(self._group, ", ".join([self._group] * rows))
            self._upsert_rows_sql[rows] = sql
        return sql

    def _touch_series(self, conn: Connection, kline: Kline) -> None:
        upsert = sqlite_insert(kline_series_table).values(self._series_row(kline))
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=list(kline_series_table.primary_key.columns),
                set_={"last_write_time": upsert.excluded.last_write_time},
            )
        )

    def exists(self) -> bool:
        return self.path.exists()

    def _probe(self) -> str:
        if not self.path.exists():
            with tempfile.NamedTemporaryFile(dir=self.path.parent, prefix=f".{self.path.name}.probe-"):
                pass
            return "does not exist yet; its directory is writable (nothing created)"
        with self._writer.connect() as conn:
            transaction = conn.begin()
            try:
                conn.exec_driver_sql("CREATE TABLE binance_extractor_probe (probe INTEGER)")
                conn.exec_driver_sql("INSERT INTO binance_extractor_probe VALUES (1)")
            finally:
                transaction.rollback()
        return "writable (probe rolled back)"

    def _translate(self, exc: sa_exc.DBAPIError, reason: str) -> ExtractorError:
        words = reason.lower()
        if "readonly" in words or "read-only" in words:
            return BadInputError(
                f"the SQLite database {self.path} is read-only ({reason}): make the file and its "
                "directory writable, or choose another with --db / DATABASE_URL"
            )
        if "disk is full" in words:
            return StorageFull(self.url, reason)
        if isinstance(exc, sa_exc.OperationalError) and any(w in words for w in _UNAVAILABLE):
            return StorageUnavailable(f"the database at {self.url} is unavailable: {reason}")
        return StorageError(f"the database at {self.url} refused the operation: {reason}")

    def _lock_series(self, series: list[Series]) -> contextlib.AbstractContextManager[SeriesLocks]:
        return file_locks(Path(str(self.path) + ".series.lock"), series)

    @contextlib.contextmanager
    def _run_lock(self, name: str) -> Iterator[None]:
        suffix = ".lock" if name == "extract" else f".{name}.lock"
        path = Path(str(self.path) + suffix)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BadInputError(f"cannot open the lock file {path}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._locked(name, describe_holder(os.pread(fd, 4096, 0))) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(this_holder()).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing releases the flock


def _require_writable(path: Path) -> None:
    """A bad path is the user's to fix (exit 2), found before any table is created."""
    folder = path.parent
    if not folder.is_dir():
        raise BadInputError(
            f"cannot create the SQLite database {path}: the directory {folder} does not exist"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(
            f"the directory {folder} of the SQLite database is not writable (SQLite needs it for its "
            "journal and the run lock): fix its permissions or choose another --db / DATABASE_URL"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise BadInputError(
            f"the SQLite database {path} is read-only: make it writable or choose another --db / DATABASE_URL"
        )


def _engine(sa_url: URL) -> Engine:
    engine = create_engine(
        sa_url.set(drivername="sqlite+pysqlite"),
        connect_args={"timeout": 10, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "busy_timeout=10000", "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes the write lock up front, so busy_timeout applies instead of a snapshot error.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sql_write") else "BEGIN")

    return engine


def _compile_upsert(engine: Engine) -> str:
    """The batch upsert as driver SQL with positional parameters in Kline field order."""
    table = klines_table
    updates = [c.name for c in table.columns if not c.primary_key]
    lite = sqlite_insert(table)
    statement = lite.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={name: lite.excluded[name] for name in updates},
    )
    compiled = statement.compile(dialect=engine.dialect)
    if tuple(compiled.positiontup or ()) != FIELDS:
        raise ExtractorError(f"upsert parameters {compiled.positiontup} are not in Kline field order")
    return str(compiled)
