"""The KlineStore contract over every backend: holes in the grid, exchange gaps, and stored series."""

from __future__ import annotations

import random

import pytest

from extractor.intervals import DAY, MINUTE, Interval
from extractor.storage import ExchangeGap, KlineStore
from tests.storage_cases import (
    BTC,
    D3,
    FOREVER,
    H1,
    M1,
    MONTH,
    T0,
    USDM,
    W1,
    candle,
    candles,
    series_of,
)

# ---------------------------------------------------------------------------------------------- holes


def test_missing_ranges_finds_holes_at_start_middle_and_end(kline_store: KlineStore) -> None:
    stored = [t for t in range(T0 + 2 * MINUTE, T0 + 10 * MINUTE, MINUTE) if t != T0 + 5 * MINUTE]
    kline_store.write([candle(t) for t in stored])

    assert kline_store.missing_ranges(BTC, T0, T0 + 12 * MINUTE) == [
        (T0, T0 + 2 * MINUTE),
        (T0 + 5 * MINUTE, T0 + 6 * MINUTE),
        (T0 + 10 * MINUTE, T0 + 12 * MINUTE),
    ]
    assert kline_store.missing_ranges(BTC, T0 + 2 * MINUTE, T0 + 5 * MINUTE) == []
    assert kline_store.missing_ranges(series_of("ETHUSDT"), T0, T0 + 3 * MINUTE) == [(T0, T0 + 3 * MINUTE)]


def test_missing_ranges_follow_the_calendar_for_months_and_weeks(kline_store: KlineStore) -> None:
    monthly, weekly = series_of(interval=MONTH), series_of(interval=W1)
    jan = MONTH.align(1_704_067_200_000)  # 2024-01-01
    months = [MONTH.advance(jan, i) for i in range(7)]
    kline_store.write([candle(t, monthly) for t in (months[0], months[1], months[3], months[4])])
    monday = W1.align(T0)
    weeks = [W1.advance(monday, i) for i in range(6)]
    kline_store.write([candle(t, weekly) for t in (weeks[1], weeks[2], weeks[4])])

    assert kline_store.missing_ranges(monthly, MONTH.advance(jan, -1), months[6]) == [
        (MONTH.advance(jan, -1), months[0]),
        (months[2], months[3]),
        (months[5], months[6]),
    ]
    assert kline_store.missing_ranges(weekly, monday, weeks[5] + 1) == [
        (weeks[0], weeks[1]),
        (weeks[3], weeks[4]),
        (weeks[5], weeks[5] + 1),
    ]


def test_missing_ranges_for_3d_follow_the_stored_phase(kline_store: KlineStore) -> None:
    three_days = series_of(interval=D3)
    phase, step = T0 + DAY, 3 * DAY  # not a multiple of three days since the epoch
    assert kline_store.missing_ranges(three_days, T0, T0 + 30 * DAY) == [(T0, T0 + 30 * DAY)]
    kline_store.write([candle(phase + i * step, three_days) for i in (0, 1, 3)])

    assert kline_store.missing_ranges(three_days, T0, phase + 5 * step) == [
        (phase + 2 * step, phase + 3 * step),
        (phase + 4 * step, phase + 5 * step),
    ]
    assert kline_store.missing_ranges(three_days, phase - 2 * step, phase) == [(phase - 2 * step, phase)]


@pytest.mark.parametrize("interval", [M1, H1, W1, D3], ids=str)
def test_the_database_hole_finder_agrees_with_the_plain_walk(
    kline_store: KlineStore, interval: Interval
) -> None:
    chosen = series_of(interval=interval)
    chooser = random.Random(f"holes-{interval}")
    first = interval.ceil(T0) + (DAY if interval is D3 else 0)
    grid = [interval.advance(first, i) for i in range(120)]
    kline_store.write([candle(t, chosen) for t in grid if chooser.random() < 0.6])

    for start, end in [
        (grid[0], grid[-1]),
        (grid[3] - 1, grid[50] + 1),
        (grid[0] - 5 * DAY, grid[-1] + 9 * DAY),
    ]:
        assert kline_store.missing_ranges(chosen, start, end) == KlineStore.missing_ranges(
            kline_store, chosen, start, end
        )


# ---------------------------------------------------------------------------------------------- exchange gaps


