"""RestClient: the failure policy of design §6 for one exchange host, request by request.

Single-request cases use ``responses`` and a fake clock that sleeping advances; the loopback cases use
the fake exchange. Counts are of what a test injected, never of what a real timeout happened to do.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from extractor import __version__
from extractor.errors import (
    EXIT_BAD_INPUT,
    BadInputError,
    BreakerOpen,
    ExchangeUnavailable,
    IPBanned,
    MalformedResponse,
    RateLimited,
    RequestRejected,
)
from extractor.lifecycle import Cancelled, RunStop
from extractor.sources.http import (
    DEFAULT_BAN_SECONDS,
    MAX_CONSECUTIVE_429,
    USER_AGENT,
    BanRecord,
    RestClient,
    RetryPolicy,
)
from extractor.sources.weight import WeightBudget
from tests.fake_exchange import FakeExchange, ManualClock
from utils.circuit_breaker import CircuitBreaker, CircuitState

BASE = "https://binance.test"
TIME_PATH = "/api/v3/time"
KLINES_PATH = "/api/v3/klines"
TIME = BASE + TIME_PATH
SERVER_NOW = 1_704_067_200_000 + 30_000


class FakeTime:
    """A monotonic and a wall clock that move only when someone sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 5_000.0  # 20 s into a minute of the monotonic clock
        self.wall_offset = SERVER_NOW / 1000 - self.now
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
        yield mock


def make_client(
    fake_time: FakeTime,
    *,
    base: str = BASE,
    threshold: int = 100,
    attempts: int = 4,
    retry_budget: float = 3600.0,
    backoff: float = 0.5,
    backoff_cap: float = 30.0,
    ban_file: Path | None = None,
    stop: RunStop | None = None,
    rng: random.Random | None = None,
    budget: WeightBudget | None = None,
    bans: BanRecord | None = None,
    sleep: Callable[[float], None] | None = None,
    **options: Any,
) -> RestClient:
    return RestClient(
        base,
        breaker=CircuitBreaker(
            failure_threshold=threshold,
            recovery_timeout=60,
            expected_exception=ExchangeUnavailable,
            name="api",
            clock=fake_time.monotonic,
            wall_clock=fake_time.wall,
        ),
        budget=budget or WeightBudget(6000, clock=fake_time.monotonic, sleep=fake_time.sleep),
        bans=bans or BanRecord(ban_file, wall_clock=fake_time.wall),
        stop=stop or RunStop(),
        retry=RetryPolicy(attempts=attempts, budget=retry_budget, backoff=backoff, backoff_cap=backoff_cap),
        sleep=sleep or fake_time.sleep,
        clock=fake_time.monotonic,
        rng=rng or MaxJitter(),
        **options,
    )


def body(value: Any) -> Any:
    return value


def get_time(client: RestClient, parse: Callable[[Any], Any] = body) -> Any:
    return client.get(TIME_PATH, None, 1, parse)


def calls_to(mock: responses.RequestsMock, url: str) -> list[Any]:
    return [call for call in mock.calls if str(call.request.url).split("?")[0] == url]


# -- rejected requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "msg"),
    [
        (-1121, "Invalid symbol."),
        (-1120, "Invalid interval."),
        (-1100, "Illegal characters found in parameter 'symbol'."),
        (-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."),
        (-1023, "Start time is greater than end time."),
        (-1130, "Data sent for parameter 'limit' is not valid."),
    ],
)
def test_a_binance_error_code_is_rejected_at_once_with_binances_message(
    api: responses.RequestsMock, fake_time: FakeTime, code: int, msg: str
) -> None:
    api.add(responses.GET, TIME, status=400, json={"code": code, "msg": msg})
    client = make_client(fake_time, threshold=1)

    with pytest.raises(RequestRejected) as caught:
        get_time(client)

    assert (caught.value.code, caught.value.msg, caught.value.status) == (code, msg, 400)
    assert str(caught.value) == f"Binance rejected the request: {msg} (code {code})"
    assert caught.value.exit_code == EXIT_BAD_INPUT
    assert len(api.calls) == 1
    assert fake_time.sleeps == []
    assert client.breaker.state is CircuitState.CLOSED and client.breaker.failure_count == 0
    assert client.budget.in_flight == 0


