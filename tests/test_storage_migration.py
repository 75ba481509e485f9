"""Databases written by the previous release (keyed without ``market``) migrate in place on first open.

The old schemas are the DDL that release's SQLAlchemy tables emitted (``git show 92496b7:extractor/
storage/sql.py``), written out verbatim; rows go in through the bare drivers, as that release wrote them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymongo
import pymysql
import pytest
import sqlalchemy

from extractor.errors import StorageError
from extractor.intervals import HOUR, MINUTE
from extractor.storage import ExchangeGap, KlineStore, open_store
from tests.storage_cases import (
    BTC,
    EXACT,
    FOREVER,
    H1,
    MONTH,
    T0,
    USDM,
    as_stored,
    backend_of,
    candle,
    db_breaker,
    plain_driver_url,
    series_of,
)

OLD_KLINES_SQLITE = """CREATE TABLE klines (
	symbol VARCHAR(20) NOT NULL,
	interval VARCHAR(3) NOT NULL,
	open_time BIGINT NOT NULL,
	open TEXT NOT NULL,
	high TEXT NOT NULL,
	low TEXT NOT NULL,
	close TEXT NOT NULL,
	volume TEXT NOT NULL,
	close_time BIGINT NOT NULL,
	quote_asset_volume TEXT NOT NULL,
	number_of_trades BIGINT NOT NULL,
	taker_buy_base_asset_volume TEXT NOT NULL,
	taker_buy_quote_asset_volume TEXT NOT NULL,
	PRIMARY KEY (symbol, interval, open_time)
)"""
OLD_GAPS_SQLITE = """CREATE TABLE exchange_gaps (
	symbol VARCHAR(20) NOT NULL,
	interval VARCHAR(3) NOT NULL,
	start_time BIGINT NOT NULL,
	end_time BIGINT NOT NULL,
	PRIMARY KEY (symbol, interval, start_time)
)"""
OLD_EVENTS_SQLITE = """CREATE TABLE circuit_breaker_events (
	id INTEGER NOT NULL,
	timestamp DATETIME NOT NULL,
	breaker VARCHAR(50) NOT NULL,
	from_state VARCHAR(20) NOT NULL,
	state VARCHAR(20) NOT NULL,
	failure_count INTEGER NOT NULL,
	failure_threshold INTEGER NOT NULL,
	PRIMARY KEY (id)
)"""
OLD_KLINES_MARIADB = """CREATE TABLE klines (
	symbol VARCHAR(20) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
	`interval` VARCHAR(3) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
	open_time BIGINT NOT NULL,
	open NUMERIC(48, 18) NOT NULL,
	high NUMERIC(48, 18) NOT NULL,
	low NUMERIC(48, 18) NOT NULL,
	close NUMERIC(48, 18) NOT NULL,
	volume NUMERIC(48, 18) NOT NULL,
	close_time BIGINT NOT NULL,
	quote_asset_volume NUMERIC(48, 18) NOT NULL,
	number_of_trades BIGINT NOT NULL,
	taker_buy_base_asset_volume NUMERIC(48, 18) NOT NULL,
	taker_buy_quote_asset_volume NUMERIC(48, 18) NOT NULL,
	PRIMARY KEY (symbol, `interval`, open_time)
)ENGINE=InnoDB"""
OLD_GAPS_MARIADB = """CREATE TABLE exchange_gaps (
	symbol VARCHAR(20) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
	`interval` VARCHAR(3) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
	start_time BIGINT NOT NULL,
	end_time BIGINT NOT NULL,
	PRIMARY KEY (symbol, `interval`, start_time)
)ENGINE=InnoDB"""
OLD_EVENTS_MARIADB = """CREATE TABLE circuit_breaker_events (
	id INTEGER NOT NULL AUTO_INCREMENT,
	timestamp DATETIME NOT NULL,
	breaker VARCHAR(50) NOT NULL,
	from_state VARCHAR(20) NOT NULL,
	state VARCHAR(20) NOT NULL,
	failure_count INTEGER NOT NULL,
	failure_threshold INTEGER NOT NULL,
	PRIMARY KEY (id)
)ENGINE=InnoDB"""
# The previous release had no PostgreSQL backend: these are its tables as that release's SQLAlchemy
# definitions compile on PostgreSQL, NUMERIC without a scale as this release creates it.
OLD_KLINES_POSTGRES = OLD_KLINES_SQLITE.replace("TEXT", "NUMERIC")
OLD_GAPS_POSTGRES = OLD_GAPS_SQLITE
OLD_EVENTS_POSTGRES = OLD_EVENTS_SQLITE.replace("id INTEGER", "id SERIAL").replace(
    "DATETIME", "TIMESTAMP WITHOUT TIME ZONE"
)
OLD_SCHEMAS = {
    "sqlite": (OLD_KLINES_SQLITE, OLD_GAPS_SQLITE, OLD_EVENTS_SQLITE),
    "mysql": (OLD_KLINES_MARIADB, OLD_GAPS_MARIADB, OLD_EVENTS_MARIADB),
    "postgres": (OLD_KLINES_POSTGRES, OLD_GAPS_POSTGRES, OLD_EVENTS_POSTGRES),
}
ETH_1H = series_of("ETHUSDT", H1)
BTC_1M_MONTHLY = series_of(interval=MONTH)
OLD_GAPS = [("BTCUSDT", "1m", T0 - 90 * MINUTE, T0 - 30 * MINUTE), ("ETHUSDT", "1h", T0 - 5 * HOUR, T0)]


def old_klines() -> list[tuple[Any, ...]]:
    """Rows without a market, as the previous release stored them: 1m and 1M of one symbol, 1h of another."""
    rows = [candle(T0 + i * MINUTE, price=EXACT[i % len(EXACT)]) for i in range(120)]
    rows += [candle(T0 + i * HOUR, ETH_1H, price="0.00000001") for i in range(5)]
    rows += [candle(MONTH.advance(MONTH.align(T0), i), BTC_1M_MONTHLY) for i in range(2)]
    return [tuple(k)[1:] for k in rows]


class OldDatabase:
    """A database of the previous release: its tables, its rows, read and written with bare SQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backend = backend_of(url)

    def execute(self, statements: list[str], rows: dict[str, list[tuple[Any, ...]]] | None = None) -> None:
        connection = self._connect()
        try:
            cursor = connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            for table, values in (rows or {}).items():
                marks = ", ".join([self._mark] * len(values[0]))
                cursor.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
            connection.commit()
        finally:
            connection.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        connection = self._connect()
        try:
            cursor = connection.cursor()
            cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            connection.close()

    @property
    def _mark(self) -> str:
        return "?" if self.backend == "sqlite" else "%s"

    def _connect(self) -> Any:
        if self.backend == "sqlite":
            return sqlite3.connect(self.url.removeprefix("sqlite:///"))
        parts = urlsplit(self.url)
        if self.backend == "mysql":
            return pymysql.connect(
                host=parts.hostname, port=parts.port or 3306, user=parts.username, database=parts.path[1:]
            )
        return psycopg.connect(
            host=parts.hostname, port=parts.port, user=parts.username, dbname=parts.path[1:]
        )

    def create(self) -> None:
        klines, gaps, events = OLD_SCHEMAS[self.backend]
        self.execute(
            [klines, gaps, events],
            {
                "klines": old_klines(),
                "exchange_gaps": OLD_GAPS,
                "circuit_breaker_events": [(1, "2026-11-01 12:00:00", "db", "CLOSED", "OPEN", 5, 5)],
            },
        )

    def schema(self) -> list[Any]:
        """Every table's definition, to show a second open changes nothing."""
        engine = sqlalchemy.create_engine(plain_driver_url(self.url))
        try:
            inspector = sqlalchemy.inspect(engine)
            return [
                repr((name, columns, inspector.get_pk_constraint(name), inspector.get_indexes(name)))
                for name in sorted(inspector.get_table_names())
                for columns in [[{k: str(v) for k, v in c.items()} for c in inspector.get_columns(name)]]
            ]
        finally:
            engine.dispose()

    def primary_key(self, table: str) -> list[str]:
        engine = sqlalchemy.create_engine(plain_driver_url(self.url))
        try:
            return list(sqlalchemy.inspect(engine).get_pk_constraint(table)["constrained_columns"])
        finally:
            engine.dispose()