def test_exchange_gaps_are_merged_clipped_and_keep_their_fewest_confirmations(
    kline_store: KlineStore,
) -> None:
    hourly = series_of(interval=H1)
    kline_store.record_exchange_gap(BTC, T0, T0 + 10 * MINUTE, confirmations=2, confirmed_at=100)
    kline_store.record_exchange_gap(
        BTC, T0 + 10 * MINUTE, T0 + 20 * MINUTE, confirmations=3, confirmed_at=300
    )
    kline_store.record_exchange_gap(BTC, T0 + 5 * MINUTE, T0 + 15 * MINUTE, confirmations=2, confirmed_at=200)
    kline_store.record_exchange_gap(BTC, T0 + 40 * MINUTE, T0 + 50 * MINUTE, confirmations=1, confirmed_at=50)
    kline_store.record_exchange_gap(hourly, T0, T0 + DAY, confirmations=2, confirmed_at=1)
    kline_store.record_exchange_gap(BTC, T0 + 60 * MINUTE, T0 + 60 * MINUTE, confirmations=2, confirmed_at=1)

    assert kline_store.exchange_gaps(BTC, 0, FOREVER) == [
        ExchangeGap(T0, T0 + 20 * MINUTE, 2, 200),
        ExchangeGap(T0 + 40 * MINUTE, T0 + 50 * MINUTE, 1, 50),
    ]
    assert kline_store.exchange_gaps(BTC, T0 + 15 * MINUTE, T0 + 45 * MINUTE) == [
        ExchangeGap(T0 + 15 * MINUTE, T0 + 20 * MINUTE, 2, 200),
        ExchangeGap(T0 + 40 * MINUTE, T0 + 45 * MINUTE, 1, 50),
    ]
    assert kline_store.exchange_gaps(hourly, 0, FOREVER) == [ExchangeGap(T0, T0 + DAY, 2, 1)]
    assert kline_store.exchange_gaps(series_of("ETHUSDT"), 0, FOREVER) == []
    kline_store.record_exchange_gap(BTC, T0, T0 + 20 * MINUTE, confirmations=2, confirmed_at=200)
    assert len(kline_store.exchange_gaps(BTC, 0, FOREVER)) == 2  # recording a known gap again changes nothing


def test_forgetting_exchange_gaps_keeps_the_parts_outside_the_range(kline_store: KlineStore) -> None:
    kline_store.record_exchange_gap(BTC, T0, T0 + 30 * MINUTE, confirmations=2, confirmed_at=7)
    kline_store.record_exchange_gap(BTC, T0 + 40 * MINUTE, T0 + 50 * MINUTE, confirmations=2, confirmed_at=8)

    kline_store.forget_exchange_gaps(BTC, T0 + 10 * MINUTE, T0 + 45 * MINUTE)

    assert kline_store.exchange_gaps(BTC, 0, FOREVER) == [
        ExchangeGap(T0, T0 + 10 * MINUTE, 2, 7),
        ExchangeGap(T0 + 45 * MINUTE, T0 + 50 * MINUTE, 2, 8),
    ]
    kline_store.forget_exchange_gaps(BTC, 0, FOREVER)
    assert kline_store.exchange_gaps(BTC, 0, FOREVER) == []


# ---------------------------------------------------------------------------------------------- series


def test_series_lists_what_is_stored_with_its_last_write(kline_store: KlineStore) -> None:
    kline_store.wall_clock = lambda: 1_800_000_000.5
    kline_store.write(candles(T0, 3))
    kline_store.wall_clock = lambda: 1_800_000_100.0
    kline_store.write(candles(T0 + DAY, 2, series_of("ETHUSDT", H1, USDM)))
    kline_store.write(candles(T0 + 3 * MINUTE, 2))

    summaries = kline_store.series()

    assert [
        (s.market, s.symbol, s.interval, s.first_open_time, s.last_open_time, s.candles) for s in summaries
    ] == [
        ("spot", "BTCUSDT", "1m", T0, T0 + 4 * MINUTE, 5),
        ("usdm", "ETHUSDT", "1h", T0 + DAY, T0 + DAY + H1.length_ms, 2),
    ]
    assert [s.last_write for s in summaries] == [1_800_000_100_000, 1_800_000_100_000]
    assert kline_store.series(USDM) == summaries[1:]
