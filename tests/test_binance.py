"""Single-request behaviour of BinanceClient, with `responses` and a fake clock that sleeping advances."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from extractor import __version__
from extractor.binance import BinanceClient, WeightBudget
from extractor.errors import (
    BadInputError,
    BreakerOpen,
    ExchangeUnavailable,
    IPBanned,
    RateLimited,
    RequestRejected,
)
from extractor.intervals import DAY, MINUTE, Interval
from extractor.klines import to_row
from utils.circuit_breaker import CircuitBreaker, CircuitState

BASE = "https://binance.test"
KLINES = f"{BASE}/api/v3/klines"
TIME = f"{BASE}/api/v3/time"
INFO = f"{BASE}/api/v3/exchangeInfo"
ONE_MINUTE = Interval.parse("1m")
START = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SERVER_NOW = START + 10 * DAY + 30_000  # half a minute into a minute


class FakeTime:
    """A monotonic and a wall clock that move only when someone sleeps."""

    def __init__(self, wall_start: float = SERVER_NOW / 1000) -> None:
        self.now = 5_000.0
        self.wall_offset = wall_start - self.now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class MaxJitter(random.Random):
    """Always draws the top of the jitter range, so the backoff ceiling itself is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, TIME, json={"serverTime": SERVER_NOW})
        yield mock


def breaker(fake_time: FakeTime, threshold: int = 100) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=threshold,
        recovery_timeout=60,
        expected_exception=ExchangeUnavailable,
        name="api",
        clock=fake_time.monotonic,
        wall_clock=fake_time.wall,
    )


def make_client(fake_time: FakeTime, *, threshold: int = 100, **options: Any) -> BinanceClient:
    options.setdefault("max_attempts", 4)
    return BinanceClient(
        BASE,
        breaker=breaker(fake_time, threshold),
        sleep=fake_time.sleep,
        clock=fake_time.monotonic,
        wall_clock=fake_time.wall,
        rng=options.pop("rng", MaxJitter()),
        **options,
    )


def wire_rows(start: int, count: int, interval: Interval = ONE_MINUTE) -> list[list[Any]]:
    rows = []
    open_time = start
    for n in range(count):
        price = f"{42000 + n % 97}.{n % 100:02d}000000"
        rows.append(
            [
                open_time,
                price,
                price,
                price,
                price,
                f"{n}.00100000",
                interval.close_time(open_time),
                "123456789.12345678",
                n,
                "0.00000001",
                "98765432109.87654321",
                "0",
            ]
        )
        open_time = interval.next_open(open_time)
    return rows


def query(call: Any) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(call.request.url).query).items()}


def calls_to(mock: responses.RequestsMock, url: str) -> list[Any]:
    return [call for call in mock.calls if str(call.request.url).split("?")[0] == url]


def serve_klines(mock: responses.RequestsMock, rows: list[list[Any]]) -> None:
    """Answer like Binance: rows with startTime <= open_time <= endTime, at most ``limit``."""

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        params = {k: v[0] for k, v in parse_qs(urlsplit(str(request.url)).query).items()}
        lo, hi, limit = int(params["startTime"]), int(params["endTime"]), int(params["limit"])
        page = [row for row in rows if lo <= row[0] <= hi][:limit]
        return 200, {}, json.dumps(page)

    mock.add_callback(responses.GET, KLINES, callback=answer)


# --- rejected requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "msg"),
    [
        (-1121, "Invalid symbol."),
        (-1120, "Invalid interval."),
        (-1100, "Illegal characters found in parameter 'symbol'."),
        (-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."),
        (-1023, "Start time is greater than end time."),
    ],
)
def test_binance_error_code_is_rejected_once_without_retry(
    api: responses.RequestsMock, fake_time: FakeTime, code: int, msg: str
) -> None:
    api.add(responses.GET, KLINES, status=400, json={"code": code, "msg": msg})
    client = make_client(fake_time, threshold=1)

    with pytest.raises(RequestRejected) as caught:
        client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)

    assert caught.value.code == code
    assert caught.value.status == 400
    assert msg.rstrip(".") in str(caught.value)
    assert len(calls_to(api, KLINES)) == 1
    assert fake_time.sleeps == []
    assert client.breaker.state is CircuitState.CLOSED


def test_bad_symbol_rejection_names_the_symbol(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, KLINES, status=400, json={"code": -1121, "msg": "Invalid symbol."})

    with pytest.raises(RequestRejected, match="Invalid symbol: NOSUCHCOIN") as caught:
        make_client(fake_time).klines("NOSUCHCOIN", ONE_MINUTE, START, START + MINUTE)

    assert isinstance(caught.value, BadInputError)