SQL_BACKENDS = [
    "sqlite",
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=SQL_BACKENDS)
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> OldDatabase:
    if request.param == "sqlite":
        return OldDatabase(f"sqlite:///{tmp_path}/klines.db")
    return OldDatabase(request.getfixturevalue(f"fresh_{request.param}_url"))


def stored_rows(store: KlineStore) -> list[tuple[Any, ...]]:
    return [tuple(k) for s in (BTC, ETH_1H, BTC_1M_MONTHLY) for k in store.read(s, 0, FOREVER)]


def expected_rows(url: str) -> list[tuple[Any, ...]]:
    """The old rows as this release gives them back: market spot, decimals as the backend keeps them."""
    return [
        ("spot", *(as_stored(url, v) if isinstance(v, str) and i >= 3 else v for i, v in enumerate(row)))
        for row in old_klines()
    ]


# ---------------------------------------------------------------------------------------------- SQL


def test_an_old_sql_database_migrates_in_place_with_nothing_lost(old_database: OldDatabase) -> None:
    old_database.create()

    with open_store(old_database.url, breaker=db_breaker()) as store:
        assert stored_rows(store) == expected_rows(old_database.url)
        assert store.exchange_gaps(BTC, 0, FOREVER) == [
            ExchangeGap(T0 - 90 * MINUTE, T0 - 30 * MINUTE, 0, None)
        ]
        assert store.exchange_gaps(ETH_1H, 0, FOREVER) == [ExchangeGap(T0 - 5 * HOUR, T0, 0, None)]
        assert [(s.market, s.symbol, s.interval, s.candles) for s in store.series()] == [
            ("spot", "BTCUSDT", "1M", 2),
            ("spot", "BTCUSDT", "1m", 120),
            ("spot", "ETHUSDT", "1h", 5),
        ]
        store.write([candle(T0, series_of(market=USDM), price="7.5")])  # the key now holds the market
        assert store.count(BTC, 0, FOREVER) == 120 and next(store.read(BTC, T0, T0 + 1)).open == "0.00000001"
        store.record_exchange_gap(BTC, T0 - 30 * MINUTE, T0 - 20 * MINUTE, confirmations=2, confirmed_at=9)

    assert old_database.primary_key("klines") == ["market", "symbol", "interval", "open_time"]
    assert old_database.primary_key("exchange_gaps") == ["market", "symbol", "interval", "start_time"]
    assert old_database.query("SELECT breaker, state FROM circuit_breaker_events") == [("db", "OPEN")]


