"""MySQL and MariaDB through PyMySQL: DECIMAL(48,18) columns, inlined multi-row upserts, GET_LOCK run locks.

A lost server is ``StorageUnavailable`` (retried under the db breaker); bad credentials or an unknown
database are bad input; deadlocks and lock wait timeouts run the transaction again.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.engine import URL, Connection, Engine

from extractor.errors import (
    BadInputError,
    ExtractorError,
    StorageError,
    StorageFull,
    StorageUnavailable,
    format_utc,
)
from extractor.klines import FIELDS, Kline, KlineBlock, Series
from extractor.secrets import mask_url
from extractor.storage.records import SeriesLocks
from extractor.storage.series_locks import mysql_locks
from extractor.storage.sql import SqlKlineStore
from extractor.storage.tables import WIDTH, flat_values, kline_series_table, klines_table, unsigned_decimals
from utils.circuit_breaker import CircuitBreaker

_RETRYABLE = {1205, 1213}  # lock wait timeout, deadlock: the transaction is simply run again
_REFUSED = {1044, 1045, 1049}  # access denied, unknown database: the URL is wrong
_READ_ONLY = {1290, 1836}  # --read-only server, read-only replica
_FULL = {1021, 1114}  # disk full, table full (its tablespace could not grow)
ROWS_PER_STATEMENT = 1_000  # about 150 kB of SQL, well under any max_allowed_packet
_ROW = "('%s','%s','%s',%d,%s,%s,%s,%s,%s,%d,%s,%d,%s,%s)"
_KEY = "CHARACTER SET ascii COLLATE ascii_bin NOT NULL"
SCHEMA_LOCK_SECONDS = 30
_BREAKER_WIDTH = 100
"""Breaker names carry the database or host they guard; the first release kept 50 characters."""


class MySqlKlineStore(SqlKlineStore):
    """A KlineStore on MySQL or MariaDB."""

    def __init__(self, url: str, breaker: CircuitBreaker, engine: Engine, secrets: tuple[str, ...]) -> None:
        super().__init__(url, breaker, engine, secrets)
        self._database = engine.url.database or ""
        self._upsert_sql = _compile_upsert(engine)
        self._group = "(" + ", ".join(["%s"] * WIDTH) + ")"
        if self._upsert_sql.count(self._group) != 1:
            raise ExtractorError(f"cannot find the one VALUES group in {self._upsert_sql}")

    @classmethod
    def connect(
        cls, url: str, sa_url: URL, breaker: CircuitBreaker, secrets: tuple[str, ...]
    ) -> MySqlKlineStore:
        if not sa_url.database:
            raise BadInputError(
                f"the MySQL URL {mask_url(url)} names no database; "
                "add it as the path, e.g. mysql+pymysql://user:pass@host:3306/klines"
            )
        return cls(url, breaker, _engine(sa_url), secrets)

    @contextlib.contextmanager
    def _schema_lock(self, conn: Connection) -> Iterator[None]:
        name = _lock_name(self._database, "schema")
        if conn.exec_driver_sql("SELECT GET_LOCK(%s, %s)", (name, SCHEMA_LOCK_SECONDS)).scalar() != 1:
            raise StorageUnavailable(
                f"another run has been changing the tables of {self.url} for {SCHEMA_LOCK_SECONDS} s"
            )
        try:
            yield
        finally:
            conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (name,))

    def _complete_schema(self, conn: Connection) -> None:
        """Widen the breaker columns of a first-release database (too narrow for today's names)."""
        narrow = conn.exec_driver_sql(
            "SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME IN ('circuit_breaker_events', 'circuit_breaker_operations') "
            "AND COLUMN_NAME = 'breaker' AND CHARACTER_MAXIMUM_LENGTH < %s",
            (_BREAKER_WIDTH,),
        ).scalars()
        for table in list(narrow):
            conn.exec_driver_sql(f"ALTER TABLE `{table}` MODIFY breaker VARCHAR({_BREAKER_WIDTH}) NOT NULL")

    def _migrate_unmarketed(self, conn: Connection, stale: list[str]) -> None:
        """One ALTER per table: each is atomic on InnoDB (MySQL commits DDL at once, so no transaction
        spans both), and a rerun finds ``market`` in a migrated table and leaves it alone."""
        if "klines" in stale:
            conn.exec_driver_sql(
                f"ALTER TABLE klines ADD COLUMN market VARCHAR(5) {_KEY} DEFAULT 'spot' FIRST, "
                "DROP PRIMARY KEY, ADD PRIMARY KEY (market, symbol, `interval`, open_time)"
            )
            conn.exec_driver_sql("ALTER TABLE klines ALTER COLUMN market DROP DEFAULT")
        if "exchange_gaps" in stale:
            conn.exec_driver_sql(
                f"ALTER TABLE exchange_gaps ADD COLUMN market VARCHAR(5) {_KEY} DEFAULT 'spot' FIRST, "
                "ADD COLUMN confirmations INTEGER NOT NULL DEFAULT 0, ADD COLUMN confirmed_at BIGINT NULL, "
                "DROP PRIMARY KEY, ADD PRIMARY KEY (market, symbol, `interval`, start_time)"
            )
            conn.exec_driver_sql("ALTER TABLE exchange_gaps ALTER COLUMN market DROP DEFAULT")

    def _upsert(self, conn: Connection, klines: Sequence[Kline]) -> None:
        statements: list[str] | None
        if isinstance(klines, KlineBlock) and klines.text is not None:
            statements = self._upserts_of_lines(klines.key, klines.text)
        else:
            statements = self._inlined_upserts(klines, flat_values(klines))
        if statements is None:
            conn.exec_driver_sql(self._upsert_sql, [tuple(k) for k in klines])
            return
        for sql in statements:
            conn.exec_driver_sql(sql)

    def _upserts_of_lines(self, key: tuple[str, ...], text: str) -> list[str]:
        """Upserts of a checked block's archive lines (:attr:`KlineBlock.text`): each line is already its
        row's values as SQL literals (digits and unsigned decimals, exact DECIMAL literals to MySQL),
        so a row is the series key in front of it, joined in C."""
        front = "('" + "','".join(key) + "',"
        lines = text[:-1].split("\n")
        return [
            self._upsert_sql.replace(
                self._group, front + (")," + front).join(lines[lo : lo + ROWS_PER_STATEMENT]) + ")"
            )
            for lo in range(0, len(lines), ROWS_PER_STATEMENT)
        ]

    def _inlined_upserts(self, klines: Sequence[Kline], values: list[Any]) -> list[str] | None:
        """Upserts with the values written into the SQL, or None unless every one is safe there.

        PyMySQL quotes each value in Python, which was most of a MariaDB backfill's time. Market, symbol
        and interval are validated before any write, decimals must be plain unsigned digits and integers
        go through ``%d``; anything else is left to the driver and the server's refusal.
        """
        if not unsigned_decimals(klines, values):
            return None
        per_statement = ROWS_PER_STATEMENT * WIDTH
        statements = []
        for lo in range(0, len(values), per_statement):
            chunk = tuple(values[lo : lo + per_statement])
            try:
                rows = ",".join([_ROW] * (len(chunk) // WIDTH)) % chunk
            except TypeError:  # not an integer where %d wants one
                return None
            statements.append(self._upsert_sql.replace(self._group, rows))
        return statements

    def _touch_series(self, conn: Connection, kline: Kline) -> None:
        upsert = mysql_insert(kline_series_table).values(self._series_row(kline))
        conn.execute(upsert.on_duplicate_key_update(last_write_time=upsert.inserted.last_write_time))

    def _lost_a_conflict(self, exc: sa_exc.DBAPIError) -> bool:
        return _code(exc) in _RETRYABLE

    def _probe(self) -> str:
        with self._engine.connect() as conn:
            transaction = conn.begin()
            try:
                if conn.exec_driver_sql("SELECT @@global.read_only").scalar():
                    raise BadInputError(f"the database at {self.url} is read-only (read_only is set)")
                conn.exec_driver_sql(
                    "CREATE TEMPORARY TABLE binance_extractor_probe (probe INTEGER) ENGINE=InnoDB"
                )
                conn.exec_driver_sql("INSERT INTO binance_extractor_probe VALUES (1)")
            finally:
                transaction.rollback()
                conn.exec_driver_sql("DROP TEMPORARY TABLE IF EXISTS binance_extractor_probe")
        return "writable (probe rolled back)"

    def _translate(self, exc: sa_exc.DBAPIError, reason: str) -> ExtractorError:
        code = _code(exc)
        if code in _REFUSED:
            return BadInputError(
                f"the database at {self.url} refused the login or the database name: {reason}"
            )
        if code in _READ_ONLY:
            return BadInputError(f"the database at {self.url} is read-only: {reason}")
        if code in _FULL:
            return StorageFull(self.url, reason)
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError):
            return StorageUnavailable(f"the database at {self.url} is unavailable: {reason}")
        return StorageError(f"the database at {self.url} refused the operation: {reason}")

    # -- run lock -------------------------------------------------------------------------------------

    def _lock_series(self, series: list[Series]) -> contextlib.AbstractContextManager[SeriesLocks]:
        return mysql_locks(self._engine, self._database, series)

    @contextlib.contextmanager
    def _run_lock(self, name: str) -> Iterator[None]:
        lock_name = _lock_name(self._database, name)
        conn = self._guard(self._lock_connection, lock_name)
        if conn is None:
            raise self._locked(name, self._guard(self._holder, lock_name))
        try:
            yield
        finally:
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (lock_name,))
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                conn.close()

    def _lock_connection(self, lock_name: str) -> Connection | None:
        """A dedicated connection holding GET_LOCK, or None when another session holds it."""
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.exec_driver_sql("SET SESSION wait_timeout = 31536000")
            got = conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (lock_name,)).scalar()
        except BaseException:
            conn.close()
            raise
        if got != 1:
            conn.close()
            return None
        return conn

    def _holder(self, lock_name: str) -> str:
        with self._engine.connect() as conn:
            holder = conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (lock_name,)).scalar()
            if holder is None:
                return "it was just released"
            row = conn.exec_driver_sql(
                "SELECT HOST, TIME FROM information_schema.PROCESSLIST WHERE ID = %s", (holder,)
            ).first()
        if row is None:
            return f"MySQL connection {holder}"
        return (
            f"MySQL connection {holder} from {row[0]}, idle since {format_utc(time.time() - float(row[1]))}"
        )


