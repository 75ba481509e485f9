"""Reliability of a run that is cut short or disturbed (issue 7: R1, R2, R8, and the signals of design §6):
kill -9 then a rerun, SIGINT and SIGTERM, a flapping exchange, requests that never answer. Each case checks
what a user sees: the exit code, the line on stderr, the requests the exchange received and the candles in
the database. Breakers, bans and 429s are in test_reliability_breakers.py, databases in
test_reliability_database.py, bad input in test_bad_input.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from extractor.errors import format_utc
from extractor.intervals import DAY, MINUTE, Interval
from extractor.markets import SPOT
from extractor.storage import open_store
from tests.fake_exchange import NO_RESPONSE, FakeExchange, Faults, ManualClock
from tests.reliability_helpers import (
    BACKFILL,
    END_MS,
    KLINES,
    RUN_TIMEOUT,
    START,
    START_MS,
    Gate,
    assert_exact,
    assert_no_duplicate_or_hole,
    backfill_with,
    counting_stored,
    exchange_env,
    pages_asked,
    run_cli,
    series_of,
    settled_prefix,
    sqlite_url_in,
    start_cli,
    wait_until,
    window_fill,
)

CONCURRENCY = 8
KILL_END_MS = START_MS + 20 * DAY
KILL_WINDOWS = 29
"""Pages of the backfill that is killed or signalled: 28,800 candles, 8 in flight."""
KILLED_BACKFILL = backfill_with(["--end", str(KILL_END_MS), "--concurrency", str(CONCURRENCY)])
EXTRACT_30D = ["extract", "-s", "BTCUSDT", "-i", "1m", "--lookback", "30d"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_url_in(tmp_path)


def flapping(seed: int) -> Faults:
    """The issue's flapping exchange: 20% 5xx, 5% connection resets, 3% HTML pages, 3% truncated JSON."""
    return Faults(error_rate=0.2, reset_rate=0.05, html_rate=0.03, truncated_rate=0.03, seed=seed)


def page_starts(start: int, end: int) -> set[int]:
    """The start of every REST page of BTCUSDT 1m over ``[start, end)``."""
    return {lo for lo, _ in Interval.parse("1m").tiles(start, end, SPOT.page_limit)}


def unstored_pages(url: str, exchange: FakeExchange, end: int = KILL_END_MS) -> set[int]:
    """The pages of START..``end`` of which the database holds nothing; every other one it holds whole."""
    fill = window_fill(url, exchange, "BTCUSDT", "1m", START_MS, end)
    assert all(stored in (0, served) for stored, served in fill), "a window was stored in part"
    tiles = Interval.parse("1m").tiles(START_MS, end, SPOT.page_limit)
    return {lo for (lo, _), (stored, _) in zip(tiles, fill, strict=True) if not stored}


# --------------------------------------------------------------------------------------------------- R1 kill


@pytest.mark.parametrize(
    ("answered", "written_first"),
    [(3, False), (10, True), (20, True)],
    ids=["after-3-requests", "after-10-and-a-write", "after-20-and-a-write"],
)
def test_a_killed_backfill_resumes_to_exactly_the_exchange_data(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, answered: int, written_first: bool
) -> None:
    env = exchange_env(tmp_path / "state", fake_exchange, sqlite_url)
    with counting_stored(sqlite_url) as stored, Gate(fake_exchange, after=answered) as gate:
        process = start_cli(KILLED_BACKFILL, env)
        wait_until(lambda: gate.held > 0, process, f"the {answered + 1}th klines request")
        if written_first:
            wait_until(lambda: stored() > 0, process, "the first windows to be written")
        process.kill()
        process.communicate()

    missing = unstored_pages(sqlite_url, fake_exchange)
    assert missing, "the kill came before the last window"
    assert len(missing) < KILL_WINDOWS or not written_first
    fake_exchange.reset_counts()

    rerun = run_cli(KILLED_BACKFILL, env)

    assert rerun.returncode == 0, rerun.stderr
    assert set(pages_asked(fake_exchange)) == missing, "the rerun asked for exactly the pages not stored"
    assert_exact(sqlite_url, fake_exchange, START_MS, KILL_END_MS)
    assert_no_duplicate_or_hole(sqlite_url, env, START, format_utc(KILL_END_MS / 1000))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_a_killed_extract_resumes_from_its_last_candle(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("fresh_mysql_url")
    minute = Interval.parse("1m")
    series = series_of("BTCUSDT", "1m")
    env = exchange_env(tmp_path / "state", fake_exchange, url)
    began = fake_exchange.now_ms()

    with counting_stored(url) as stored, Gate(fake_exchange, after=20) as gate:
        process = start_cli(EXTRACT_30D, env)
        wait_until(lambda: gate.held > 0 and stored() > 0, process, "20 klines requests and a write")
        process.kill()
        process.communicate()

    with open_store(url) as store:
        last_before = store.last_open_time(series)
    assert last_before is not None
    fake_exchange.reset_counts()
    rerun = run_cli(EXTRACT_30D, env)

    assert rerun.returncode == 0, rerun.stderr
    assert (rerun.stdout, rerun.stderr) == ("", "")
    with open_store(url) as store:
        first = next(store.open_times(series, 0, fake_exchange.now_ms()))
        last = store.last_open_time(series)
    assert last is not None
    assert 0 <= first - minute.ceil(began - 30 * DAY) <= MINUTE
    assert fake_exchange.now_ms() - last < 3 * MINUTE, "the rerun caught up to the newest closed candle"
    asked = pages_asked(fake_exchange)
    assert set(asked) == page_starts(last_before + MINUTE, last + MINUTE), "only what came after the kill"
    assert_exact(url, fake_exchange, first, last + MINUTE)


# ----------------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_a_signal_ends_a_run_within_2_s_with_its_code_and_every_window_whole(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, number: signal.Signals, code: int
) -> None:
    env = exchange_env(tmp_path / "state", fake_exchange, sqlite_url)

    with counting_stored(sqlite_url) as stored, Gate(fake_exchange, after=15) as gate:
        process = start_cli(KILLED_BACKFILL, env)
        # Signalled once the writer has stored all it can and waits for a held page: had the signal come
        # right after a commit, the count it reports would depend on the moment.
        wait_until(
            lambda: stored() > 0 and stored() == settled_prefix(fake_exchange, gate, START_MS, KILL_END_MS),
            process,
            "a write, then every answered page written",
        )
        sent = time.monotonic()
        process.send_signal(number)
        _, stderr = process.communicate(timeout=RUN_TIMEOUT)
        took = time.monotonic() - sent
        written = stored()

    assert process.returncode == code
    assert took < 2.0, f"the run took {took:.1f} s to end after {number.name}"
    assert stderr.splitlines()[-1] == (
        f"binance-extractor: interrupted by {number.name}: {written:,} candles stored in this run; "
        "run the same command to resume"
    )
    assert "Traceback" not in stderr
    missing = unstored_pages(sqlite_url, fake_exchange)
    assert 0 < len(missing) < KILL_WINDOWS

    rerun = run_cli(KILLED_BACKFILL, env)

    assert rerun.returncode == 0, rerun.stderr
    assert_exact(sqlite_url, fake_exchange, START_MS, KILL_END_MS)