def test_a_second_open_of_a_migrated_database_changes_nothing(old_database: OldDatabase) -> None:
    old_database.create()
    open_store(old_database.url, breaker=db_breaker()).close()
    schema = old_database.schema()
    rows = old_database.query("SELECT * FROM klines ORDER BY market, symbol, open_time")

    with open_store(old_database.url, breaker=db_breaker()) as store:
        assert stored_rows(store) == expected_rows(old_database.url)

    assert old_database.schema() == schema
    assert old_database.query("SELECT * FROM klines ORDER BY market, symbol, open_time") == rows


def test_a_sqlite_migration_that_fails_half_way_leaves_the_old_database_whole(tmp_path: Path) -> None:
    database = OldDatabase(f"sqlite:///{tmp_path}/klines.db")
    database.create()
    # a leftover of the first release's name for the copy: the rename of exchange_gaps, second, fails
    database.execute(["CREATE TABLE exchange_gaps_unmarketed (x INTEGER)"])
    before = database.schema()

    with pytest.raises(StorageError, match="exchange_gaps_unmarketed"):
        open_store(database.url, breaker=db_breaker())

    assert database.schema() == before  # klines, renamed and copied first, is as it was
    assert len(database.query("SELECT * FROM klines")) == len(old_klines())
    database.execute(["DROP TABLE exchange_gaps_unmarketed"])
    with open_store(database.url, breaker=db_breaker()) as store:
        assert stored_rows(store) == expected_rows(database.url)


@pytest.mark.mysql
def test_a_mariadb_migration_cut_short_between_tables_is_finished(fresh_mysql_url: str) -> None:
    database = OldDatabase(fresh_mysql_url)
    database.create()
    database.execute(  # what a run killed after the first ALTER left
        [
            "ALTER TABLE klines ADD COLUMN market VARCHAR(5) CHARACTER SET ascii COLLATE ascii_bin NOT NULL "
            "DEFAULT 'spot' FIRST, DROP PRIMARY KEY, ADD PRIMARY KEY (market, symbol, `interval`, open_time)"
        ]
    )

    with open_store(fresh_mysql_url, breaker=db_breaker()) as store:
        assert store.exchange_gaps(BTC, 0, FOREVER) == [
            ExchangeGap(T0 - 90 * MINUTE, T0 - 30 * MINUTE, 0, None)
        ]
        assert stored_rows(store) == expected_rows(fresh_mysql_url)

    assert database.primary_key("exchange_gaps") == ["market", "symbol", "interval", "start_time"]


@pytest.mark.mysql
def test_telemetry_of_long_breaker_names_is_kept_in_a_migrated_mariadb(fresh_mysql_url: str) -> None:
    database = OldDatabase(fresh_mysql_url)
    database.create()
    name = "db:mysql+pymysql://127.0.0.1:3306/" + "a_long_database_name" * 3  # 93 characters

    breaker = db_breaker()
    breaker.name = name
    store = open_store(fresh_mysql_url, breaker=breaker)
    breaker.add_listener(store.telemetry())
    store.count(BTC, 0, FOREVER)
    store.close()

    assert database.query("SELECT breaker FROM circuit_breaker_operations") == [(name,)]


# ---------------------------------------------------------------------------------------------- Mongo


