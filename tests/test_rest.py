"""RestSource: klines pages, exchange info, listing probes and the exchange's clock, per market.

Spot runs against the fake exchange on loopback; USD-M and COIN-M answers are shaped with
``responses`` (COIN-M's ``contractStatus``, its 200-day span, its newest-first rows).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from extractor.errors import BadInputError, ExchangeUnavailable, RequestRejected
from extractor.intervals import DAY, MINUTE, Interval
from extractor.klines import Kline, Series, to_row
from extractor.lifecycle import RunStop
from extractor.markets import COINM, SPOT, USDM, Market
from extractor.sources.base import Rows, Window
from extractor.sources.http import BanRecord, RestClient, RetryPolicy
from extractor.sources.rest import Listing, RestSource
from extractor.sources.weight import WeightBudget
from tests.fake_exchange import FakeExchange
from utils.circuit_breaker import CircuitBreaker

BASE = "https://binance.test"
ONE_MINUTE = Interval.parse("1m")
ONE_HOUR = Interval.parse("1h")
ONE_DAY = Interval.parse("1d")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


class Clocks:
    """This machine's monotonic and wall clocks and the exchange's clock, moved together by sleeping."""

    def __init__(self, exchange_ms: int, skew_ms: int = 0) -> None:
        self.mono = 7_000.0
        self.wall_minus_mono = exchange_ms / 1000 - skew_ms / 1000 - self.mono
        self.skew = skew_ms / 1000
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.mono + self.wall_minus_mono

    def exchange(self) -> float:
        return self.wall() + self.skew

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds


def source_for(market: Market, base_url: str, clocks: Clocks, **retry: Any) -> RestSource:
    client = RestClient(
        base_url,
        breaker=CircuitBreaker(
            100, 60, ExchangeUnavailable, name="api", clock=clocks.monotonic, wall_clock=clocks.wall
        ),
        budget=WeightBudget(market.weight_limit, clock=clocks.monotonic, sleep=clocks.sleep),
        bans=BanRecord(None, wall_clock=clocks.wall),
        stop=RunStop(),
        retry=RetryPolicy(**{"attempts": 3, **retry}),
        sleep=clocks.sleep,
        clock=clocks.monotonic,
    )
    source = RestSource(market, client, clock=clocks.monotonic, wall_clock=clocks.wall)
    client.budget.server_offset_ms = source.server_offset_ms
    return source


def wire(klines: list[Kline]) -> list[list[Any]]:
    return [to_row(k) for k in klines]


# -- spot, against the fake exchange on loopback --------------------------------------------------

NOW = ms("2024-06-15T12:34:30")


@pytest.fixture
def clocks() -> Clocks:
    return Clocks(NOW)


@pytest.fixture
def exchange(clocks: Clocks) -> Iterator[FakeExchange]:
    with FakeExchange(clock=clocks.exchange) as fake:
        yield fake


@pytest.fixture
def spot(exchange: FakeExchange, clocks: Clocks) -> Iterator[RestSource]:
    source = source_for(SPOT, exchange.url, clocks)
    yield source
    source.close()


def klines_asked(exchange: FakeExchange) -> list[dict[str, str]]:
    return [params for _, path, params, _ in exchange.requests if path == "/api/v3/klines"]


def test_pages_advance_by_open_time_with_the_markets_page_size(
    exchange: FakeExchange, spot: RestSource
) -> None:
    start = ms("2024-02-28T22:13:00")
    end = start + 2_500 * MINUTE
    series = Series(SPOT, "BTCUSDT", ONE_MINUTE)

    got = spot.klines(series, start, end)

    assert wire(got) == exchange.rows("BTCUSDT", "1m", start, end)
    asked = klines_asked(exchange)
    assert [int(q["startTime"]) for q in asked] == [start, start + 1000 * MINUTE, start + 2000 * MINUTE]
    assert [int(q["endTime"]) for q in asked] == [
        start + 1000 * MINUTE - 1,
        start + 2000 * MINUTE - 1,
        end - 1,
    ]
    assert {q["limit"] for q in asked} == {"1000"}
    assert spot.client.budget.used == 3 * 2  # spot's weight table: 2 a page at any limit


@pytest.mark.parametrize(
    ("interval", "start", "end"),
    [
        ("1w", "2017-01-01T00:00:00", "2024-06-01T00:00:00"),
        ("1M", "2017-01-01T00:00:00", "2024-06-01T00:00:00"),
        ("3d", "2017-08-01T00:00:00", "2024-06-01T00:00:00"),
        ("1h", "2024-02-28T22:13:00", "2024-03-05T00:00:00"),
    ],
)
def test_calendar_intervals_page_exactly(
    exchange: FakeExchange, clocks: Clocks, interval: str, start: str, end: str
) -> None:
    """Pages of 25 candles, so page edges fall on month ends, Mondays and the exchange's 3d phase."""
    small = dataclasses.replace(SPOT, max_limit=25)
    source = source_for(small, exchange.url, clocks)
    expected = exchange.rows("ETHUSDT", interval, ms(start), ms(end))

    got = source.klines(Series(small, "ETHUSDT", Interval.parse(interval)), ms(start), ms(end))

    assert wire(got) == expected
    assert len(expected) > 3 * 25
    assert {q["limit"] for q in klines_asked(exchange)} == {"25"}
    source.close()


