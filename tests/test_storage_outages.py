"""A database that goes away: every try is one db breaker call, the breaker opens within the run, the
transitions land in ``circuit_breaker_events`` (spooled while the database is down), and a write cut off
mid-way leaves nothing (SQL) or a prefix of its window (Mongo). Outages come from a TCP proxy."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import psycopg
import pymongo
import pymysql
import pytest

from extractor.errors import BreakerOpen, StorageError, StorageUnavailable
from extractor.intervals import MINUTE
from extractor.storage import KlineStore, open_store
from tests.services import TcpProxy, free_port, through
from tests.storage_cases import (
    BTC,
    FOREVER,
    T0,
    FakeClock,
    backend_of,
    candles,
    db_breaker,
)
from utils.circuit_breaker import CircuitBreaker, CircuitState, MemoryStateStore

SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mongo", marks=pytest.mark.mongo),
]
SQL_SERVERS = SERVERS[:2]


def no_sleep(seconds: float) -> None:
    """Tries follow each other at once: the tests count tries, not seconds."""


def proxied(request: pytest.FixtureRequest, proxies: type[TcpProxy], backend: str) -> tuple[str, TcpProxy]:
    """A fresh database of ``backend`` and the proxy in front of it; the URL goes through the proxy."""
    direct = cast(str, request.getfixturevalue(f"fresh_{backend}_url"))
    server = urlsplit(direct)
    proxy = proxies(server.hostname or "127.0.0.1", server.port or 0)
    url = through(direct, proxy)
    if backend == "mongo":
        url += "&serverSelectionTimeoutMS=1000"  # above pymongo's 0.5 s re-check of a failed server
    return url, proxy


def cut_off(proxy: TcpProxy) -> None:
    proxy.refuse(True)
    proxy.drop_connections()


# ---------------------------------------------------------------------------------------------- tries


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://root:s3cr3t@127.0.0.1:{port}/test",
        "postgresql+psycopg://root:s3cr3t@127.0.0.1:{port}/test",
    ],
    ids=["mysql", "postgres"],
)
def test_a_closed_port_is_tried_until_the_breaker_opens_and_no_message_shows_the_password(url: str) -> None:
    url = url.format(port=free_port())
    breaker = db_breaker(threshold=4)
    sleeps: list[float] = []

    with pytest.raises(BreakerOpen, match="db circuit breaker is open") as opened:
        open_store(url, breaker=breaker, sleep=sleeps.append)

    assert sleeps == [0.25, 0.5, 1.0] and breaker.failure_count == 4 and breaker.state == CircuitState.OPEN
    message = str(opened.value)
    assert "root:***@127.0.0.1" in message and "s3cr3t" not in message and "unavailable" in message
    with pytest.raises(BreakerOpen):  # refused at once, with no try and no wait
        open_store(url, breaker=breaker, sleep=sleeps.append)
    assert sleeps == [0.25, 0.5, 1.0] and breaker.failure_count == 4


def test_with_the_breaker_disabled_a_lost_server_is_tried_five_times() -> None:
    breaker = CircuitBreaker(expected_exception=StorageUnavailable, name="db", enabled=False)
    sleeps: list[float] = []

    with pytest.raises(StorageUnavailable, match="unavailable"):
        open_store(f"postgresql://root:pw@127.0.0.1:{free_port()}/test", breaker=breaker, sleep=sleeps.append)

    assert sleeps == [0.25, 0.5, 1.0, 2.0]


@pytest.mark.mongo
def test_a_mongodb_port_with_no_server_opens_the_breaker() -> None:
    breaker = db_breaker(threshold=2)
    url = f"mongodb://root:s3cr3t@127.0.0.1:{free_port()}/klines?decimals=string&serverSelectionTimeoutMS=200"

    with pytest.raises(BreakerOpen) as opened:
        open_store(url, breaker=breaker, sleep=lambda seconds: None)

    assert "127.0.0.1" in str(opened.value) and "s3cr3t" not in str(opened.value)
    assert breaker.failure_count == 2


@pytest.mark.parametrize("backend", SERVERS)
def test_a_lost_server_opens_the_breaker_within_one_write_and_recovery_closes_it(
    request: pytest.FixtureRequest, tcp_proxy_factory: type[TcpProxy], backend: str
) -> None:
    url, proxy = proxied(request, tcp_proxy_factory, backend)
    clock = FakeClock()
    breaker = db_breaker(clock, threshold=4)
    sleeps: list[float] = []
    with open_store(url, breaker=breaker, sleep=sleeps.append) as store:
        store.write(candles(T0, 10))

        cut_off(proxy)
        with pytest.raises(BreakerOpen, match=f"last error: the database at .*{proxy.port}.* is unavailable"):
            store.write(candles(T0 + 10 * MINUTE, 10))
        assert breaker.failure_count == 4 and sleeps == [0.25, 0.5, 1.0]
        with pytest.raises(BreakerOpen):
            store.count(BTC, T0, FOREVER)
        assert sleeps == [0.25, 0.5, 1.0]

        proxy.refuse(False)
        clock.advance(61)
        store.write(candles(T0 + 10 * MINUTE, 10))

        assert breaker.state == CircuitState.CLOSED
        assert store.count(BTC, T0, FOREVER) == 20


# ---------------------------------------------------------------------------------------------- cuts


@pytest.mark.parametrize("backend", SERVERS)
def test_a_write_cut_off_mid_way_leaves_nothing_or_on_mongo_a_prefix(
    request: pytest.FixtureRequest, tcp_proxy_factory: type[TcpProxy], backend: str
) -> None:
    url, proxy = proxied(request, tcp_proxy_factory, backend)
    first, second = candles(T0, 2_500), candles(T0 + 2_500 * MINUTE, 2_500)
    with open_store(url, breaker=db_breaker(), sleep=no_sleep) as store:
        sent = proxy.bytes_to_server
        store.write_all(iter([candles(T0 - 2_500 * MINUTE, 2_500)]))  # what one batch costs on the wire
        one_batch = proxy.bytes_to_server - sent
        proxy.cut_after(one_batch * 3 // 2)  # the first batch whole, the second cut in its middle

        with pytest.raises(StorageUnavailable):
            store.write_all(iter([first, second]))

        proxy.refuse(False)
        stored = list(store.open_times(BTC, T0, FOREVER))
    if backend == "mongo":  # ordered bulk writes, one per batch: the first batch is the prefix kept
        assert stored == [k.open_time for k in first]
    else:
        assert stored == []


@pytest.mark.mongo
def test_a_mongo_batch_refused_in_its_middle_keeps_its_order(fresh_mongo_url: str) -> None:
    """The unique index refuses a document half-way through: the earlier upserts are undone, so the
    window holds what it held before, a prefix of what the next run rewrites."""
    with open_store(fresh_mongo_url, breaker=db_breaker()) as store:
        store.write(candles(T0, 100))
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(fresh_mongo_url.split("?")[0])
        refused = candles(T0 + 150 * MINUTE, 1)[0]
        client.get_default_database()["klines"].insert_one({**refused._asdict(), "_id": "another writer's"})
        client.close()

        with pytest.raises(StorageError, match="refused a kline"):
            store.write(candles(T0 + 100 * MINUTE, 100))

        assert list(store.open_times(BTC, T0, T0 + 150 * MINUTE)) == [k.open_time for k in candles(T0, 100)]


# ---------------------------------------------------------------------------------------------- events


def server_rows(url: str, sql: str, time_zone: str = "UTC") -> list[tuple[Any, ...]]:
    """``sql`` run as a person would, on a connection of their own in ``time_zone`` (PostgreSQL)."""
    parts = urlsplit(url)
    if backend_of(url) == "mysql":
        connection: Any = pymysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username,
            database=parts.path[1:],
            init_command="SET time_zone = '+00:00'",
        )
    else:
        connection = psycopg.connect(
            host=parts.hostname, port=parts.port, user=parts.username, dbname=parts.path[1:]
        )
        connection.execute(f"SET TimeZone = '{time_zone}'")
    try:
        cursor = connection.cursor()
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        connection.close()


def listened(url: str, breaker: CircuitBreaker, spool: Path) -> KlineStore:
    """A store whose telemetry hears ``breaker`` from before it opens, as the runtime builds it."""
    store = open_store(url, breaker=breaker, sleep=no_sleep, create=False, telemetry_spool=spool)
    breaker.add_listener(store.telemetry())
    store.open()
    return store


@pytest.mark.parametrize("backend", SQL_SERVERS)
def test_an_outage_is_told_in_circuit_breaker_events_even_by_the_run_that_could_not_write_it(
    request: pytest.FixtureRequest, tcp_proxy_factory: type[TcpProxy], backend: str, tmp_path: Path
) -> None:
    url, proxy = proxied(request, tcp_proxy_factory, backend)
    direct = cast(str, request.getfixturevalue(f"fresh_{backend}_url"))
    spool = tmp_path / "telemetry.jsonl"
    clock, states = FakeClock(), MemoryStateStore()
    failing_run = listened(url, db_breaker(clock, threshold=5, state_store=states), spool)
    failing_run.write(candles(T0, 10))
    cut_off(proxy)
    with pytest.raises(BreakerOpen):
        failing_run.write(candles(T0 + 10 * MINUTE, 10))  # five tries open the breaker in this one write
    failing_run.close()

    assert spool.read_text().count('"kind": "event"') == 1  # CLOSED -> OPEN, kept while the database is down
    assert server_rows(direct, "SELECT state FROM circuit_breaker_events") == []

    proxy.refuse(False)
    next_breaker = db_breaker(clock, threshold=5, state_store=states)  # OPEN, as the last run left it
    clock.advance(61)
    next_run = listened(url, next_breaker, spool)  # its first round trip is the HALF_OPEN trial
    next_run.write(candles(T0 + 10 * MINUTE, 10))
    next_run.close()

    events = server_rows(
        direct,
        "SELECT from_state, state, failure_count, failure_threshold FROM circuit_breaker_events ORDER BY id",
    )
    assert events == [("CLOSED", "OPEN", 5, 5), ("OPEN", "HALF_OPEN", 5, 5), ("HALF_OPEN", "CLOSED", 0, 5)]
    assert spool.read_text() == ""
    operations = server_rows(direct, "SELECT success FROM circuit_breaker_operations ORDER BY id")
    assert [bool(ok) for (ok,) in operations].count(False) == 5


MYSQL_EVENTS = (
    "SELECT timestamp, state, failure_count, failure_threshold FROM circuit_breaker_events "
    "WHERE timestamp >= NOW() - INTERVAL 1 HOUR ORDER BY timestamp DESC;"
)
MYSQL_RATES = (
    "SELECT AVG(CASE WHEN success THEN 1 ELSE 0 END) AS success_rate, COUNT(*) AS total_operations, "
    "AVG(duration_ms) AS avg_duration FROM circuit_breaker_operations "
    "WHERE timestamp >= NOW() - INTERVAL 1 HOUR;"
)
POSTGRES_EVENTS = (
    "SELECT timestamp, state, failure_count, failure_threshold FROM circuit_breaker_events "
    "WHERE timestamp >= now() - interval '1 hour' ORDER BY timestamp DESC;"
)
POSTGRES_RATES = (
    "SELECT AVG(CASE WHEN success THEN 1 ELSE 0 END) AS success_rate, COUNT(*) AS total_operations, "
    "AVG(duration_ms) AS avg_duration FROM circuit_breaker_operations "
    "WHERE timestamp >= now() - interval '1 hour';"
)


@pytest.mark.parametrize(
    ("backend", "events_sql", "rates_sql"),
    [
        pytest.param("mysql", MYSQL_EVENTS, MYSQL_RATES, marks=pytest.mark.mysql),
        pytest.param("postgres", POSTGRES_EVENTS, POSTGRES_RATES, marks=pytest.mark.postgres),
    ],
)
def test_the_monitoring_queries_run_verbatim(
    request: pytest.FixtureRequest,
    tcp_proxy_factory: type[TcpProxy],
    tmp_path: Path,
    backend: str,
    events_sql: str,
    rates_sql: str,
) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert events_sql in readme and rates_sql in readme, "the README's monitoring queries changed"
    url, proxy = proxied(request, tcp_proxy_factory, backend)
    direct = cast(str, request.getfixturevalue(f"fresh_{backend}_url"))
    clock = FakeClock()
    store = listened(url, db_breaker(clock, threshold=2), tmp_path / "spool.jsonl")
    for minute in range(0, 40, 10):
        store.write(candles(T0 + minute * MINUTE, 10))
    cut_off(proxy)
    with pytest.raises(BreakerOpen):
        store.write(candles(T0, 1))  # two tries fail and open the breaker
    proxy.refuse(False)
    clock.advance(61)
    store.write(candles(T0, 1))
    store.close()

    # PostgreSQL's timestamps are timestamptz: a reader in any time zone sees the last hour right
    zone = "Asia/Tokyo" if backend == "postgres" else "UTC"
    events = server_rows(direct, events_sql, zone)
    ((success_rate, total, avg_duration),) = server_rows(direct, rates_sql, zone)

    assert sorted(state for _, state, _, _ in events) == ["CLOSED", "HALF_OPEN", "OPEN"]
    assert all(threshold == 2 for *_, threshold in events)
    # opening (schema), 4 writes, 2 failed tries, 1 write: the operations of the store's breaker
    assert total == 8 and float(success_rate) == pytest.approx(6 / 8) and avg_duration > 0


# ---------------------------------------------------------------------------------------------- SQLite


def operations_in(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM circuit_breaker_operations").fetchone()[0])


def test_telemetry_is_written_every_500_operations_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "klines.db"
    store = open_store(f"sqlite:///{path}", breaker=db_breaker())
    store.breaker.add_listener(store.telemetry())

    for _ in range(499):
        store.count(BTC, T0, FOREVER)
    assert operations_in(path) == 0
    store.count(BTC, T0, FOREVER)
    assert operations_in(path) == 500
    store.write(candles(T0, 3))
    store.close()
    assert operations_in(path) == 501


@pytest.mark.parametrize("spooled", [False, True], ids=["in memory", "spooled"])
def test_telemetry_never_breaks_the_guarded_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spooled: bool
) -> None:
    path, spool = tmp_path / "klines.db", tmp_path / "telemetry.jsonl"
    store = open_store(f"sqlite:///{path}", breaker=db_breaker(), telemetry_spool=spool if spooled else None)
    store.breaker.add_listener(store.telemetry())
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE circuit_breaker_operations RENAME TO moved_away")

    counts = [store.count(BTC, T0, FOREVER) for _ in range(500)]  # the 500th flushes, and fails
    store.write(candles(T0, 3))
    store.close()

    assert counts == [0] * 500
    assert "could not record 500 circuit-breaker rows" in caplog.text
    if not spooled:
        assert "kept for the next flush" in caplog.text
        assert "could not record 501 circuit-breaker rows" in caplog.text and "dropped" in caplog.text
        return
    assert f"spooled to {spool}" in caplog.text
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE moved_away RENAME TO circuit_breaker_operations")
    open_store(f"sqlite:///{path}", breaker=db_breaker(), telemetry_spool=spool).close()  # the next run
    assert operations_in(path) == 501 and spool.read_text() == ""
