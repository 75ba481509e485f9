"""Every command, option and error path of the CLI through CliRunner, against the fake exchange.

Each invocation gets its own state directory, SQLite file and exchange URL; exit codes and the exact
lines a user reads are asserted, and stored candles are compared field by field with the exchange's.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from extractor.cli import cli
from extractor.intervals import Interval
from extractor.klines import to_row
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange, ManualClock
from tests.services import free_port

KLINES = "/api/v3/klines"
DAY = 86_400_000
JUNE_1 = "2023-06-01T00:00:00Z..2023-06-02T00:00:00Z"
_OUR_PREFIXES = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "LOG_", "BINANCE_", "DATABASE_URL")


def ms(text: str) -> int:
    """A UTC ISO time as epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


class Extractor:
    """The CLI bound to one exchange, one SQLite file and one state directory, nothing from the shell.

    One attempt per request and no backoff, so the failure paths answer at once.
    """

    def __init__(self, exchange: FakeExchange, folder: Path) -> None:
        self.exchange = exchange
        self.db_path = folder / "klines.db"
        self.db_url = f"sqlite:///{self.db_path}"
        self.env: dict[str, str | None] = {
            name: None for name in os.environ if name.startswith(_OUR_PREFIXES)
        }
        self.env.update(
            EXTRACTOR_STATE_DIR=str(folder / "state"),
            DATABASE_URL=self.db_url,
            BINANCE_API_URL=exchange.url,
            EXTRACTOR_ATTEMPTS="1",
            EXTRACTOR_BACKOFF="0",
        )

    def __call__(self, command: str, *more_args: str, **env: str | None) -> Result:
        """Run ``binance-extractor <command> <more_args>``, with ``env`` over the test's environment."""
        args = [*shlex.split(command), *more_args]
        return CliRunner().invoke(cli, args, env={**self.env, **env}, prog_name="binance-extractor")

    def klines_requests(self) -> int:
        return self.exchange.request_counts[KLINES]

    def stored(self, symbol: str, interval: str, start: int, end: int) -> list[list[Any]]:
        """Stored candles in the exchange's wire format."""
        with open_store(self.db_url) as store:
            return [to_row(k) for k in store.read(symbol, Interval.parse(interval), start, end)]

    def assert_matches_exchange(self, symbol: str, interval: str, start: int, end: int) -> None:
        want = self.exchange.rows(symbol, interval, start, end)
        assert want, "the comparison needs candles"
        assert self.stored(symbol, interval, start, end) == want

    def delete(self, symbol: str, interval: str, start: int, end: int) -> None:
        with sqlite3.connect(self.db_path) as conn:
            conn.execute(
                "DELETE FROM klines WHERE symbol = ? AND interval = ? AND open_time >= ? AND open_time < ?",
                (symbol, interval, start, end),
            )


@pytest.fixture(autouse=True)
def restore_loggers() -> Iterator[None]:
    """The CLI points our loggers at CliRunner's stderr; give later tests the loggers they had."""
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in ("extractor", "utils")
        for logger in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def run(fake_exchange: FakeExchange, tmp_path: Path) -> Extractor:
    return Extractor(fake_exchange, tmp_path)


# 2024-01-10T12:00:30Z: half a minute into a candle, so a few ms of drift never closes one more.
FROZEN_AT = ms("2024-01-10T12:00:30") / 1000


@pytest.fixture
def frozen_clock() -> ManualClock:
    return ManualClock(FROZEN_AT)


@pytest.fixture
def frozen(frozen_clock: ManualClock, tmp_path: Path) -> Iterator[Extractor]:
    """The CLI against an exchange whose clock stands still until the test advances it."""
    with FakeExchange(clock=frozen_clock) as exchange:
        yield Extractor(exchange, tmp_path)


# ---------------------------------------------------------------------------------------------- help


