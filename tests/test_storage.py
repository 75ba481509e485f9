"""The KlineStore contract, the same tests over SQLite (file and memory), MariaDB and MongoDB."""

from __future__ import annotations

import random
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import bson
import pymongo
import pymysql
import pytest
from bson.decimal128 import Decimal128

from extractor.errors import BadInputError, BreakerOpen, RunLocked, StorageError, StorageUnavailable
from extractor.intervals import DAY, MINUTE, Interval
from extractor.klines import DECIMAL_FIELDS, FIELDS, Kline, to_row
from extractor.storage import KlineStore, mask_url, open_store
from extractor.storage.mongo import kline_document, kline_from_document
from tests.services import TcpProxy, free_port
from utils.circuit_breaker import CircuitBreaker, CircuitState

M1 = Interval.parse("1m")
H1 = Interval.parse("1h")
D3 = Interval.parse("3d")
W1 = Interval.parse("1w")
MONTH = Interval.parse("1M")
T0 = 1_700_000_040_000 - 1_700_000_040_000 % DAY  # 2023-11-14 00:00 UTC
EXTREMES = ("0.00000001", "123456789.12345678", "98765432109.87654321", "12345678901234.12345678")


class FakeClock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def db_breaker(clock: FakeClock | None = None, threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=threshold,
        recovery_timeout=60,
        expected_exception=StorageUnavailable,
        name="db",
        clock=clock or FakeClock(),
    )


def candle(
    open_time: int, interval: Interval = M1, symbol: str = "BTCUSDT", price: str = "42000.12345678"
) -> Kline:
    p = Decimal(price)
    return Kline(
        symbol,
        interval.name,
        open_time,
        p,
        p + Decimal("1.5"),
        p - Decimal("1.5"),
        p,
        Decimal("12.34500000"),
        interval.close_time(open_time),
        Decimal("518400.99000000"),
        1234,
        Decimal("6.17250000"),
        Decimal("259200.49500000"),
    )


def every_decimal(kline: Kline, value: Decimal) -> Kline:
    return Kline._make(
        value if name in DECIMAL_FIELDS else field for name, field in zip(FIELDS, kline, strict=True)
    )


def series(start: int, count: int, interval: Interval = M1, **fields: Any) -> list[Kline]:
    return [candle(interval.advance(start, i), interval, **fields) for i in range(count)]


# ---------------------------------------------------------------------------------------------- fixtures

