"""Reliability when the exchange refuses (issue 7: R3, R4, R5): a dead exchange opens the api breaker and
the next runs send nothing until one trial; a 429 is waited out for its Retry-After and never becomes a
ban; a 418 ban is honoured by every run until it ends.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path

import pytest

from extractor.errors import format_utc
from extractor.pipeline import run
from extractor.settings import load_settings
from tests.fake_exchange import FakeExchange, Faults
from tests.reliability_helpers import (
    BACKFILL,
    BREAKER_OPEN,
    END_MS,
    EXTRACT,
    KLINES,
    SHORT_BACKFILL,
    SHORT_END_MS,
    START_MS,
    ExchangeFront,
    RuntimeOnClock,
    SharedClock,
    age_breaker,
    assert_exact,
    backfill_with,
    ban_file,
    breaker_file,
    breaker_name,
    breaker_states,
    exchange_env,
    one_line,
    run_cli,
    sqlite_url_in,
    the_error,
)

CONCURRENCY = 8


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_url_in(tmp_path)


# ------------------------------------------------------------------------------------------ R3 dead exchange


def test_a_dead_exchange_opens_the_api_breaker_and_the_next_run_sends_nothing(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = Faults(fail_all=503)
    state = tmp_path / "state"
    env = exchange_env(
        state, fake_exchange, sqlite_url, EXTRACTOR_BACKOFF="0.01", CIRCUIT_BREAKER_API_FAILURE_THRESHOLD="3"
    )

    first = run_cli(backfill_with(["--concurrency", str(CONCURRENCY)]), env)

    assert first.returncode == 75
    announced = BREAKER_OPEN.match(the_error(first.stderr))
    assert announced is not None and announced.group(1) == "api"
    saved = json.loads(breaker_file(state).read_text())[breaker_name("api", fake_exchange.url)]
    trial_at = datetime.strptime(announced.group(4), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert abs(trial_at - (saved["last_failure_time"] + saved["recovery_timeout"])) < 2
    assert fake_exchange.request_counts[KLINES] <= 3 + CONCURRENCY
    assert breaker_states(env)["api"] == "OPEN"

    sent = dict(fake_exchange.request_counts)
    for args in (BACKFILL, EXTRACT):
        again = run_cli(args, env)
        assert again.returncode == 75
        assert BREAKER_OPEN.match(the_error(again.stderr))
    assert dict(fake_exchange.request_counts) == sent, "a run within the recovery timeout sent requests"


def test_after_the_recovery_timeout_a_single_trial_request_goes_out(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    state = tmp_path / "state"
    with ExchangeFront(fake_exchange) as front:
        env = exchange_env(
            state,
            fake_exchange,
            sqlite_url,
            BINANCE_API_URL=front.url,
            EXTRACTOR_BACKOFF="0.01",
            CIRCUIT_BREAKER_API_FAILURE_THRESHOLD="3",
            CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT="60",
        )
        name = breaker_name("api", front.url)
        assert run_cli(SHORT_BACKFILL, env).returncode == 75
        # exchangeInfo, the listing probe and the 3 windows go out together: the threshold, plus at most
        # one attempt of each of the 4 others already on its way when the breaker opened
        sent = front.requests
        assert 3 <= sent <= 3 + 4, front.paths
        assert run_cli(SHORT_BACKFILL, env).returncode == 75
        assert front.requests == sent

        age_breaker(state, name, 61)
        trial = run_cli(SHORT_BACKFILL, env)

        assert trial.returncode == 75
        assert BREAKER_OPEN.match(the_error(trial.stderr))
        assert front.requests == sent + 1
        assert breaker_states(env)["api"] == "OPEN"

        age_breaker(state, name, 61)
        front.down = False
        healed = run_cli(SHORT_BACKFILL, env)

    assert healed.returncode == 0, healed.stderr
    assert breaker_states(env)["api"] == "CLOSED"
    assert_exact(sqlite_url, fake_exchange, START_MS, SHORT_END_MS)


# ---------------------------------------------------------------------------------------------------- R4 429


@pytest.mark.parametrize("retry_after", [7, None], ids=["retry-after-7s", "retry-after-to-the-minute-end"])
def test_a_429_is_waited_out_for_its_retry_after_and_never_becomes_a_ban(
    tmp_path: Path, sqlite_url: str, retry_after: int | None
) -> None:
    clock = SharedClock(time.time() // 60 * 60 + 10)  # 10 s into a minute: the same schedule every run
    # ban_after_429s=1: one request inside a Retry-After window gets the IP banned. One worker, so that no
    # request is in flight while a sleep moves the manual clock.
    with FakeExchange(clock=clock, weight_limit=120, retry_after=retry_after, ban_after_429s=1) as exchange:
        assert exchange.spend(110, address="127.0.0.1")  # another client on the same IP leaves 10
        exchange.reset_counts()
        environ = {
            "EXTRACTOR_STATE_DIR": str(tmp_path / "state"),
            "DATABASE_URL": sqlite_url,
            "BINANCE_API_URL": exchange.url,
            "EXTRACTOR_SOURCE": "rest",
            "EXTRACTOR_SYMBOLS": "BTCUSDT",
            "EXTRACTOR_INTERVALS": "1m",
            "EXTRACTOR_CONCURRENCY": "1",
        }
        runtime = RuntimeOnClock(load_settings(environ=environ), clock)
        try:
            result = run.backfill(runtime, START_MS, END_MS, None)
        finally:
            runtime.close()

        assert exchange.banned_until is None
        refused_at = [at for at, _, _, status in exchange.requests if status == 429]
        assert refused_at
        for at in refused_at:
            window = retry_after if retry_after is not None else math.ceil(60 - at % 60)
            assert not [path for sent, path, _, _ in exchange.requests if at < sent < at + window]
            assert any(abs(seconds - window) < 1e-6 for seconds in clock.slept)
        assert result.written == 86_400
        assert_exact(sqlite_url, exchange)


# ---------------------------------------------------------------------------------------------------- R5 418


def test_a_418_ban_exits_75_with_its_end_and_nothing_is_sent_before_it(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.banned_until = time.time() + 300
    state = tmp_path / "state"
    env = exchange_env(state, fake_exchange, sqlite_url)

    banned = run_cli(SHORT_BACKFILL, env)

    assert banned.returncode == 75
    recorded = ban_file(state)
    until_ms = json.loads(recorded.read_text())["banned_until_ms"]
    assert 0 <= until_ms - fake_exchange.banned_until * 1000 < 2_000
    assert one_line(banned.stderr) == (
        f"binance-extractor: error: Binance has banned this IP until {format_utc(until_ms / 1000)}; "
        "no request is sent before then — retry after that time"
    )
    # exchangeInfo and the first windows went out together; none was asked again after the 418
    sent = dict(fake_exchange.request_counts)
    assert sent["/api/v3/exchangeInfo"] == 1 and sent.get(KLINES, 0) <= 4

    for args in (SHORT_BACKFILL, EXTRACT, ["check"]):
        again = run_cli(args, env)
        assert again.returncode == 75
        assert f"banned this IP until {format_utc(until_ms / 1000)}" in again.stdout + again.stderr
    assert dict(fake_exchange.request_counts) == sent

    recorded.write_text(json.dumps({"banned_until_ms": int(time.time() * 1000) - 1_000}))
    fake_exchange.banned_until = None
    after = run_cli(SHORT_BACKFILL, env)

    assert after.returncode == 0, after.stderr
    assert_exact(sqlite_url, fake_exchange, START_MS, SHORT_END_MS)