def test_group_help_lists_the_global_flags_and_every_command(run: Extractor) -> None:
    result = run("--help")
    assert result.exit_code == 0
    for flag in ("--db URL", "--base-url URL", "--config FILE", "--log-format [text|json]", "-v, --verbose"):
        assert flag in result.stdout
    for flag in ("-q, --quiet", "--version", "-h, --help"):
        assert flag in result.stdout
    for command in ("backfill", "extract", "gaps", "breakers", "check"):
        assert f"  {command} " in result.stdout
    assert "75 temporary failure" in result.stdout


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "backfill",
            ["-s, --symbol SYM", "-i, --interval INT", "--start WHEN", "--end WHEN", "--concurrency N"],
        ),
        ("backfill", ["--progress / --no-progress"]),
        ("extract", ["-s, --symbol SYM", "-i, --interval INT", "--lookback DURATION"]),
        (
            "gaps",
            ["-s, --symbol SYM", "-i, --interval INT", "--start WHEN", "--end WHEN", "--repair", "--json"],
        ),
        ("breakers", ["[status|reset]", "--json"]),
        ("check", ["-h, --help"]),
    ],
)
def test_command_help_lists_the_documented_flags(run: Extractor, command: str, flags: list[str]) -> None:
    result = run(f"{command} -h")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: binance-extractor {command} ")
    for flag in flags:
        assert flag in result.stdout


# ---------------------------------------------------------------------------------------------- backfill


def test_backfill_stores_every_candle_of_1m_1h_1w_1M_exactly_as_the_exchange_serves_them(
    run: Extractor,
) -> None:
    start, end = ms("2023-06-01"), ms("2023-06-03T12:00")
    result = run("backfill -s BTCUSDT,ETHUSDT -i 1m -i 1h --start 2023-06-01 --end 2023-06-03T12:00")
    assert result.exit_code == 0, result.output
    span = "2023-06-01T00:00:00Z..2023-06-03T12:00:00Z"
    assert result.stdout.splitlines() == [
        f"BTCUSDT 1m {span}: 3,600 candles written, 4 requests",
        f"BTCUSDT 1h {span}: 60 candles written, 1 requests",
        f"ETHUSDT 1m {span}: 3,600 candles written, 4 requests",
        f"ETHUSDT 1h {span}: 60 candles written, 1 requests",
    ]
    for symbol in ("BTCUSDT", "ETHUSDT"):
        for interval in ("1m", "1h"):
            run.assert_matches_exchange(symbol, interval, start, end)

    start, end = ms("2022-11-20"), ms("2023-07-15")
    result = run("backfill -s ETHUSDT -i 1w,1M --start 2022-11-20 --end 2023-07-15")
    assert result.exit_code == 0, result.output
    span = "2022-11-20T00:00:00Z..2023-07-15T00:00:00Z"
    assert result.stdout.splitlines() == [
        f"ETHUSDT 1w {span}: 34 candles written, 1 requests",
        f"ETHUSDT 1M {span}: 8 candles written, 1 requests",
    ]
    run.assert_matches_exchange("ETHUSDT", "1w", start, end)
    run.assert_matches_exchange("ETHUSDT", "1M", start, end)
    assert run.stored("ETHUSDT", "1M", start, end)[0][0] == ms("2022-12-01")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2023-06-01", "2023-06-02"),
        ("2023-06-01T00:00", "2023-06-02T00:00:00"),
        ("2023-06-01T02:00+02:00", "2023-06-01T19:00-05:00"),
        ("2023-06-01T00:00:00Z", "2023-06-02T00:00:00Z"),
        ("1685577600000", "1685664000000"),
    ],
)
def test_backfill_reads_every_when_form_as_utc(run: Extractor, start: str, end: str) -> None:
    result = run("backfill -s ETHUSDT -i 1h --start", start, "--end", end)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ETHUSDT 1h {JUNE_1}: 24 candles written, 1 requests\n"


def test_backfill_start_as_a_duration_ago_fetches_up_to_now(run: Extractor) -> None:
    before = run.exchange.now_ms()
    result = run("backfill -s ETHUSDT -i 1d --start 90d")
    after = run.exchange.now_ms()
    assert result.exit_code == 0, result.output
    head, _, tail = result.stdout.partition(": ")
    first, last = (ms(t.rstrip("Z")) for t in head.split(" ")[2].split(".."))
    assert before // 1000 * 1000 - 90 * DAY <= first <= after - 90 * DAY  # shown to the second
    assert last in (before - before % DAY, after - after % DAY)  # up to the candle still forming
    written = int(tail.split(" ")[0])
    assert written in (89, 90)
    assert len(run.stored("ETHUSDT", "1d", first, last)) == written