def test_a_missing_endpoint_is_bad_input_naming_the_url(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, TIME, status=404, body="<html>Not Found</html>")
    with pytest.raises(BadInputError, match=r"https://binance.test/api/v3/time does not exist \(HTTP 404\)"):
        get_time(make_client(fake_time))
    assert len(api.calls) == 1


def test_a_url_requests_cannot_use_is_bad_input(fake_time: FakeTime) -> None:
    client = make_client(fake_time, base="htp://binance.test")
    with pytest.raises(BadInputError, match=r"bad exchange URL 'htp://binance\.test'"):
        get_time(client)
    assert client.breaker.failure_count == 0 and client.budget.in_flight == 0


# -- transient failures: retries, backoff, the breaker --------------------------------------------

TRANSIENT_FAULTS: dict[str, dict[str, Any]] = {
    "503": {"status": 503, "body": "Service Unavailable"},
    "500 html page": {"status": 500, "body": "<html><body>500</body></html>"},
    "waf page without a code": {"status": 403, "body": "<html>403 Forbidden</html>"},
    "connection reset": {"body": requests.ConnectionError("Connection reset by peer")},
    "read timeout": {"body": requests.ReadTimeout("read timed out")},
    "connect timeout": {"body": requests.ConnectTimeout("connect timed out")},
    "html page on 200": {"status": 200, "body": "<html><body>502 Bad Gateway</body></html>"},
    "truncated json": {"status": 200, "body": '{"serverTime": 17040'},
    "empty body": {"status": 200, "body": ""},
}


@pytest.mark.parametrize("fault", list(TRANSIENT_FAULTS))
def test_a_transient_failure_is_retried_with_capped_backoff_and_counted_on_the_breaker(
    api: responses.RequestsMock, fake_time: FakeTime, fault: str
) -> None:
    api.add(responses.GET, TIME, **TRANSIENT_FAULTS[fault])
    client = make_client(fake_time, attempts=5, backoff=0.5, backoff_cap=3.0)

    with pytest.raises(ExchangeUnavailable) as caught:
        get_time(client)

    assert "unavailable after 5 attempts" in str(caught.value)
    assert "retry in a few minutes" in str(caught.value)
    assert len(api.calls) == 5
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 3.0]  # base * 2**n, capped
    assert client.breaker.failure_count == 5  # each attempt is one breaker call
    assert client.budget.in_flight == 0


def test_a_malformed_answer_found_by_the_parser_is_retried_and_counted(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, TIME, json={"serverTime": "soon"})
    api.add(responses.GET, TIME, json={"serverTime": SERVER_NOW})

    def parse(answer: Any) -> int:
        if type(answer["serverTime"]) is not int:
            raise MalformedResponse("serverTime is not an integer")
        return int(answer["serverTime"])

    client = make_client(fake_time)
    assert get_time(client, parse) == SERVER_NOW
    assert len(api.calls) == 2 and fake_time.sleeps == [0.5]
    assert client.breaker.metrics.failure_count == 1 and client.breaker.metrics.success_count == 1


def test_backoff_sleeps_are_full_jitter_within_bounds(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, TIME, status=500)
    client = make_client(fake_time, attempts=8, backoff=0.5, backoff_cap=10.0, rng=random.Random(7))

    with pytest.raises(ExchangeUnavailable):
        get_time(client)

    bounds = [min(10.0, 0.5 * 2**n) for n in range(7)]
    assert len(fake_time.sleeps) == 7
    assert all(0 <= slept <= bound for slept, bound in zip(fake_time.sleeps, bounds, strict=True))
    assert fake_time.sleeps != bounds  # jitter, not a fixed schedule


