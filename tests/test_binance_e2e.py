"""BinanceClient end to end against the fake exchange on loopback: exact data, calendars, gaps, faults."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from extractor.binance import BinanceClient
from extractor.errors import BadInputError, ExchangeUnavailable
from extractor.intervals import MINUTE, Interval
from extractor.klines import Kline, to_row
from tests.fake_exchange import FakeExchange, ManualClock
from utils.circuit_breaker import CircuitBreaker


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


class RecordedSleep:
    """Records backoff sleeps instead of sleeping, and moves a manual clock if it is given one."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.sleeps: list[float] = []
        self.clock = clock

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)


def client_for(exchange: FakeExchange, sleep: RecordedSleep, **options: Any) -> BinanceClient:
    return BinanceClient(
        exchange.url,
        breaker=CircuitBreaker(1000, 60, ExchangeUnavailable, name="api"),
        sleep=sleep,
        **options,
    )


@pytest.fixture
def sleep() -> RecordedSleep:
    return RecordedSleep()


@pytest.fixture
def client(fake_exchange: FakeExchange, sleep: RecordedSleep) -> Iterator[BinanceClient]:
    with client_for(fake_exchange, sleep) as client:
        yield client


def wire(klines: list[Kline]) -> list[list[Any]]:
    return [to_row(k) for k in klines]


def test_multi_page_range_equals_the_exchange_data(
    fake_exchange: FakeExchange, client: BinanceClient
) -> None:
    start = ms("2024-02-28T22:13:00")
    end = start + 2_500 * MINUTE

    got = client.klines("BTCUSDT", Interval.parse("1m"), start, end)

    assert wire(got) == fake_exchange.rows("BTCUSDT", "1m", start, end)
    assert len(got) == 2_500
    assert fake_exchange.request_counts["/api/v3/klines"] == 3


@pytest.mark.parametrize(
    ("interval", "start", "end"),
    [
        ("1w", "2017-01-01T00:00:00", "2024-06-01T00:00:00"),
        ("1M", "2017-01-01T00:00:00", "2024-06-01T00:00:00"),
        ("3d", "2017-08-01T00:00:00", "2024-06-01T00:00:00"),
    ],
)
def test_calendar_intervals_page_exactly(
    fake_exchange: FakeExchange, client: BinanceClient, interval: str, start: str, end: str
) -> None:
    expected = fake_exchange.rows("ETHUSDT", interval, ms(start), ms(end))

    got = client.klines("ETHUSDT", Interval.parse(interval), ms(start), ms(end), limit=25)

    assert wire(got) == expected
    assert len(expected) > 3 * 25


def test_forming_candle_is_dropped_at_now(sleep: RecordedSleep) -> None:
    frozen = ManualClock(ms("2024-06-15T12:34:30") / 1000)
    with FakeExchange(clock=frozen) as exchange, client_for(exchange, sleep) as client:
        now = exchange.now_ms()

        got = client.klines("BTCUSDT", Interval.parse("1m"), now - 30 * MINUTE, now + 10 * MINUTE)

        assert wire(got) == exchange.rows("BTCUSDT", "1m", now - 30 * MINUTE, now + 10 * MINUTE)
        assert got[-1].close_time == ms("2024-06-15T12:34:00") - 1
        assert len(got) == 29  # 12:05 .. 12:33; 12:34 is still forming


def test_outage_gap_returns_the_rows_around_it_without_spinning(
    fake_exchange: FakeExchange, client: BinanceClient
) -> None:
    start, end = ms("2023-03-24T12:00:00"), ms("2023-03-24T15:00:00")

    got = client.klines("BTCUSDT", Interval.parse("1m"), start, end, limit=30)

    assert wire(got) == fake_exchange.rows("BTCUSDT", "1m", start, end)
    assert len(got) == 180 - 80
    assert ms("2023-03-24T12:39:00") in {k.open_time for k in got}
    assert ms("2023-03-24T12:40:00") not in {k.open_time for k in got}
    assert fake_exchange.request_counts["/api/v3/klines"] <= 4


def test_range_inside_the_outage_is_empty_after_one_request(
    fake_exchange: FakeExchange, client: BinanceClient
) -> None:
    got = client.klines("BTCUSDT", Interval.parse("1m"), ms("2023-03-24T12:45:00"), ms("2023-03-24T13:30:00"))

    assert got == []
    assert fake_exchange.request_counts["/api/v3/klines"] == 1


