"""Reliability (issue 7, R1-R10): kills, a flapping or dead exchange, 429 and 418, database outages,
overlapping runs, hangs, bad input and secrets. Each case checks what a user sees: the exit code, the one
line on stderr, the requests the exchange received and the candles in the database.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extractor import pipeline
from extractor.cli import cli
from extractor.errors import format_utc
from extractor.intervals import DAY, MINUTE, Interval
from extractor.settings import load_settings
from extractor.storage import mask_url, open_store
from tests.fake_exchange import NO_RESPONSE, FakeExchange, Faults
from tests.reliability_helpers import (
    RUN_TIMEOUT,
    DeadExchange,
    RuntimeWithClient,
    SharedClock,
    age_breaker,
    cli_env,
    kill_after_klines_requests,
    one_line,
    run_cli,
    spend_weight,
    start_cli,
    stored_rows,
    the_error,
    via_proxy,
    wait_until,
    window_fill,
)
from tests.services import TcpProxy

START, END = "2024-01-01", "2024-03-01"
START_MS, END_MS = 1_704_067_200_000, 1_709_251_200_000
WINDOWS = 87
"""Requests for BTCUSDT 1m over START..END: 86,400 candles, 1,000 per request."""
SHORT_END_MS = START_MS + 2 * DAY
BACKFILL = ["backfill", "-s", "BTCUSDT", "-i", "1m", "--start", START, "--end", END, "--no-progress"]


def backfill_with(changes: list[str]) -> list[str]:
    """BACKFILL with each ``--flag value`` in ``changes`` replacing the default one."""
    args = BACKFILL[1:]
    for flag, value in zip(changes[::2], changes[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return ["backfill", *args]


SHORT_BACKFILL = backfill_with(["--end", str(SHORT_END_MS)])
OUTAGE_END_MS = START_MS + 20 * DAY
OUTAGE_BACKFILL = backfill_with(["--end", str(OUTAGE_END_MS), "--concurrency", "2"])
OUTAGE_WINDOWS = 29
"""Requests for the outage backfill: 28,800 candles with two in flight, so a cut at the 15th finds some
written (a transaction holds at most ten windows) and some not."""
EXTRACT = ["extract", "-s", "ETHUSDT", "-i", "1m", "--lookback", "1d"]
CONCURRENCY = 8
BREAKER_OPEN = re.compile(
    r"^binance-extractor: error: the (api|db) circuit breaker is open after repeated failures of the "
    r"(exchange|database) at [^ ]+( \(last error: .*\))?; next trial at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) "
    r"— retry after that, or run `binance-extractor breakers reset` once the cause is fixed$"
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'klines.db'}"


def env_for(tmp_path: Path, exchange_url: str, db_url: str, **extra: str) -> dict[str, str]:
    return cli_env(
        EXTRACTOR_STATE_DIR=str(tmp_path / "state"),
        DATABASE_URL=db_url,
        BINANCE_API_URL=exchange_url,
        **extra,
    )


def assert_exact(url: str, exchange: FakeExchange, start: int = START_MS, end: int = END_MS) -> None:
    """Stored candles equal the exchange's field by field: nothing missing, nothing twice, nothing else."""
    want = exchange.rows("BTCUSDT", "1m", start, end)
    got = stored_rows(url, "BTCUSDT", "1m", start, end)
    assert len(got) == len(want)
    assert got == want


def assert_no_duplicate_or_hole(sqlite_path: str, env: dict[str, str], start: str, end: str) -> None:
    with contextlib.closing(sqlite3.connect(sqlite_path)) as conn:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT open_time) FROM klines"
            " WHERE symbol = 'BTCUSDT' AND interval = '1m'"
        ).fetchone()
    assert total == distinct
    audit = CliRunner().invoke(
        cli, ["gaps", "-s", "BTCUSDT", "-i", "1m", "--start", start, "--end", end, "--json"], env=env
    )
    assert audit.exit_code == 0, audit.output
    assert json.loads(audit.stdout) == []


def breaker_states(env: dict[str, str]) -> dict[str, str]:
    status = run_cli(["breakers", "--json"], env)
    assert status.returncode == 0, status.stderr
    return {entry["name"]: entry["state"] for entry in json.loads(status.stdout)}