def test_backfill_symbols_and_intervals_repeat_and_take_comma_lists_in_order_without_repeats(
    run: Extractor,
) -> None:
    result = run(
        "backfill -s BTCUSDT -s 'ETHUSDT, BNBUSDT,BTCUSDT' -i 1d -i 12h,1d",
        "--start=2023-06-01",
        "--end=2023-06-03",
    )
    assert result.exit_code == 0, result.output
    series = [line.split(" 2023-")[0] for line in result.stdout.splitlines()]
    assert series == ["BTCUSDT 1d", "BTCUSDT 12h", "ETHUSDT 1d", "ETHUSDT 12h", "BNBUSDT 1d", "BNBUSDT 12h"]
    run.assert_matches_exchange("BNBUSDT", "12h", ms("2023-06-01"), ms("2023-06-03"))


def test_backfill_progress_line_only_when_asked(run: Extractor) -> None:
    shown = run("backfill -s ETHUSDT -i 1m --start 2023-06-01 --end 2023-06-02 --progress")
    assert shown.exit_code == 0, shown.output
    assert "1,440/1,440 candles" in shown.stderr
    assert "/s" in shown.stderr
    assert shown.stdout.startswith("ETHUSDT 1m ")

    for flag in ("--no-progress", ""):  # stderr is not a terminal under CliRunner
        quiet = run(f"backfill -s ETHUSDT -i 1m --start 2023-06-02 --end 2023-06-03 {flag}")
        assert quiet.exit_code == 0, quiet.output
        assert quiet.stderr == ""
        assert quiet.stdout.startswith("ETHUSDT 1m ")


def test_backfill_quiet_prints_nothing_but_still_stores(run: Extractor) -> None:
    result = run("-q backfill -s LUNAUSDT -i 1h --start 2023-06-01 --end 2023-06-02")
    assert result.exit_code == 0
    assert (result.stdout, result.stderr) == ("", "")
    run.assert_matches_exchange("LUNAUSDT", "1h", ms("2023-06-01"), ms("2023-06-02"))


@pytest.mark.parametrize(
    "concurrency",
    [
        "0",
        "65",
        "-1",
    ],
)
def test_backfill_concurrency_out_of_bounds_is_bad_input(run: Extractor, concurrency: str) -> None:
    result = run("backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02 --concurrency", concurrency)
    assert result.exit_code == 2
    assert result.stderr == (
        "binance-extractor: error: invalid concurrency (--concurrency / EXTRACTOR_CONCURRENCY) "
        f"{concurrency}: expected 1 to 64\n"
    )
    assert sum(run.exchange.request_counts.values()) == 0


def test_backfill_concurrency_within_bounds_gives_the_same_candles(run: Extractor) -> None:
    for concurrency, symbol in (("1", "BTCUSDT"), ("64", "ETHUSDT")):
        result = run(
            f"backfill -s {symbol} -i 1m --start 2023-06-01 --end 2023-06-02 --concurrency {concurrency}"
        )
        assert result.exit_code == 0, result.output
        run.assert_matches_exchange(symbol, "1m", ms("2023-06-01"), ms("2023-06-02"))


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2023-06-02", "2023-06-01", "--start 2023-06-02T00:00:00Z is not before --end 2023-06-01T00:00:00Z"),
        ("2023-06-01", "2023-06-01", "--start 2023-06-01T00:00:00Z is not before --end 2023-06-01T00:00:00Z"),
        ("2099-01-01", "2099-02-01", "--start 2099-01-01T00:00:00Z is in the future"),
    ],
)
def test_backfill_impossible_range_is_bad_input_before_any_request(
    run: Extractor, start: str, end: str, message: str
) -> None:
    result = run("backfill -s ETHUSDT -i 1h --start", start, "--end", end)
    assert result.exit_code == 2
    assert result.stderr == f"binance-extractor: error: {message}\n"
    assert sum(run.exchange.request_counts.values()) == 0


def test_backfill_start_in_the_future_without_end_is_bad_input(run: Extractor) -> None:
    result = run("backfill -s ETHUSDT -i 1h --start 2099-01-01")
    assert result.exit_code == 2
    assert result.stderr.startswith("binance-extractor: error: --start 2099-01-01T00:00:00Z is ")
    assert sum(run.exchange.request_counts.values()) == 0