def test_recovers_after_two_failures(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, TIME, status=502)
    api.add(responses.GET, TIME, body=requests.ConnectionError("reset"))
    api.add(responses.GET, TIME, json={"serverTime": SERVER_NOW})
    client = make_client(fake_time)

    assert get_time(client) == {"serverTime": SERVER_NOW}
    assert len(api.calls) == 3
    assert fake_time.sleeps == [0.5, 1.0]
    assert client.breaker.failure_count == 0
    assert client.requests_sent == 3


def test_the_breaker_opens_after_its_threshold_and_then_nothing_is_sent(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, TIME, status=500)
    client = make_client(fake_time, threshold=3, attempts=5)

    with pytest.raises(BreakerOpen) as first:
        get_time(client)
    assert len(api.calls) == 3
    assert fake_time.sleeps == [0.5, 1.0]  # no backoff before a call the open breaker refuses
    assert client.breaker.state is CircuitState.OPEN
    assert first.value.retry_at == pytest.approx(fake_time.wall() + 60, abs=1)
    assert "(last error: /api/v3/time: HTTP 500)" in str(first.value)

    sent = client.requests_sent
    with pytest.raises(BreakerOpen, match="api circuit breaker is open"):
        get_time(client)
    assert len(api.calls) == 3 and client.requests_sent == sent
    assert client.budget.in_flight == 0 and client.budget.used == 3