def _lock_name(database: str, name: str) -> str:
    """A GET_LOCK name of this database: at most 64 characters, as MySQL allows."""
    lock_name = f"binance-extractor:{database}:{name}"
    if len(lock_name) > 64:
        lock_name = "binance-extractor:" + hashlib.sha1(lock_name.encode()).hexdigest()
    return lock_name


def _engine(sa_url: URL) -> Engine:
    return create_engine(
        sa_url.set(drivername="mysql+pymysql"),
        pool_pre_ping=True,
        pool_recycle=3600,
        paramstyle="format",
        connect_args={
            "charset": "utf8mb4",
            "connect_timeout": 5,
            "read_timeout": 30,
            "write_timeout": 30,
            "init_command": "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', "
            "time_zone = '+00:00'",
        },
    )


def _compile_upsert(engine: Engine) -> str:
    """The batch upsert as driver SQL with positional parameters in Kline field order."""
    table = klines_table
    my = mysql_insert(table)
    statement = my.on_duplicate_key_update(
        {c.name: my.inserted[c.name] for c in table.columns if not c.primary_key}
    )
    compiled = statement.compile(dialect=engine.dialect)
    if tuple(compiled.positiontup or ()) != FIELDS:
        raise ExtractorError(f"upsert parameters {compiled.positiontup} are not in Kline field order")
    return str(compiled)


def _code(exc: sa_exc.DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None