def test_backfill_without_start_is_a_usage_error(run: Extractor) -> None:
    result = run("backfill -s ETHUSDT -i 1h")
    assert result.exit_code == 2
    assert "Usage: binance-extractor backfill [OPTIONS]" in result.stderr
    assert "Error: Missing option '--start'." in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("-i 1h", "no symbols: give -s/--symbol or set EXTRACTOR_SYMBOLS"),
        ("-s ETHUSDT", "no intervals: give -i/--interval or set EXTRACTOR_INTERVALS"),
        ("-s ' , ' -i 1h", "no symbols: give -s/--symbol or set EXTRACTOR_SYMBOLS"),
    ],
)
def test_backfill_without_series_is_bad_input(run: Extractor, args: str, message: str) -> None:
    result = run(f"backfill {args} --start 2023-06-01")
    assert result.exit_code == 2
    assert result.stderr == f"binance-extractor: error: {message}\n"
    assert sum(run.exchange.request_counts.values()) == 0


def test_backfill_rerun_of_a_finished_range_sends_no_klines_request(run: Extractor) -> None:
    command = "backfill -s BTCUSDT -i 1m,1h --start 2023-06-01 --end 2023-06-03T12:00"
    assert run(command).exit_code == 0
    before = run.klines_requests()
    again = run(command)
    assert again.exit_code == 0, again.output
    assert run.klines_requests() == before
    span = "2023-06-01T00:00:00Z..2023-06-03T12:00:00Z"
    assert again.stdout.splitlines() == [
        f"BTCUSDT 1m {span}: 0 candles written, 3,600 already stored, 0 requests",
        f"BTCUSDT 1h {span}: 0 candles written, 60 already stored, 0 requests",
    ]


def test_backfill_around_an_exchange_outage_stores_both_sides_and_reruns_ask_nothing(run: Extractor) -> None:
    start, end = ms("2023-03-24T12:00"), ms("2023-03-24T15:00")
    command = "backfill -s BTCUSDT -i 1m --start 2023-03-24T12:00 --end 2023-03-24T15:00"
    result = run(command)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "BTCUSDT 1m 2023-03-24T12:00:00Z..2023-03-24T15:00:00Z: "
        "100 candles written, 80 absent on the exchange, 1 requests\n"
    )
    run.assert_matches_exchange("BTCUSDT", "1m", start, end)
    stored_times = [row[0] for row in run.stored("BTCUSDT", "1m", start, end)]
    assert stored_times[39:41] == [ms("2023-03-24T12:39"), ms("2023-03-24T14:00")]

    before = run.klines_requests()
    again = run(command)
    assert again.exit_code == 0, again.output
    assert run.klines_requests() == before
    assert again.stdout.endswith(": 0 candles written, 100 already stored, 0 requests\n")


def test_backfill_from_before_the_listing_stores_from_the_first_candle_and_reruns_ask_nothing(
    run: Extractor,
) -> None:
    command = "backfill -s BNBUSDT -i 1d,1h --start 2017-11-01 --end 2017-11-08"
    result = run(command)
    assert result.exit_code == 0, result.output
    span = "2017-11-01T00:00:00Z..2017-11-08T00:00:00Z"
    assert result.stdout.splitlines() == [
        f"BNBUSDT 1d {span}: 2 candles written, 5 absent on the exchange, 1 requests",
        f"BNBUSDT 1h {span}: 45 candles written, 123 absent on the exchange, 1 requests",
    ]
    run.assert_matches_exchange("BNBUSDT", "1h", ms("2017-11-01"), ms("2017-11-08"))
    assert run.stored("BNBUSDT", "1h", 0, ms("2017-11-08"))[0][0] == ms("2017-11-06T03:00")

    before = run.klines_requests()
    assert run(command).exit_code == 0
    assert run.klines_requests() == before


def test_backfill_of_a_symbol_on_break_warns_and_still_stores(run: Extractor) -> None:
    result = run("backfill -s LUNAUSDT -i 1h --start 2023-06-01 --end 2023-06-02")
    assert result.exit_code == 0, result.output
    assert result.stderr.endswith(
        " WARNING extractor.pipeline: LUNAUSDT is BREAK on the exchange: no new candles while it stays so\n"
    )
    assert result.stderr.count("\n") == 1
    assert result.stdout.endswith(": 24 candles written, 1 requests\n")
    run.assert_matches_exchange("LUNAUSDT", "1h", ms("2023-06-01"), ms("2023-06-02"))


