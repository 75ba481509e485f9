"""PostgreSQL through psycopg 3: NUMERIC columns that keep the scale given, COPY for big writes
(``postgres_writes.py``), advisory run locks that end with their session.

``postgresql://`` and ``postgresql+psycopg://`` name the same database. ``?timescale=true`` makes
``klines`` a TimescaleDB hypertable on ``open_time`` where the extension exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence

from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import URL, Connection, Engine

from extractor.errors import (
    BadInputError,
    ExtractorError,
    StorageError,
    StorageFull,
    StorageUnavailable,
    format_utc,
)
from extractor.klines import Kline, Series
from extractor.secrets import mask_url
from extractor.storage.postgres_writes import insert_page, upsert_batches
from extractor.storage.records import SeriesLocks
from extractor.storage.series_locks import postgres_locks
from extractor.storage.sql import SqlKlineStore
from extractor.storage.tables import kline_series_table
from utils.circuit_breaker import CircuitBreaker

CHUNK_TIME_MS = 7 * 86_400_000
"""A hypertable chunk: one week of ``open_time``."""

_UNAVAILABLE_STATES = ("08", "53", "57", "58")  # connection, resources, operator intervention, system
_CONFLICT_STATES = {"40001", "40P01"}  # serialization failure, deadlock: run the transaction again
_RERUN_STATES = {*_CONFLICT_STATES, "23505"}
"""And a unique violation: another writer stored some of the keys a COPY into ``klines`` sent after this
transaction looked, and run again it finds them and upserts (see ``postgres_writes``)."""
_LOGIN_STATES = ("28", "3D")  # authorization, unknown database
_READ_ONLY_STATES = {"25006"}
_BAD_OPTION = re.compile(r"(connection is bad: )?invalid ").match
"""libpq refusing an option of the URL before it connects (``invalid sslmode value``)."""
_BUSY_SERVER = (
    "starting up",
    "shutting down",
    "too many",
    "connection slots",
    "recovery mode",
    "terminating",
)
"""A server's FATAL answers to a connection that a later try can get past; any other one refuses the URL."""


