"""SQLite and MySQL (MariaDB) through SQLAlchemy Core: the same Table objects on both dialects.

Decimals are DECIMAL(48,18) on MySQL and exact text on SQLite, whose NUMERIC would go through float.
Key columns are ASCII with a binary collation on MySQL, where the default collation would make the
``1m`` and ``1M`` series collide. Batches are written as multi-row upserts in one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Context, Decimal
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from extractor.errors import BadInputError, ExtractorError, StorageError, StorageUnavailable, format_utc
from extractor.intervals import Interval
from extractor.klines import DECIMAL_FIELDS, FIELDS, Kline, plain, validate_symbol
from extractor.storage import KlineStore, describe_holder, this_holder
from extractor.storage.telemetry import BreakerEvent, BreakerOperation, TelemetrySink
from utils.circuit_breaker import CircuitBreaker

P = ParamSpec("P")
T = TypeVar("T")

_WIDE = Context(prec=80)
_EIGHT_PLACES = Decimal("0.00000001")
_RETRYABLE_MYSQL = {1205, 1213}  # lock wait timeout, deadlock: the transaction is simply run again
_REFUSED_MYSQL = {1044, 1045, 1049}  # access denied, unknown database: the URL is wrong
_SQLITE_UNAVAILABLE = ("locked", "busy", "disk", "unable to open", "i/o")
_TRANSACTION_ATTEMPTS = 3
_SQLITE_ROWS_PER_STATEMENT = 1_000
_MYSQL_ROWS_PER_STATEMENT = 1_000  # about 150 kB of SQL, well under any max_allowed_packet
_MYSQL_ROW = "('%s','%s',%d,%s,%s,%s,%s,%s,%d,%s,%d,%s,%s)"
_UNSIGNED_DECIMAL = re.compile(r"[0-9.]*").fullmatch
_WIDTH = len(FIELDS)


class ExactDecimal(TypeDecorator[Decimal]):
    """DECIMAL(48,18) on MySQL, plain decimal text on SQLite; both read back as the exact Decimal."""

    impl = Numeric(48, 18, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(48, 18, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return plain(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(value)
        return binance_scale(value)


def binance_scale(value: Decimal) -> Decimal:
    """A DECIMAL(48,18) value at Binance's 8 places when that is exact (``0.01634790``), else trimmed."""
    short = value.quantize(_EIGHT_PLACES, context=_WIDE)
    return short if short == value else value.normalize(_WIDE)