@pytest.mark.parametrize("symbols", ["NOPEUSDT", "BTCUSDT,NOPEUSDT"])
def test_backfill_of_an_unknown_symbol_names_it_and_writes_nothing(run: Extractor, symbols: str) -> None:
    result = run(f"backfill -s {symbols} -i 1h --start 2023-06-01 --end 2023-06-02")
    assert result.exit_code == 2
    assert result.stderr == (
        "binance-extractor: error: unknown symbol NOPEUSDT: Binance says Invalid symbol. (code -1121)\n"
    )
    assert result.stdout == ""
    # The one window per series asked for alongside exchangeInfo is dropped unwritten; none is asked after.
    assert run.klines_requests() <= len(symbols.split(","))
    assert run.stored("BTCUSDT", "1h", ms("2023-06-01"), ms("2023-06-02")) == []


def test_db_and_base_url_flags_beat_the_environment(run: Extractor, tmp_path: Path) -> None:
    other_db = tmp_path / "other.db"
    result = run(
        f"--db sqlite:///{other_db} --base-url {run.exchange.url} "
        "backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02",
        BINANCE_API_URL=f"http://127.0.0.1:{free_port()}",
    )
    assert result.exit_code == 0, result.output
    assert other_db.exists()
    assert not run.db_path.exists()
    with sqlite3.connect(other_db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM klines").fetchone() == (24,)


# ---------------------------------------------------------------------------------------------- extract


def test_extract_is_silent_on_success_and_starts_at_now_minus_the_lookback(frozen: Extractor) -> None:
    result = frozen("extract -s ETHUSDT -i 1m,1h --lookback 3h")
    assert result.exit_code == 0
    assert (result.stdout, result.stderr) == ("", "")
    # now 12:00:30: the 1m series is 09:01..11:59 (12:00 is forming), the 1h series 10:00..11:00.
    frozen.assert_matches_exchange("ETHUSDT", "1m", ms("2024-01-10T09:01"), ms("2024-01-10T12:00"))
    assert len(frozen.stored("ETHUSDT", "1m", 0, ms("2024-01-11"))) == 179
    assert [row[0] for row in frozen.stored("ETHUSDT", "1h", 0, ms("2024-01-11"))] == [
        ms("2024-01-10T10:00"),
        ms("2024-01-10T11:00"),
    ]


def test_extract_default_lookback_is_one_day(frozen: Extractor) -> None:
    assert frozen("extract -s ETHUSDT -i 1h").exit_code == 0
    stored = frozen.stored("ETHUSDT", "1h", 0, ms("2024-01-11"))
    assert len(stored) == 23
    assert stored[0][0] == ms("2024-01-09T13:00")


def test_extract_verbose_prints_the_summary_line(frozen: Extractor) -> None:
    result = frozen("-v extract -s ETHUSDT -i 1m --lookback 3h")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.endswith(
        " INFO extractor.pipeline: ETHUSDT 1m 2024-01-10T09:01:00Z..2024-01-10T12:00:00Z: "
        "179 candles written, 1 requests\n"
    )


def test_extract_second_run_fetches_only_the_new_candles(
    frozen: Extractor, frozen_clock: ManualClock
) -> None:
    assert frozen("extract -s BTCUSDT -i 1m --lookback 2h").exit_code == 0
    frozen_clock.advance(10 * 60)
    before = frozen.klines_requests()
    result = frozen("-v extract -s BTCUSDT -i 1m --lookback 2h")
    assert result.exit_code == 0
    assert result.stderr.endswith(
        ": BTCUSDT 1m 2024-01-10T12:00:00Z..2024-01-10T12:10:00Z: 10 candles written, 1 requests\n"
    )
    assert frozen.klines_requests() - before == 1
    frozen.assert_matches_exchange("BTCUSDT", "1m", ms("2024-01-10T10:01"), ms("2024-01-10T12:10"))
    assert len(frozen.stored("BTCUSDT", "1m", 0, ms("2024-01-11"))) == 119 + 10

    again = frozen("-v extract -s BTCUSDT -i 1m")
    assert again.exit_code == 0
    assert again.stderr.endswith(": BTCUSDT 1m: nothing closed in the range yet\n")
    assert frozen.klines_requests() - before == 1


def _extracted_series(result: Result) -> set[str]:
    """``SYMBOL interval`` of each summary line a verbose extract logged."""
    return {" ".join(line.split(": ")[1].split()[:2]) for line in result.stderr.splitlines()}


def test_extract_takes_symbols_and_intervals_from_config_then_env_then_flags(
    frozen: Extractor, tmp_path: Path
) -> None:
    config = tmp_path / "extractor.toml"
    config.write_text('symbols = ["BNBUSDT", "ETHUSDT"]\nintervals = "1h,4h"\nlookback = "8h"\n')

    from_config = frozen(f"-v --config {config} extract")
    assert from_config.exit_code == 0, from_config.output
    assert _extracted_series(from_config) == {"BNBUSDT 1h", "BNBUSDT 4h", "ETHUSDT 1h", "ETHUSDT 4h"}
    assert len(frozen.stored("BNBUSDT", "1h", 0, ms("2024-01-11"))) == 7  # 05:00..11:00

    from_env = frozen("-v extract", EXTRACTOR_CONFIG=str(config), EXTRACTOR_SYMBOLS="BTCUSDT")
    assert from_env.exit_code == 0, from_env.output
    assert _extracted_series(from_env) == {"BTCUSDT 1h", "BTCUSDT 4h"}

    from_flags = frozen(
        f"-v --config {config} extract -s SHIBUSDT -i 2h",
        EXTRACTOR_SYMBOLS="BTCUSDT",
        EXTRACTOR_INTERVALS="1m",
    )
    assert from_flags.exit_code == 0, from_flags.output
    assert _extracted_series(from_flags) == {"SHIBUSDT 2h"}


def test_extract_env_lists_alone_are_enough(frozen: Extractor) -> None:
    result = frozen("-v extract", EXTRACTOR_SYMBOLS="BTCUSDT, ETHUSDT", EXTRACTOR_INTERVALS="1h")
    assert result.exit_code == 0, result.output
    assert _extracted_series(result) == {"BTCUSDT 1h", "ETHUSDT 1h"}


def test_extract_without_symbols_is_bad_input(frozen: Extractor) -> None:
    result = frozen("extract -i 1h")
    assert result.exit_code == 2
    assert (
        result.stderr == "binance-extractor: error: no symbols: give -s/--symbol or set EXTRACTOR_SYMBOLS\n"
    )
    assert sum(frozen.exchange.request_counts.values()) == 0


@pytest.mark.parametrize("lookback", ["0h", "1y", "90"])
def test_extract_with_a_bad_lookback_is_bad_input(frozen: Extractor, lookback: str) -> None:
    result = frozen(f"extract -s ETHUSDT -i 1h --lookback {lookback}")
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: invalid --lookback/EXTRACTOR_LOOKBACK '{lookback}': "
        "use a positive number and a unit s, m, h, d or w (e.g. 90d, 12h, 30m)\n"
    )
    assert sum(frozen.exchange.request_counts.values()) == 0