def test_malformed_symbol_is_refused_before_sending(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    with pytest.raises(BadInputError, match="btc/usdt"):
        make_client(fake_time).klines("btc/usdt", ONE_MINUTE, START, START + MINUTE)

    assert calls_to(api, KLINES) == []


# --- transient failures: retries, backoff, the breaker --------------------------------------------

TRANSIENT_FAULTS: dict[str, dict[str, Any]] = {
    "5xx": {"status": 503, "body": "Service Unavailable"},
    "connection error": {"body": requests.ConnectionError("Connection reset by peer")},
    "read timeout": {"body": requests.ReadTimeout("read timed out")},
    "html page": {"status": 200, "body": "<html><body>502 Bad Gateway</body></html>"},
    "truncated json": {"status": 200, "body": '[[1704067200000,"42000.00","420'},
    "malformed row": {"status": 200, "json": [[START, "1.0", "1.0"]]},
}


@pytest.mark.parametrize("fault", list(TRANSIENT_FAULTS))
def test_transient_failure_is_retried_max_attempts_with_capped_backoff(
    api: responses.RequestsMock, fake_time: FakeTime, fault: str
) -> None:
    api.add(responses.GET, KLINES, **TRANSIENT_FAULTS[fault])
    client = make_client(fake_time, max_attempts=5, backoff_base=0.5, backoff_cap=3.0)

    with pytest.raises(ExchangeUnavailable, match="after 5 attempts") as caught:
        client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)

    assert "retry in a few minutes" in str(caught.value)
    assert len(calls_to(api, KLINES)) == 5
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 3.0]  # base * 2**n, capped


def test_backoff_sleeps_are_full_jitter_within_bounds(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, KLINES, status=500)
    client = make_client(fake_time, max_attempts=8, backoff_base=0.5, backoff_cap=10.0, rng=random.Random(7))

    with pytest.raises(ExchangeUnavailable):
        client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)

    bounds = [min(10.0, 0.5 * 2**n) for n in range(7)]
    assert len(fake_time.sleeps) == 7
    assert all(0 <= slept <= bound for slept, bound in zip(fake_time.sleeps, bounds, strict=True))
    assert fake_time.sleeps != bounds  # jitter, not a fixed schedule


def test_recovers_after_two_failures(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    rows = wire_rows(START, 3)
    api.add(responses.GET, KLINES, status=502)
    api.add(responses.GET, KLINES, body=requests.ConnectionError("reset"))
    api.add(responses.GET, KLINES, json=rows)
    client = make_client(fake_time)

    got = client.klines("BTCUSDT", ONE_MINUTE, START, START + 3 * MINUTE)

    assert [to_row(k) for k in got] == rows
    assert len(calls_to(api, KLINES)) == 3
    assert len(fake_time.sleeps) == 2
    assert client.breaker.failure_count == 0


def test_breaker_opens_after_threshold_attempts_and_then_sends_nothing(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, KLINES, status=500)
    client = make_client(fake_time, threshold=3, max_attempts=5)

    with pytest.raises(BreakerOpen) as first:
        client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)
    assert len(calls_to(api, KLINES)) == 3
    assert client.breaker.state is CircuitState.OPEN
    assert first.value.retry_at == pytest.approx(fake_time.wall() + 60, abs=1)

    sent = client.requests_sent
    with pytest.raises(BreakerOpen, match="api circuit breaker is open"):
        client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)
    assert len(calls_to(api, KLINES)) == 3
    assert client.requests_sent == sent