def test_a_signal_ends_a_run_waiting_out_a_429_within_2_s(
    tmp_path: Path, fake_exchanges: Callable[..., FakeExchange], sqlite_url: str
) -> None:
    # The fake's clock stands still, so its minute of weight never ends while the run waits.
    exchange = fake_exchanges(retry_after=600, clock=ManualClock(time.time()))
    assert exchange.spend(exchange.weight_limit, address="127.0.0.1")  # another client on the same IP
    # One request at a time, so that the first is refused before any other is sent.
    process = start_cli(
        [*BACKFILL, "--concurrency", "1"], exchange_env(tmp_path / "state", exchange, sqlite_url)
    )
    wait_until(lambda: exchange.total_weight_429s > 0, process, "a 429")

    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=RUN_TIMEOUT)
    took = time.monotonic() - sent

    assert process.returncode == 143
    assert took < 2.0, f"the run took {took:.1f} s to end after SIGTERM"
    assert stderr.splitlines()[-1].startswith("binance-extractor: interrupted by SIGTERM: 0 candles stored")
    assert exchange.total_weight_429s == 1
    assert sum(exchange.request_counts.values()) == 1, "nothing was sent during the Retry-After"


# ----------------------------------------------------------------------------------------------- R2 flapping


def test_a_flapping_exchange_still_yields_exactly_the_exchange_data(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = flapping(seed=7)
    # Pinned at today's defaults (10 attempts, API breaker threshold 10); the next test runs on the defaults.
    env = exchange_env(
        tmp_path / "state",
        fake_exchange,
        sqlite_url,
        EXTRACTOR_BACKOFF="0.01",
        EXTRACTOR_ATTEMPTS="10",
        CIRCUIT_BREAKER_API_FAILURE_THRESHOLD="10",
    )

    result = run_cli(BACKFILL, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "spot BTCUSDT 1m 2024-01-01T00:00:00Z..2024-03-01T00:00:00Z: 86,400 candles written"
    )
    faults = [r for r in fake_exchange.log if r.path == KLINES and r.status != 200]
    assert len(faults) >= 20, "the faults were served"
    assert_exact(sqlite_url, fake_exchange)
    assert_no_duplicate_or_hole(sqlite_url, env)


def test_a_flapping_exchange_is_survived_with_the_default_retry_settings(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = flapping(seed=11)
    env = exchange_env(tmp_path / "state", fake_exchange, sqlite_url, EXTRACTOR_BACKOFF="0.01")

    result = run_cli([*BACKFILL, "--concurrency", "1"], env)  # one at a time: the same draws every run

    assert result.returncode == 0, result.stderr
    assert_exact(sqlite_url, fake_exchange)


# --------------------------------------------------------------------------------------------------- R8 hang


def test_requests_that_never_answer_time_out_and_are_retried(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    fake_exchange.faults = Faults(hang_next=2)
    env = exchange_env(
        tmp_path / "state", fake_exchange, sqlite_url, EXTRACTOR_TIMEOUT="0.5", EXTRACTOR_BACKOFF="0.01"
    )

    result = run_cli(BACKFILL, env)

    assert result.returncode == 0, result.stderr
    # Counted from what the fault injected: a request answered late on a busy machine may be asked twice
    # as well, but each of the two that never answered was asked again, and every page was answered.
    unanswered = [r for r in fake_exchange.log if r.path == KLINES and r.status == NO_RESPONSE]
    assert len(unanswered) == 2
    for hung in unanswered:
        assert any(r.params == hung.params and r.status == 200 and r.at > hung.at for r in fake_exchange.log)
    assert set(pages_asked(fake_exchange)) == page_starts(START_MS, END_MS)
    assert_exact(sqlite_url, fake_exchange)