def test_extract_with_a_missing_config_file_names_it(frozen: Extractor, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = frozen(f"--config {missing} extract")
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: config file {missing} does not exist (--config / EXTRACTOR_CONFIG)\n"
    )


# ---------------------------------------------------------------------------------------------- gaps

OUTAGE_ROW = (
    "2023-03-24T12:40:00Z  2023-03-24T14:00:00Z         80  absent on the exchange (outage or before listing)"
)
GAPS_HEADER = "start                 end                     candles  kind"


@pytest.fixture
def around_outage(run: Extractor) -> Extractor:
    """BTCUSDT 1m backfilled over 2023-03-24 12:00-15:00, which holds the exchange's 12:40-14:00 outage."""
    result = run("backfill -s BTCUSDT -i 1m --start 2023-03-24T12:00 --end 2023-03-24T15:00")
    assert result.exit_code == 0, result.output
    return run


GAPS = "gaps -s BTCUSDT -i 1m --end 2023-03-24T15:00"


def test_gaps_lists_the_exchange_outage_as_absent_on_the_exchange(around_outage: Extractor) -> None:
    result = around_outage(GAPS)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [GAPS_HEADER, OUTAGE_ROW]


def test_gaps_tells_holes_never_fetched_apart_and_repair_refills_them(around_outage: Extractor) -> None:
    around_outage.delete("BTCUSDT", "1m", ms("2023-03-24T12:10"), ms("2023-03-24T12:20"))
    around_outage.delete("BTCUSDT", "1m", ms("2023-03-24T14:30"), ms("2023-03-24T14:31"))

    table = around_outage(GAPS)
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines() == [
        GAPS_HEADER,
        "2023-03-24T12:10:00Z  2023-03-24T12:20:00Z         10  missing (never fetched)",
        OUTAGE_ROW,
        "2023-03-24T14:30:00Z  2023-03-24T14:31:00Z          1  missing (never fetched)",
    ]

    as_json = around_outage(f"{GAPS} --start 2023-03-24T12:00 --json")
    assert as_json.exit_code == 0, as_json.output
    found = json.loads(as_json.stdout)
    assert [(g["kind"], g["start_utc"], g["end_utc"], g["candles"]) for g in found] == [
        ("missing", "2023-03-24T12:10:00Z", "2023-03-24T12:20:00Z", 10),
        ("exchange", "2023-03-24T12:40:00Z", "2023-03-24T14:00:00Z", 80),
        ("missing", "2023-03-24T14:30:00Z", "2023-03-24T14:31:00Z", 1),
    ]
    assert found[0]["start"] == ms("2023-03-24T12:10")
    assert found[0]["end"] == ms("2023-03-24T12:20")

    before = around_outage.klines_requests()
    repaired = around_outage(f"{GAPS} --repair")
    assert repaired.exit_code == 0, repaired.output
    assert repaired.stdout.splitlines() == [GAPS_HEADER, OUTAGE_ROW]
    assert around_outage.klines_requests() - before == 2
    around_outage.assert_matches_exchange("BTCUSDT", "1m", ms("2023-03-24T12:00"), ms("2023-03-24T15:00"))