def test_rejections_and_429s_never_count_on_the_breaker(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    for _ in range(3):
        api.add(
            responses.GET,
            TIME,
            status=400,
            json={"code": -1023, "msg": "Start time is greater than end time."},
        )
    for _ in range(3):
        api.add(
            responses.GET, TIME, status=429, headers={"Retry-After": "1"}, json={"code": -1003, "msg": "x"}
        )
    api.add(responses.GET, TIME, json={"serverTime": SERVER_NOW})
    client = make_client(fake_time, threshold=2)

    for _ in range(3):
        with pytest.raises(RequestRejected):
            get_time(client)
    assert get_time(client) == {"serverTime": SERVER_NOW}

    assert client.breaker.state is CircuitState.CLOSED
    assert client.breaker.metrics.failure_count == 0


# -- the retry budget -----------------------------------------------------------------------------


def test_retries_stop_after_the_budget_as_well_as_after_the_attempts(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, TIME, status=503)
    client = make_client(fake_time, attempts=10, retry_budget=10, backoff=4)

    with pytest.raises(ExchangeUnavailable, match="after 2 attempts in 4 s"):
        get_time(client)

    assert len(api.calls) == 2  # a third try would start 4 + 8 s after the first: past the 10 s budget
    assert fake_time.sleeps == [4.0]


def test_slow_failures_use_up_the_retry_budget(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    def slow_failure(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        fake_time.now += 6  # each attempt takes 6 s before it fails
        return 503, {}, ""

    api.add_callback(responses.GET, TIME, callback=slow_failure)
    client = make_client(fake_time, attempts=10, retry_budget=10, backoff=0.5)

    with pytest.raises(ExchangeUnavailable, match="after 2 attempts in 12 s"):
        get_time(client)
    assert len(api.calls) == 2
    assert fake_time.sleeps == [0.5]


def test_a_zero_budget_means_one_try(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, TIME, status=503)
    with pytest.raises(ExchangeUnavailable, match="after 1 attempt in 0 s"):
        get_time(make_client(fake_time, attempts=10, retry_budget=0))
    assert len(api.calls) == 1 and fake_time.sleeps == []


def test_a_429_wait_is_not_retry_time(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    """A minute of Retry-After must not leave a later 5xx without a single retry."""
    api.add(responses.GET, TIME, status=429, headers={"Retry-After": "60"}, json={"code": -1003, "msg": "x"})
    api.add(responses.GET, TIME, status=503)
    api.add(responses.GET, TIME, json={"serverTime": SERVER_NOW})
    client = make_client(fake_time, attempts=10, retry_budget=30)

    assert get_time(client) == {"serverTime": SERVER_NOW}
    assert len(api.calls) == 3
    assert fake_time.sleeps == [60.0, 0.5]


def test_a_weight_budget_wait_is_not_retry_time(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, TIME, json={}, headers={"X-MBX-USED-WEIGHT-1M": "6000"})
    api.add(responses.GET, TIME, status=503)
    api.add(responses.GET, TIME, json={"serverTime": SERVER_NOW})
    client = make_client(fake_time, attempts=10, retry_budget=5)

    get_time(client)
    assert get_time(client) == {"serverTime": SERVER_NOW}
    assert fake_time.sleeps == [pytest.approx(40.0), 0.5]  # to the next minute, then one backoff
    assert len(api.calls) == 3


# -- an exchange that cannot be reached -----------------------------------------------------------


def test_a_host_name_that_does_not_resolve_is_told_at_the_first_failure(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    warned_before_first_backoff: list[bool] = []

    def sleep(seconds: float) -> None:
        warned_before_first_backoff.append(any(r.levelno == logging.WARNING for r in caplog.records))
        fake_time.sleep(seconds)

    client = make_client(fake_time, base="http://nonexistent.invalid", attempts=3, sleep=sleep)
    with (
        caplog.at_level(logging.INFO, logger="extractor.sources"),
        pytest.raises(ExchangeUnavailable) as caught,
    ):
        get_time(client)

    assert warned_before_first_backoff[0] is True
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cannot resolve the host name of http://nonexistent.invalid" in warning.getMessage()
    assert "no DNS or no route to it?" in warning.getMessage()
    assert "cannot reach http://nonexistent.invalid" in str(caught.value)
    assert client.requests_sent == 3


def test_a_refused_connection_is_retried_and_named(fake_time: FakeTime) -> None:
    with FakeExchange() as exchange:
        url = exchange.url  # the port is free again once the fake has stopped
    client = make_client(fake_time, base=url, attempts=2)
    with pytest.raises(ExchangeUnavailable, match=r"cannot reach .* \(Connection refused\)"):
        get_time(client)
    assert client.requests_sent == 2 and fake_time.sleeps == [0.5]


# -- 429 ------------------------------------------------------------------------------------------


def test_a_429_waits_its_retry_after_then_succeeds(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, TIME, status=429, headers={"Retry-After": "7"}, json={"code": -1003, "msg": "x"})
    api.add(responses.GET, TIME, json={"serverTime": SERVER_NOW})
    client = make_client(fake_time)

    assert get_time(client) == {"serverTime": SERVER_NOW}
    assert fake_time.sleeps == [7.0]
    assert client.budget.waited_seconds == 7.0 and client.budget.throttles == 1
    assert len(api.calls) == 2


def test_a_429_without_retry_after_waits_for_the_next_minute(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, TIME, status=429, json={"code": -1003, "msg": "x"})
    api.add(responses.GET, TIME, json={})
    get_time(make_client(fake_time))
    assert fake_time.sleeps == [pytest.approx(40.0)]  # the clock stood 20 s into a minute


def test_429s_that_never_clear_end_in_rate_limited(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, TIME, status=429, headers={"Retry-After": "2"}, json={"code": -1003, "msg": "x"})
    client = make_client(fake_time)

    with pytest.raises(RateLimited, match="kept answering 429") as caught:
        get_time(client)

    assert caught.value.retry_after == 2.0
    assert len(api.calls) == MAX_CONSECUTIVE_429
    assert client.breaker.metrics.failure_count == 0
    assert client.budget.in_flight == 0 and client.budget.paused()  # the last 429 pauses the others too


def test_no_request_leaves_before_the_retry_after_has_passed(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    sent_at: list[float] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        sent_at.append(fake_time.now)
        if len(sent_at) <= 2:
            return 429, {"Retry-After": "5"}, json.dumps({"code": -1003, "msg": "x"})
        return 200, {"X-MBX-USED-WEIGHT-1M": "10"}, "{}"

    api.add_callback(responses.GET, TIME, callback=answer)
    client = make_client(fake_time)

    get_time(client)

    assert [at - sent_at[0] for at in sent_at] == [0.0, 5.0, 10.0]


def test_a_request_granted_before_a_429_waits_out_its_retry_after(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    """Another worker's 429 lands between this request's grant and its send: it waits, then goes."""
    budget = WeightBudget(6000, clock=fake_time.monotonic, sleep=fake_time.sleep)
    started = fake_time.now
    looked: list[int] = []

    def wall_clock() -> float:  # the ban check runs between the grant and the send
        if not looked:
            budget.throttled(5)
        looked.append(1)
        return fake_time.wall()

    sent_at: list[float] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        sent_at.append(fake_time.now)
        return 200, {}, "{}"

    api.add_callback(responses.GET, TIME, callback=answer)
    client = make_client(fake_time, budget=budget, bans=BanRecord(None, wall_clock=wall_clock))

    get_time(client)

    assert sent_at == [started + 5]
    assert client.requests_sent == 1 and budget.in_flight == 0


# -- 418 ------------------------------------------------------------------------------------------


def test_a_418_bans_at_once_and_the_ban_outlives_the_client(
    api: responses.RequestsMock, fake_time: FakeTime, tmp_path: Path
) -> None:
    ban_file = tmp_path / "state" / "ban.json"
    api.add(responses.GET, TIME, status=418, headers={"Retry-After": "300"}, json={"code": -1003, "msg": "x"})
    client = make_client(fake_time, ban_file=ban_file)

    with pytest.raises(IPBanned) as caught:
        get_time(client)

    until_ms = int((fake_time.wall() + 300) * 1000)
    assert caught.value.until_ms == until_ms
    assert "banned this IP until" in str(caught.value)
    assert len(api.calls) == 1 and fake_time.sleeps == []
    assert json.loads(ban_file.read_text()) == {"banned_until_ms": until_ms}
    assert client.breaker.metrics.failure_count == 0
    assert client.budget.in_flight == 0

    with pytest.raises(IPBanned):
        get_time(client)
    with pytest.raises(IPBanned) as again:
        get_time(make_client(fake_time, ban_file=ban_file))
    assert again.value.until_ms == until_ms
    assert len(api.calls) == 1


def test_a_418_without_retry_after_bans_for_the_shortest_ban(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, TIME, status=418, json={"code": -1003, "msg": "x"})
    with pytest.raises(IPBanned) as caught:
        get_time(make_client(fake_time))
    assert caught.value.until_ms == int((fake_time.wall() + DEFAULT_BAN_SECONDS) * 1000)


def test_a_shorter_ban_never_shortens_a_longer_one(fake_time: FakeTime, tmp_path: Path) -> None:
    ban_file = tmp_path / "ban.json"
    first = BanRecord(ban_file, wall_clock=fake_time.wall)
    long_end = first.record(3600)

    second = BanRecord(ban_file, wall_clock=fake_time.wall)
    assert second.record(120) == long_end
    assert json.loads(ban_file.read_text()) == {"banned_until_ms": long_end}
    assert BanRecord(ban_file, wall_clock=fake_time.wall).until_ms() == long_end


def test_a_ban_written_by_another_run_is_honoured(
    api: responses.RequestsMock, fake_time: FakeTime, tmp_path: Path
) -> None:
    ban_file = tmp_path / "ban.json"
    api.add(responses.GET, TIME, json={})
    client = make_client(fake_time, ban_file=ban_file)
    get_time(client)

    BanRecord(ban_file, wall_clock=fake_time.wall).record(60)
    with pytest.raises(IPBanned):
        get_time(client)
    assert len(api.calls) == 1


def test_an_expired_ban_lets_requests_through(
    api: responses.RequestsMock, fake_time: FakeTime, tmp_path: Path
) -> None:
    ban_file = tmp_path / "ban.json"
    ban_file.write_text(json.dumps({"banned_until_ms": int(fake_time.wall() * 1000) + 5_000}))
    api.add(responses.GET, TIME, json={"serverTime": SERVER_NOW})
    client = make_client(fake_time, ban_file=ban_file)
    with pytest.raises(IPBanned):
        get_time(client)
    assert len(api.calls) == 0

    fake_time.now += 6

    assert get_time(client) == {"serverTime": SERVER_NOW}


@pytest.mark.parametrize("text", ["", "not json", '{"banned_until_ms": "soon"}', "[1]"])
def test_an_unreadable_ban_file_is_no_ban(
    api: responses.RequestsMock, fake_time: FakeTime, tmp_path: Path, text: str
) -> None:
    ban_file = tmp_path / "ban.json"
    ban_file.write_text(text)
    api.add(responses.GET, TIME, json={})
    assert get_time(make_client(fake_time, ban_file=ban_file)) == {}


# -- stopping -------------------------------------------------------------------------------------


def test_nothing_is_sent_once_the_run_has_stopped(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    stop = RunStop()
    stop.set("SIGTERM")
    client = make_client(fake_time, stop=stop)
    with pytest.raises(Cancelled):
        get_time(client)
    assert len(api.calls) == 0 and client.requests_sent == 0
    assert client.budget.in_flight == 0 and client.budget.used == 0


def test_a_stop_between_grant_and_send_sends_nothing_and_gives_the_weight_back(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    stop = RunStop()

    def wall_clock() -> float:  # the ban check runs between the grant and the send
        stop.set("SIGINT")
        return fake_time.wall()

    client = make_client(fake_time, stop=stop, bans=BanRecord(None, wall_clock=wall_clock))
    with pytest.raises(Cancelled):
        get_time(client)
    assert len(api.calls) == 0 and client.budget.in_flight == 0 and client.budget.used == 0


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # Cancelled is a BaseException
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def test_a_worker_in_a_backoff_sleep_wakes_at_the_stop_and_sends_nothing_more() -> None:
    stop = RunStop()
    sleeping = threading.Event()

    def sleep(seconds: float) -> None:
        sleeping.set()
        stop.sleep(seconds)

    with FakeExchange() as exchange:
        exchange.faults.fail_all = 503
        budget = WeightBudget(6000, sleep=stop.sleep)
        client = RestClient(
            exchange.url,
            breaker=CircuitBreaker(100, 60, ExchangeUnavailable, name="api"),
            budget=budget,
            bans=BanRecord(None, wall_clock=lambda: 0.0),
            stop=stop,
            retry=RetryPolicy(attempts=10, budget=3600, backoff=30, backoff_cap=30),
            sleep=sleep,
            rng=MaxJitter(),
        )
        params = {"symbol": "BTCUSDT", "interval": "1m", "limit": 1}
        thread, raised = _in_thread(lambda: client.get(KLINES_PATH, params, 2, body))
        assert sleeping.wait(10), "the first attempt never failed"
        stop.set("SIGINT")
        thread.join(10)  # a 30 s backoff: only the stop can end it in time

        assert not thread.is_alive()
        assert [type(exc) for exc in raised] == [Cancelled]
        assert exchange.request_counts[KLINES_PATH] == 1
        assert budget.in_flight == 0
        client.close()


@pytest.mark.parametrize("waiting_for", ["the weight budget", "a 429's Retry-After"])
def test_a_worker_waiting_on_the_budget_wakes_at_the_stop(waiting_for: str) -> None:
    stop = RunStop()
    budget = WeightBudget(10, clock=ManualClock(5_000.0), sleep=stop.sleep)  # only the stop ends a wait
    if waiting_for == "the weight budget":
        budget.settle(budget.acquire(10))
    else:
        budget.throttled(600)
    waits: list[str] = []
    waiting = threading.Event()

    def heard(seconds: float, why: str) -> None:
        waits.append(why)
        waiting.set()

    with FakeExchange() as exchange:
        client = RestClient(
            exchange.url,
            breaker=CircuitBreaker(100, 60, ExchangeUnavailable, name="api"),
            budget=budget,
            bans=BanRecord(None, wall_clock=lambda: 0.0),
            stop=stop,
        )
        client.wait_listener = heard
        thread, raised = _in_thread(lambda: client.get(TIME_PATH, None, 1, body))
        assert waiting.wait(10)
        stop.set("SIGTERM")
        thread.join(10)

        assert not thread.is_alive() and [type(exc) for exc in raised] == [Cancelled]
        assert waits == [waiting_for]
        assert exchange.request_counts[TIME_PATH] == 0
        assert budget.in_flight == 0
        client.close()


# -- every acquired weight is settled -------------------------------------------------------------


def _bug(answer: Any) -> Any:
    raise KeyError("a bug in a parser")


SETTLING: dict[str, tuple[dict[str, Any], type[BaseException] | None, Callable[[Any], Any]]] = {
    # how the request ended: (its answer, what get raises, the parser)
    "answered": ({"json": {}}, None, body),
    "failed every attempt": ({"status": 503}, ExchangeUnavailable, body),
    "rejected by Binance": (
        {"status": 400, "json": {"code": -1121, "msg": "Invalid symbol."}},
        RequestRejected,
        body,
    ),
    "banned by a 418": ({"status": 418, "headers": {"Retry-After": "60"}}, IPBanned, body),
    "a bug in the parser": ({"json": {}}, KeyError, _bug),
    "429s that never cleared": ({"status": 429, "headers": {"Retry-After": "1"}}, RateLimited, body),
}


@pytest.mark.parametrize("case", list(SETTLING))
def test_every_acquired_weight_is_settled(
    api: responses.RequestsMock, fake_time: FakeTime, case: str
) -> None:
    answer, raises, parse = SETTLING[case]
    api.add(responses.GET, TIME, **answer)
    client = make_client(fake_time)

    if raises is None:
        get_time(client, parse)
    else:
        with pytest.raises(raises):
            get_time(client, parse)

    assert client.budget.in_flight == 0
    assert len(api.calls) >= 1


def test_weight_refused_by_the_breaker_or_the_ban_is_given_back(
    api: responses.RequestsMock, fake_time: FakeTime, tmp_path: Path
) -> None:
    api.add(responses.GET, TIME, status=500)
    client = make_client(fake_time, threshold=1, attempts=1)
    with pytest.raises(ExchangeUnavailable):
        get_time(client)
    used = client.budget.used
    for _ in range(500):
        with pytest.raises(BreakerOpen):
            get_time(client)
    assert (client.budget.in_flight, client.budget.used) == (0, used)

    ban_file = tmp_path / "ban.json"
    BanRecord(ban_file, wall_clock=fake_time.wall).record(600)
    banned = make_client(fake_time, ban_file=ban_file)
    for _ in range(500):
        with pytest.raises(IPBanned):
            get_time(banned)
    assert (banned.budget.in_flight, banned.budget.used) == (0, 0)
    assert len(api.calls) == 1


# -- the server's weight count and the session ----------------------------------------------------


def test_the_used_weight_header_holds_later_requests_back(
    api: responses.RequestsMock, fake_time: FakeTime
) -> None:
    api.add(responses.GET, TIME, json={}, headers={"X-MBX-USED-WEIGHT-1M": "5999"})
    client = make_client(fake_time)

    get_time(client)
    assert client.budget.used == 5999 and fake_time.sleeps == []
    client.get(TIME_PATH, None, 2, body)

    assert fake_time.sleeps == [pytest.approx(40.0)]
    assert len(api.calls) == 2


def test_session_headers(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, TIME, json={})
    get_time(make_client(fake_time))
    get_time(make_client(fake_time, api_key="k3y"))

    anonymous, keyed = (call.request.headers for call in api.calls)
    assert anonymous["User-Agent"] == USER_AGENT == f"binance-extractor/{__version__}"
    assert anonymous["Accept-Encoding"] == "gzip"
    assert "X-MBX-APIKEY" not in anonymous
    assert keyed["X-MBX-APIKEY"] == "k3y"


def test_parameters_are_sent_as_given(api: responses.RequestsMock, fake_time: FakeTime) -> None:
    api.add(responses.GET, BASE + KLINES_PATH, json=[])
    make_client(fake_time).get(KLINES_PATH, {"symbol": "BTCUSDT", "limit": 2}, 2, body)
    assert api.calls[0].request.url == f"{BASE}{KLINES_PATH}?symbol=BTCUSDT&limit=2"


# -- on loopback, against the fake exchange -------------------------------------------------------


def loopback_client(exchange: FakeExchange, fake_time: FakeTime, **options: Any) -> RestClient:
    return make_client(fake_time, base=exchange.url, **options)


def test_gateway_errors_on_loopback_are_retried_each_once(fake_time: FakeTime) -> None:
    with FakeExchange() as exchange:
        exchange.faults.fail_first = 3
        client = loopback_client(exchange, fake_time, attempts=10)
        params = {"symbol": "BTCUSDT", "interval": "1m", "startTime": 1_704_067_200_000, "limit": 5}

        rows = client.get(KLINES_PATH, params, 2, body)

        assert len(rows) == 5
        assert exchange.request_counts[KLINES_PATH] == 4
        assert len(fake_time.sleeps) == 3
        assert (client.breaker.metrics.failure_count, client.breaker.metrics.success_count) == (3, 1)
        client.close()


@pytest.mark.parametrize("fault", ["error_rate", "reset_rate", "html_rate", "truncated_rate"])
def test_every_kind_of_garbage_on_loopback_is_retried_until_a_good_answer(
    fake_time: FakeTime, fault: str
) -> None:
    with FakeExchange() as exchange:
        setattr(exchange.faults, fault, 0.5)
        exchange.faults.seed = 3
        client = loopback_client(exchange, fake_time, attempts=50)
        start = 1_704_067_200_000
        expected = exchange.rows("ETHUSDT", "1m", start, start + 10 * 60_000)
        got = []
        for page in range(10):
            params = {"symbol": "ETHUSDT", "interval": "1m", "startTime": start + page * 60_000, "limit": 1}
            got += client.get(KLINES_PATH, params, 2, body)

        failures = [status for _, path, _, status in exchange.requests if path == KLINES_PATH]
        assert got == expected
        assert len(failures) == 10 + len(fake_time.sleeps)  # each injected fault cost one retry, no more
        assert len(fake_time.sleeps) > 0
        assert client.breaker.metrics.failure_count == len(fake_time.sleeps)
        client.close()


def test_a_429_from_the_fake_pauses_for_its_retry_after(fake_time: FakeTime) -> None:
    """The fake's limit is 4 a minute and the client does not know it: one 429, then the next minute."""
    with FakeExchange(weight_limit=4, clock=fake_time.wall) as exchange:
        client = loopback_client(exchange, fake_time)
        for _ in range(3):
            client.get(TIME_PATH, None, 1, body)
            client.get("/api/v3/ping", None, 1, body)

        assert exchange.total_weight_429s == 1
        assert exchange.banned_until is None
        assert fake_time.sleeps == [30.0]  # the fake's clock stood 30 s into its minute
        assert sum(exchange.request_counts.values()) == 7
        client.close()
