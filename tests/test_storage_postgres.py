"""What only PostgreSQL has: its column types, COPY from a page up, advisory locks, read-only databases,
the URL's own options, and TimescaleDB where the server has it."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

import psycopg
import pytest

from extractor.errors import BadInputError, RunLocked, StorageError
from extractor.intervals import MINUTE
from extractor.klines import Kline, parse_csv, parse_rows, to_row
from extractor.storage import open_store
from extractor.storage.postgres_writes import COPY_ROWS
from tests.storage_cases import BTC, FOREVER, T0, archive_blocks, candle, candles, db_breaker, side_by_side

pytestmark = pytest.mark.postgres


def sql(url: str, statement: str, *, database: str | None = None) -> list[tuple[Any, ...]]:
    """``statement`` on the server of ``url``, as an administrator would type it."""
    parts = urlsplit(url)
    with psycopg.connect(
        host=parts.hostname,
        port=parts.port,
        user=parts.username,
        dbname=database or parts.path[1:],
        autocommit=True,
    ) as connection:
        cursor = connection.execute(cast(Any, statement))
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


def test_both_schemes_name_the_same_database_with_numeric_columns_and_bigint_times(
    fresh_postgres_url: str,
) -> None:
    with open_store(fresh_postgres_url, breaker=db_breaker()) as store:
        store.write(candles(T0, 3))
    plain = fresh_postgres_url.replace("postgresql+psycopg://", "postgresql://")

    with open_store(plain, breaker=db_breaker()) as store:
        assert store.count(BTC, T0, FOREVER) == 3

    columns = dict(
        sql(
            fresh_postgres_url,
            "SELECT column_name, data_type || coalesce('(' || numeric_precision || ')', '') "
            "FROM information_schema.columns WHERE table_name = 'klines'",
        )
    )
    assert columns["open"] == columns["taker_buy_quote_asset_volume"] == "numeric"  # no scale to round to
    assert columns["open_time"] == columns["close_time"] == "bigint(64)"
    key = sql(
        fresh_postgres_url,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'klines'::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
    )
    assert [name for (name,) in key] == ["market", "symbol", "interval", "open_time"]


@pytest.mark.parametrize("size", [COPY_ROWS - 1, COPY_ROWS])
def test_a_few_candles_are_inserted_and_a_page_or_more_copied_both_exactly(
    fresh_postgres_url: str, size: int
) -> None:
    batch = candles(T0, size)
    broken = [*batch[:-1], batch[-1]._replace(high=cast(str, None))]
    with open_store(fresh_postgres_url, breaker=db_breaker()) as store:
        with pytest.raises(StorageError) as refused:
            store.write(broken)
        store.write(batch)

        assert list(store.read(BTC, T0, FOREVER)) == batch
    copied = "klines_staging" in str(refused.value)  # COPY names its table in the refusal
    assert copied == (size >= COPY_ROWS)


def test_two_bulk_writers_of_one_range_both_succeed_and_store_each_candle_once(
    fresh_postgres_url: str,
) -> None:
    """Both find the range empty and move their staging rows with a plain INSERT; the later one meets the
    other's keys and falls back to the upsert inside its own transaction."""
    both_staged = threading.Barrier(2, timeout=30)

    def bulk_writer(price: str) -> None:
        def batches() -> Iterator[list[Kline]]:
            yield candles(T0, 3_000, price=price)
            yield candles(T0 + 3_000 * MINUTE, 3_000, price=price)
            both_staged.wait()  # the flush of each comes after the other has staged everything

        with open_store(fresh_postgres_url, breaker=db_breaker()) as store:
            store.write_all(batches())

    side_by_side(partial(bulk_writer, "1.00000000"), partial(bulk_writer, "2.00000000"))
    with open_store(fresh_postgres_url, breaker=db_breaker()) as store:
        stored = list(store.read(BTC, T0, FOREVER))
    assert len(stored) == 6_000 and len({k.open for k in stored}) == 1  # one writer's values, whole


def test_an_advisory_lock_names_its_holder_and_ends_with_its_session(fresh_postgres_url: str) -> None:
    database = urlsplit(fresh_postgres_url).path[1:]
    advisory = (
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        f"WHERE l.locktype = 'advisory' AND d.datname = '{database}'"
    )
    held_by = r"\(PostgreSQL backend \d+ from 127\.0\.0\.1, since 20"
    with open_store(fresh_postgres_url, breaker=db_breaker()) as store, store.run_lock("extract"):
        with (
            open_store(fresh_postgres_url, breaker=db_breaker()) as other,
            pytest.raises(RunLocked, match=held_by),
            other.run_lock("extract"),
        ):
            pass
        assert sql(fresh_postgres_url, advisory) == [(1,)]

    assert sql(fresh_postgres_url, advisory) == [(0,)]
    sessions = sql(
        fresh_postgres_url,
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' "
        "AND application_name = 'binance-extractor'",
    )
    assert sessions == [(0,)]


def test_a_read_only_database_is_bad_input(fresh_postgres_url: str) -> None:
    database = urlsplit(fresh_postgres_url).path[1:]
    sql(
        fresh_postgres_url,
        f'ALTER DATABASE "{database}" SET default_transaction_read_only = on',
        database="test",
    )

    for create in (True, False):
        with pytest.raises(
            BadInputError, match=re.escape(f"the database at {fresh_postgres_url} is read-only: ")
        ) as refused:
            open_store(fresh_postgres_url, breaker=db_breaker(), create=create).check_writable()
        assert refused.value.exit_code == 2