def test_gaps_json_of_a_complete_series_is_an_empty_list(run: Extractor) -> None:
    assert run("backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02").exit_code == 0
    result = run("gaps -s ETHUSDT -i 1h --end 2023-06-02 --json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_gaps_without_stored_data_says_no_gaps(run: Extractor) -> None:
    result = run("gaps -s BTCUSDT -i 1m")
    assert result.exit_code == 0, result.output
    assert result.stdout == "BTCUSDT 1m: no gaps\n"
    assert sum(run.exchange.request_counts.values()) == 0


def test_gaps_repair_with_a_start_fills_a_range_never_fetched(run: Extractor) -> None:
    result = run("gaps -s BTCUSDT -i 1m --start 2023-06-01 --end 2023-06-01T00:10 --repair")
    assert result.exit_code == 0, result.output
    assert result.stdout == "BTCUSDT 1m: no gaps\n"
    run.assert_matches_exchange("BTCUSDT", "1m", ms("2023-06-01"), ms("2023-06-01T00:10"))
    assert len(run.stored("BTCUSDT", "1m", 0, ms("2023-06-02"))) == 10


def test_gaps_with_end_before_start_is_bad_input(run: Extractor) -> None:
    result = run("gaps -s BTCUSDT -i 1m --start 2023-06-02 --end 2023-06-01")
    assert result.exit_code == 2
    assert result.stderr == (
        "binance-extractor: error: --start 2023-06-02T00:00:00Z is not before --end 2023-06-01T00:00:00Z\n"
    )


def test_gaps_needs_one_symbol_and_one_interval(run: Extractor) -> None:
    result = run("gaps -s BTCUSDT")
    assert result.exit_code == 2
    assert "Error: Missing option '-i' / '--interval'." in result.stderr


# ---------------------------------------------------------------------------------------------- breakers


def test_breakers_status_shows_both_breakers_with_thresholds_from_the_environment(run: Extractor) -> None:
    env = {
        "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "7",
        "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "3",
        "CIRCUIT_BREAKER_RECOVERY_TIMEOUT": "90",
    }
    for command in ("breakers", "breakers status"):
        result = run(command, **env)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == [
            "api  CLOSED    failures 0/7  recovery 90.0s  last failure never",
            "db   CLOSED    failures 0/3  recovery 90.0s  last failure never",
        ]

    as_json = run("breakers --json", **env)
    assert as_json.exit_code == 0, as_json.output
    states = {info["name"]: info for info in json.loads(as_json.stdout)}
    assert states["api"]["state"] == "CLOSED"
    assert states["api"]["failure_count"] == 0
    assert states["api"]["failure_threshold"] == 7
    assert states["db"]["failure_threshold"] == 3
    assert states["db"]["recovery_timeout"] == 90
    assert states["db"]["last_failure_time"] is None


def test_breakers_reset_closes_a_breaker_that_a_failed_run_opened(run: Extractor) -> None:
    env = {"CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "1", "BINANCE_API_URL": f"http://127.0.0.1:{free_port()}"}
    assert run("check", **env).exit_code == 75

    opened = run("breakers", **env)
    assert opened.exit_code == 0, opened.output
    api_line = opened.stdout.splitlines()[0]
    assert api_line.startswith("api  OPEN      failures 1/1  recovery 60.0s  last failure 20")
    assert "  next trial in " in api_line
    as_json = json.loads(run("breakers --json", **env).stdout)
    assert as_json[0]["state"] == "OPEN"
    assert as_json[0]["seconds_until_trial"] > 0

    reset = run("breakers reset", **env)
    assert reset.exit_code == 0, reset.output
    assert reset.stdout.splitlines()[0] == "api  CLOSED    failures 0/1  recovery 60.0s  last failure never"
    assert run("breakers", **env).stdout == reset.stdout


def test_breakers_unknown_action_is_a_usage_error(run: Extractor) -> None:
    result = run("breakers bogus")
    assert result.exit_code == 2
    assert "Error: Invalid value for '[status|reset]': 'bogus' is not one of 'status', 'reset'." in (
        result.stderr
    )


# ---------------------------------------------------------------------------------------------- check


def test_check_all_ok_prints_four_lines_and_exits_0(run: Extractor) -> None:
    result = run("check", EXTRACTOR_SYMBOLS="BTCUSDT,ETHUSDT")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"ok   exchange  {run.exchange.url} answered ping in ")
    assert lines[1].startswith("ok   clock     skew ")
    assert lines[2] == "ok   symbols   BTCUSDT TRADING, ETHUSDT TRADING"
    assert lines[3] == f"ok   database  {run.db_url} writable (probe rolled back)"
    assert result.stderr == ""


def test_check_without_symbols_skips_that_check(run: Extractor) -> None:
    result = run("check")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2] == "ok   symbols   none configured (-s / EXTRACTOR_SYMBOLS); skipped"