class PostgresKlineStore(SqlKlineStore):
    """A KlineStore on PostgreSQL (optionally TimescaleDB)."""

    def __init__(
        self, url: str, breaker: CircuitBreaker, engine: Engine, secrets: tuple[str, ...], *, timescale: bool
    ) -> None:
        super().__init__(url, breaker, engine, secrets)
        self._database = engine.url.database or ""
        self._timescale = timescale

    @classmethod
    def connect(
        cls, url: str, sa_url: URL, breaker: CircuitBreaker, secrets: tuple[str, ...]
    ) -> PostgresKlineStore:
        if not sa_url.database:
            raise BadInputError(
                f"the PostgreSQL URL {mask_url(url)} names no database; add it as the path, "
                "e.g. postgresql+psycopg://user:pass@host:5432/klines"
            )
        timescale = _flag(sa_url.query.get("timescale", "false"), url)
        engine = _engine(sa_url.difference_update_query(["timescale"]))
        return cls(url, breaker, engine, secrets, timescale=timescale)

    # -- schema ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _schema_lock(self, conn: Connection) -> Iterator[None]:
        conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(%s)", (_lock_key(f"binance-extractor:{self._database}:schema"),)
        )
        yield  # released when the transaction ends

    def _complete_schema(self, conn: Connection) -> None:
        if self._timescale:
            self._make_hypertable(conn)

    def _migrate_unmarketed(self, conn: Connection, stale: list[str]) -> None:
        """PostgreSQL's DDL is transactional: every table is altered in this one transaction."""
        for table, key in (("klines", "open_time"), ("exchange_gaps", "start_time")):
            if table not in stale:
                continue
            primary = conn.exec_driver_sql(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'", (table,)
            ).scalar_one()
            extra = (
                ", ADD COLUMN confirmations INTEGER NOT NULL DEFAULT 0, ADD COLUMN confirmed_at BIGINT"
                if table == "exchange_gaps"
                else ""
            )
            conn.exec_driver_sql(
                f"ALTER TABLE {table} ADD COLUMN market VARCHAR(5) COLLATE \"C\" NOT NULL DEFAULT 'spot'"
                f'{extra}, DROP CONSTRAINT "{primary}", ADD PRIMARY KEY (market, symbol, "interval", {key})'
            )
            conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN market DROP DEFAULT")

    def _make_hypertable(self, conn: Connection) -> None:
        found = conn.exec_driver_sql(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).scalar()
        if found is None:
            raise BadInputError(
                f"?timescale=true, but the PostgreSQL server of {self.url} has no timescaledb extension "
                "(pg_available_extensions lists none): install TimescaleDB or drop ?timescale=true"
            )
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS timescaledb")
        conn.exec_driver_sql(
            "SELECT create_hypertable('klines', 'open_time', chunk_time_interval => %s::bigint, "
            "if_not_exists => TRUE, migrate_data => TRUE)",
            (CHUNK_TIME_MS,),
        )

    # -- writes ---------------------------------------------------------------------------------------

    def _upsert_batches(self, conn: Connection, batches: Iterable[Sequence[Kline]]) -> Kline | None:
        return upsert_batches(conn, batches)

    def _upsert(self, conn: Connection, klines: Sequence[Kline]) -> None:
        insert_page(conn, klines)

    def _touch_series(self, conn: Connection, kline: Kline) -> None:
        upsert = pg_insert(kline_series_table).values(self._series_row(kline))
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=list(kline_series_table.primary_key.columns),
                set_={"last_write_time": upsert.excluded.last_write_time},
            )
        )

    def _lost_a_conflict(self, exc: sa_exc.DBAPIError) -> bool:
        return _sqlstate(exc) in _RERUN_STATES

    # -- checks and errors ----------------------------------------------------------------------------

    def _probe(self) -> str:
        with self._engine.connect() as conn:
            transaction = conn.begin()
            try:
                if conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar():
                    raise BadInputError(f"the database at {self.url} is a read-only replica (in recovery)")
                conn.exec_driver_sql("CREATE TABLE binance_extractor_probe (probe INTEGER)")
                conn.exec_driver_sql("INSERT INTO binance_extractor_probe VALUES (1)")
            finally:
                transaction.rollback()
        return "writable (probe rolled back)"

    def _translate(self, exc: sa_exc.DBAPIError, reason: str) -> ExtractorError:
        state = _sqlstate(exc)
        if state is None:  # a connection that failed or was lost; libpq gives no SQLSTATE for those
            if isinstance(exc, sa_exc.ProgrammingError) or _BAD_OPTION(reason):
                return BadInputError(f"unusable PostgreSQL URL {self.url}: {reason}")
            if "FATAL" in reason and not any(words in reason for words in _BUSY_SERVER):
                return self._refused_login(reason)
            return StorageUnavailable(f"the database at {self.url} is unavailable: {reason}")
        if state.startswith(_LOGIN_STATES):
            return self._refused_login(reason)
        if state in _READ_ONLY_STATES:
            return BadInputError(f"the database at {self.url} is read-only: {reason}")
        if state == "53100":  # disk_full
            return StorageFull(self.url, reason)
        if state == "42501":
            return BadInputError(f"the database at {self.url} refused a privilege this tool needs: {reason}")
        if state.startswith(_UNAVAILABLE_STATES) or state in _CONFLICT_STATES or exc.connection_invalidated:
            return StorageUnavailable(f"the database at {self.url} is unavailable: {reason}")
        return StorageError(f"the database at {self.url} refused the operation: {reason}")

    def _refused_login(self, reason: str) -> BadInputError:
        return BadInputError(
            f"the database {self._database!r} at {self.url} refused the connection (check the user, the "
            f"password, the database name and the options): {reason}"
        )

    # -- run lock -------------------------------------------------------------------------------------

    def _lock_series(self, series: list[Series]) -> contextlib.AbstractContextManager[SeriesLocks]:
        return postgres_locks(self._engine, self._database, series)

    @contextlib.contextmanager
    def _run_lock(self, name: str) -> Iterator[None]:
        key = _lock_key(f"binance-extractor:{self._database}:{name}")
        conn = self._guard(self._lock_connection, key)
        if conn is None:
            raise self._locked(name, self._guard(self._holder, key))
        try:
            yield
        finally:
            # Closing the session for good releases the lock even if the unlock itself went unheard.
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (key,))
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                conn.invalidate()
                conn.close()

    def _lock_connection(self, key: int) -> Connection | None:
        """A dedicated session holding the advisory lock ``key``, or None when another session holds it."""
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (key,)).scalar()
            if got and (conn.dialect.server_version_info or (0,)) >= (14,):
                conn.exec_driver_sql("SET idle_session_timeout = 0")  # the session is the lock
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return conn

    def _holder(self, key: int) -> str:
        with self._engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT a.pid, a.client_addr, extract(epoch FROM a.backend_start) FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
                (key >> 32, key & 0xFFFFFFFF),
            ).first()
        if row is None:
            return "it was just released"
        pid, address, since = row
        return (
            f"PostgreSQL backend {pid} from {address or 'a local socket'}, since {format_utc(float(since))}"
        )


def _lock_key(name: str) -> int:
    """A stable non-negative 63-bit advisory lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _flag(value: str | tuple[str, ...], url: str) -> bool:
    text = (value if isinstance(value, str) else value[-1]).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise BadInputError(f"timescale={text!r} in {mask_url(url)}: use timescale=true or timescale=false")


def _engine(sa_url: URL) -> Engine:
    given = sa_url.query.get("options", "")
    options = " ".join([given if isinstance(given, str) else " ".join(given), "-c TimeZone=UTC"]).strip()
    return create_engine(
        sa_url.set(drivername="postgresql+psycopg").difference_update_query(["options"]),
        pool_pre_ping=True,
        pool_recycle=3600,
        connect_args={
            "connect_timeout": 5,
            "application_name": "binance-extractor",
            "options": options,  # the URL's own options kept, the session's time zone UTC
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 60_000,
        },
    )