def test_no_forming_candle_when_end_is_the_forming_candles_open(
    exchange: FakeExchange, spot: RestSource
) -> None:
    forming_open = ONE_MINUTE.align(exchange.now_ms())
    assert forming_open == ms("2024-06-15T12:34:00")

    got = spot.klines(Series(SPOT, "BTCUSDT", ONE_MINUTE), forming_open - 30 * MINUTE, forming_open)

    assert wire(got) == exchange.rows("BTCUSDT", "1m", forming_open - 30 * MINUTE, forming_open)
    assert len(got) == 30
    assert got[-1].close_time == forming_open - 1
    assert all(k.close_time < exchange.now_ms() for k in got)


def test_the_closed_candles_end_where_the_exchange_clock_says(
    exchange: FakeExchange, spot: RestSource, clocks: Clocks
) -> None:
    """The caller asks up to the forming candle's open by the exchange's clock: never a forming row."""
    series = Series(SPOT, "BTCUSDT", ONE_MINUTE)
    for _ in range(3):
        end = ONE_MINUTE.align(spot.now_ms())
        got = spot.klines(series, end - 5 * MINUTE, end)
        assert got[-1].close_time < exchange.now_ms()
        assert wire(got) == exchange.rows("BTCUSDT", "1m", end - 5 * MINUTE, end)
        clocks.sleep(41)


def test_an_outage_returns_the_rows_around_it(exchange: FakeExchange, spot: RestSource) -> None:
    start, end = ms("2023-03-24T12:00:00"), ms("2023-03-24T15:00:00")

    got = spot.klines(Series(SPOT, "BTCUSDT", ONE_MINUTE), start, end)

    assert wire(got) == exchange.rows("BTCUSDT", "1m", start, end)
    assert len(got) == 180 - 80
    assert exchange.request_counts["/api/v3/klines"] == 1


def test_a_range_inside_an_outage_or_before_a_listing_is_empty_after_one_request(
    exchange: FakeExchange, spot: RestSource
) -> None:
    assert (
        spot.klines(Series(SPOT, "BTCUSDT", ONE_MINUTE), ms("2023-03-24T12:45:00"), ms("2023-03-24T13:30:00"))
        == []
    )
    assert (
        spot.klines(Series(SPOT, "BTCUSDT", ONE_HOUR), ms("2017-01-01T00:00:00"), ms("2017-02-01T00:00:00"))
        == []
    )
    assert exchange.request_counts["/api/v3/klines"] == 2