def _key(length: int) -> String:
    return String(length).with_variant(mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql")


metadata = MetaData()

klines_table = Table(
    "klines",
    metadata,
    Column("symbol", _key(20), primary_key=True),
    Column("interval", _key(3), primary_key=True),
    Column("open_time", BigInteger, primary_key=True, autoincrement=False),
    *(
        Column(name, ExactDecimal, nullable=False)
        if name in DECIMAL_FIELDS
        else Column(name, BigInteger, nullable=False)
        for name in FIELDS[3:]
    ),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

exchange_gaps_table = Table(
    "exchange_gaps",
    metadata,
    Column("symbol", _key(20), primary_key=True),
    Column("interval", _key(3), primary_key=True),
    Column("start_time", BigInteger, primary_key=True, autoincrement=False),
    Column("end_time", BigInteger, nullable=False),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

events_table = Table(
    "circuit_breaker_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("timestamp", DateTime(timezone=False), nullable=False),
    Column("breaker", String(50), nullable=False),
    Column("from_state", String(20), nullable=False),
    Column("state", String(20), nullable=False),
    Column("failure_count", Integer, nullable=False),
    Column("failure_threshold", Integer, nullable=False),
    Index("ix_circuit_breaker_events_timestamp", "timestamp"),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

operations_table = Table(
    "circuit_breaker_operations",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("timestamp", DateTime(timezone=False), nullable=False),
    Column("breaker", String(50), nullable=False),
    Column("success", Boolean, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("error", String(500), nullable=True),
    Index("ix_circuit_breaker_operations_timestamp", "timestamp"),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

_k = klines_table.c
_g = exchange_gaps_table.c


class SqlKlineStore(KlineStore):
    """A KlineStore on SQLite (file or ``:memory:``) or MySQL/MariaDB via PyMySQL."""

    def __init__(self, url: str, breaker: CircuitBreaker, engine: Engine, secret: str | None) -> None:
        super().__init__(url, breaker)
        self._engine = engine
        self._writer = engine.execution_options(sqlite_write=True)
        self._secret = secret
        self._dialect = engine.dialect.name
        database = engine.url.database
        self._memory = self._dialect == "sqlite" and database in (None, "", ":memory:")
        self._database = database or ""
        # StaticPool shares one connection: every use of an in-memory database takes turns.
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self._memory else contextlib.nullcontext()
        )
        self._process_locks = ProcessLocks()
        self._upsert_sql = self._compile_upsert()
        self._upsert_rows_sql: dict[int, str] = {}
        self._sqlite_rows_per_statement = _SQLITE_ROWS_PER_STATEMENT

    @classmethod
    def connect(cls, url: str, breaker: CircuitBreaker, sleep: Callable[[float], None]) -> SqlKlineStore:
        sa_url = _parse(url)
        engine = _sqlite_engine(sa_url) if sa_url.get_backend_name() == "sqlite" else _mysql_engine(sa_url)
        store = cls(url, breaker, engine, sa_url.password)
        store.sleep = sleep
        try:
            store._guard(store._create_tables)
        except BaseException:
            engine.dispose()
            raise
        return store

    # -- one round trip each --------------------------------------------------------------------------

    def _translated(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except sa_exc.DBAPIError as exc:
            raise self._translate(exc) from exc
        except sa_exc.DisconnectionError as exc:
            raise StorageUnavailable(f"lost the connection to the database at {self.url}: {exc}") from exc
        except sa_exc.SQLAlchemyError as exc:
            raise StorageError(f"the database at {self.url} refused the operation: {exc}") from exc

    def _create_tables(self) -> None:
        with self._serial:
            metadata.create_all(self._engine)
            if self._dialect == "sqlite":
                import sqlite3

                with self._engine.connect() as conn:
                    driver = conn.connection.driver_connection
                    assert driver is not None
                    limit = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
                self._sqlite_rows_per_statement = min(_SQLITE_ROWS_PER_STATEMENT, limit // _WIDTH)

    def _write_batch(self, klines: Sequence[Kline]) -> None:
        values = _text_values(klines)
        if self._dialect == "sqlite":
            self._transaction(lambda conn: self._upsert_sqlite(conn, values))
            return
        statements = self._inlined_upserts(values)
        if statements is None:
            self._transaction(lambda conn: conn.exec_driver_sql(self._upsert_sql, klines))
        else:
            self._transaction(lambda conn: self._run_all(conn, statements))

    def _upsert_sqlite(self, conn: Connection, values: list[Any]) -> None:
        """Many rows per statement: ``executemany`` gives up the GIL after every row and then queues for
        it behind the threads parsing the next pages, so it ran at a fraction of SQLite's speed."""
        per_statement = self._sqlite_rows_per_statement * _WIDTH
        for lo in range(0, len(values), per_statement):
            chunk = tuple(values[lo : lo + per_statement])
            conn.exec_driver_sql(self._upsert_rows(len(chunk) // _WIDTH), chunk)

    def _upsert_rows(self, rows: int) -> str:
        """The SQLite upsert with ``rows`` VALUES groups, built from the compiled one-row statement."""
        sql = self._upsert_rows_sql.get(rows)
        if sql is None:
            group = self._values_group()
            sql = self._upsert_rows_sql[rows] = self._upsert_sql.replace(group, ", ".join([group] * rows))
        return sql

    def _inlined_upserts(self, values: list[Any]) -> list[str] | None:
        """MySQL upserts with the values written into the SQL, or None unless every one is safe there.

        PyMySQL quotes each value in Python, which was most of a MariaDB backfill's time. Symbols and
        intervals are validated before any write, decimals must be plain unsigned digits and integers go
        through ``%d``; anything else (None, a sign, NaN) is left to the driver and the server's refusal.
        """
        try:
            if not all(_UNSIGNED_DECIMAL("".join(values[c::_WIDTH])) for c in _DECIMAL_COLUMNS):
                return None
        except TypeError:  # a None among the decimals
            return None
        group, per_statement = self._values_group(), _MYSQL_ROWS_PER_STATEMENT * _WIDTH
        statements = []
        for lo in range(0, len(values), per_statement):
            chunk = tuple(values[lo : lo + per_statement])
            try:
                rows = ",".join([_MYSQL_ROW] * (len(chunk) // _WIDTH)) % chunk
            except TypeError:  # not an integer where %d wants one
                return None
            statements.append(self._upsert_sql.replace(group, rows))
        return statements

    @staticmethod
    def _run_all(conn: Connection, statements: list[str]) -> None:
        for sql in statements:
            conn.exec_driver_sql(sql)

    def _values_group(self) -> str:
        """The one ``(?, ?, ...)`` of the compiled upsert, checked to be there exactly once."""
        mark = "?" if self._dialect == "sqlite" else "%s"
        group = "(" + ", ".join([mark] * _WIDTH) + ")"
        if self._upsert_sql.count(group) != 1:
            raise ExtractorError(f"cannot find the one VALUES group {group} in {self._upsert_sql}")
        return group

    def _series(self, symbol: str, interval: Interval) -> ColumnElement[bool]:
        return and_(_k.symbol == symbol, _k.interval == interval.name)

    def _last_open_time_before(self, symbol: str, interval: Interval, before: int | None) -> int | None:
        where = self._series(symbol, interval)
        if before is not None:
            where = and_(where, _k.open_time < before)
        return _int(self._scalar(select(func.max(_k.open_time)).where(where)))

    def _first_open_time_from(self, symbol: str, interval: Interval, start: int) -> int | None:
        where = and_(self._series(symbol, interval), _k.open_time >= start)
        return _int(self._scalar(select(func.min(_k.open_time)).where(where)))

    def _count(self, symbol: str, interval: Interval, start: int, end: int) -> int:
        where = and_(self._series(symbol, interval), _k.open_time >= start, _k.open_time < end)
        return int(self._scalar(select(func.count()).select_from(klines_table).where(where)) or 0)

    def _open_times_page(
        self, symbol: str, interval: Interval, start: int, end: int, limit: int
    ) -> list[int]:
        where = and_(self._series(symbol, interval), _k.open_time >= start, _k.open_time < end)
        query = select(_k.open_time).where(where).order_by(_k.open_time).limit(limit)
        with self._serial, self._engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def _read_page(self, symbol: str, interval: Interval, start: int, end: int, limit: int) -> list[Kline]:
        where = and_(self._series(symbol, interval), _k.open_time >= start, _k.open_time < end)
        query = select(klines_table).where(where).order_by(_k.open_time).limit(limit)
        with self._serial, self._engine.connect() as conn:
            return [Kline(*row) for row in conn.execute(query)]

    def missing_ranges(self, symbol: str, interval: Interval, start: int, end: int) -> list[tuple[int, int]]:
        """Holes found by the database (a count, then LAG if short), so 1s candles never reach Python."""
        if interval.is_calendar:
            return super().missing_ranges(symbol, interval, start, end)
        validate_symbol(symbol)
        if start >= end:
            return []
        step = interval.length_ms
        phase = interval.ceil(start) if interval.is_anchored else self._phase(symbol, interval, end)
        if phase is None:
            return [(start, end)]
        first = start + (phase - start) % step
        if first >= end:
            return []
        return self._guard(self._holes_in_grid, symbol, interval, first, end, step)

    def _holes_in_grid(
        self, symbol: str, interval: Interval, first: int, end: int, step: int
    ) -> list[tuple[int, int]]:
        on_grid = and_(
            self._series(symbol, interval),
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
        with self._serial, self._engine.connect() as conn:
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

    def _mark_exchange_gap(self, symbol: str, interval: Interval, start: int, end: int) -> None:
        touching = and_(
            _g.symbol == symbol, _g.interval == interval.name, _g.start_time <= end, _g.end_time >= start
        )

        def merge(conn: Connection) -> None:
            known = conn.execute(select(_g.start_time, _g.end_time).where(touching).with_for_update()).all()
            lo = min([start, *(row[0] for row in known)])
            hi = max([end, *(row[1] for row in known)])
            conn.execute(delete(exchange_gaps_table).where(touching))
            conn.execute(
                insert(exchange_gaps_table).values(
                    symbol=symbol, interval=interval.name, start_time=lo, end_time=hi
                )
            )

        self._transaction(merge)

    def _exchange_gaps(self, symbol: str, interval: Interval, start: int, end: int) -> list[tuple[int, int]]:
        where = and_(
            _g.symbol == symbol, _g.interval == interval.name, _g.start_time < end, _g.end_time > start
        )
        with self._serial, self._engine.connect() as conn:
            rows = conn.execute(select(_g.start_time, _g.end_time).where(where).order_by(_g.start_time))
            return [(int(lo), int(hi)) for lo, hi in rows]

    def _probe(self) -> None:
        with self._serial, self._writer.connect() as conn:
            transaction = conn.begin()
            try:
                conn.execute(
                    insert(exchange_gaps_table).values(
                        symbol="-PROBE-", interval="1s", start_time=0, end_time=1
                    )
                )
            finally:
                transaction.rollback()

    def _telemetry_sink(self) -> TelemetrySink:
        def write(events: list[BreakerEvent], operations: list[BreakerOperation]) -> None:
            def insert_rows(conn: Connection) -> None:
                if events:
                    conn.execute(insert(events_table), [_fields(e) for e in events])
                if operations:
                    conn.execute(insert(operations_table), [_fields(o) for o in operations])

            self._translated(self._transaction, insert_rows)

        return write

    def _dispose(self) -> None:
        self._engine.dispose()

    # -- run lock -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _run_lock(self, name: str) -> Iterator[None]:
        if self._memory:
            since = self._process_locks.acquire(name)
            if since is not None:
                raise self._locked(name, f"in this process, since {format_utc(since)}")
            try:
                yield
            finally:
                self._process_locks.release(name)
        elif self._dialect == "sqlite":
            with self._file_lock(name):
                yield
        else:
            with self._mysql_lock(name):
                yield

    @contextlib.contextmanager
    def _file_lock(self, name: str) -> Iterator[None]:
        suffix = ".lock" if name == "extract" else f".{name}.lock"
        path = Path(self._database + suffix)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageUnavailable(f"cannot open the lock file {path}: {exc.strerror}") from exc
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

    @contextlib.contextmanager
    def _mysql_lock(self, name: str) -> Iterator[None]:
        lock_name = f"binance-extractor:{self._database}:{name}"
        if len(lock_name) > 64:
            lock_name = "binance-extractor:" + hashlib.sha1(lock_name.encode()).hexdigest()
        conn = self._guard(self._lock_connection, lock_name)
        if conn is None:
            raise self._locked(name, self._guard(self._mysql_holder, lock_name))
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

    def _mysql_holder(self, lock_name: str) -> str:
        with self._engine.connect() as conn:
            holder = conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (lock_name,)).scalar()
            if holder is None:
                return "it was just released"
            row = conn.exec_driver_sql(
                "SELECT HOST, TIME FROM information_schema.PROCESSLIST WHERE ID = %s", (holder,)
            ).first()
        if row is None:
            return f"MySQL connection {holder}"
        idle_since = format_utc(time.time() - float(row[1]))
        return f"MySQL connection {holder} from {row[0]}, idle since {idle_since}"

    # -- helpers --------------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[Connection], Any]) -> None:
        """Run ``work`` in one write transaction; MySQL deadlocks and lock timeouts are run again."""
        for attempt in range(1, _TRANSACTION_ATTEMPTS + 1):
            try:
                with self._serial, self._writer.begin() as conn:
                    work(conn)
                return
            except sa_exc.OperationalError as exc:
                if attempt == _TRANSACTION_ATTEMPTS or _mysql_code(exc) not in _RETRYABLE_MYSQL:
                    raise

    def _scalar(self, query: Any) -> Any:
        with self._serial, self._engine.connect() as conn:
            return conn.execute(query).scalar()

    def _compile_upsert(self) -> str:
        """The batch upsert as driver SQL with positional parameters in Kline field order."""
        table = klines_table
        updates = [c.name for c in table.columns if not c.primary_key]
        if self._dialect == "sqlite":
            lite = sqlite_insert(table)
            statement: Any = lite.on_conflict_do_update(
                index_elements=list(table.primary_key.columns),
                set_={name: lite.excluded[name] for name in updates},
            )
        else:
            my = mysql_insert(table)
            statement = my.on_duplicate_key_update({name: my.inserted[name] for name in updates})
        compiled = statement.compile(dialect=self._engine.dialect)
        if tuple(compiled.positiontup or ()) != FIELDS:
            raise ExtractorError(f"upsert parameters {compiled.positiontup} are not in Kline field order")
        return str(compiled)

    def _translate(self, exc: sa_exc.DBAPIError) -> ExtractorError:
        reason = str(exc.orig) if exc.orig is not None else str(exc)
        if self._secret:
            reason = reason.replace(self._secret, "***")
        reason = reason[:300]
        code = _mysql_code(exc)
        if code in _REFUSED_MYSQL:
            return BadInputError(
                f"the database at {self.url} refused the login or the database name: {reason}"
            )
        lost = exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError)
        if isinstance(exc, sa_exc.OperationalError) and self._dialect == "sqlite":
            lost = lost or any(word in reason.lower() for word in _SQLITE_UNAVAILABLE)
        elif isinstance(exc, sa_exc.OperationalError):
            lost = True
        if lost:
            return StorageUnavailable(f"the database at {self.url} is unavailable: {reason}")
        return StorageError(f"the database at {self.url} refused the operation: {reason}")


class ProcessLocks:
    """Named non-blocking locks inside one process (the run lock of an in-memory database)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._since: dict[str, float] = {}

    def acquire(self, name: str) -> float | None:
        """Take ``name``; returns None on success, else when the holder took it."""
        with self._guard:
            if name in self._since:
                return self._since[name]
            self._since[name] = time.time()
            return None

    def release(self, name: str) -> None:
        with self._guard:
            self._since.pop(name, None)


def _parse(url: str) -> URL:
    if url.startswith("mysql://"):
        url = "mysql+pymysql://" + url[len("mysql://") :]
    try:
        sa_url = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise BadInputError(f"cannot parse the database URL {url.split('://')[0]}://…: {exc}") from exc
    return sa_url


def _sqlite_engine(sa_url: URL) -> Engine:
    database = sa_url.database
    if database in (None, "", ":memory:"):
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        assert database is not None
        folder = Path(database).parent
        if not folder.is_dir():
            raise BadInputError(
                f"cannot create the SQLite database {database}: the directory {folder} does not exist"
            )
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
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_write") else "BEGIN"
        )

    return engine


def _mysql_engine(sa_url: URL) -> Engine:
    if not sa_url.database:
        raise BadInputError(
            f"the MySQL URL {sa_url.render_as_string(hide_password=True)} names no database; "
            "add it as the path, e.g. mysql+pymysql://user:pass@host:3306/klines"
        )
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


def _text_values(klines: Sequence[Kline]) -> list[Any]:
    """The parameters of ``klines``, row after row, with each Decimal as plain text (``0.00000000``)."""
    values: list[Any] = []
    add = values.extend
    text = str
    for symbol, interval, t, o, h, lo, c, v, close_time, qv, trades, tbv, tqv in klines:
        add(
            (
                symbol,
                interval,
                t,
                text(o),
                text(h),
                text(lo),
                text(c),
                text(v),
                close_time,
                text(qv),
                trades,
                text(tbv),
                text(tqv),
            )
        )
    # str() writes zero and values under 1e-6 with an exponent ("0E-8"), and None as "None": rare enough
    # to look for once per column of a batch.
    for column in _DECIMAL_COLUMNS:
        texts = "".join(values[column::_WIDTH])
        if "E" in texts or "N" in texts:
            for i in range(column, len(values), _WIDTH):
                if "E" in values[i] or "N" in values[i]:
                    values[i] = _plain_or_none(klines[i // _WIDTH][column])
    return values


def _plain_or_none(value: Any) -> str | None:
    return None if value is None else plain(value)


_DECIMAL_COLUMNS = tuple(i for i, name in enumerate(FIELDS) if name in DECIMAL_FIELDS)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _fields(row: BreakerEvent | BreakerOperation) -> dict[str, Any]:
    return dataclasses.asdict(row)


def _mysql_code(exc: sa_exc.DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None