def _mongo(url: str) -> pymongo.database.Database[dict[str, Any]]:
    return pymongo.MongoClient(url.split("?")[0]).get_default_database()


def old_documents() -> list[dict[str, Any]]:
    """Documents as the previous release wrote them with ``?decimals=string``: ``_id`` without the market."""
    fields = ("symbol", "interval", "open_time", "open", "high", "low", "close", "volume", "close_time")
    fields += ("quote_asset_volume", "number_of_trades", "taker_buy_base_asset_volume")
    fields += ("taker_buy_quote_asset_volume",)
    documents = []
    for row in old_klines():
        document = dict(zip(fields, row, strict=True))
        documents.append({"_id": f"{row[0]}|{row[1]}|{row[2]}", **document})
    return documents


def create_old_mongo(url: str, documents: list[dict[str, Any]]) -> None:
    db = _mongo(url)
    klines, gaps = db["klines"], db["exchange_gaps"]
    klines.create_index(
        [("symbol", 1), ("interval", 1), ("open_time", 1)], unique=True, name="symbol_interval_open_time"
    )
    gaps.create_index(
        [("symbol", 1), ("interval", 1), ("start_time", 1)], unique=True, name="symbol_interval_start_time"
    )
    klines.insert_many(documents)
    gaps.insert_many(
        [
            {"_id": f"{s}|{i}|{lo}", "symbol": s, "interval": i, "start_time": lo, "end_time": hi}
            for s, i, lo, hi in OLD_GAPS
        ]
    )
    db.client.close()


def many_old_documents() -> list[dict[str, Any]]:
    """Past one migration batch (1,000), so the copy and delete run more than once."""
    template = old_documents()[0]
    return [
        {**template, "_id": f"BTCUSDT|1m|{t}", "open_time": t, "close_time": t + MINUTE - 1}
        for t in range(T0 - 2_000 * MINUTE, T0, MINUTE)
    ] + old_documents()


@pytest.mark.mongo
def test_an_old_mongo_database_migrates_in_place_with_nothing_lost(fresh_mongo_url: str) -> None:
    create_old_mongo(fresh_mongo_url, many_old_documents())

    with open_store(fresh_mongo_url, breaker=db_breaker()) as store:
        assert stored_rows(store)[2_000:] == expected_rows(fresh_mongo_url)
        assert store.count(BTC, 0, FOREVER) == 2_120
        assert store.exchange_gaps(ETH_1H, 0, FOREVER) == [ExchangeGap(T0 - 5 * HOUR, T0, 0, None)]
        store.write([candle(T0, series_of(market=USDM), price="7.5")])
        assert (
            store.count(BTC, 0, FOREVER) == 2_120 and next(store.read(BTC, T0, T0 + 1)).open == "0.00000001"
        )

    db = _mongo(fresh_mongo_url)
    assert db["klines"].count_documents({"market": {"$exists": False}}) == 0
    assert db["klines"].find_one({"_id": f"spot|BTCUSDT|1m|{T0}"}) is not None
    assert db["exchange_gaps"].find_one({"_id": f"spot|ETHUSDT|1h|{T0 - 5 * HOUR}"}) is not None
    keys = [list(index["key"]) for index in db["klines"].list_indexes()]
    assert ["symbol", "interval", "open_time"] not in keys
    assert ["market", "symbol", "interval", "open_time"] in keys
    db.client.close()


@pytest.mark.mongo
def test_a_mongo_migration_killed_between_copy_and_delete_is_finished(fresh_mongo_url: str) -> None:
    documents = old_documents()
    create_old_mongo(fresh_mongo_url, documents)
    db = _mongo(fresh_mongo_url)
    db["klines"].drop_index("symbol_interval_open_time")  # what the killed run had done: drop, then copy some
    copies = [{**d, "_id": "spot|" + d["_id"], "market": "spot"} for d in documents[:50]]
    db["klines"].insert_many(copies)

    with open_store(fresh_mongo_url, breaker=db_breaker()) as store:
        assert stored_rows(store) == expected_rows(fresh_mongo_url)

    assert db["klines"].count_documents({}) == len(documents)
    db.client.close()


@pytest.mark.mongo
def test_a_second_open_of_a_migrated_mongo_database_changes_nothing(fresh_mongo_url: str) -> None:
    create_old_mongo(fresh_mongo_url, old_documents())
    open_store(fresh_mongo_url, breaker=db_breaker()).close()
    db = _mongo(fresh_mongo_url)

    def snapshot() -> list[Any]:
        return [sorted(db[name].find(), key=lambda d: str(d["_id"])) for name in ("klines", "exchange_gaps")]

    before = snapshot()
    open_store(fresh_mongo_url, breaker=db_breaker()).close()

    assert snapshot() == before
    db.client.close()