def test_check_warns_about_a_symbol_not_trading_but_passes(run: Extractor) -> None:
    result = run("check", EXTRACTOR_SYMBOLS="LUNAUSDT,BTCUSDT")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2] == "warn symbols   LUNAUSDT BREAK, BTCUSDT TRADING"


def test_check_with_the_exchange_down_exits_75_and_still_checks_the_database(run: Extractor) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = run("check", BINANCE_API_URL=down, CIRCUIT_BREAKER_API_FAILURE_THRESHOLD="50")
    assert result.exit_code == 75
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("fail exchange  exchange unavailable after 1 attempt")
    assert f"/api/v3/ping: cannot reach {down} (Connection refused); retry in a few minutes" in lines[0]
    assert lines[1] == f"ok   database  {run.db_url} writable (probe rolled back)"


def test_check_with_an_unknown_symbol_exits_2_naming_it(run: Extractor) -> None:
    result = run("check", EXTRACTOR_SYMBOLS="BTCUSDT,NOPEUSDT")
    assert result.exit_code == 2
    assert "fail symbols   unknown symbol NOPEUSDT: Binance says Invalid symbol. (code -1121)" in (
        result.stdout.splitlines()
    )


# ---------------------------------------------------------------------------------------------- logs


def test_json_log_format_makes_every_stderr_line_a_json_object(run: Extractor) -> None:
    result = run("--log-format json -v backfill -s LUNAUSDT -i 1h --start 2023-06-01 --end 2023-06-02")
    assert result.exit_code == 0, result.output
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert entries
    for entry in entries:
        assert {"ts", "level", "message"} <= entry.keys()
        assert entry["ts"].endswith("Z")
    assert {
        "level": "WARNING",
        "message": "LUNAUSDT is BREAK on the exchange: no new candles while it stays so",
    }.items() <= next(e for e in entries if e["level"] == "WARNING").items()


def test_log_level_and_format_from_the_environment(frozen: Extractor) -> None:
    result = frozen("extract -s ETHUSDT -i 1h", LOG_LEVEL="INFO", LOG_FORMAT="json")
    assert result.exit_code == 0, result.output
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert entries[-1]["level"] == "INFO"
    assert entries[-1]["message"] == (
        "ETHUSDT 1h 2024-01-09T13:00:00Z..2024-01-10T12:00:00Z: 23 candles written, 1 requests"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOG_LEVEL": "LOUD"}, "invalid LOG_LEVEL 'LOUD': use one of DEBUG, INFO, WARNING, ERROR"),
        ({"LOG_FORMAT": "xml"}, "invalid log format 'xml' (--log-format / LOG_FORMAT): use text or json"),
    ],
)
def test_bad_logging_environment_is_bad_input(run: Extractor, env: dict[str, str], message: str) -> None:
    result = run("breakers", **env)
    assert result.exit_code == 2
    assert result.stderr == f"binance-extractor: error: {message}\n"