def test_the_listing_probe_finds_the_first_candle_in_one_request(
    exchange: FakeExchange, spot: RestSource
) -> None:
    series = Series(SPOT, "BTCUSDT", ONE_HOUR)

    assert spot.first_open_time(series, ms("2010-01-01T00:00:00"), ms("2024-01-01T00:00:00")) == ms(
        "2017-08-17T04:00:00"
    )
    (asked,) = klines_asked(exchange)
    assert asked["limit"] == "1" and int(asked["startTime"]) == ms("2010-01-01T00:00:00")
    assert spot.first_open_time(series, ms("2010-01-01T00:00:00"), ms("2017-01-01T00:00:00")) is None
    assert spot.any_open_time(series, ms("2017-08-16T00:00:00"), ms("2017-08-18T00:00:00")) == ms(
        "2017-08-17T04:00:00"
    )
    assert exchange.request_counts["/api/v3/klines"] == 3


def test_a_range_across_the_listing_starts_at_the_listing(spot: RestSource) -> None:
    got = spot.klines(Series(SPOT, "BTCUSDT", ONE_HOUR), ms("2017-08-16T00:00:00"), ms("2017-08-18T00:00:00"))
    assert got[0].open_time == ms("2017-08-17T04:00:00")
    assert len(got) == 20


def test_listings_narrow_spot_to_the_symbols_asked(exchange: FakeExchange, spot: RestSource) -> None:
    listed = spot.listings(["BTCUSDT", "LUNAUSDT", "HALTUSDT"])

    assert listed == {
        "BTCUSDT": Listing("BTCUSDT", "TRADING", "USDT"),
        "LUNAUSDT": Listing("LUNAUSDT", "BREAK", "USDT"),
        "HALTUSDT": Listing("HALTUSDT", "HALT", "USDT"),
    }
    (asked,) = [params for _, path, params, _ in exchange.requests if path == "/api/v3/exchangeInfo"]
    assert asked == {"symbols": '["BTCUSDT","LUNAUSDT","HALTUSDT"]'}
    assert spot.client.budget.used == SPOT.exchange_info_weight == 20


def test_an_unknown_symbol_makes_binance_refuse_the_list_so_the_whole_list_is_asked(
    exchange: FakeExchange, spot: RestSource
) -> None:
    listed = spot.listings(["BTCUSDT", "DOGEUSDT"])

    assert "DOGEUSDT" not in listed and listed["BTCUSDT"].status == "TRADING"
    assert set(listed) == set(exchange.symbols)
    asked = [params for _, path, params, _ in exchange.requests if path == "/api/v3/exchangeInfo"]
    assert asked == [{"symbols": '["BTCUSDT","DOGEUSDT"]'}, {}]


def test_a_symbol_that_is_no_symbol_is_refused_before_asking(
    exchange: FakeExchange, spot: RestSource
) -> None:
    with pytest.raises(BadInputError, match="'btc/usdt'"):
        spot.listings(["BTCUSDT", "btc/usdt"])
    assert exchange.request_counts["/api/v3/exchangeInfo"] == 0


def test_exchange_info_sets_the_clock_and_the_weight_limit(clocks: Clocks) -> None:
    with FakeExchange(clock=clocks.exchange, weight_limit=1200) as exchange:
        source = source_for(SPOT, exchange.url, clocks)
        assert source.client.budget.limit == 6000

        source.listings(["BTCUSDT"])

        assert source.client.budget.limit == 1200
        assert source.now_ms() == exchange.now_ms()
        assert exchange.request_counts["/api/v3/time"] == 0  # the answer's serverTime was adopted
        source.close()


def test_the_exchange_clock_carries_forward_from_one_sync() -> None:
    skewed = Clocks(NOW, skew_ms=2_500)  # this machine's wall clock 2.5 s behind the exchange
    with FakeExchange(clock=skewed.exchange) as exchange:
        source = source_for(SPOT, exchange.url, skewed)

        assert source.local_time_ms() == NOW - 2_500
        assert source.now_ms() == NOW  # the first look syncs
        assert source.clock_skew_ms() == 2_500
        earlier = source.monotonic()
        skewed.sleep(90)
        assert source.now_ms() == NOW + 90_000
        assert source.exchange_time_at(earlier) == NOW
        assert source.server_time() == NOW + 90_000
        assert source.ping() == 0.0
        assert exchange.request_counts["/api/v3/time"] == 2
        assert source.server_offset_ms() == NOW + 90_000 - int(source.monotonic() * 1000)
        source.close()