def flapping(seed: int) -> Faults:
    """The issue's flapping exchange: 20% 5xx, 5% connection resets, 3% HTML pages, 3% truncated JSON."""
    return Faults(error_rate=0.2, reset_rate=0.05, html_rate=0.03, truncated_rate=0.03, seed=seed)


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


# --------------------------------------------------------------------------------------------------- R1 kill


@pytest.mark.parametrize("requests_before_kill", [3, 20, 45])
def test_a_killed_backfill_resumes_to_exactly_the_exchange_data(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, requests_before_kill: int
) -> None:
    fake_exchange.faults = Faults(latency=0.05)
    env = env_for(tmp_path, fake_exchange.url, sqlite_url)

    backfill = backfill_with(["--concurrency", str(CONCURRENCY)])
    kill_after_klines_requests(fake_exchange, start_cli(backfill, env), requests_before_kill)

    fill = window_fill(sqlite_url, fake_exchange, "BTCUSDT", "1m", START_MS, END_MS)
    assert all(stored in (0, served) for stored, served in fill), "a window was stored in part"
    written = sum(1 for stored, _ in fill if stored)
    assert written < WINDOWS
    if requests_before_kill > CONCURRENCY + 10:  # at most 8 in flight, at most 10 in a transaction
        assert written > 0
    fake_exchange.faults = Faults()
    fake_exchange.reset_counts()

    rerun = run_cli(backfill, env)

    assert rerun.returncode == 0, rerun.stderr
    assert fake_exchange.request_counts["/api/v3/klines"] == WINDOWS - written
    assert_exact(sqlite_url, fake_exchange)
    assert_no_duplicate_or_hole(sqlite_path(sqlite_url), env, START, END)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_a_killed_extract_resumes_from_its_last_candle(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("fresh_mysql_url")
    minute = Interval.parse("1m")
    extract = ["extract", "-s", "BTCUSDT", "-i", "1m", "--lookback", "30d"]
    fake_exchange.faults = Faults(latency=0.05)
    env = env_for(tmp_path, fake_exchange.url, url)
    began = fake_exchange.now_ms()

    kill_after_klines_requests(fake_exchange, start_cli(extract, env), 20)

    with open_store(url) as store:
        last_before = store.last_open_time("BTCUSDT", minute)
    assert last_before is not None
    fake_exchange.faults = Faults()
    fake_exchange.reset_counts()
    rerun = run_cli(extract, env)

    assert rerun.returncode == 0, rerun.stderr
    assert (rerun.stdout, rerun.stderr) == ("", "")
    with open_store(url) as store:
        first = next(store.open_times("BTCUSDT", minute, 0, fake_exchange.now_ms()))
        last = store.last_open_time("BTCUSDT", minute)
    assert last is not None
    assert 0 <= first - minute.ceil(began - 30 * DAY) <= MINUTE
    assert fake_exchange.now_ms() - last < 3 * MINUTE, "the rerun caught up to the newest closed candle"
    fetched_again = (last - last_before) // MINUTE
    assert fake_exchange.request_counts["/api/v3/klines"] == -(-fetched_again // 1000)
    assert_exact(url, fake_exchange, first, last + MINUTE)


# ----------------------------------------------------------------------------------------------- R2 flapping


def test_a_flapping_exchange_still_yields_exactly_the_exchange_data(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = flapping(seed=7)
    # Pinned at today's defaults (10 attempts, API breaker threshold 10); the next test runs on the defaults.
    env = env_for(
        tmp_path,
        fake_exchange.url,
        sqlite_url,
        EXTRACTOR_BACKOFF="0.01",
        EXTRACTOR_ATTEMPTS="10",
        CIRCUIT_BREAKER_API_FAILURE_THRESHOLD="10",
    )

    result = run_cli(BACKFILL, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "BTCUSDT 1m 2024-01-01T00:00:00Z..2024-03-01T00:00:00Z: 86,400 candles written"
    )
    assert fake_exchange.request_counts["/api/v3/klines"] >= WINDOWS + 20, "the faults were served"
    assert_exact(sqlite_url, fake_exchange)
    assert_no_duplicate_or_hole(sqlite_path(sqlite_url), env, START, END)


def test_a_flapping_exchange_is_survived_with_the_default_retry_settings(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = flapping(seed=11)
    env = env_for(tmp_path, fake_exchange.url, sqlite_url, EXTRACTOR_BACKOFF="0.01")

    result = run_cli([*BACKFILL, "--concurrency", "1"], env)  # one at a time: the same draws every run

    assert result.returncode == 0, result.stderr
    assert_exact(sqlite_url, fake_exchange)


# ------------------------------------------------------------------------------------------ R3 dead exchange


def test_a_dead_exchange_opens_the_api_breaker_and_the_next_run_sends_nothing(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = Faults(fail_all=503)
    env = env_for(
        tmp_path,
        fake_exchange.url,
        sqlite_url,
        EXTRACTOR_BACKOFF="0.01",
        CIRCUIT_BREAKER_API_FAILURE_THRESHOLD="3",
    )

    first = run_cli(backfill_with(["--concurrency", str(CONCURRENCY)]), env)

    assert first.returncode == 75
    announced = BREAKER_OPEN.match(the_error(first.stderr))
    assert announced is not None and announced.group(1) == "api"
    saved = json.loads((tmp_path / "state" / "api-breaker.json").read_text())["api"]
    trial_at = datetime.strptime(announced.group(4), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert abs(trial_at - (saved["last_failure_time"] + saved["recovery_timeout"])) < 2
    assert fake_exchange.request_counts["/api/v3/klines"] <= 3 + CONCURRENCY
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
    state_file = tmp_path / "state" / "api-breaker.json"
    with DeadExchange() as dead:
        env = env_for(
            tmp_path,
            dead.url,
            sqlite_url,
            EXTRACTOR_BACKOFF="0.01",
            CIRCUIT_BREAKER_API_FAILURE_THRESHOLD="3",
            CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT="60",
        )
        assert run_cli(SHORT_BACKFILL, env).returncode == 75
        # exchangeInfo and the 3 windows go out together: the threshold, plus at most one request of
        # each other worker already on its way when the breaker opened
        sent = dead.requests
        assert 3 <= sent <= 3 + 3
        assert run_cli(SHORT_BACKFILL, env).returncode == 75
        assert dead.requests == sent

        age_breaker(state_file, "api", 61)
        trial = run_cli(SHORT_BACKFILL, env)

        assert trial.returncode == 75
        assert BREAKER_OPEN.match(the_error(trial.stderr))
        assert dead.requests == sent + 1
        assert breaker_states(env)["api"] == "OPEN"

    age_breaker(state_file, "api", 61)
    env["BINANCE_API_URL"] = fake_exchange.url
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
        spend_weight(exchange, leave=10)  # another client on the same IP
        exchange.reset_counts()
        environ = {
            "EXTRACTOR_STATE_DIR": str(tmp_path / "state"),
            "DATABASE_URL": sqlite_url,
            "BINANCE_API_URL": exchange.url,
            "EXTRACTOR_CONCURRENCY": "1",
        }
        runtime = RuntimeWithClient(
            load_settings(environ=environ), clock=clock, wall_clock=clock, sleep=clock.sleep
        )
        try:
            result = pipeline.backfill(runtime, ["BTCUSDT"], [Interval.parse("1m")], START_MS, END_MS)
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
    env = env_for(tmp_path, fake_exchange.url, sqlite_url)
    ban_file = tmp_path / "state" / "ip-ban.json"

    banned = run_cli(SHORT_BACKFILL, env)

    assert banned.returncode == 75
    until_ms = json.loads(ban_file.read_text())["banned_until_ms"]
    assert 0 <= until_ms - fake_exchange.banned_until * 1000 < 2_000
    assert one_line(banned.stderr) == (
        f"binance-extractor: error: Binance has banned this IP until {format_utc(until_ms / 1000)}; "
        "no request is sent before then — retry after that time"
    )
    # exchangeInfo and the first windows went out together; none was asked again after the 418
    sent = dict(fake_exchange.request_counts)
    assert sent["/api/v3/exchangeInfo"] == 1 and sent.get("/api/v3/klines", 0) <= 3

    for args in (SHORT_BACKFILL, EXTRACT, ["check"]):
        again = run_cli(args, env)
        assert again.returncode == 75
        assert f"banned this IP until {format_utc(until_ms / 1000)}" in again.stdout + again.stderr
    assert dict(fake_exchange.request_counts) == sent

    ban_file.write_text(json.dumps({"banned_until_ms": int(time.time() * 1000) - 1_000}))
    fake_exchange.banned_until = None
    after = run_cli(SHORT_BACKFILL, env)

    assert after.returncode == 0, after.stderr
    assert_exact(sqlite_url, fake_exchange, START_MS, SHORT_END_MS)


# ---------------------------------------------------------------------------------------- R6 database outage


def proxied_database(
    request: pytest.FixtureRequest, tcp_proxy_factory: type[TcpProxy], backend: str
) -> tuple[str, str, TcpProxy]:
    """(direct URL, URL through a proxy of the test's own, the proxy) for a fresh database."""
    direct: str = request.getfixturevalue("fresh_mysql_url" if backend == "mysql" else "fresh_mongo_url")
    server = urlsplit(direct)
    proxy = tcp_proxy_factory(server.hostname or "127.0.0.1", server.port or 0)
    url = via_proxy(direct, proxy.address)
    if backend == "mongo":
        url += "&serverSelectionTimeoutMS=500"  # a lost server is given up on in 0.5 s, not 3 s
    return direct, url, proxy


def cut_database_mid_run(
    exchange: FakeExchange, proxy: TcpProxy, env: dict[str, str], args: list[str] = OUTAGE_BACKFILL
) -> tuple[int, str]:
    """Start ``args``, refuse and reset every database connection at its 15th request; (exit, stderr)."""
    exchange.faults = Faults(latency=0.05)
    process = start_cli(args, env)
    wait_until(lambda: exchange.request_counts["/api/v3/klines"] >= 15, process, "15 klines requests")
    proxy.refuse(True)
    proxy.drop_connections()
    _, stderr = process.communicate(timeout=RUN_TIMEOUT)
    exchange.faults = Faults()
    return process.returncode, stderr


@pytest.mark.parametrize(
    "backend",
    [pytest.param("mysql", marks=pytest.mark.mysql), pytest.param("mongo", marks=pytest.mark.mongo)],
)
def test_a_database_outage_mid_run_opens_the_db_breaker_and_leaves_no_partial_batch(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    tcp_proxy_factory: type[TcpProxy],
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    direct, url, proxy = proxied_database(request, tcp_proxy_factory, backend)
    env = env_for(tmp_path, fake_exchange.url, url, CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD="1")

    exit_code, stderr = cut_database_mid_run(fake_exchange, proxy, env)

    assert exit_code == 75
    error = the_error(stderr)
    assert BREAKER_OPEN.match(error) and f"the database at {mask_url(url)}" in error
    assert breaker_states(env)["db"] == "OPEN"
    fill = window_fill(direct, fake_exchange, "BTCUSDT", "1m", START_MS, OUTAGE_END_MS)
    assert all(stored in (0, served) for stored, served in fill), "a window was stored in part"
    written = sum(1 for stored, _ in fill if stored)
    assert 0 < written < OUTAGE_WINDOWS

    proxy.refuse(False)
    still_open = run_cli(OUTAGE_BACKFILL, env)
    assert still_open.returncode == 75
    assert BREAKER_OPEN.match(the_error(still_open.stderr))
    assert run_cli(["breakers", "reset"], env).returncode == 0
    fake_exchange.reset_counts()
    rerun = run_cli(OUTAGE_BACKFILL, env)

    assert rerun.returncode == 0, rerun.stderr
    assert fake_exchange.request_counts["/api/v3/klines"] == OUTAGE_WINDOWS - written
    assert_exact(direct, fake_exchange, START_MS, OUTAGE_END_MS)


@pytest.mark.mysql
def test_a_database_that_stays_away_is_retried_until_the_db_breaker_opens(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    tcp_proxy_factory: type[TcpProxy],
    request: pytest.FixtureRequest,
) -> None:
    _, url, proxy = proxied_database(request, tcp_proxy_factory, "mysql")
    env = env_for(
        tmp_path, fake_exchange.url, url, CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD="3", EXTRACTOR_BACKOFF="0.01"
    )

    exit_code, _ = cut_database_mid_run(fake_exchange, proxy, env)

    assert exit_code == 75
    assert breaker_states(env)["db"] == "OPEN"


# ------------------------------------------------------------------------------------------------ R7 overlap


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_a_second_extract_while_one_holds_the_lock_exits_75_without_a_request(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("fresh_mysql_url")
    env = env_for(tmp_path, fake_exchange.url, url)

    with open_store(url) as store, store.run_lock("extract"):
        second = run_cli(EXTRACT, env)

    assert second.returncode == 75
    line = one_line(second.stderr)
    assert line.startswith(
        f"binance-extractor: error: another binance-extractor run holds the extract lock on {store.url} ("
    )
    assert line.endswith("); try again when it finishes")
    if backend == "sqlite":
        assert f"pid {os.getpid()} on " in line
    assert sum(fake_exchange.request_counts.values()) == 0


def test_overlapping_extract_processes_and_a_killed_holder(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = Faults(latency=60)  # the first run holds the lock until it is killed
    env = env_for(tmp_path, fake_exchange.url, sqlite_url)
    first = start_cli(EXTRACT, env)
    wait_until(lambda: fake_exchange.request_counts["/api/v3/klines"] >= 2, first, "both of its requests")
    sent = sum(fake_exchange.request_counts.values())

    second = run_cli(EXTRACT, env)

    assert second.returncode == 75
    assert f"holds the extract lock on {sqlite_url} (pid {first.pid} on " in one_line(second.stderr)
    assert sum(fake_exchange.request_counts.values()) == sent

    first.kill()
    first.communicate()
    fake_exchange.faults = Faults()
    third = run_cli(EXTRACT, env)

    assert third.returncode == 0, third.stderr


# --------------------------------------------------------------------------------------------------- R8 hang


def test_requests_that_never_answer_time_out_and_are_retried(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = Faults(hang_next=2)
    env = env_for(tmp_path, fake_exchange.url, sqlite_url, EXTRACTOR_TIMEOUT="0.3", EXTRACTOR_BACKOFF="0.01")

    result = run_cli(BACKFILL, env)

    assert result.returncode == 0, result.stderr
    unanswered = [status for _, path, _, status in fake_exchange.requests if status == NO_RESPONSE]
    assert len(unanswered) == 2
    assert fake_exchange.request_counts["/api/v3/klines"] == WINDOWS + 2
    assert_exact(sqlite_url, fake_exchange)


# ---------------------------------------------------------------------------------------------- R9 bad input


BAD_INPUT = [
    (["-s", "btcusdt"], {}, "invalid symbol 'btcusdt'"),
    (["-s", "BTC USDT"], {}, "invalid symbol 'BTC USDT'"),
    (["-s", "BTCUSDT'; DROP TABLE klines;--"], {}, 'invalid symbol "BTCUSDT\'; DROP TABLE klines;--"'),
    (["-s", "A" * 21], {}, f"invalid symbol '{'A' * 21}'"),
    (["-i", "1H"], {}, "unknown interval '1H'"),
    (["-i", "2d"], {}, "unknown interval '2d'"),
    (["--start", "yesterday"], {}, "invalid --start 'yesterday'"),
    (["--start", "2024-13-01"], {}, "invalid --start '2024-13-01'"),
    (["--end", "soon"], {}, "invalid --end 'soon'"),
    (
        ["--start", "2024-02-01", "--end", "2024-01-01"],
        {},
        "--start 2024-02-01T00:00:00Z is not before --end 2024-01-01T00:00:00Z",
    ),
    (["--start", "2999-01-01"], {}, "--start 2999-01-01T00:00:00Z is in the future"),
    pytest.param(
        ["--start", "999999999999999"],
        {},
        "--start",
        id="epoch-beyond-9999",
    ),
    pytest.param(
        ["--start", "60000d"],
        {},
        "--start",
        id="duration-before-1970",
    ),
    (["--concurrency", "0"], {}, "invalid concurrency (--concurrency / EXTRACTOR_CONCURRENCY) 0"),
    ([], {"DATABASE_URL": "postgres://x"}, "unsupported database URL 'postgres://x'"),
    ([], {"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "abc"}, "CIRCUIT_BREAKER_FAILURE_THRESHOLD='abc'"),
    ([], {"CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "-1"}, "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD='-1'"),
    ([], {"CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "0"}, "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD='0'"),
    ([], {"CIRCUIT_BREAKER_ENABLED": "maybe"}, "CIRCUIT_BREAKER_ENABLED='maybe'"),
    ([], {"CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT": "soon"}, "CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT='soon'"),
    ([], {"EXTRACTOR_TIMEOUT": "0"}, "EXTRACTOR_TIMEOUT"),
    ([], {"EXTRACTOR_CONFIG": "/nonexistent/extractor.toml"}, "config file /nonexistent/extractor.toml"),
]


@pytest.mark.parametrize(("changes", "environ", "culprit"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_nothing_is_sent(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    sqlite_url: str,
    changes: list[str],
    environ: dict[str, str],
    culprit: str,
) -> None:
    env = {**env_for(tmp_path, fake_exchange.url, sqlite_url), **environ}

    result = CliRunner().invoke(cli, backfill_with(["--end", str(SHORT_END_MS), *changes]), env=env)

    assert result.exit_code == 2
    line = one_line(result.stderr)
    assert line.startswith("binance-extractor: error: ")
    assert culprit in line
    assert result.stdout == ""
    assert sum(fake_exchange.request_counts.values()) == 0


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["extract", "-s", "btcusdt", "-i", "1m"], "invalid symbol 'btcusdt'"),
        (["extract", "-s", "BTCUSDT", "-i", "1H"], "unknown interval '1H'"),
        (["extract", "-s", "BTCUSDT", "-i", "1m", "--lookback", "yesterday"], "'yesterday'"),
        pytest.param(
            ["extract", "-s", "BTCUSDT", "-i", "1d", "--lookback", "60000d"],
            "--lookback",
            id="lookback-before-1970",
        ),
        (["gaps", "-s", "BTCUSDT", "-i", "1m", "--start", "nope"], "invalid --start 'nope'"),
    ],
)
def test_bad_input_to_the_other_commands_is_one_line_exit_2(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, args: list[str], culprit: str
) -> None:
    result = CliRunner().invoke(cli, args, env=env_for(tmp_path, fake_exchange.url, sqlite_url))

    assert result.exit_code == 2
    assert culprit in one_line(result.stderr)
    assert sum(fake_exchange.request_counts.values()) == 0


def test_a_config_file_that_is_not_toml_is_one_line_exit_2(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    config = tmp_path / "extractor.toml"
    config.write_text("symbols = [BTCUSDT\n")

    result = CliRunner().invoke(
        cli, ["--config", str(config), *EXTRACT], env=env_for(tmp_path, fake_exchange.url, sqlite_url)
    )

    assert result.exit_code == 2
    assert f"config file {config} is not valid TOML" in one_line(result.stderr)
    assert sum(fake_exchange.request_counts.values()) == 0


def test_an_unreachable_database_host_is_exit_75_in_one_line(
    tmp_path: Path, fake_exchange: FakeExchange
) -> None:
    url = "mysql+pymysql://root:pw@127.0.0.1:1/x"

    result = CliRunner().invoke(cli, SHORT_BACKFILL, env=env_for(tmp_path, fake_exchange.url, url))

    assert result.exit_code == 75
    line = one_line(result.stderr)
    assert line.startswith(
        "binance-extractor: error: the database at mysql+pymysql://root:***@127.0.0.1:1/x "
    )
    assert ":pw@" not in line
    assert sum(fake_exchange.request_counts.values()) == 0


@pytest.mark.parametrize(
    ("args", "environ", "culprit"),
    [
        (backfill_with(["-s", "btcusdt"]), {}, "invalid symbol 'btcusdt'"),
        (backfill_with(["--start", os.fsdecode(b"\xff\xfe")]), {}, "invalid --start '\\udcff\\udcfe'"),
        (EXTRACT, {"CIRCUIT_BREAKER_ENABLED": "maybe"}, "CIRCUIT_BREAKER_ENABLED='maybe'"),
    ],
)
def test_bad_input_to_the_installed_script_is_one_line_exit_2(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    sqlite_url: str,
    args: list[str],
    environ: dict[str, str],
    culprit: str,
) -> None:
    result = run_cli(args, {**env_for(tmp_path, fake_exchange.url, sqlite_url), **environ})

    assert result.returncode == 2
    assert culprit in one_line(result.stderr)
    assert sum(fake_exchange.request_counts.values()) == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.text(max_size=24), end=st.text(max_size=24))
def test_any_text_as_a_time_gets_an_answer_never_a_crash(
    tmp_path: Path, fake_exchange: FakeExchange, start: str, end: str
) -> None:
    env = env_for(tmp_path, fake_exchange.url, f"sqlite:///{tmp_path / 'fuzz.db'}")

    result = CliRunner().invoke(
        cli, ["gaps", "-s", "BTCUSDT", "-i", "1m", f"--start={start}", f"--end={end}"], env=env
    )

    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert one_line(result.stderr).startswith("binance-extractor: error: ")
    assert sum(fake_exchange.request_counts.values()) == 0


# ----------------------------------------------------------------------------------------------- R10 secrets


PASSWORD = "s3cr3t-pw"
API_KEY = "k3y-abcdef"


@pytest.fixture
def secret_mysql_url(fresh_mysql_url: str) -> Iterator[str]:
    """``fresh_mysql_url`` reached as a MariaDB user of its own whose password is PASSWORD."""
    import pymysql

    database = urlsplit(fresh_mysql_url).path.lstrip("/")
    user = f"u{database[-24:]}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'")
            cursor.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'127.0.0.1'")
        yield f"mysql+pymysql://{user}:{PASSWORD}@127.0.0.1:3306/{database}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        admin.close()


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        assert PASSWORD not in output
        assert API_KEY not in output


@pytest.mark.mysql
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_never_appear_in_the_output_of_a_successful_run(
    tmp_path: Path, fake_exchange: FakeExchange, secret_mysql_url: str, log_format: str
) -> None:
    fake_exchange.faults = Faults(fail_first=2)  # retries, so there are log lines to inspect
    env = env_for(
        tmp_path,
        fake_exchange.url,
        secret_mysql_url,
        BINANCE_API_KEY=API_KEY,
        LOG_FORMAT=log_format,
        EXTRACTOR_BACKOFF="0.01",
    )

    runs = [run_cli(["-vv", *args], env) for args in (SHORT_BACKFILL, EXTRACT, ["check"], ["breakers"])]

    assert [run.returncode for run in runs] == [0, 0, 0, 0], [run.stderr for run in runs]
    assert "retry 1" in runs[0].stderr, "the retries were logged"
    assert f"{mask_url(secret_mysql_url)} writable" in runs[2].stdout
    assert_no_secret(*(run.stdout + run.stderr for run in runs))


@pytest.mark.mysql
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_never_appear_in_the_output_of_a_failed_run(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    secret_mysql_url: str,
    tcp_proxy_factory: type[TcpProxy],
    log_format: str,
) -> None:
    extra = {
        "BINANCE_API_KEY": API_KEY,
        "LOG_FORMAT": log_format,
        "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "1",
    }
    unreachable = secret_mysql_url.replace("127.0.0.1:3306", "127.0.0.1:1")
    wrong_password = secret_mysql_url.replace(f":{PASSWORD}@", f":{PASSWORD}-wrong@")
    proxy = tcp_proxy_factory("127.0.0.1", 3306)
    through_proxy = via_proxy(secret_mysql_url, proxy.address)

    unreachable_run = run_cli(
        ["-vv", *SHORT_BACKFILL], env_for(tmp_path, fake_exchange.url, unreachable, **extra)
    )
    refused_run = run_cli(
        ["-vv", *SHORT_BACKFILL], env_for(tmp_path, fake_exchange.url, wrong_password, **extra)
    )
    outage_exit, outage_stderr = cut_database_mid_run(
        fake_exchange,
        proxy,
        env_for(tmp_path, fake_exchange.url, through_proxy, **extra),
        ["-vv", *OUTAGE_BACKFILL],
    )

    assert (unreachable_run.returncode, refused_run.returncode, outage_exit) == (75, 2, 75)
    assert "refused the login" in refused_run.stderr
    assert_no_secret(
        unreachable_run.stdout, unreachable_run.stderr, refused_run.stdout, refused_run.stderr, outage_stderr
    )