BACKENDS = [
    "sqlite-file",
    "sqlite-memory",
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("mongo", marks=pytest.mark.mongo),
]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    backend = request.param
    if backend == "sqlite-file":
        return f"sqlite:///{tmp_path}/klines.db"
    if backend == "sqlite-memory":
        return "sqlite:///:memory:"
    if backend == "mysql":
        return cast(str, request.getfixturevalue("fresh_mysql_url"))
    return cast(str, request.getfixturevalue("fresh_mongo_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[KlineStore]:
    with open_store(store_url, breaker=db_breaker()) as opened:
        yield opened


def same_database(store: KlineStore, store_url: str) -> KlineStore:
    """A second store on the database of ``store`` (an in-memory database exists once: itself)."""
    return store if store_url.endswith(":memory:") else open_store(store_url, breaker=db_breaker())


def is_mongo(store_url: str) -> bool:
    return store_url.startswith("mongodb")


# ---------------------------------------------------------------------------------------------- data


def test_extreme_values_come_back_exactly(store: KlineStore) -> None:
    written = []
    for i, text in enumerate(EXTREMES):
        value = Decimal(text)
        written.append(every_decimal(candle(T0 + i * MINUTE), value))
    store.write(written)

    read = list(store.read("BTCUSDT", M1, T0, T0 + DAY))

    assert read == written
    assert [to_row(k) for k in read] == [to_row(k) for k in written]  # the same text, not only equal


def test_rewriting_a_batch_updates_values_and_adds_no_rows(store: KlineStore) -> None:
    store.write(series(T0, 50))
    store.write(series(T0, 50, price="1.00000001"))

    assert store.count("BTCUSDT", M1, T0, T0 + DAY) == 50
    assert {k.open for k in store.read("BTCUSDT", M1, T0, T0 + DAY)} == {Decimal("1.00000001")}


def test_last_open_time_is_per_series_and_minute_and_month_never_collide(store: KlineStore) -> None:
    assert store.last_open_time("BTCUSDT", M1) is None
    month_start = MONTH.align(T0)
    store.write([candle(month_start, M1), candle(month_start + MINUTE, M1), candle(month_start, MONTH)])
    store.write([candle(month_start + 5 * MINUTE, M1, symbol="ETHUSDT")])

    assert store.last_open_time("BTCUSDT", M1) == month_start + MINUTE
    assert store.last_open_time("BTCUSDT", MONTH) == month_start
    assert store.last_open_time("ETHUSDT", M1) == month_start + 5 * MINUTE
    assert store.count("BTCUSDT", MONTH, 0, 2**62) == 1


def test_first_open_time_is_the_oldest_of_its_series(store: KlineStore) -> None:
    assert store.first_open_time("BTCUSDT", M1) is None
    store.write([candle(T0 + 2 * MINUTE), candle(T0 + MINUTE), candle(MONTH.align(T0), MONTH)])
    store.write([candle(T0, symbol="ETHUSDT")])

    assert store.first_open_time("BTCUSDT", M1) == T0 + MINUTE
    assert store.first_open_time("ETHUSDT", M1) == T0


def test_count_and_read_use_half_open_ranges(store: KlineStore) -> None:
    store.write(series(T0, 10))

    assert store.count("BTCUSDT", M1, T0 + 2 * MINUTE, T0 + 5 * MINUTE) == 3
    assert [k.open_time for k in store.read("BTCUSDT", M1, T0 + 8 * MINUTE, T0 + 20 * MINUTE)] == [
        T0 + 8 * MINUTE,
        T0 + 9 * MINUTE,
    ]
    assert list(store.open_times("BTCUSDT", M1, T0, T0 + 3 * MINUTE)) == [T0, T0 + MINUTE, T0 + 2 * MINUTE]


def test_missing_ranges_finds_holes_at_start_middle_and_end(store: KlineStore) -> None:
    stored = [t for t in range(T0 + 2 * MINUTE, T0 + 10 * MINUTE, MINUTE) if t not in (T0 + 5 * MINUTE,)]
    store.write([candle(t) for t in stored])

    holes = store.missing_ranges("BTCUSDT", M1, T0, T0 + 12 * MINUTE)

    assert holes == [
        (T0, T0 + 2 * MINUTE),
        (T0 + 5 * MINUTE, T0 + 6 * MINUTE),
        (T0 + 10 * MINUTE, T0 + 12 * MINUTE),
    ]
    assert store.missing_ranges("BTCUSDT", M1, T0 + 2 * MINUTE, T0 + 5 * MINUTE) == []
    assert store.missing_ranges("ETHUSDT", M1, T0, T0 + 3 * MINUTE) == [(T0, T0 + 3 * MINUTE)]


def test_missing_ranges_follow_the_calendar_for_months_and_weeks(store: KlineStore) -> None:
    jan = MONTH.align(1_704_067_200_000)  # 2024-01-01
    months = [MONTH.advance(jan, i) for i in range(7)]  # Jan .. Jul
    store.write([candle(t, MONTH) for t in (months[0], months[1], months[3], months[4])])
    monday = W1.align(T0)
    weeks = [W1.advance(monday, i) for i in range(6)]
    store.write([candle(t, W1) for t in (weeks[1], weeks[2], weeks[4])])

    assert store.missing_ranges("BTCUSDT", MONTH, MONTH.advance(jan, -1), months[6]) == [
        (MONTH.advance(jan, -1), months[0]),
        (months[2], months[3]),
        (months[5], months[6]),
    ]
    assert store.missing_ranges("BTCUSDT", W1, monday, weeks[5] + 1) == [
        (weeks[0], weeks[1]),
        (weeks[3], weeks[4]),
        (weeks[5], weeks[5] + 1),
    ]


def test_missing_ranges_for_3d_follow_the_stored_phase(store: KlineStore) -> None:
    phase = T0 + DAY  # not a multiple of three days since the epoch
    step = 3 * DAY
    assert store.missing_ranges("BTCUSDT", D3, T0, T0 + 30 * DAY) == [(T0, T0 + 30 * DAY)]
    store.write([candle(phase + i * step, D3) for i in (0, 1, 3)])

    assert store.missing_ranges("BTCUSDT", D3, T0, phase + 5 * step) == [
        (phase + 2 * step, phase + 3 * step),
        (phase + 4 * step, phase + 5 * step),
    ]
    assert store.missing_ranges("BTCUSDT", D3, phase - 2 * step, phase) == [(phase - 2 * step, phase)]


@pytest.mark.parametrize("interval", [M1, H1, W1, D3], ids=str)
def test_database_hole_finder_agrees_with_the_plain_walk(store: KlineStore, interval: Interval) -> None:
    chooser = random.Random(f"holes-{interval}")
    first = interval.ceil(T0) + (DAY if interval is D3 else 0)
    grid = [interval.advance(first, i) for i in range(120)]
    store.write([candle(t, interval) for t in grid if chooser.random() < 0.6])

    for start, end in [
        (grid[0], grid[-1]),
        (grid[3] - 1, grid[50] + 1),
        (grid[0] - 5 * DAY, grid[-1] + 9 * DAY),
    ]:
        assert store.missing_ranges("BTCUSDT", interval, start, end) == KlineStore.missing_ranges(
            store, "BTCUSDT", interval, start, end
        )


def test_exchange_gaps_are_merged_clipped_and_idempotent(store: KlineStore) -> None:
    store.mark_exchange_gap("BTCUSDT", M1, T0, T0 + 10 * MINUTE)
    store.mark_exchange_gap("BTCUSDT", M1, T0 + 10 * MINUTE, T0 + 20 * MINUTE)
    store.mark_exchange_gap("BTCUSDT", M1, T0 + 5 * MINUTE, T0 + 15 * MINUTE)
    store.mark_exchange_gap("BTCUSDT", M1, T0 + 40 * MINUTE, T0 + 50 * MINUTE)
    store.mark_exchange_gap("BTCUSDT", H1, T0, T0 + DAY)

    assert store.exchange_gaps("BTCUSDT", M1, 0, 2**62) == [
        (T0, T0 + 20 * MINUTE),
        (T0 + 40 * MINUTE, T0 + 50 * MINUTE),
    ]
    assert store.exchange_gaps("BTCUSDT", M1, T0 + 15 * MINUTE, T0 + 45 * MINUTE) == [
        (T0 + 15 * MINUTE, T0 + 20 * MINUTE),
        (T0 + 40 * MINUTE, T0 + 45 * MINUTE),
    ]
    assert store.exchange_gaps("ETHUSDT", M1, 0, 2**62) == []


def test_a_ten_thousand_row_batch_is_written_whole(store: KlineStore) -> None:
    batch = series(T0, 10_000)

    assert store.write(batch) == 10_000

    assert store.count("BTCUSDT", M1, T0, T0 + 10_000 * MINUTE) == 10_000
    assert store.missing_ranges("BTCUSDT", M1, T0, T0 + 10_000 * MINUTE) == []
    read = list(store.read("BTCUSDT", M1, T0, T0 + 10_000 * MINUTE))
    assert read[0] == batch[0] and read[-1] == batch[-1] and len(read) == 10_000


def test_two_threads_writing_overlapping_batches_store_each_candle_once(store: KlineStore) -> None:
    errors: list[BaseException] = []

    def writer(first: int) -> None:
        try:
            for chunk in range(4):
                store.write(series(T0 + (first + chunk * 250) * MINUTE, 250))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(offset,)) for offset in (0, 500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert store.count("BTCUSDT", M1, T0, T0 + 2 * DAY) == 1500
    assert store.missing_ranges("BTCUSDT", M1, T0, T0 + 1500 * MINUTE) == []


def test_a_failing_batch_leaves_nothing_behind(store: KlineStore, store_url: str) -> None:
    store.write([candle(T0, price="1.00000000")])
    batch = series(T0, 6, price="2.00000000")
    expected = [T0]
    if is_mongo(store_url):
        # another writer's document under the same key but its own _id: the unique index refuses one upsert
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store_url.split("?")[0])
        foreign = kline_document(candle(T0 + 3 * MINUTE), decimal128=False) | {"_id": "written elsewhere"}
        client.get_default_database()["klines"].insert_one(foreign)
        client.close()
        expected = [T0, T0 + 3 * MINUTE]
    else:
        batch[3] = batch[3]._replace(open=cast(Decimal, None))  # NOT NULL refuses it mid-batch

    with pytest.raises(StorageError, match="refused"):
        store.write(batch)

    assert [k.open_time for k in store.read("BTCUSDT", M1, T0, T0 + DAY)] == expected
    if not is_mongo(store_url):  # MongoDB undoes inserts only: an updated document keeps its new values
        assert next(store.read("BTCUSDT", M1, T0, T0 + 1)).open == Decimal("1.00000000")


def test_symbols_are_validated_before_any_query(store: KlineStore) -> None:
    store.breaker.state = CircuitState.OPEN  # any query would now be refused
    bad = "btc usdt"
    calls: list[Callable[[], object]] = [
        lambda: store.write([candle(T0, symbol=bad)]),
        lambda: store.last_open_time(bad, M1),
        lambda: store.count(bad, M1, T0, T0 + DAY),
        lambda: store.missing_ranges(bad, M1, T0, T0 + DAY),
        lambda: store.missing_ranges(bad, MONTH, T0, T0 + DAY),
        lambda: store.open_times(bad, M1, T0, T0 + DAY),
        lambda: store.read(bad, M1, T0, T0 + DAY),
        lambda: store.mark_exchange_gap(bad, M1, T0, T0 + DAY),
        lambda: store.exchange_gaps(bad, M1, T0, T0 + DAY),
        lambda: store.write([candle(T0, symbol="A" * 21)]),
    ]
    for call in calls:
        with pytest.raises(BadInputError, match="invalid symbol"):
            call()
    with pytest.raises(BreakerOpen):  # the same call with a good symbol does reach for the database
        store.count("BTCUSDT", M1, T0, T0 + DAY)


def test_a_second_run_on_the_same_database_is_locked_out(store: KlineStore, store_url: str) -> None:
    other = same_database(store, store_url)
    try:
        with store.run_lock("extract"):
            with pytest.raises(RunLocked) as locked, other.run_lock("extract"):
                pass
            with other.run_lock("backfill"):  # another name is another lock
                pass
        message = str(locked.value)
        assert message.startswith(f"another binance-extractor run holds the extract lock on {store.url} (")
        assert message.endswith("try again when it finishes")
        with other.run_lock("extract"):  # released on exit
            pass
    finally:
        if other is not store:
            other.close()


def test_check_writable_leaves_no_probe_behind(store: KlineStore) -> None:
    store.check_writable()
    store.check_writable()

    assert store.exchange_gaps("-PROBE-", Interval.parse("1s"), 0, 2**62) == []


# ---------------------------------------------------------------------------------------------- breaker


def test_a_closed_port_is_tried_three_times_then_opens_the_breaker_and_errors_hide_the_password() -> None:
    breaker = db_breaker(threshold=4)
    sleeps: list[float] = []
    url = "mysql+pymysql://root:s3cr3t@127.0.0.1:1/test"
    with pytest.raises(StorageUnavailable) as failed:
        open_store(url, breaker=breaker, sleep=sleeps.append)
    assert sleeps == [0.25, 1.0] and breaker.failure_count == 3
    assert "root:***@127.0.0.1:1/test" in str(failed.value) and "s3cr3t" not in str(failed.value)

    with pytest.raises(BreakerOpen, match="db circuit breaker is open") as opened:
        open_store(url, breaker=breaker, sleep=sleeps.append)
    assert breaker.failure_count == 4 and breaker.state == CircuitState.OPEN
    assert "root:***@127.0.0.1:1/test" in str(opened.value) and "s3cr3t" not in str(opened.value)


@pytest.mark.mongo
def test_a_mongodb_port_with_no_server_opens_the_breaker() -> None:
    breaker = db_breaker(threshold=2)
    url = f"mongodb://root:s3cr3t@127.0.0.1:{free_port()}/klines?decimals=string&serverSelectionTimeoutMS=200"
    with pytest.raises(BreakerOpen) as opened:
        open_store(url, breaker=breaker, sleep=lambda seconds: None)
    assert "127.0.0.1" in str(opened.value) and "s3cr3t" not in str(opened.value)
    assert breaker.failure_count == 2


def _through(proxy: TcpProxy, url: str) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, _, tail = rest.rpartition("@")
    path = tail.split("/", 1)[1]
    return f"{scheme}://{userinfo + '@' if userinfo else ''}{proxy.address}/{path}"


@pytest.mark.parametrize(
    "service",
    [pytest.param("mysql", marks=pytest.mark.mysql), pytest.param("mongo", marks=pytest.mark.mongo)],
)
def test_a_lost_server_opens_the_breaker_and_recovery_closes_it(
    request: pytest.FixtureRequest, tcp_proxy_factory: type[TcpProxy], service: str
) -> None:
    url = request.getfixturevalue(f"fresh_{service}_url")
    host_port = url.split("://", 1)[1].split("@")[-1].split("/")[0]
    proxy = tcp_proxy_factory(host_port.split(":")[0], int(host_port.split(":")[1]))
    if service == "mongo":
        url += "&serverSelectionTimeoutMS=1000"  # above pymongo's 0.5 s re-check of a failed server
    clock = FakeClock()
    breaker = db_breaker(clock, threshold=4)
    with open_store(_through(proxy, url), breaker=breaker, sleep=lambda seconds: None) as store:
        store.write(series(T0, 10))

        proxy.refuse(True)
        proxy.drop_connections()
        with pytest.raises(StorageUnavailable, match=f"the database at .*{proxy.port}.* is unavailable"):
            store.write(series(T0 + 10 * MINUTE, 10))
        assert breaker.failure_count == 3
        with pytest.raises(BreakerOpen):
            store.write(series(T0 + 10 * MINUTE, 10))
        with pytest.raises(BreakerOpen):
            store.count("BTCUSDT", M1, T0, T0 + DAY)
        assert store.breaker.state == CircuitState.OPEN

        proxy.refuse(False)
        clock.advance(61)
        store.write(series(T0 + 10 * MINUTE, 10))

        assert store.breaker.state == CircuitState.CLOSED
        assert store.count("BTCUSDT", M1, T0, T0 + DAY) == 20


# ---------------------------------------------------------------------------------------------- telemetry


def test_telemetry_is_written_every_500_operations_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "klines.db"
    store = open_store(f"sqlite:///{path}", breaker=db_breaker())
    store.breaker.add_listener(store.telemetry())
    assert store.telemetry() is store.telemetry()

    def operations() -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT COUNT(*) FROM circuit_breaker_operations").fetchone()[0])

    for _ in range(499):
        store.count("BTCUSDT", M1, T0, T0 + DAY)
    assert operations() == 0
    store.count("BTCUSDT", M1, T0, T0 + DAY)
    assert operations() == 500
    store.write(series(T0, 3))
    store.close()
    assert operations() == 501


def test_telemetry_never_breaks_the_guarded_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "klines.db"
    store = open_store(f"sqlite:///{path}", breaker=db_breaker())
    store.breaker.add_listener(store.telemetry())
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE circuit_breaker_operations")

    counts = [store.count("BTCUSDT", M1, T0, T0 + DAY) for _ in range(500)]  # the 500th flushes, and fails

    assert counts == [0] * 500
    assert (
        "could not record 500 circuit-breaker rows" in caplog.text
        and "kept for the next flush" in caplog.text
    )
    store.write(series(T0, 3))
    store.close()
    assert "could not record 501 circuit-breaker rows" in caplog.text and "dropped" in caplog.text


@pytest.mark.mysql
def test_monitoring_queries_run_verbatim_on_mariadb(
    fresh_mysql_url: str, tcp_proxy_factory: type[TcpProxy]
) -> None:
    proxy = tcp_proxy_factory("127.0.0.1", int(fresh_mysql_url.split("@")[-1].split("/")[0].split(":")[1]))
    clock = FakeClock()
    store = open_store(
        _through(proxy, fresh_mysql_url), breaker=db_breaker(clock, threshold=2), sleep=lambda seconds: None
    )
    store.breaker.add_listener(store.telemetry())
    for minute in range(0, 40, 10):
        store.write(series(T0 + minute * MINUTE, 10))
    proxy.refuse(True)
    proxy.drop_connections()
    with pytest.raises(BreakerOpen):
        store.write(series(T0, 1))  # two tries fail and open the breaker; the third is refused
    proxy.refuse(False)
    clock.advance(61)
    store.write(series(T0, 1))
    store.close()

    connection = pymysql.connect(
        host="127.0.0.1",
        port=int(fresh_mysql_url.split("@")[-1].split("/")[0].split(":")[1]),
        user="root",
        password="",
        database=fresh_mysql_url.rsplit("/", 1)[1],
        init_command="SET time_zone = '+00:00'",
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT timestamp, state, failure_count, failure_threshold FROM circuit_breaker_events "
            "WHERE timestamp >= NOW() - INTERVAL 1 HOUR ORDER BY timestamp DESC;"
        )
        events = cursor.fetchall()
        cursor.execute(
            "SELECT AVG(CASE WHEN success THEN 1 ELSE 0 END) AS success_rate, COUNT(*) AS total_operations, "
            "AVG(duration_ms) AS avg_duration FROM circuit_breaker_operations "
            "WHERE timestamp >= NOW() - INTERVAL 1 HOUR;"
        )
        success_rate, total, avg_duration = cursor.fetchone()
    connection.close()

    assert sorted(state for _, state, _, _ in events) == ["CLOSED", "HALF_OPEN", "OPEN"]
    assert all(threshold == 2 for *_, threshold in events)
    assert total == 7 and float(success_rate) == pytest.approx(5 / 7, abs=1e-4) and avg_duration > 0


# ---------------------------------------------------------------------------------------------- MongoDB


def test_decimal128_documents_are_exact_for_every_field() -> None:
    for text in EXTREMES:
        value = Decimal(text)
        kline = every_decimal(candle(T0), value)
        document = kline_document(kline)

        decoded = bson.decode(bson.encode(document))

        assert all(isinstance(decoded[name], Decimal128) for name in DECIMAL_FIELDS)
        assert all(str(decoded[name].to_decimal()) == str(value) for name in DECIMAL_FIELDS)
        assert kline_from_document(decoded) == kline


@pytest.mark.mongo
def test_a_mongodb_lease_of_an_exited_or_expired_run_is_taken_over(fresh_mongo_url: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(fresh_mongo_url.split("?")[0])
    leases = client.get_default_database()["run_locks"]
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(exited.stdout)
    now = datetime.now(UTC)

    def lease(host: str, pid: int, expires_in: float) -> dict[str, Any]:
        expires_at = now + timedelta(seconds=expires_in)
        return {
            "_id": "extract",
            "owner": "x",
            "host": host,
            "pid": pid,
            "since": now,
            "expires_at": expires_at,
        }

    with open_store(fresh_mongo_url, breaker=db_breaker()) as store:
        leases.insert_one(lease(socket.gethostname(), dead_pid, 60))
        with store.run_lock("extract"):
            held = leases.find_one({"_id": "extract"})
            assert held is not None and held["pid"] != dead_pid
        assert leases.find_one({"_id": "extract"}) is None

        leases.insert_one(lease("elsewhere", 1, 60))
        with pytest.raises(RunLocked, match="pid 1 on elsewhere, since"), store.run_lock("extract"):
            pass

        leases.replace_one({"_id": "extract"}, lease("elsewhere", 1, -1))
        with store.run_lock("extract"):
            held = leases.find_one({"_id": "extract"})
            assert held is not None and held["host"] != "elsewhere"
    client.close()


# ---------------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "mysql+pymysql://root:s3cr3t@db.example:3306/klines",
            "mysql+pymysql://root:***@db.example:3306/klines",
        ),
        ("mysql://root:@127.0.0.1:3306/test", "mysql://root:***@127.0.0.1:3306/test"),
        (
            "mongodb://u:p%40ss@h1:27017,h2:27017/db?replicaSet=rs",
            "mongodb://u:***@h1:27017,h2:27017/db?replicaSet=rs",
        ),
        ("mongodb://u:p@ss@h1/db", "mongodb://u:***@h1/db"),
        ("mongodb://h1:27017/db", "mongodb://h1:27017/db"),
        ("sqlite:///klines.db", "sqlite:///klines.db"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_an_unknown_scheme_is_bad_input_listing_the_supported_ones() -> None:
    with pytest.raises(BadInputError) as refused:
        open_store("postgresql://u:s3cr3t@h/db")

    message = str(refused.value)
    assert "postgresql://u:***@h/db" in message and "s3cr3t" not in message
    for scheme in ("sqlite://", "mysql+pymysql://", "mongodb://", "mongodb+srv://"):
        assert scheme in message


def test_a_sqlite_file_in_a_missing_directory_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/nowhere/klines.db")


@pytest.mark.mysql
def test_an_unknown_mysql_database_is_bad_input(mysql_url: str) -> None:
    with pytest.raises(BadInputError, match="refused the login or the database name"):
        open_store(mysql_url.rsplit("/", 1)[0] + "/no_such_database_here", breaker=db_breaker())


def test_opening_sqlite_loads_neither_mysql_nor_mongodb_drivers(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from extractor.storage import open_store\n"
        f"open_store('sqlite:///{tmp_path}/k.db').close()\n"
        "print(sorted(m for m in ('pymysql', 'pymongo', 'bson') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