def test_rejections_and_429_do_not_count_on_the_breaker(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    rows = wire_rows(START, 2)
    for _ in range(4):
        api.add(
            responses.GET,
            KLINES,
            status=400,
            json={"code": -1023, "msg": "Start time is greater than end time."},
        )
    for _ in range(4):
        api.add(
            responses.GET, KLINES, status=429, headers={"Retry-After": "1"}, json={"code": -1003, "msg": "x"}
        )
    api.add(responses.GET, KLINES, json=rows)
    client = make_client(fake_time, threshold=3)

    for _ in range(4):
        with pytest.raises(RequestRejected):
            client.klines("BTCUSDT", ONE_MINUTE, START, START + 2 * MINUTE)
    got = client.klines("BTCUSDT", ONE_MINUTE, START, START + 2 * MINUTE)

    assert [to_row(k) for k in got] == rows
    assert client.breaker.state is CircuitState.CLOSED
    assert client.breaker.failure_count == 0


# --- 429 and 418 ---------------------------------------------------------------------------------


def test_429_pauses_for_retry_after_then_succeeds(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    rows = wire_rows(START, 2)
    api.add(responses.GET, KLINES, status=429, headers={"Retry-After": "7"}, json={"code": -1003, "msg": "x"})
    api.add(responses.GET, KLINES, json=rows)
    client = make_client(fake_time)

    got = client.klines("BTCUSDT", ONE_MINUTE, START, START + 2 * MINUTE)

    assert [to_row(k) for k in got] == rows
    assert sum(fake_time.sleeps) >= 7
    assert client.weight_budget.waited_seconds >= 7
    assert len(calls_to(api, KLINES)) == 2


def test_429_without_retry_after_waits_for_the_next_minute(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, KLINES, status=429, json={"code": -1003, "msg": "x"})
    api.add(responses.GET, KLINES, json=[])
    client = make_client(fake_time)

    client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)

    assert sum(fake_time.sleeps) == pytest.approx(30, abs=0.01)  # the server clock was 30 s into a minute


def test_429_that_never_clears_raises_rate_limited(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, KLINES, status=429, headers={"Retry-After": "2"}, json={"code": -1003, "msg": "x"})
    client = make_client(fake_time)

    with pytest.raises(RateLimited, match="429"):
        client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)

    assert len(calls_to(api, KLINES)) == 10
    assert client.breaker.failure_count == 0


def test_418_bans_at_once_and_the_ban_outlives_the_client(
    api: responses.RequestsMock, fake_time: FakeTime, tmp_path: Path
) -> None:
    ban_file = tmp_path / "state" / "ban.json"
    api.add(
        responses.GET, KLINES, status=418, headers={"Retry-After": "300"}, json={"code": -1003, "msg": "x"}
    )
    client = make_client(fake_time, ban_file=ban_file)

    with pytest.raises(IPBanned) as caught:
        client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)

    until_ms = int((fake_time.wall() + 300) * 1000)
    assert caught.value.until_ms == until_ms
    assert "banned this IP until" in str(caught.value)
    assert len(calls_to(api, KLINES)) == 1
    assert fake_time.sleeps == []
    assert json.loads(ban_file.read_text()) == {"banned_until_ms": until_ms}
    assert client.breaker.failure_count == 0

    sent_before = len(api.calls)
    with pytest.raises(IPBanned) as again:
        make_client(fake_time, ban_file=ban_file).server_time()
    assert again.value.until_ms == until_ms
    assert len(api.calls) == sent_before


def test_an_expired_ban_lets_requests_through(
    api: responses.RequestsMock, fake_time: FakeTime, tmp_path: Path
) -> None:
    ban_file = tmp_path / "ban.json"
    ban_file.write_text(json.dumps({"banned_until_ms": int(fake_time.wall() * 1000) + 5_000}))
    client = make_client(fake_time, ban_file=ban_file)
    with pytest.raises(IPBanned):
        client.server_time()

    fake_time.sleep(6)

    assert client.server_time() == SERVER_NOW


# --- weight budget -------------------------------------------------------------------------------


def test_sixth_request_of_weight_two_waits_for_the_next_minute_at_limit_ten(fake_time: FakeTime) -> None:
    minute_start_ms = 1_000 * MINUTE
    fake_time.now = 0.0
    budget = WeightBudget(
        10,
        clock=fake_time.monotonic,
        sleep=fake_time.sleep,
        server_offset_ms=lambda: minute_start_ms + 15_000,
    )

    for n in range(1, 6):
        budget.acquire(2)
        budget.settle(2, str(2 * n))
    assert fake_time.sleeps == []
    assert budget.used == 10

    budget.acquire(2)

    assert fake_time.sleeps == [45.0]
    assert budget.waited_seconds == 45.0
    assert budget.used == 2


def test_used_weight_header_from_other_users_holds_requests_back(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, KLINES, json=[], headers={"X-MBX-USED-WEIGHT-1M": "5999"})
    client = make_client(fake_time)

    client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)
    assert client.weight_budget.used == 5999
    assert fake_time.sleeps == []
    client.klines("BTCUSDT", ONE_MINUTE, START, START + MINUTE)

    assert fake_time.sleeps == [pytest.approx(30.0)]
    assert len(calls_to(api, KLINES)) == 2