def test_before_listing_there_is_nothing_and_no_error(
    fake_exchange: FakeExchange, client: BinanceClient
) -> None:
    got = client.klines("BTCUSDT", Interval.parse("1h"), ms("2017-01-01T00:00:00"), ms("2017-08-01T00:00:00"))

    assert got == []
    assert fake_exchange.request_counts["/api/v3/klines"] == 1


def test_a_range_across_the_listing_starts_at_the_listing(client: BinanceClient) -> None:
    got = client.klines("BTCUSDT", Interval.parse("1h"), ms("2017-08-16T00:00:00"), ms("2017-08-18T00:00:00"))

    assert got[0].open_time == ms("2017-08-17T04:00:00")
    assert len(got) == 20


def test_flapping_exchange_still_yields_exact_data(fake_exchange: FakeExchange, sleep: RecordedSleep) -> None:
    faults = fake_exchange.faults
    faults.error_rate, faults.reset_rate, faults.html_rate, faults.truncated_rate = 0.2, 0.05, 0.03, 0.03
    faults.seed = 11
    start = ms("2024-01-01T00:00:00")
    end = start + 5_000 * MINUTE

    with client_for(fake_exchange, sleep, max_attempts=10) as client:
        got = client.klines("ETHUSDT", Interval.parse("1m"), start, end, limit=250)

    faults.error_rate = faults.reset_rate = faults.html_rate = faults.truncated_rate = 0.0
    assert wire(got) == fake_exchange.rows("ETHUSDT", "1m", start, end)
    assert fake_exchange.request_counts["/api/v3/klines"] > 20  # 20 pages plus the retried failures
    assert len(sleep.sleeps) == fake_exchange.request_counts["/api/v3/klines"] - 20


def test_a_hung_request_times_out_and_is_retried(fake_exchange: FakeExchange, sleep: RecordedSleep) -> None:
    fake_exchange.faults.hang_next = 1
    start = ms("2024-01-01T00:00:00")

    with client_for(fake_exchange, sleep, read_timeout=0.3) as client:
        got = client.klines("BTCUSDT", Interval.parse("1m"), start, start + 10 * MINUTE)

    assert wire(got) == fake_exchange.rows("BTCUSDT", "1m", start, start + 10 * MINUTE)
    assert fake_exchange.request_counts["/api/v3/klines"] == 2
    assert len(sleep.sleeps) == 1


def test_exchange_info_statuses_and_unknown_symbols(
    fake_exchange: FakeExchange, client: BinanceClient
) -> None:
    assert client.exchange_info(["BTCUSDT", "LUNAUSDT", "HALTUSDT"]) == {
        "BTCUSDT": "TRADING",
        "LUNAUSDT": "BREAK",
        "HALTUSDT": "HALT",
    }
    assert fake_exchange.request_counts["/api/v3/exchangeInfo"] == 1

    with pytest.raises(BadInputError, match="unknown symbol DOGEUSDT:"):
        client.exchange_info(["BTCUSDT", "DOGEUSDT"])


def test_the_weight_budget_keeps_inside_a_small_limit(sleep: RecordedSleep) -> None:
    clock = ManualClock(ms("2024-06-15T12:34:30") / 1000)
    sleep.clock = clock
    with (
        FakeExchange(clock=clock, weight_limit=41) as exchange,
        client_for(exchange, sleep, clock=clock, wall_clock=clock) as client,
    ):
        client.exchange_info(["BTCUSDT"])
        start = ms("2024-01-01T00:00:00")

        got = client.klines("BTCUSDT", Interval.parse("1m"), start, start + 30 * 100 * MINUTE, limit=100)

        assert client.weight_budget.limit == 41
        assert wire(got) == exchange.rows("BTCUSDT", "1m", start, start + 30 * 100 * MINUTE)
        assert exchange.total_weight_429s == 0
        assert client.weight_budget.waited_seconds == pytest.approx(30)  # 12:34:30 -> 12:35:00, once


def test_a_429_from_the_exchange_pauses_and_recovers(sleep: RecordedSleep) -> None:
    clock = ManualClock(ms("2024-06-15T12:34:30") / 1000)
    sleep.clock = clock
    with (
        FakeExchange(clock=clock, weight_limit=11, retry_after=5) as exchange,
        client_for(exchange, sleep, clock=clock, wall_clock=clock) as client,
    ):
        start = ms("2024-01-01T00:00:00")

        got = client.klines("BTCUSDT", Interval.parse("1m"), start, start + 10 * 100 * MINUTE, limit=100)

        assert wire(got) == exchange.rows("BTCUSDT", "1m", start, start + 10 * 100 * MINUTE)
        assert exchange.total_weight_429s >= 1
        assert exchange.banned_until is None
        assert sum(sleep.sleeps) >= 5
