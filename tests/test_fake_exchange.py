"""The fake exchange keeps Binance's semantics, since the extractor's correctness is proven against it."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from extractor.intervals import DAY, HOUR, MINUTE, Interval
from tests.fake_exchange import DEFAULT_SYMBOLS, FakeExchange, ManualClock

NOW = 1704067230.5  # 2024-01-01T00:00:30.5Z: the 00:00 minute is forming
NOW_MS = 1704067230500
BTC_LISTED = DEFAULT_SYMBOLS["BTCUSDT"].listed_at
OUTAGE_START, OUTAGE_END = DEFAULT_SYMBOLS["BTCUSDT"].outages[0]
KLINES = "/api/v3/klines"
DECIMAL_8 = re.compile(r"\d+\.\d{8}")

MakeExchange = Callable[..., FakeExchange]


@pytest.fixture
def make_exchange() -> Iterator[MakeExchange]:
    """Start fake exchanges on a ManualClock at NOW unless told otherwise; stop them all after the test."""
    started: list[FakeExchange] = []

    def make(**options: Any) -> FakeExchange:
        options.setdefault("clock", ManualClock(NOW))
        exchange = FakeExchange(**options).start()
        started.append(exchange)
        return exchange

    yield make
    for exchange in started:
        exchange.stop()


@pytest.fixture
def exchange(make_exchange: MakeExchange) -> FakeExchange:
    return make_exchange()


def klines(http: requests.Session, exchange: FakeExchange, **params: Any) -> list[list[Any]]:
    response = http.get(exchange.url + KLINES, params=params, timeout=10)
    assert response.status_code == 200, response.text
    rows: list[list[Any]] = response.json()
    return rows


def open_times(rows: list[list[Any]]) -> list[int]:
    return [row[0] for row in rows]


def binance_error(response: requests.Response) -> tuple[int, int, str]:
    body = response.json()
    return response.status_code, body["code"], body["msg"]


# -- klines paging semantics ---------------------------------------------------------------------


def test_start_time_is_rounded_up_to_the_next_open_and_end_time_bounds_open_time_inclusively(
    exchange: FakeExchange, http: requests.Session
) -> None:
    t0 = 1_700_000_040_000
    rows = klines(http, exchange, symbol="BTCUSDT", interval="1m", startTime=t0 + 1, endTime=t0 + 4 * MINUTE)
    assert open_times(rows) == [t0 + k * MINUTE for k in (1, 2, 3, 4)]
    assert [row[6] for row in rows] == [t0 + k * MINUTE + MINUTE - 1 for k in (1, 2, 3, 4)]


def test_limit_defaults_to_500_caps_at_1000_and_cuts_from_the_start(
    exchange: FakeExchange, http: requests.Session
) -> None:
    t0 = 1_700_000_040_000
    assert len(klines(http, exchange, symbol="ETHUSDT", interval="1m", startTime=t0)) == 500
    full = klines(http, exchange, symbol="ETHUSDT", interval="1m", startTime=t0, limit=1000)
    assert open_times(full) == [t0 + k * MINUTE for k in range(1000)]
    assert klines(http, exchange, symbol="ETHUSDT", interval="1m", startTime=t0, limit=3) == full[:3]


def test_without_start_time_the_newest_candles_end_with_the_forming_one(
    exchange: FakeExchange, http: requests.Session
) -> None:
    rows = klines(http, exchange, symbol="BTCUSDT", interval="1m", limit=10)
    forming_open = NOW_MS - NOW_MS % MINUTE
    assert open_times(rows) == [forming_open - k * MINUTE for k in range(9, -1, -1)]
    assert rows[-1][6] >= NOW_MS > rows[-2][6]


def test_end_time_alone_gives_the_newest_candles_opening_at_or_before_it(
    exchange: FakeExchange, http: requests.Session
) -> None:
    end = 1_700_000_040_000 + 30 * 1000
    rows = klines(http, exchange, symbol="BTCUSDT", interval="1h", endTime=end, limit=3)
    last = end - end % HOUR
    assert open_times(rows) == [last - 2 * HOUR, last - HOUR, last]


def test_nothing_exists_before_the_listing(exchange: FakeExchange, http: requests.Session) -> None:
    assert klines(http, exchange, symbol="BTCUSDT", interval="1m", startTime=0, endTime=BTC_LISTED - 1) == []
    minutes = klines(http, exchange, symbol="BTCUSDT", interval="1m", startTime=0, limit=2)
    assert open_times(minutes) == [BTC_LISTED, BTC_LISTED + MINUTE]
    days = klines(http, exchange, symbol="BTCUSDT", interval="1d", startTime=0, limit=2)
    assert open_times(days) == [BTC_LISTED - BTC_LISTED % DAY, BTC_LISTED - BTC_LISTED % DAY + DAY]
    months = klines(http, exchange, symbol="BTCUSDT", interval="1M", startTime=0, limit=2)
    assert open_times(months) == [1501545600000, 1504224000000]  # 2017-08-01, 2017-09-01


def test_the_outage_is_a_gap_in_every_interval_of_that_symbol_only(
    exchange: FakeExchange, http: requests.Session
) -> None:
    before = OUTAGE_START - 3 * MINUTE
    minutes = klines(http, exchange, symbol="BTCUSDT", interval="1m", startTime=before, limit=5)
    assert open_times(minutes) == [
        before,
        before + MINUTE,
        before + 2 * MINUTE,
        OUTAGE_END,
        OUTAGE_END + MINUTE,
    ]
    hours = klines(http, exchange, symbol="BTCUSDT", interval="1h", startTime=OUTAGE_START - HOUR, limit=3)
    assert open_times(hours) == [OUTAGE_START - OUTAGE_START % HOUR, OUTAGE_END, OUTAGE_END + HOUR]
    inside = klines(
        http, exchange, symbol="BTCUSDT", interval="1s", startTime=OUTAGE_START, endTime=OUTAGE_END - 1
    )
    assert inside == []
    eth = klines(http, exchange, symbol="ETHUSDT", interval="1m", startTime=before, limit=5)
    assert open_times(eth) == [before + k * MINUTE for k in range(5)]


def test_the_forming_candle_changes_as_time_passes_then_closes_for_good(make_exchange: MakeExchange) -> None:
    clock = ManualClock(NOW)
    exchange = make_exchange(clock=clock)
    forming_open = NOW_MS - NOW_MS % MINUTE
    with requests.Session() as http:
        first = klines(http, exchange, symbol="BTCUSDT", interval="1m", startTime=forming_open)
        clock.advance(15)
        later = klines(http, exchange, symbol="BTCUSDT", interval="1m", startTime=forming_open)
        assert len(first) == len(later) == 1
        assert first[0][0] == later[0][0] == forming_open
        assert later[0][6] == forming_open + MINUTE - 1 > exchange.now_ms()
        assert float(later[0][5]) > float(first[0][5])
        assert exchange.rows("BTCUSDT", "1m", forming_open, forming_open + MINUTE) == []
        clock.advance(60)
        closed = klines(http, exchange, symbol="BTCUSDT", interval="1m", startTime=forming_open, limit=1)
        assert closed == exchange.rows("BTCUSDT", "1m", forming_open, forming_open + MINUTE)
        clock.advance(600)
        again = klines(http, exchange, symbol="BTCUSDT", interval="1m", startTime=forming_open, limit=1)
        assert again == closed


@pytest.mark.parametrize(
    ("interval", "start", "limit"),
    [
        ("1m", OUTAGE_START - 1500 * MINUTE, 1000),
        ("1w", 0, 100),
        ("1M", 0, 20),
        ("3d", 0, 200),
    ],
)
def test_rows_equal_what_paging_by_open_time_serves(
    exchange: FakeExchange, http: requests.Session, interval: str, start: int, limit: int
) -> None:
    end = start + 4 * limit * MINUTE if interval == "1m" else NOW_MS
    served: list[list[Any]] = []
    cursor = start
    while cursor < end:
        page = klines(
            http,
            exchange,
            symbol="BTCUSDT",
            interval=interval,
            startTime=cursor,
            endTime=end - 1,
            limit=limit,
        )
        if not page:
            break
        served.extend(page)
        cursor = page[-1][0] + 1
    closed = [row for row in served if row[6] < NOW_MS]
    assert len(closed) > 2 * limit if interval == "1m" else len(closed) > limit // 2
    assert closed == exchange.rows("BTCUSDT", interval, start, end)
    step = Interval.parse(interval)
    for previous, row in itertools.pairwise(closed):
        assert row[0] > previous[0]
        assert row[6] == (row[0] + 3 * DAY if interval == "3d" else step.next_open(row[0])) - 1
    if interval == "3d":
        assert all(row[0] % (3 * DAY) == 0 for row in closed)


# -- data ----------------------------------------------------------------------------------------


def test_rows_are_consistent_8_decimal_candles_and_the_same_on_every_run(make_exchange: MakeExchange) -> None:
    t0 = 1_700_000_040_000
    one, two = make_exchange(), make_exchange()
    rows = one.rows("BNBUSDT", "5m", t0, t0 + 1000 * 5 * MINUTE)
    assert len(rows) == 1000
    assert rows == two.rows("BNBUSDT", "5m", t0, t0 + 1000 * 5 * MINUTE)
    for row in rows:
        assert len(row) == 12 and row[11] == "0"
        decimals = [row[i] for i in (1, 2, 3, 4, 5, 7, 9, 10)]
        assert all(DECIMAL_8.fullmatch(value) for value in decimals), row
        open_, high, low, close, volume, _, quote, trades, taker, taker_quote = (
            float(v) if isinstance(v, str) else v for v in row[1:11]
        )
        assert low <= min(open_, close) <= max(open_, close) <= high
        assert isinstance(trades, int) and trades >= 0
        assert taker <= volume and taker_quote <= quote


def test_tiny_prices_and_huge_volumes_carry_every_digit(exchange: FakeExchange) -> None:
    shib = exchange.rows("SHIBUSDT", "1h", 1_700_000_000_000, 1_700_000_000_000 + 200 * HOUR)
    prices = [row[i] for row in shib for i in (1, 2, 3, 4)]
    assert all(re.fullmatch(r"0\.0000\d{4}", p) and p != "0.00000000" for p in prices)
    pepe = exchange.rows("PEPEUSDT", "1h", 1_700_000_000_000, 1_700_000_000_000 + 200 * HOUR)
    assert all(re.fullmatch(r"\d{11}\.\d{8}", row[5]) for row in pepe)
    assert all(re.fullmatch(r"\d{14}\.\d{8}", row[7]) for row in pepe)


# -- weight, 429 and 418 -------------------------------------------------------------------------


def test_ping_and_time_answer_and_every_response_reports_the_minute_weight(
    exchange: FakeExchange, http: requests.Session
) -> None:
    ping = http.get(exchange.url + "/api/v3/ping")
    assert (ping.status_code, ping.json(), ping.headers["X-MBX-USED-WEIGHT-1M"]) == (200, {}, "1")
    server_time = http.get(exchange.url + "/api/v3/time")
    assert server_time.json() == {"serverTime": NOW_MS}
    assert server_time.headers["X-MBX-USED-WEIGHT-1M"] == server_time.headers["X-MBX-USED-WEIGHT"] == "2"
    page = http.get(exchange.url + KLINES, params={"symbol": "BTCUSDT", "interval": "1m"})
    assert page.headers["X-MBX-USED-WEIGHT-1M"] == "4"
    info = http.get(exchange.url + "/api/v3/exchangeInfo")
    assert info.headers["X-MBX-USED-WEIGHT-1M"] == "24"


def test_going_over_the_weight_limit_answers_429_until_the_next_minute(make_exchange: MakeExchange) -> None:
    clock = ManualClock(1_704_067_250.0)  # 50 s into a minute
    exchange = make_exchange(clock=clock, weight_limit=10)
    params = {"symbol": "BTCUSDT", "interval": "1m"}
    with requests.Session() as http:
        used = [
            http.get(exchange.url + KLINES, params=params).headers["X-MBX-USED-WEIGHT-1M"] for _ in range(5)
        ]
        assert used == ["2", "4", "6", "8", "10"]
        refused = http.get(exchange.url + KLINES, params=params)
        assert binance_error(refused) == (
            429,
            -1003,
            "Too many requests; current limit of IP(127.0.0.1) request weight per minute is 10. "
            "Please use WebSocket Streams for live updates to avoid polling the API.",
        )
        assert refused.headers["Retry-After"] == "10"
        assert exchange.total_weight_429s == 1
        clock.advance(10)
        served = http.get(exchange.url + KLINES, params=params)
        assert (served.status_code, served.headers["X-MBX-USED-WEIGHT-1M"]) == (200, "2")


def test_retry_after_can_be_fixed(make_exchange: MakeExchange, http: requests.Session) -> None:
    exchange = make_exchange(weight_limit=1, retry_after=30)
    http.get(exchange.url + "/api/v3/ping")
    refused = http.get(exchange.url + "/api/v3/ping")
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "30")


def test_requests_that_ignore_retry_after_get_the_ip_banned(make_exchange: MakeExchange) -> None:
    clock = ManualClock(NOW)
    exchange = make_exchange(clock=clock, weight_limit=2, ban_after_429s=3, ban_seconds=120)
    params = {"symbol": "BTCUSDT", "interval": "1m"}
    with requests.Session() as http:
        statuses = [http.get(exchange.url + KLINES, params=params).status_code for _ in range(4)]
        assert statuses == [200, 429, 429, 429]
        banned = http.get(exchange.url + KLINES, params=params)
        until_ms = NOW_MS + 120_000
        assert binance_error(banned) == (
            418,
            -1003,
            f"Way too many requests; IP(127.0.0.1) banned until {until_ms}. "
            "Please use WebSocket Streams for live updates to avoid bans.",
        )
        assert banned.headers["Retry-After"] == "120"
        assert exchange.banned_until == NOW + 120
        clock.advance(60)
        ping = http.get(exchange.url + "/api/v3/ping")
        assert (ping.status_code, ping.headers["Retry-After"]) == (418, "60")
        clock.advance(60)
        assert http.get(exchange.url + KLINES, params=params).status_code == 200
        assert exchange.banned_until is None


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "code", "msg"),
    [
        (
            {"interval": "1m"},
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        ),
        (
            {"symbol": "btcusdt", "interval": "1m"},
            -1100,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.",
        ),
        ({"symbol": "NOPEUSDT", "interval": "1m"}, -1121, "Invalid symbol."),
        ({"symbol": "BTCUSDT", "interval": "1x"}, -1120, "Invalid interval."),
        ({"symbol": "BTCUSDT", "interval": "1M "}, -1120, "Invalid interval."),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": 2, "endTime": 1},
            -1023,
            "Start time is greater than end time.",
        ),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "limit": 1001},
            -1130,
            "Data sent for parameter 'limit' is not valid.",
        ),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "limit": 0},
            -1130,
            "Data sent for parameter 'limit' is not valid.",
        ),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": "yesterday"},
            -1100,
            "Illegal characters found in parameter 'startTime'; legal range is '^[0-9]{1,20}$'.",
        ),
    ],
)
def test_bad_klines_requests_get_binance_error_bodies(
    exchange: FakeExchange, http: requests.Session, params: dict[str, Any], code: int, msg: str
) -> None:
    response = http.get(exchange.url + KLINES, params=params)
    assert binance_error(response) == (400, code, msg)
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "2"


def test_exchange_info_lists_symbols_statuses_and_the_weight_limit(
    make_exchange: MakeExchange, http: requests.Session
) -> None:
    exchange = make_exchange(weight_limit=1200)
    info = http.get(exchange.url + "/api/v3/exchangeInfo").json()
    assert info["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": 1200,
    }
    statuses = {s["symbol"]: s["status"] for s in info["symbols"]}
    assert statuses["BTCUSDT"] == "TRADING"
    assert (statuses["LUNAUSDT"], statuses["HALTUSDT"]) == ("BREAK", "HALT")
    one = http.get(exchange.url + "/api/v3/exchangeInfo", params={"symbol": "SHIBUSDT"}).json()
    assert [(s["symbol"], s["baseAsset"], s["quoteAsset"]) for s in one["symbols"]] == [
        ("SHIBUSDT", "SHIB", "USDT")
    ]
    two = http.get(exchange.url + "/api/v3/exchangeInfo", params={"symbols": '["ETHUSDT","LUNAUSDT"]'})
    assert [s["symbol"] for s in two.json()["symbols"]] == ["ETHUSDT", "LUNAUSDT"]
    unknown = http.get(exchange.url + "/api/v3/exchangeInfo", params={"symbols": '["ETHUSDT","NOPE"]'})
    assert binance_error(unknown) == (400, -1121, "Invalid symbol.")
    for malformed in ("ETHUSDT", json.dumps(["ETHUSDT", "LUNAUSDT"])):  # no brackets; a space after the comma
        answer = http.get(exchange.url + "/api/v3/exchangeInfo", params={"symbols": malformed})
        assert binance_error(answer)[:2] == (400, -1100)


# -- faults --------------------------------------------------------------------------------------

PARAMS = {"symbol": "BTCUSDT", "interval": "1m", "startTime": "1700000040000", "limit": "10"}


def test_error_rate_answers_5xx_with_an_html_or_empty_body_and_no_weight(
    exchange: FakeExchange, http: requests.Session
) -> None:
    exchange.faults.error_rate = 1.0
    answers = [http.get(exchange.url + KLINES, params=PARAMS) for _ in range(12)]
    assert {a.status_code for a in answers} <= {500, 502, 503}
    assert {a.content.startswith(b"<html>") for a in answers} == {True, False}
    assert all(not a.content or a.headers["Content-Type"] == "text/html" for a in answers)
    assert all("X-MBX-USED-WEIGHT-1M" not in a.headers for a in answers)
    assert http.get(exchange.url + "/api/v3/ping").headers["X-MBX-USED-WEIGHT-1M"] == "1"


def test_reset_rate_drops_the_connection_without_an_answer(
    exchange: FakeExchange, http: requests.Session
) -> None:
    exchange.faults.reset_rate = 1.0
    with pytest.raises(requests.ConnectionError):
        http.get(exchange.url + KLINES, params=PARAMS)
    assert exchange.requests[-1][1:] == (KLINES, PARAMS, 0)
    exchange.faults.reset_rate = 0.0
    assert len(klines(http, exchange, **PARAMS)) == 10


def test_html_rate_answers_an_nginx_502_page(exchange: FakeExchange, http: requests.Session) -> None:
    exchange.faults.html_rate = 1.0
    response = http.get(exchange.url + KLINES, params=PARAMS)
    assert (response.status_code, response.headers["Content-Type"]) == (502, "text/html")
    assert "<center>nginx</center>" in response.text


def test_truncated_rate_cuts_the_json_and_sends_the_length_of_what_is_sent(
    exchange: FakeExchange, http: requests.Session
) -> None:
    whole = http.get(exchange.url + KLINES, params=PARAMS).content
    exchange.faults.truncated_rate = 1.0
    response = http.get(exchange.url + KLINES, params=PARAMS)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content) < len(whole)
    assert whole.startswith(response.content)
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_fail_first_answers_503_that_many_times_then_serves(
    exchange: FakeExchange, http: requests.Session
) -> None:
    exchange.faults.fail_first = 2
    statuses = [http.get(exchange.url + KLINES, params=PARAMS).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert exchange.faults.fail_first == 0


def test_fail_all_breaks_klines_only(exchange: FakeExchange, http: requests.Session) -> None:
    exchange.faults.fail_all = 504
    assert [http.get(exchange.url + KLINES, params=PARAMS).status_code for _ in range(3)] == [504, 504, 504]
    assert http.get(exchange.url + "/api/v3/time").status_code == 200
    exchange.faults.fail_all = None
    assert len(klines(http, exchange, **PARAMS)) == 10


def test_random_faults_follow_the_seed(make_exchange: MakeExchange) -> None:
    sequences = []
    for _ in range(2):
        exchange = make_exchange()
        exchange.faults.error_rate = 0.5
        exchange.faults.seed = 7
        with requests.Session() as http:
            sequences.append([http.get(exchange.url + KLINES, params=PARAMS).status_code for _ in range(20)])
    assert sequences[0] == sequences[1]
    assert 200 in sequences[0] and set(sequences[0]) - {200}


def _wait_for_request(exchange: FakeExchange, count: int) -> None:
    """Wait until the fake has logged ``count`` requests (the client side of a hang gives no signal)."""
    deadline = time.monotonic() + 10
    while len(exchange.requests) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(exchange.requests) >= count


def _get_in_thread(url: str, outcome: list[BaseException | int]) -> threading.Thread:
    def get() -> None:
        try:
            outcome.append(requests.get(url + KLINES, params=PARAMS, timeout=30).status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    return thread


def test_hang_next_never_answers_until_stop_releases_it(
    exchange: FakeExchange, http: requests.Session
) -> None:
    exchange.faults.hang_next = 1
    outcome: list[BaseException | int] = []
    thread = _get_in_thread(exchange.url, outcome)
    _wait_for_request(exchange, 1)
    assert len(klines(http, exchange, **PARAMS)) == 10
    assert thread.is_alive() and outcome == []
    exchange.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)


def test_latency_delays_klines_answers(exchange: FakeExchange, http: requests.Session) -> None:
    exchange.faults.latency = 60.0
    outcome: list[BaseException | int] = []
    thread = _get_in_thread(exchange.url, outcome)
    _wait_for_request(exchange, 1)
    assert http.get(exchange.url + "/api/v3/ping").status_code == 200
    assert thread.is_alive() and outcome == []
    exchange.stop()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)


# -- bookkeeping ---------------------------------------------------------------------------------


def test_requests_are_counted_by_path_and_logged_with_their_status(
    exchange: FakeExchange, http: requests.Session
) -> None:
    http.get(exchange.url + "/api/v3/ping")
    http.get(exchange.url + KLINES, params=PARAMS)
    http.get(exchange.url + KLINES, params={"symbol": "NOPE", "interval": "1m"})
    assert exchange.request_counts == {"/api/v3/ping": 1, KLINES: 2}
    assert exchange.requests == [
        (NOW, "/api/v3/ping", {}, 200),
        (NOW, KLINES, PARAMS, 200),
        (NOW, KLINES, {"symbol": "NOPE", "interval": "1m"}, 400),
    ]
    exchange.reset_counts()
    assert (exchange.request_counts, exchange.requests) == ({}, [])
    assert http.get(exchange.url + "/api/v3/ping").headers["X-MBX-USED-WEIGHT-1M"] == "6"


def test_the_fixture_serves_on_loopback_with_the_real_clock(fake_exchange: FakeExchange) -> None:
    assert fake_exchange.url.startswith("http://127.0.0.1:")
    before = fake_exchange.now_ms()
    server_time = requests.get(fake_exchange.url + "/api/v3/time", timeout=10).json()["serverTime"]
    assert before <= server_time <= fake_exchange.now_ms()
