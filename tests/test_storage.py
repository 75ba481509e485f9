"""The KlineStore contract over every backend (SQLite file, MariaDB, PostgreSQL, nx-27017): values and
batches. Holes, gaps and series are in ``test_storage_series.py``, locks and probes in
``test_storage_locks.py``; the backend fixtures are in ``tests/services.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from functools import partial
from typing import Any, cast

import pymongo
import pytest

from extractor.errors import BadInputError, BreakerOpen, StorageError
from extractor.intervals import DAY, MINUTE
from extractor.klines import DECIMAL_FIELDS, FIELDS, Kline, to_row
from extractor.storage import KlineStore
from extractor.storage.mongo_documents import kline_document
from tests.storage_cases import (
    BTC,
    EXACT,
    FOREVER,
    MONTH,
    T0,
    USDM,
    WIDEST,
    archive_blocks,
    as_stored,
    backend_of,
    candle,
    candles,
    every_decimal,
    series_of,
    side_by_side,
)
from utils.circuit_breaker import CircuitState

# ---------------------------------------------------------------------------------------------- values


def every_decimal_as_stored(kline: Kline, url: str) -> Kline:
    """``kline`` as ``url``'s backend gives it back (see ``as_stored``)."""
    return Kline._make(
        as_stored(url, v) if name in DECIMAL_FIELDS else v for name, v in zip(FIELDS, kline, strict=True)
    )


def test_decimals_come_back_as_given(kline_store: KlineStore, backend_url: str) -> None:
    written = [every_decimal(candle(T0 + i * MINUTE), text) for i, text in enumerate(EXACT)]
    written.append(candle(T0 + 9 * MINUTE)._replace(open="1.5", close="0.1234567891", low="0"))
    kline_store.write(written)

    read = list(kline_store.read(BTC, T0, T0 + DAY))

    expected = [every_decimal_as_stored(k, backend_url) for k in written]
    assert [to_row(k) for k in read] == [to_row(k) for k in expected]
    assert all(
        Decimal(a) == Decimal(b)
        for r, w in zip(read, written, strict=True)
        for a, b in zip(r[4:], w[4:], strict=True)
    )
    if backend_of(backend_url) == "mysql":
        assert (read[-1].open, read[-1].close, read[-1].low) == ("1.50000000", "0.1234567891", "0.00000000")
    else:
        assert (read[-1].open, read[-1].close, read[-1].low) == ("1.5", "0.1234567891", "0")


def test_the_widest_values_the_row_check_accepts_come_back_exactly(
    kline_store: KlineStore, backend_url: str
) -> None:
    from extractor.klines import parse_rows

    rows = [to_row(every_decimal(candle(T0 + i * MINUTE), text)) for i, text in enumerate(WIDEST)]
    accepted = parse_rows(BTC, rows, T0, T0 + DAY)
    kline_store.write(accepted)

    read = list(kline_store.read(BTC, T0, T0 + DAY))

    assert [k.open for k in read] == [as_stored(backend_url, text) for text in WIDEST]
    assert [Decimal(k.quote_asset_volume) for k in read] == [Decimal(text) for text in WIDEST]


@pytest.mark.parametrize("price", ["42000.12345678", "0.00000001", "98765432109.87654321"])
def test_archive_blocks_store_their_candles_exactly_and_overwrite_stored_ones(
    kline_store: KlineStore, backend_url: str, price: str
) -> None:
    """Blocks that carry their CSV lines take each backend's fastest path (PostgreSQL's COPY of the
    lines, MySQL's upserts of them); over stored candles the newer values win, each candle once."""
    kline_store.write(candles(T0 + 2_500 * MINUTE, 1_000, price="1.00000000"))
    newer = candles(T0, 5_000, price=price)

    assert kline_store.write_all(archive_blocks(newer)) == 5_000

    read = list(kline_store.read(BTC, T0, FOREVER))
    assert [to_row(k) for k in read] == [to_row(every_decimal_as_stored(k, backend_url)) for k in newer]


def test_archive_blocks_that_repeat_candles_in_one_write_store_each_once_with_the_later_values(
    kline_store: KlineStore,
) -> None:
    earlier = candles(T0, 3_000, price="1.00000000")
    later = candles(T0 + 2_000 * MINUTE, 3_000, price="2.00000000")

    assert (
        kline_store.write_all([*archive_blocks(earlier, rows=3_000), *archive_blocks(later, rows=3_000)])
        == 6_000
    )

    read = list(kline_store.read(BTC, T0, FOREVER))
    assert [k.open for k in read] == ["1.00000000"] * 2_000 + ["2.00000000"] * 3_000


def test_rewriting_a_batch_updates_values_and_adds_no_rows(kline_store: KlineStore) -> None:
    kline_store.write(candles(T0, 50))
    kline_store.write(candles(T0, 50, price="1.00000001"))

    assert kline_store.count(BTC, T0, T0 + DAY) == 50
    assert {k.open for k in kline_store.read(BTC, T0, T0 + DAY)} == {"1.00000001"}


