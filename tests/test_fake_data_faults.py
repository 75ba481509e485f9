"""Wrong data in a 200 answer, as issue 17 found it: empty, short, holed and lagging pages, bad rows."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.fake_exchange import BAD_ROW_KINDS, FakeExchange, Faults, ManualClock

NOW = 1704067230.5  # 2024-01-01T00:00:30.5Z: the 00:00 minute is forming
NOW_MS = 1704067230500
MINUTE = 60_000
T0 = 1_700_000_040_000
PAGE: dict[str, Any] = {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0, "limit": 10}

Start = Callable[..., FakeExchange]
Page = list[list[Any]]


@pytest.fixture
def exchange(fake_exchanges: Start) -> FakeExchange:
    return fake_exchanges(clock=ManualClock(NOW))


def klines(http: requests.Session, exchange: FakeExchange, api: str = "/api/v3", **params: Any) -> Page:
    answer = http.get(exchange.url + api + "/klines", params=params or PAGE, timeout=10)
    assert answer.status_code == 200, answer.text
    rows: Page = answer.json()
    return rows


def test_an_empty_page_fault_waits_for_a_page_with_rows(
    exchange: FakeExchange, http: requests.Session
) -> None:
    good = klines(http, exchange)
    exchange.faults.empty_next = 1
    before_listing: dict[str, Any] = {"symbol": "BTCUSDT", "interval": "1m", "startTime": 0, "endTime": 1_000}
    assert klines(http, exchange, **before_listing) == []
    assert exchange.faults.empty_next == 1  # nothing to empty yet
    assert klines(http, exchange) == []
    assert exchange.faults.empty_next == 0
    assert klines(http, exchange) == good


def test_a_short_page_drops_its_last_rows(exchange: FakeExchange, http: requests.Session) -> None:
    good = klines(http, exchange)
    exchange.faults.short_next, exchange.faults.short_by = 1, 3
    assert klines(http, exchange) == good[:7]
    assert klines(http, exchange) == good


def test_a_holed_page_drops_a_row_in_its_middle(exchange: FakeExchange, http: requests.Session) -> None:
    good = klines(http, exchange)
    exchange.faults.hole_next = 2
    assert klines(http, exchange) == good[:5] + good[6:]
    assert klines(http, exchange) == good[:5] + good[6:]
    assert klines(http, exchange) == good


def test_a_lagging_answer_misses_the_newest_closed_candle(
    exchange: FakeExchange, http: requests.Session
) -> None:
    forming = NOW_MS - NOW_MS % MINUTE
    tail: dict[str, Any] = {"symbol": "BTCUSDT", "interval": "1m", "startTime": forming - 5 * MINUTE}
    good = klines(http, exchange, **tail)
    assert [row[0] for row in good] == [forming - k * MINUTE for k in range(5, -1, -1)]
    exchange.faults.tail_next = 1
    assert klines(http, exchange) == klines(http, exchange)  # history holds no newest candle: untouched
    assert exchange.faults.tail_next == 1
    assert klines(http, exchange, **tail) == good[:4]  # neither the newest closed nor the forming one
    assert klines(http, exchange, **tail) == good


def test_a_data_fault_still_costs_weight_and_one_fault_serves_one_answer(
    exchange: FakeExchange, http: requests.Session
) -> None:
    good = klines(http, exchange)
    exchange.faults = Faults(hole_next=1, short_next=1)
    first = http.get(exchange.url + "/api/v3/klines", params=PAGE, timeout=10)
    assert first.headers["X-MBX-USED-WEIGHT-1M"] == "4"
    assert first.json() == good[:9]  # short comes before hole
    assert klines(http, exchange) == good[:5] + good[6:]
    assert klines(http, exchange) == good


def test_a_market_fault_spoils_that_market_only_and_faults_spoil_all(
    exchange: FakeExchange, http: requests.Session
) -> None:
    usdm: dict[str, Any] = {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0, "limit": 10}
    coinm: dict[str, Any] = {
        "symbol": "BTCUSD_PERP",
        "interval": "1m",
        "startTime": T0,
        "endTime": T0 + 9 * MINUTE,
    }
    good = (klines(http, exchange), klines(http, exchange, "/fapi/v1", **usdm))
    exchange.market_faults["usdm"].empty_next = 1
    assert klines(http, exchange) == good[0]
    assert klines(http, exchange, "/fapi/v1", **usdm) == []
    exchange.faults.hole_next = 1
    holed = klines(http, exchange, "/dapi/v1", **coinm)
    assert len(holed) == 9 and exchange.faults.hole_next == 0


def _d(text: str) -> Decimal:
    return Decimal(text)


ONE_ROW_CHECKS: dict[str, Callable[[list[Any], list[Any]], bool]] = {
    "high_below_low": lambda good, bad: _d(bad[2]) < _d(bad[3]),
    "low_above_open": lambda good, bad: _d(bad[3]) > _d(bad[1]) and _d(bad[3]) <= _d(bad[4]) <= _d(bad[2]),
    "low_above_close": lambda good, bad: _d(bad[3]) > _d(bad[4]) and _d(bad[3]) <= _d(bad[1]) <= _d(bad[2]),
    "high_below_open": lambda good, bad: _d(bad[2]) < _d(bad[1]) and _d(bad[3]) <= _d(bad[4]) <= _d(bad[2]),
    "high_below_close": lambda good, bad: _d(bad[2]) < _d(bad[4]) and _d(bad[3]) <= _d(bad[1]) <= _d(bad[2]),
    "taker_above_volume": lambda good, bad: _d(bad[9]) > _d(bad[5]),
    "taker_quote_above_quote": lambda good, bad: _d(bad[10]) > _d(bad[7]),
    "too_many_decimals": lambda good, bad: len(bad[4].split(".")[1]) == 19 and _d(bad[4]) > _d(good[4]),
    "negative_volume": lambda good, bad: _d(bad[5]) == -_d(good[5]),
    "negative_price": lambda good, bad: _d(bad[3]) == -_d(good[3]),
    "negative_trades": lambda good, bad: bad[8] == -1,
    "nan": lambda good, bad: _d(bad[4]).is_nan(),
    "garbage": lambda good, bad: bad[4] == "abc",
    "exponent": lambda good, bad: "E" in bad[5] and _d(bad[5]) == _d(good[5]),
    "number_not_string": lambda good, bad: isinstance(bad[4], float),
    "open_time_string": lambda good, bad: bad[0] == str(good[0]),
    "bad_close_time": lambda good, bad: bad[6] == good[6] + 1,
    "short_row": lambda good, bad: bad == good[:11],
    "long_row": lambda good, bad: bad == [*good, "0"],
    "off_grid": lambda good, bad: bad[0] % MINUTE == 1 and bad[6] - bad[0] == MINUTE - 1,
}


@pytest.mark.parametrize("kind", sorted(BAD_ROW_KINDS))
def test_each_bad_row_kind_spoils_the_row_it_says(
    exchange: FakeExchange, http: requests.Session, kind: str
) -> None:
    good = klines(http, exchange)
    exchange.faults.bad_rows_next, exchange.faults.bad_row_kind = 1, kind
    bad = klines(http, exchange)
    if kind == "duplicate":
        assert bad == [good[0], *good]
    elif kind == "out_of_order":
        assert bad == [good[1], good[0], *good[2:]]
    else:
        assert bad[1:] == good[1:]
        assert ONE_ROW_CHECKS[kind](good[0], bad[0]), bad[0]
    assert klines(http, exchange) == good


def test_the_bad_row_can_be_any_row(exchange: FakeExchange, http: requests.Session) -> None:
    good = klines(http, exchange)
    exchange.faults = Faults(bad_rows_next=1, bad_row_kind="taker_above_volume", bad_row_index=-1)
    bad = klines(http, exchange)
    assert bad[:-1] == good[:-1] and _d(bad[-1][9]) > _d(bad[-1][5])


def test_every_bad_row_kind_has_a_check_here() -> None:
    assert set(BAD_ROW_KINDS) == set(ONE_ROW_CHECKS) | {"duplicate", "out_of_order"}
