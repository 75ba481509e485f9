"""The fake's USD-M and COIN-M futures keep Binance's limits, weights, pools and COIN-M's span rules."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.fake_exchange import (
    DEFAULT_COINM_SYMBOLS,
    DEFAULT_USDM_SYMBOLS,
    FakeExchange,
    Faults,
    ManualClock,
    SymbolSpec,
)

NOW = 1736000000.5  # 2025-01-04T14:13:20.5Z
NOW_MS = 1736000000500
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
SPAN = 200 * DAY
T0 = 1704067200000  # 2024-01-01
API = {"spot": "/api/v3", "usdm": "/fapi/v1", "coinm": "/dapi/v1"}
FUTURES = ("usdm", "coinm")
SYMBOL = {"spot": "BTCUSDT", "usdm": "BTCUSDT", "coinm": "BTCUSD_PERP"}

Start = Callable[..., FakeExchange]


@pytest.fixture
def exchange(fake_exchanges: Start) -> FakeExchange:
    return fake_exchanges(clock=ManualClock(NOW))


def get(http: requests.Session, exchange: FakeExchange, market: str, endpoint: str, **params: Any) -> Any:
    return http.get(f"{exchange.url}{API[market]}/{endpoint}", params=params, timeout=10)


def klines(http: requests.Session, exchange: FakeExchange, market: str, **params: Any) -> list[list[Any]]:
    params.setdefault("symbol", SYMBOL[market])
    answer = get(http, exchange, market, "klines", **params)
    assert answer.status_code == 200, answer.text
    rows: list[list[Any]] = answer.json()
    return rows


def open_times(rows: list[list[Any]]) -> list[int]:
    return [row[0] for row in rows]


def error(answer: requests.Response) -> tuple[int, int, str]:
    body = answer.json()
    return answer.status_code, body["code"], body["msg"]


# -- paging ----------------------------------------------------------------------------------------


def test_usdm_pages_ascend_from_start_time_500_by_default_and_up_to_1500(
    exchange: FakeExchange, http: requests.Session
) -> None:
    assert open_times(klines(http, exchange, "usdm", interval="1m", startTime=T0 + 1)) == [
        T0 + (k + 1) * MINUTE for k in range(500)
    ]
    full = klines(http, exchange, "usdm", interval="1m", startTime=T0, limit=1500)
    assert open_times(full) == [T0 + k * MINUTE for k in range(1500)]
    assert full == exchange.rows("BTCUSDT", "1m", T0, T0 + 1500 * MINUTE, market="usdm")
    assert error(get(http, exchange, "usdm", "klines", symbol="BTCUSDT", interval="1m", limit=1501)) == (
        400,
        -1130,
        "Data sent for parameter 'limit' is not valid.",
    )
    newest = klines(http, exchange, "usdm", interval="1h", limit=3)
    assert open_times(newest) == [NOW_MS - NOW_MS % HOUR - k * HOUR for k in (2, 1, 0)]


@pytest.mark.parametrize("market", FUTURES)
def test_futures_have_no_1s_interval(exchange: FakeExchange, http: requests.Session, market: str) -> None:
    answer = get(http, exchange, market, "klines", symbol=SYMBOL[market], interval="1s")
    assert error(answer) == (400, -1120, "Invalid interval.")
    with pytest.raises(ValueError, match="no 1s klines"):
        exchange.rows(SYMBOL[market], "1s", T0, T0 + MINUTE, market=market)


@pytest.mark.parametrize(
    ("limit", "weight"),
    [(1, 1), (99, 1), (100, 2), (499, 2), (500, 5), (1000, 5), (1001, 10), (1500, 10), (None, 5)],
)
@pytest.mark.parametrize("market", FUTURES)
def test_futures_klines_weigh_by_limit(
    fake_exchanges: Start, http: requests.Session, market: str, limit: int | None, weight: int
) -> None:
    exchange = fake_exchanges(clock=ManualClock(NOW))
    params: dict[str, Any] = {"symbol": SYMBOL[market], "interval": "1m", "startTime": T0}
    if limit is not None:
        params["limit"] = limit
    answer = get(http, exchange, market, "klines", **params)
    assert answer.status_code == 200
    assert answer.headers["X-MBX-USED-WEIGHT-1M"] == str(weight)
    assert "X-MBX-USED-WEIGHT" not in answer.headers  # futures send only the minute header
    assert exchange.usage(market)["127.0.0.1"].weight == weight


# -- COIN-M's span ----------------------------------------------------------------------------------


def test_coinm_refuses_more_than_200_days_between_start_and_end(
    exchange: FakeExchange, http: requests.Session
) -> None:
    ok = get(
        http,
        exchange,
        "coinm",
        "klines",
        symbol="BTCUSD_PERP",
        interval="1d",
        startTime=T0,
        endTime=T0 + SPAN,
    )
    assert ok.status_code == 200
    refused = get(
        http,
        exchange,
        "coinm",
        "klines",
        symbol="BTCUSD_PERP",
        interval="1d",
        startTime=T0,
        endTime=T0 + SPAN + 1,
    )
    assert error(refused) == (400, -1127, "More than 4800 hours between startTime and endTime.")
    assert refused.headers["X-MBX-USED-WEIGHT-1M"] == "10"  # refused requests still weigh (5 each)
    usdm = get(
        http, exchange, "usdm", "klines", symbol="BTCUSDT", interval="1d", startTime=T0, endTime=T0 + 2 * SPAN
    )
    assert usdm.status_code == 200  # USD-M has no such cap


def test_coinm_answers_the_newest_rows_between_start_and_end(
    exchange: FakeExchange, http: requests.Session
) -> None:
    end = T0 + 10 * DAY
    both = klines(http, exchange, "coinm", interval="1d", startTime=T0, endTime=end, limit=3)
    assert open_times(both) == [end - 2 * DAY, end - DAY, end]
    start_only = klines(http, exchange, "coinm", interval="1d", startTime=T0, limit=3)
    assert open_times(start_only) == [T0 + SPAN - 2 * DAY, T0 + SPAN - DAY, T0 + SPAN]
    end_only = klines(http, exchange, "coinm", interval="1d", endTime=end, limit=500)
    assert open_times(end_only) == [end - SPAN + k * DAY for k in range(201)]
    recent = klines(http, exchange, "coinm", interval="1d", startTime=NOW_MS - 5 * DAY - 1, limit=1500)
    today = NOW_MS - NOW_MS % DAY
    assert open_times(recent) == [today - k * DAY for k in (4, 3, 2, 1, 0)]  # capped at now
    wide = klines(http, exchange, "coinm", interval="1h", startTime=T0, endTime=end, limit=1500)
    assert wide == exchange.rows("BTCUSD_PERP", "1h", T0, end + 1, market="coinm")  # fewer than limit: all


def test_coinm_paged_back_by_end_time_gives_exactly_its_rows(
    exchange: FakeExchange, http: requests.Session
) -> None:
    start, end = T0, T0 + 3 * DAY
    served: list[list[Any]] = []
    cursor = end - 1
    while cursor >= start:
        page = klines(http, exchange, "coinm", interval="1m", startTime=start, endTime=cursor, limit=1000)
        if not page:
            break
        served[:0] = page
        cursor = page[0][0] - 1
    assert served == exchange.rows("BTCUSD_PERP", "1m", start, end, market="coinm")
    assert len(served) == 3 * 1440


# -- pools ----------------------------------------------------------------------------------------


def test_each_market_has_its_own_weight_pool(fake_exchanges: Start, http: requests.Session) -> None:
    clock = ManualClock(1736000090.0)  # 50 s into a minute
    exchange = fake_exchanges(clock=clock, weight_limit=4, usdm_weight_limit=3, coinm_weight_limit=2)
    params = {"interval": "1m", "startTime": T0, "limit": 1}
    assert [
        get(http, exchange, "spot", "klines", symbol="BTCUSDT", **params).status_code for _ in range(3)
    ] == [
        200,
        200,
        429,
    ]
    usdm = [get(http, exchange, "usdm", "klines", symbol="BTCUSDT", **params) for _ in range(4)]
    assert [a.status_code for a in usdm] == [200, 200, 200, 429]
    assert [a.headers["X-MBX-USED-WEIGHT-1M"] for a in usdm] == ["1", "2", "3", "3"]
    assert error(usdm[-1]) == (
        429,
        -1003,
        "Too many requests; current limit is 3 requests per minute. "
        "Please use the websocket for live updates to avoid polling the API.",
    )
    assert usdm[-1].headers["Retry-After"] == "10"
    coinm = get(http, exchange, "coinm", "klines", symbol="BTCUSD_PERP", **params)
    assert (coinm.status_code, coinm.headers["X-MBX-USED-WEIGHT-1M"]) == (200, "1")
    assert exchange.total_weight_429s == 2
    assert {m: exchange.used_weight(m) for m in API} == {"spot": 4, "usdm": 3, "coinm": 1}


def test_a_ban_in_one_market_leaves_the_others_alone(fake_exchanges: Start, http: requests.Session) -> None:
    clock = ManualClock(NOW)
    exchange = fake_exchanges(clock=clock, usdm_weight_limit=1, ban_after_429s=2, ban_seconds=300)
    statuses = [get(http, exchange, "usdm", "ping").status_code for _ in range(4)]
    assert statuses == [200, 429, 429, 418]  # the second request inside Retry-After is banned
    banned = get(http, exchange, "usdm", "time")
    until = NOW_MS + 300_000
    assert error(banned) == (
        418,
        -1003,
        f"Way too many requests; IP banned until {until}. "
        "Please use the websocket for live updates to avoid bans.",
    )
    assert exchange.banned_until == NOW + 300
    assert get(http, exchange, "spot", "ping").status_code == 200
    assert get(http, exchange, "coinm", "ping").status_code == 200
    clock.advance(300)
    assert get(http, exchange, "usdm", "ping").status_code == 200


# -- listings and rows ----------------------------------------------------------------------------


def test_contracts_list_later_than_spot_and_their_rows_are_their_own(
    exchange: FakeExchange, http: requests.Session
) -> None:
    first = {
        m: klines(http, exchange, m, interval="1d", startTime=0, limit=1)[0][0] for m in ("spot", "usdm")
    }
    assert first == {"spot": 1502928000000, "usdm": 1567900800000}  # 2017-08-17, 2019-09-08
    listed = 1597017600000  # 2020-08-10
    coinm = klines(http, exchange, "coinm", interval="1d", startTime=listed - 5 * DAY, endTime=listed + DAY)
    assert open_times(coinm) == [listed, listed + DAY]
    rows = {m: exchange.rows(SYMBOL[m], "1m", T0, T0 + 60 * MINUTE, market=m) for m in API}
    assert [open_times(r) for r in rows.values()] == [[T0 + k * MINUTE for k in range(60)]] * 3
    spot, usdm = rows["spot"], rows["usdm"]
    assert all(a[1:6] != b[1:6] for a, b in zip(spot, usdm, strict=True))
    assert all(len(row[1].split(".")[1]) == 2 and len(row[5].split(".")[1]) == 3 for row in usdm)
    assert all(len(row[7].split(".")[1]) == 5 for row in usdm)
    coin = rows["coinm"]
    assert all(len(row[1].split(".")[1]) == 1 and row[5].isdigit() and row[9].isdigit() for row in coin)
    assert all(len(row[7].split(".")[1]) == 8 for row in coin)  # field 8 is the base asset volume


def test_a_delivered_contract_has_no_rows_after_delivery(
    exchange: FakeExchange, http: requests.Session
) -> None:
    delivered = DEFAULT_COINM_SYMBOLS["BTCUSD_240628"].delivered_at
    assert delivered == 1719561600000  # 2024-06-28 08:00
    rows = klines(
        http, exchange, "coinm", symbol="BTCUSD_240628", interval="1h", endTime=delivered + DAY, limit=30
    )
    assert open_times(rows)[-1] == delivered - HOUR
    assert klines(http, exchange, "usdm", symbol="BTCUSDT_240628", interval="1h", startTime=delivered) == []
    assert (
        exchange.rows("BTCUSDT_240628", "1d", delivered - DAY, NOW_MS, market="usdm")[-1][0]
        == delivered - 8 * HOUR
    )


@pytest.mark.parametrize("market", list(API))
def test_every_row_is_a_sane_candle_closed_or_forming(exchange: FakeExchange, market: str) -> None:
    api = exchange.markets[market]
    now = exchange.now_ms()
    for symbol in api.symbols:
        for interval in ("1m", "1h", "1w"):
            series = api.series(symbol, interval)
            times = series.descending(now, 300)
            for row in series.render(times, now, series.rest_row):
                fields = row.strip("[]").replace('"', "").split(",")
                open_, high, low, close, volume, quote, taker, taker_quote = (
                    Decimal(fields[i]) for i in (1, 2, 3, 4, 5, 7, 9, 10)
                )
                assert low <= min(open_, close) <= max(open_, close) <= high, row
                assert 0 <= taker <= volume and 0 <= taker_quote <= quote, row
                assert int(fields[6]) == series.close_time(int(fields[0])), row


# -- exchangeInfo, ping, time ---------------------------------------------------------------------


def test_futures_exchange_info_lists_every_contract_whatever_is_asked(
    exchange: FakeExchange, http: requests.Session
) -> None:
    answer = get(http, exchange, "usdm", "exchangeInfo", symbol="ETHUSDT")
    assert answer.headers["X-MBX-USED-WEIGHT-1M"] == "1"
    info = answer.json()
    assert info["serverTime"] == NOW_MS
    assert info["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": 2400,
    }
    assert [s["symbol"] for s in info["symbols"]] == list(DEFAULT_USDM_SYMBOLS)
    btc = info["symbols"][0]
    assert {k: btc[k] for k in ("symbol", "pair", "contractType", "onboardDate", "status")} == {
        "symbol": "BTCUSDT",
        "pair": "BTCUSDT",
        "contractType": "PERPETUAL",
        "onboardDate": 1567900800000,
        "status": "TRADING",
    }
    assert (btc["baseAsset"], btc["quoteAsset"], btc["marginAsset"]) == ("BTC", "USDT", "USDT")
    quarterly = info["symbols"][-1]
    assert (quarterly["contractType"], quarterly["status"], quarterly["deliveryDate"]) == (
        "CURRENT_QUARTER",
        "DELIVERED",
        1719561600000,
    )
    coin = get(http, exchange, "coinm", "exchangeInfo").json()
    perp = coin["symbols"][0]
    assert "status" not in perp
    assert {k: perp[k] for k in ("symbol", "pair", "contractType", "contractStatus", "contractSize")} == {
        "symbol": "BTCUSD_PERP",
        "pair": "BTCUSD",
        "contractType": "PERPETUAL",
        "contractStatus": "TRADING",
        "contractSize": 100,
    }
    assert (perp["baseAsset"], perp["quoteAsset"], perp["marginAsset"]) == ("BTC", "USD", "BTC")
    assert [s["contractStatus"] for s in coin["symbols"]] == ["TRADING", "TRADING", "DELIVERED"]


def test_futures_listings_can_be_replaced(fake_exchanges: Start, http: requests.Session) -> None:
    exchange = fake_exchanges(clock=ManualClock(NOW), usdm_symbols={"XRPUSDT": SymbolSpec(T0)})
    assert [s["symbol"] for s in get(http, exchange, "usdm", "exchangeInfo").json()["symbols"]] == ["XRPUSDT"]
    unknown = get(http, exchange, "usdm", "klines", symbol="BTCUSDT", interval="1m")
    assert error(unknown) == (400, -1121, "Invalid symbol.")
    assert exchange.symbols["BTCUSDT"].listed_at == 1502942400000  # spot untouched


@pytest.mark.parametrize("market", FUTURES)
def test_futures_ping_and_time(exchange: FakeExchange, http: requests.Session, market: str) -> None:
    ping = get(http, exchange, market, "ping")
    assert (ping.status_code, ping.json(), ping.headers["X-MBX-USED-WEIGHT-1M"]) == (200, {}, "1")
    assert get(http, exchange, market, "time").json() == {"serverTime": NOW_MS}


# -- faults ---------------------------------------------------------------------------------------


def test_faults_hit_every_market_and_market_faults_only_their_own(
    exchange: FakeExchange, http: requests.Session
) -> None:
    params = {"interval": "1m", "startTime": T0, "limit": 5}
    exchange.faults.fail_first = 3
    statuses = [get(http, exchange, m, "klines", symbol=SYMBOL[m], **params).status_code for m in API]
    assert statuses == [503, 503, 503]
    exchange.market_faults["coinm"] = Faults(fail_all=502)
    statuses = [get(http, exchange, m, "klines", symbol=SYMBOL[m], **params).status_code for m in API]
    assert statuses == [200, 200, 502]
    exchange.market_faults["usdm"].truncated_rate = 1.0
    cut = get(http, exchange, "usdm", "klines", symbol="BTCUSDT", **params)
    assert cut.status_code == 200 and not cut.text.endswith("]")
    assert get(http, exchange, "coinm", "ping").status_code == 200  # klines only