def test_a_candle_repeated_in_one_batch_is_stored_once_with_its_later_values(kline_store: KlineStore) -> None:
    batch = [*candles(T0, 3), candle(T0 + MINUTE, price="7.00000000")]

    kline_store.write(batch)

    assert [(k.open_time, k.open) for k in kline_store.read(BTC, T0, T0 + DAY)] == [
        (T0, "42000.12345678"),
        (T0 + MINUTE, "7.00000000"),
        (T0 + 2 * MINUTE, "42000.12345678"),
    ]


def test_spot_and_usdm_candles_of_one_symbol_never_overwrite_each_other(kline_store: KlineStore) -> None:
    futures = series_of(market=USDM)
    kline_store.write(candles(T0, 10, BTC, price="100.00000000"))
    kline_store.write(candles(T0, 5, futures, price="101.50000000"))
    kline_store.record_exchange_gap(futures, T0 + DAY, T0 + 2 * DAY, confirmations=2, confirmed_at=5)

    assert kline_store.count(BTC, T0, FOREVER) == 10 and kline_store.count(futures, T0, FOREVER) == 5
    assert {k.open for k in kline_store.read(BTC, T0, FOREVER)} == {"100.00000000"}
    assert {(k.market, k.open) for k in kline_store.read(futures, T0, FOREVER)} == {("usdm", "101.50000000")}
    assert (
        kline_store.last_open_time(futures) == T0 + 4 * MINUTE
        and kline_store.last_open_time(BTC) == T0 + 9 * MINUTE
    )
    assert kline_store.exchange_gaps(BTC, 0, FOREVER) == []
    assert kline_store.missing_ranges(futures, T0, T0 + 10 * MINUTE) == [(T0 + 5 * MINUTE, T0 + 10 * MINUTE)]
    assert [(s.market, s.candles) for s in kline_store.series()] == [("spot", 10), ("usdm", 5)]
    assert [s.market for s in kline_store.series(USDM)] == ["usdm"]


def test_minute_and_month_series_never_collide(kline_store: KlineStore) -> None:
    month = series_of(interval=MONTH)
    assert kline_store.last_open_time(BTC) is None
    month_start = MONTH.align(T0)
    kline_store.write([candle(month_start), candle(month_start + MINUTE)])
    kline_store.write([candle(month_start, month)])
    kline_store.write([candle(month_start + 5 * MINUTE, series_of("ETHUSDT"))])

    assert kline_store.last_open_time(BTC) == month_start + MINUTE
    assert kline_store.last_open_time(month) == month_start
    assert kline_store.last_open_time(series_of("ETHUSDT")) == month_start + 5 * MINUTE
    assert kline_store.last_open_time(BTC, before=month_start + MINUTE) == month_start
    assert kline_store.count(month, 0, FOREVER) == 1 and kline_store.count(BTC, 0, FOREVER) == 2


def test_first_open_time_is_the_oldest_of_its_series(kline_store: KlineStore) -> None:
    assert kline_store.first_open_time(BTC) is None
    kline_store.write([candle(T0 + 2 * MINUTE), candle(T0 + MINUTE)])
    kline_store.write([candle(MONTH.align(T0), series_of(interval=MONTH))])
    kline_store.write([candle(T0, series_of("ETHUSDT"))])

    assert kline_store.first_open_time(BTC) == T0 + MINUTE
    assert kline_store.first_open_time(BTC, start=T0 + 2 * MINUTE) == T0 + 2 * MINUTE
    assert kline_store.first_open_time(series_of("ETHUSDT")) == T0


def test_count_and_read_use_half_open_ranges(kline_store: KlineStore) -> None:
    kline_store.write(candles(T0, 10))

    assert kline_store.count(BTC, T0 + 2 * MINUTE, T0 + 5 * MINUTE) == 3
    assert [k.open_time for k in kline_store.read(BTC, T0 + 8 * MINUTE, T0 + 20 * MINUTE)] == [
        T0 + 8 * MINUTE,
        T0 + 9 * MINUTE,
    ]
    assert list(kline_store.open_times(BTC, T0, T0 + 3 * MINUTE)) == [T0, T0 + MINUTE, T0 + 2 * MINUTE]


# ---------------------------------------------------------------------------------------------- batches


def test_a_ten_thousand_row_batch_is_written_whole(kline_store: KlineStore) -> None:
    batch = candles(T0, 10_000)

    assert kline_store.write(batch) == 10_000

    assert kline_store.count(BTC, T0, FOREVER) == 10_000
    assert kline_store.missing_ranges(BTC, T0, T0 + 10_000 * MINUTE) == []
    assert list(kline_store.read(BTC, T0, FOREVER)) == batch