def test_the_urls_own_options_are_kept(fresh_postgres_url: str) -> None:
    sql(fresh_postgres_url, "CREATE SCHEMA market_data")
    url = fresh_postgres_url + "?options=-c%20search_path%3Dmarket_data"

    with open_store(url, breaker=db_breaker()) as store:
        store.write(candles(T0, 2))

    assert sql(fresh_postgres_url, "SELECT count(*) FROM market_data.klines") == [(2,)]


def timescale_version(url: str) -> str | None:
    found = sql(url, "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
    return found[0][0] if found else None


def test_timescale_makes_klines_a_hypertable_where_the_extension_exists(fresh_postgres_url: str) -> None:
    if timescale_version(fresh_postgres_url) is None:
        pytest.skip(
            f"the PostgreSQL server at {urlsplit(fresh_postgres_url).netloc.rpartition('@')[2]} has no "
            "timescaledb extension "
            "(pg_available_extensions lists none), so ?timescale=true cannot be tried here"
        )
    url = fresh_postgres_url + "?timescale=true"
    with open_store(url, breaker=db_breaker()) as store:
        store.write(candles(T0, 20_000))  # past a week of open times: more than one chunk
    with open_store(url, breaker=db_breaker()) as store:  # a second open keeps the hypertable
        assert store.count(BTC, T0, FOREVER) == 20_000
        assert store.missing_ranges(BTC, T0, T0 + 20_000 * MINUTE) == []

    hypertables = sql(fresh_postgres_url, "SELECT hypertable_name FROM timescaledb_information.hypertables")
    assert hypertables == [("klines",)]


def test_timescale_on_a_server_without_it_is_bad_input(fresh_postgres_url: str) -> None:
    if timescale_version(fresh_postgres_url) is not None:
        pytest.skip("this server has timescaledb: the test above covers it")
    url = fresh_postgres_url + "?timescale=true"

    with pytest.raises(BadInputError, match=r"no timescaledb extension .* or drop \?timescale=true"):
        open_store(url, breaker=db_breaker())


def test_archive_blocks_over_an_empty_range_are_copied_straight_into_klines_exactly(
    fresh_postgres_url: str,
) -> None:
    batch = candles(T0, 5_000)
    # A 20-digit trade count passes the row checks (digits) but not PostgreSQL's bigint: the refusal
    # names the table the COPY went to.
    after = candle(T0 + 5_000 * MINUTE)._replace(number_of_trades=10**20 - 1)
    too_big = parse_csv(BTC, [",".join(map(str, to_row(after)))], T0, FOREVER)
    with open_store(fresh_postgres_url, breaker=db_breaker()) as store:
        with pytest.raises(StorageError) as refused:
            store.write_all([*archive_blocks(batch), too_big])
        assert store.count(BTC, T0, FOREVER) == 0  # nothing of the refused transaction is kept

        assert store.write_all(archive_blocks(batch)) == 5_000
        assert list(store.read(BTC, T0, FOREVER)) == batch
    assert "COPY klines," in str(refused.value) and "klines_staging" not in str(refused.value)


def test_archive_blocks_over_stored_candles_are_staged_and_upserted(fresh_postgres_url: str) -> None:
    """The first block finds nothing stored and is copied; the second meets stored keys and from it on
    everything is staged and upserted: the newest values win everywhere, each candle once."""
    newer = candles(T0, 6_000, price="2.00000000")
    with open_store(fresh_postgres_url, breaker=db_breaker()) as store:
        store.write(candles(T0 + 3_000 * MINUTE, 2_000, price="1.00000000"))
        assert store.write_all(archive_blocks(newer)) == 6_000

        assert list(store.read(BTC, T0, FOREVER)) == newer


def test_two_writers_copying_one_free_range_straight_into_klines_both_succeed(
    fresh_postgres_url: str,
) -> None:
    """Both find nothing stored and COPY their pages into klines; the later one meets the other's keys
    when it ends its COPY, runs its transaction again, and then upserts."""
    both_sent = threading.Barrier(2, timeout=30)

    class Pages(list[Sequence[Kline]]):
        """A rerunnable write whose first reading waits until both writers have sent everything."""

        waited = False

        def __iter__(self) -> Iterator[Sequence[Kline]]:
            yield from super().__iter__()
            if not self.waited:
                self.waited = True
                both_sent.wait()

    def writer(price: str) -> None:
        rows = [to_row(k) for k in candles(T0, 300, price=price)]
        pages = Pages(parse_rows(BTC, rows[lo : lo + 150], T0, FOREVER) for lo in (0, 150))
        with open_store(fresh_postgres_url, breaker=db_breaker()) as store:
            store.write_all(pages)

    side_by_side(partial(writer, "1.00000000"), partial(writer, "2.00000000"))
    with open_store(fresh_postgres_url, breaker=db_breaker()) as store:
        stored = list(store.read(BTC, T0, FOREVER))
    assert len(stored) == 300 and len({k.open for k in stored}) == 1  # one writer's values, whole