def test_the_budget_minute_follows_the_exchanges_clock() -> None:
    """The exchange 20 s ahead of this machine: its minute ends 20 s sooner than ours would."""
    skewed = Clocks(ms("2024-06-15T12:34:30"), skew_ms=20_000)
    with FakeExchange(clock=skewed.exchange) as exchange:
        source = source_for(SPOT, exchange.url, skewed)
        source.server_time()  # weight 1 of the minute
        source.client.budget.settle(source.client.budget.acquire(5999), "6000")

        source.klines(
            Series(SPOT, "BTCUSDT", ONE_MINUTE), ms("2024-01-01T00:00:00"), ms("2024-01-01T00:10:00")
        )

        assert skewed.sleeps == [pytest.approx(30.0)]  # to 12:35:00 by the exchange's clock
        source.close()


def test_rejected_klines_name_the_symbol_or_the_interval(exchange: FakeExchange, spot: RestSource) -> None:
    with pytest.raises(RequestRejected, match="Invalid symbol: NOSUCHCOIN") as caught:
        spot.klines(
            Series(SPOT, "NOSUCHCOIN", ONE_MINUTE), ms("2024-01-01T00:00:00"), ms("2024-01-01T00:01:00")
        )
    assert isinstance(caught.value, BadInputError) and caught.value.code == -1121
    assert exchange.request_counts["/api/v3/klines"] == 1


def test_a_series_of_another_market_or_interval_is_refused_before_asking(spot: RestSource) -> None:
    with pytest.raises(BadInputError, match="usdm BTCUSDT 1m asked of the spot REST source"):
        spot.klines(Series(USDM, "BTCUSDT", ONE_MINUTE), 0, MINUTE)
    usdm = source_for(USDM, BASE, Clocks(NOW))
    with pytest.raises(BadInputError, match="USD-M futures has no 1s klines; intervals there: 1m 3m"):
        list(usdm.plan(Series(USDM, "BTCUSDT", Interval.parse("1s")), 0, 1000))


def test_the_plan_tiles_a_range_into_weighted_windows(spot: RestSource, exchange: FakeExchange) -> None:
    series = Series(SPOT, "ETHUSDT", ONE_MINUTE)
    start = ms("2024-01-01T00:00:00")

    windows = list(spot.plan(series, start, start + 2_500 * MINUTE))

    assert windows == [
        Window(series, start, start + 1000 * MINUTE, 2, 1000),
        Window(series, start + 1000 * MINUTE, start + 2000 * MINUTE, 2, 1000),
        Window(series, start + 2000 * MINUTE, start + 2500 * MINUTE, 2, 500),
    ]
    answer = spot.fetch(windows[2])
    assert isinstance(answer, Rows) and answer.window == windows[2]
    assert wire(answer.klines) == exchange.rows("ETHUSDT", "1m", windows[2].start, windows[2].end)
    assert answer.size == windows[2].expected_bytes
    assert [list(batch) for batch in answer.batches()] == [answer.klines]
    assert list(Rows(windows[0], []).batches()) == []  # an empty page writes nothing
    assert spot.capacity() == (6000 - 2) // 2


# -- USD-M and COIN-M, shaped with responses ------------------------------------------------------


def candle(interval: Interval, open_time: int, n: int = 0) -> list[Any]:
    price = f"{42000 + n % 97}.{n % 100:02d}000000"
    return [
        open_time,
        price,
        price,
        price,
        price,
        f"{n}.00100000",
        interval.close_time(open_time),
        "98765432109.87654321",
        n,
        "0.00000001",
        "123456789.12345678",
        "0",
    ]