def test_write_all_stores_every_batch_in_order_later_values_winning(kline_store: KlineStore) -> None:
    batches = [
        candles(T0, 3_000),
        candles(T0 + 3_000 * MINUTE, 500),
        candles(T0 + 2_900 * MINUTE, 200, price="5"),
    ]

    assert kline_store.write_all(iter(batches)) == 3_700

    read = list(kline_store.read(BTC, T0, FOREVER))
    assert len(read) == 3_500
    five = as_stored(kline_store.url, "5")
    assert [k.open for k in read[2_899:3_101]] == ["42000.12345678", *[five] * 200, "42000.12345678"]


def test_write_all_whose_source_fails_leaves_nothing(kline_store: KlineStore) -> None:
    kline_store.write([candle(T0, price="1.00000000")])

    def batches() -> Iterator[Sequence[Kline]]:
        yield candles(T0 + MINUTE, 2_500)
        yield candles(T0 + 2_501 * MINUTE, 10)
        raise ValueError("the archive file broke off")

    with pytest.raises(ValueError, match="broke off"):
        kline_store.write_all(batches())

    assert [k.open_time for k in kline_store.read(BTC, T0, FOREVER)] == [T0]


def test_two_writers_on_overlapping_batches_store_each_candle_once(
    kline_store: KlineStore, second_kline_store: KlineStore
) -> None:
    def writer(target: KlineStore, first: int) -> None:
        for chunk in range(4):
            target.write(candles(T0 + (first + chunk * 250) * MINUTE, 250))

    side_by_side(
        partial(writer, kline_store, 0),
        partial(writer, kline_store, 500),
        partial(writer, second_kline_store, 250),
        partial(writer, second_kline_store, 750),
    )
    assert kline_store.count(BTC, T0, FOREVER) == 1_750
    assert kline_store.missing_ranges(BTC, T0, T0 + 1_750 * MINUTE) == []


@pytest.mark.parametrize("size", [6, 5_000])
def test_a_batch_the_database_refuses_leaves_nothing_behind(
    kline_store: KlineStore, backend_url: str, size: int
) -> None:
    kline_store.write([candle(T0, price="1.00000000")])
    batch = candles(T0, size, price="2.00000000")
    middle = size // 2
    if backend_of(backend_url) == "mongo":
        # another writer's document under the same key with its own _id: the unique index refuses one upsert
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(backend_url.split("?")[0])
        foreign = kline_document(candle(T0 + middle * MINUTE), decimal128=False) | {
            "_id": "written elsewhere"
        }
        client.get_default_database()["klines"].insert_one(foreign)
        client.close()
        expected = [T0, T0 + middle * MINUTE]
    else:
        batch[middle] = batch[middle]._replace(open=cast(str, None))  # NOT NULL refuses it mid-batch
        expected = [T0]

    with pytest.raises(StorageError, match="refused"):
        kline_store.write(batch)

    assert [k.open_time for k in kline_store.read(BTC, T0, FOREVER)] == expected
    if backend_of(backend_url) != "mongo":  # Mongo undoes inserts only; updated documents keep new values
        assert next(kline_store.read(BTC, T0, T0 + 1)).open == "1.00000000"


def test_symbols_are_validated_before_any_query(kline_store: KlineStore) -> None:
    kline_store.breaker.state = CircuitState.OPEN  # any query would now be refused
    bad = series_of("btc usdt")
    calls: list[Callable[[], object]] = [
        lambda: kline_store.write([candle(T0, bad)]),
        lambda: kline_store.write_all([[candle(T0, bad)]]),
        lambda: kline_store.last_open_time(bad),
        lambda: kline_store.first_open_time(bad),
        lambda: kline_store.count(bad, T0, T0 + DAY),
        lambda: kline_store.missing_ranges(bad, T0, T0 + DAY),
        lambda: kline_store.missing_ranges(series_of("btc usdt", MONTH), T0, T0 + DAY),
        lambda: kline_store.open_times(bad, T0, T0 + DAY),
        lambda: kline_store.read(bad, T0, T0 + DAY),
        lambda: kline_store.record_exchange_gap(bad, T0, T0 + DAY, confirmations=2, confirmed_at=0),
        lambda: kline_store.exchange_gaps(bad, T0, T0 + DAY),
        lambda: kline_store.forget_exchange_gaps(bad, T0, T0 + DAY),
        lambda: kline_store.write([candle(T0, series_of("A" * 21))]),
    ]
    for call in calls:
        with pytest.raises(BadInputError, match="invalid symbol"):
            call()
    with pytest.raises(BadInputError, match="one series"):
        kline_store.write([candle(T0), candle(T0 + MINUTE, series_of(market=USDM))])
    with pytest.raises(BreakerOpen):  # the same call with a good symbol does reach for the database
        kline_store.count(BTC, T0, T0 + DAY)
