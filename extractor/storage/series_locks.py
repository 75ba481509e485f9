"""Locks on single series, so two runs never write one series at once (a backfill and an extract, or
two shards of fleets that overlap).

Each lock ends with whatever holds it: an open file description (SQLite: byte-range locks in one lock
file, one byte per series), a database session (MySQL's GET_LOCK, PostgreSQL's advisory locks) or a
lease that expires (MongoDB). A killed run never leaves one held. Taking many is one round trip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from extractor.klines import Series
from extractor.storage.records import SeriesLocks

MAX_PER_STATEMENT = 500
"""Locks asked for in one statement (a SELECT of GET_LOCK calls stays far under max_allowed_packet)."""
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
"""Locks owned by the open file description (Linux 3.15+): they exclude even within one process."""
_FLOCK = struct.Struct("hhqqi4x")
"""struct flock on Linux x86_64 and aarch64: l_type, l_whence, l_start, l_len, l_pid."""


def series_key(database: str, series: Series) -> str:
    return f"binance-extractor:{database}:{series.market.name}:{series.symbol}:{series.interval.name}"


def _digest(text: str, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "big")


@contextlib.contextmanager
def file_locks(path: Path, series: Sequence[Series]) -> Iterator[SeriesLocks]:
    """One byte per series in ``path`` (at a 48-bit hash of its key), locked with open-file-description
    locks: released when the file is closed, or when the process dies."""
    locks = SeriesLocks()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for one in series:
            offset = _digest(series_key(str(path), one), 6)
            try:
                fcntl.fcntl(fd, _OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
            except OSError:
                locks.busy.append(one)
            else:
                locks.held.append(one)
        yield locks
    finally:
        os.close(fd)


def _lock_name(database: str, series: Series) -> str:
    name = series_key(database, series)
    return name if len(name) <= 64 else "binance-extractor:" + hashlib.sha1(name.encode()).hexdigest()


@contextlib.contextmanager
def mysql_locks(engine: Engine, database: str, series: Sequence[Series]) -> Iterator[SeriesLocks]:
    """GET_LOCK per series on one session of its own, many in one SELECT; the session ends them."""
    locks = SeriesLocks()
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        conn.exec_driver_sql("SET SESSION wait_timeout = 31536000")
        for lo in range(0, len(series), MAX_PER_STATEMENT):
            chunk = series[lo : lo + MAX_PER_STATEMENT]
            names = tuple(_lock_name(database, one) for one in chunk)
            got = conn.exec_driver_sql("SELECT " + ", ".join(["GET_LOCK(%s, 0)"] * len(names)), names).one()
            for one, taken in zip(chunk, got, strict=True):
                (locks.held if taken == 1 else locks.busy).append(one)
        yield locks
    finally:
        _end_session(conn, "SELECT RELEASE_ALL_LOCKS()")


@contextlib.contextmanager
def postgres_locks(engine: Engine, database: str, series: Sequence[Series]) -> Iterator[SeriesLocks]:
    """pg_try_advisory_lock per series on one session of its own, all in one query."""
    locks = SeriesLocks()
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        keys = [_digest(series_key(database, one), 8) >> 1 for one in series]
        if keys:
            rows = conn.exec_driver_sql(
                "SELECT k, pg_try_advisory_lock(k)"
                " FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
                (keys,),
            ).all()
            for one, (_, taken) in zip(series, rows, strict=True):
                (locks.held if taken else locks.busy).append(one)
        yield locks
    finally:
        _end_session(conn, "SELECT pg_advisory_unlock_all()")


def _end_session(conn: Connection, release: str) -> None:
    """Release, then close the session for good: an unheard release still ends with the session."""
    with contextlib.suppress(sa_exc.SQLAlchemyError):
        conn.exec_driver_sql(release)
    with contextlib.suppress(sa_exc.SQLAlchemyError):
        conn.invalidate()
        conn.close()