class FuturesStandIn:
    """Klines of one listed series as USD-M (oldest first) or COIN-M (newest first, 200-day span) answer."""

    def __init__(self, market: Market, interval: Interval, listed: int, now: int) -> None:
        self.market, self.interval, self.listed, self.now = market, interval, listed, now
        self.asked: list[dict[str, int]] = []

    def open_times(self, lo: int, hi: int) -> range:
        """Open times of candles that exist in ``[lo, hi]`` (an inclusive end, as Binance's endTime)."""
        first = self.interval.ceil(max(lo, self.listed))
        last_open = self.interval.align(min(hi, self.now - 1))
        return range(first, last_open + 1, self.interval.length_ms)

    def rows(self, lo: int, hi: int) -> list[list[Any]]:
        return [candle(self.interval, t, t // self.interval.length_ms) for t in self.open_times(lo, hi)]

    def answer(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        asked = parse_qs(urlsplit(str(request.url)).query)
        query = {k: int(v[0]) for k, v in asked.items() if k not in ("symbol", "interval")}
        self.asked.append(query)
        lo, hi, limit = query["startTime"], query["endTime"], query["limit"]
        if self.market.max_span_ms is not None and hi - lo > self.market.max_span_ms:
            return (
                400,
                {},
                json.dumps({"code": -1127, "msg": "More than 4800 hours between startTime and endTime."}),
            )
        times = self.open_times(lo, hi)
        if self.market.max_span_ms is None:
            chosen = list(times[:limit])
        else:
            chosen = list(reversed(times[-limit:] if limit else times[:0]))  # the newest, newest first
        rows = [candle(self.interval, t, t // self.interval.length_ms) for t in chosen]
        return 200, {}, json.dumps(rows)


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def futures(
    market: Market, api: responses.RequestsMock, interval: Interval, listed: int
) -> tuple[RestSource, FuturesStandIn]:
    stand_in = FuturesStandIn(market, interval, listed, NOW)
    api.add_callback(responses.GET, BASE + market.endpoint("klines"), callback=stand_in.answer)
    return source_for(market, BASE, Clocks(NOW)), stand_in


def test_usdm_pages_499_candles_at_weight_two(api: responses.RequestsMock) -> None:
    source, stand_in = futures(USDM, api, ONE_MINUTE, ms("2019-09-08T17:57:00"))
    series = Series(USDM, "BTCUSDT", ONE_MINUTE)
    start = ms("2024-01-01T00:00:00")
    end = start + 1_200 * MINUTE

    got = source.klines(series, start, end)

    assert wire(got) == stand_in.rows(start, end - 1)
    assert [q["limit"] for q in stand_in.asked] == [499, 499, 499]
    assert [q["startTime"] for q in stand_in.asked] == [start, start + 499 * MINUTE, start + 998 * MINUTE]
    assert source.client.budget.used == 3 * 2
    assert all(k.market == "usdm" for k in got)


def test_coinm_pages_never_span_more_than_200_days_and_come_out_oldest_first(
    api: responses.RequestsMock,
) -> None:
    source, stand_in = futures(COINM, api, ONE_DAY, ms("2020-08-10T00:00:00"))
    series = Series(COINM, "BTCUSD_PERP", ONE_DAY)
    start, end = ms("2021-01-01T00:00:00"), ms("2023-01-01T00:00:00")

    got = source.klines(series, start, end)

    assert wire(got) == stand_in.rows(start, end - 1)
    assert len(got) == 730
    assert all(q["endTime"] - q["startTime"] < 200 * DAY for q in stand_in.asked)
    assert len(stand_in.asked) == 4  # 730 days in pages of 200
    assert [k.open_time for k in got] == sorted(k.open_time for k in got)


def test_usdm_listing_probe_is_one_request_of_one_candle(api: responses.RequestsMock) -> None:
    listed = ms("2019-09-08T17:57:00")
    source, stand_in = futures(USDM, api, ONE_MINUTE, listed)
    series = Series(USDM, "BTCUSDT", ONE_MINUTE)

    assert source.first_open_time(series, ms("2017-01-01T00:00:00"), ms("2024-01-01T00:00:00")) == listed
    assert [q["limit"] for q in stand_in.asked] == [1]
    assert source.client.budget.used == USDM.klines_weight(1) == 1


@pytest.mark.parametrize(
    ("interval", "listed"),
    [
        (ONE_MINUTE, ms("2020-08-10T07:13:00")),
        (ONE_HOUR, ms("2020-08-10T07:00:00")),
        (ONE_DAY, ms("2020-08-10")),
    ],
)
def test_coinm_listing_probe_finds_the_200_day_span_then_halves_it(
    api: responses.RequestsMock, interval: Interval, listed: int
) -> None:
    source, stand_in = futures(COINM, api, interval, listed)
    series = Series(COINM, "BTCUSD_PERP", interval)
    start, end = ms("2019-01-01T00:00:00"), ms("2024-01-01T00:00:00")

    assert source.first_open_time(series, start, end) == listed

    assert all(q["endTime"] - q["startTime"] < 200 * DAY for q in stand_in.asked)
    empty_spans = (listed - start) // (200 * DAY)
    halvings = max(
        0, (200 * DAY // interval.length_ms - 1).bit_length() - (COINM.page_limit.bit_length() - 1)
    )
    assert len(stand_in.asked) <= empty_spans + 1 + halvings + 1 + 1
    assert len(stand_in.asked) < 20  # against ~5,300 pages of 1m candles from 2019 to the listing


def test_coinm_any_open_time_asks_one_candle_per_span(api: responses.RequestsMock) -> None:
    listed = ms("2020-08-10T00:00:00")
    source, stand_in = futures(COINM, api, ONE_HOUR, listed)
    series = Series(COINM, "BTCUSD_PERP", ONE_HOUR)

    found = source.any_open_time(series, ms("2019-01-01T00:00:00"), ms("2021-01-01T00:00:00"))

    assert found is not None and found >= listed
    assert [q["limit"] for q in stand_in.asked] == [1, 1, 1]  # the third 200-day span holds the listing
    assert source.any_open_time(series, ms("2019-01-01T00:00:00"), ms("2019-06-01T00:00:00")) is None


def test_coinm_plan_windows_hold_at_most_a_page_and_200_days(api: responses.RequestsMock) -> None:
    source = source_for(COINM, BASE, Clocks(NOW))
    series = Series(COINM, "BTCUSD_PERP", ONE_DAY)
    windows = list(source.plan(series, ms("2021-01-01"), ms("2023-01-01")))
    assert [w.end - w.start for w in windows] == [200 * DAY] * 3 + [130 * DAY]
    assert {w.weight for w in windows} == {COINM.klines_weight(499)} == {2}
    assert [w.candles for w in windows] == [200, 200, 200, 130]


USDM_INFO = {
    "timezone": "UTC",
    "serverTime": NOW + 1_000,
    "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    ],
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "contractType": "PERPETUAL",
            "quoteAsset": "USDT",
            "onboardDate": 1568102400000,
        },
        {
            "symbol": "BTCUSDT_240628",
            "status": "SETTLING",
            "contractType": "CURRENT_QUARTER",
            "quoteAsset": "USDT",
            "onboardDate": 1703836800000,
        },
        {"symbol": "LUNAUSDT", "status": "BREAK", "quoteAsset": "USDT"},
        {"not a": "symbol"},
        "garbage",
    ],
}
COINM_INFO = {
    "timezone": "UTC",
    "serverTime": NOW + 2_000,
    "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
    ],
    "symbols": [
        {
            "symbol": "BTCUSD_PERP",
            "contractStatus": "TRADING",
            "contractType": "PERPETUAL",
            "quoteAsset": "USD",
            "onboardDate": 1597042800000,
        },
        {"symbol": "ETHUSD_240329", "contractStatus": "DELIVERING", "quoteAsset": "USD"},
        {"symbol": "ADAUSD_PERP", "quoteAsset": "USD"},
    ],
}


def test_usdm_listings_carry_status_and_onboard_date(api: responses.RequestsMock) -> None:
    api.add(responses.GET, BASE + "/fapi/v1/exchangeInfo", json=USDM_INFO)
    source = source_for(USDM, BASE, Clocks(NOW))

    listed = source.listings(["BTCUSDT"])

    assert listed == {
        "BTCUSDT": Listing("BTCUSDT", "TRADING", "USDT", 1568102400000),
        "BTCUSDT_240628": Listing("BTCUSDT_240628", "SETTLING", "USDT", 1703836800000),
        "LUNAUSDT": Listing("LUNAUSDT", "BREAK", "USDT", None),
    }
    (call,) = api.calls
    assert urlsplit(call.request.url).query == ""  # the futures markets always list every contract
    assert source.client.budget.used == USDM.exchange_info_weight == 1
    assert source.now_ms() == NOW + 1_000 and len(api.calls) == 1


def test_coinm_listings_read_contract_status(api: responses.RequestsMock) -> None:
    api.add(responses.GET, BASE + "/dapi/v1/exchangeInfo", json=COINM_INFO)
    source = source_for(COINM, BASE, Clocks(NOW))

    listed = source.listings()

    assert listed == {
        "BTCUSD_PERP": Listing("BTCUSD_PERP", "TRADING", "USD", 1597042800000),
        "ETHUSD_240329": Listing("ETHUSD_240329", "DELIVERING", "USD", None),
        "ADAUSD_PERP": Listing("ADAUSD_PERP", "UNKNOWN", "USD", None),
    }
    assert source.client.budget.limit == 6000
    assert source.now_ms() == NOW + 2_000


@pytest.mark.parametrize("answer", [{"symbols": "all"}, {"rateLimits": []}, [], "<html>"])
def test_an_exchange_info_without_a_symbol_list_is_malformed_and_retried(
    api: responses.RequestsMock, answer: Any
) -> None:
    api.add(responses.GET, BASE + "/fapi/v1/exchangeInfo", json=answer)
    source = source_for(USDM, BASE, Clocks(NOW), attempts=2)
    with pytest.raises(ExchangeUnavailable, match="after 2 attempts"):
        source.listings()
    assert len(api.calls) == 2


def test_a_time_answer_without_server_time_is_malformed(api: responses.RequestsMock) -> None:
    api.add(responses.GET, BASE + "/dapi/v1/time", json={"serverTime": "now"})
    source = source_for(COINM, BASE, Clocks(NOW), attempts=1)
    with pytest.raises(ExchangeUnavailable, match=r"expected \{'serverTime': ms\}"):
        source.server_time()


def test_a_futures_interval_rejection_names_the_interval(api: responses.RequestsMock) -> None:
    api.add(
        responses.GET, BASE + "/fapi/v1/klines", status=400, json={"code": -1120, "msg": "Invalid interval."}
    )
    source = source_for(USDM, BASE, Clocks(NOW))
    with pytest.raises(RequestRejected, match="Invalid interval: 1h"):
        source.klines(Series(USDM, "BTCUSDT", ONE_HOUR), ms("2024-01-01"), ms("2024-01-02"))
    assert len(api.calls) == 1


@pytest.mark.parametrize("bad_open_time", ["1609459200000", None, [1], 1.5])
def test_a_coinm_answer_with_a_bad_open_time_is_malformed_not_a_crash(
    api: responses.RequestsMock, bad_open_time: Any
) -> None:
    start = ms("2021-01-01")
    good = [candle(ONE_DAY, start + DAY, 1), candle(ONE_DAY, start, 0)]
    api.add(responses.GET, BASE + "/dapi/v1/klines", json=[good[0], [bad_open_time, *good[1][1:]]])
    api.add(responses.GET, BASE + "/dapi/v1/klines", json=good)
    source = source_for(COINM, BASE, Clocks(NOW))

    got = source.klines(Series(COINM, "BTCUSD_PERP", ONE_DAY), start, start + 2 * DAY)

    assert [k.open_time for k in got] == [start, start + DAY]
    assert len(api.calls) == 2
    assert source.client.breaker.metrics.failure_count == 1