def test_budget_pause_holds_every_acquire(fake_time: FakeTime) -> None:
    budget = WeightBudget(clock=fake_time.monotonic, sleep=fake_time.sleep, server_offset_ms=lambda: 0)
    budget.pause_until(fake_time.now + 12.5)

    budget.acquire(1)

    assert sum(fake_time.sleeps) == 12.5


# --- paging and closed candles -------------------------------------------------------------------


def test_pages_advance_by_open_time_without_losing_a_candle(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    rows = wire_rows(START, 2500)
    serve_klines(api, rows)
    end = START + 2500 * MINUTE

    got = make_client(fake_time).klines("BTCUSDT", ONE_MINUTE, START, end)

    assert [to_row(k) for k in got] == rows
    requested = [query(call) for call in calls_to(api, KLINES)]
    assert [int(q["startTime"]) for q in requested] == [START, START + 1000 * MINUTE, START + 2000 * MINUTE]
    assert {q["endTime"] for q in requested} == {str(end - 1)}
    assert {(q["symbol"], q["interval"], q["limit"]) for q in requested} == {("BTCUSDT", "1m", "1000")}


def test_empty_answer_ends_the_page_loop(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, KLINES, json=[])

    got = make_client(fake_time).klines("BTCUSDT", ONE_MINUTE, START, START + 5000 * MINUTE)

    assert got == []
    assert len(calls_to(api, KLINES)) == 1


def test_forming_candle_is_dropped(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    last_closed_open = SERVER_NOW - 30_000 - MINUTE  # closes 1 ms before the server's current minute
    rows = wire_rows(last_closed_open - 2 * MINUTE, 4)  # the 4th opens in the current minute
    api.add(responses.GET, KLINES, json=rows)

    got = make_client(fake_time).klines("BTCUSDT", ONE_MINUTE, rows[0][0], SERVER_NOW + MINUTE)

    assert [to_row(k) for k in got] == rows[:3]


# --- exchange info, time, session ----------------------------------------------------------------

EXCHANGE_INFO = {
    "timezone": "UTC",
    "serverTime": SERVER_NOW,
    "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
        {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
    ],
    "symbols": [{"symbol": "BTCUSDT", "status": "TRADING"}, {"symbol": "LUNAUSDT", "status": "BREAK"}],
}


def test_exchange_info_reports_statuses_and_adopts_the_weight_limit(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, INFO, json=EXCHANGE_INFO)
    client = make_client(fake_time)

    statuses = client.exchange_info(["BTCUSDT", "LUNAUSDT"])

    assert statuses == {"BTCUSDT": "TRADING", "LUNAUSDT": "BREAK"}
    assert client.weight_budget.limit == 1200
    (call,) = calls_to(api, INFO)
    assert query(call) == {"symbols": '["BTCUSDT","LUNAUSDT"]'}


def test_exchange_info_names_the_unknown_symbol(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        params = parse_qs(urlsplit(str(request.url)).query)
        if "symbols" in params or params["symbol"] == ["NOPEUSDT"]:
            return 400, {}, json.dumps({"code": -1121, "msg": "Invalid symbol."})
        return 200, {}, json.dumps(EXCHANGE_INFO)

    api.add_callback(responses.GET, INFO, callback=answer)

    with pytest.raises(
        BadInputError, match=r"unknown symbol NOPEUSDT: Binance says Invalid symbol\."
    ) as caught:
        make_client(fake_time).exchange_info(["BTCUSDT", "NOPEUSDT"])

    assert "BTCUSDT" not in str(caught.value)


def test_server_time_drives_now_and_skew(api: responses.RequestsMock) -> None:
    fake_time = FakeTime(wall_start=SERVER_NOW / 1000 - 2.5)  # local clock 2.5 s behind the exchange
    client = make_client(fake_time)

    assert client.server_time() == SERVER_NOW
    assert client.clock_skew_ms() == 2500
    fake_time.sleep(90)
    assert client.now_ms() == SERVER_NOW + 90_000
    assert len(calls_to(api, TIME)) == 1


def test_session_headers(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    make_client(fake_time).server_time()
    make_client(fake_time, api_key="k3y").server_time()

    anonymous, keyed = (call.request.headers for call in calls_to(api, TIME))
    assert anonymous["User-Agent"] == f"binance-extractor/{__version__}"
    assert anonymous["Accept-Encoding"] == "gzip"
    assert "X-MBX-APIKEY" not in anonymous
    assert keyed["X-MBX-APIKEY"] == "k3y"
