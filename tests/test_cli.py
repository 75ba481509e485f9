"""The CLI's commands for fetching (backfill, extract), its help and its logging, through CliRunner.

Each invocation gets its own state directory, SQLite file and exchange (REST and archive, see
``tests/cli_harness.py``); exit codes and the exact lines a user reads are asserted, and stored candles
are compared field by field with the exchange's. gaps and status are in ``test_cli_audit.py``; breakers,
check, exit codes and bad environments in ``test_cli_ops.py``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import Result

from tests.cli_harness import DAY, Extractor, ms
from tests.fake_exchange import ManualClock
from tests.services import free_port

JUNE_1 = "2023-06-01T00:00:00Z..2023-06-02T00:00:00Z"
COMMANDS = ("backfill", "extract", "status", "gaps", "breakers", "check")


# ---------------------------------------------------------------------------------------------- help


def test_group_help_lists_the_global_flags_and_every_command(run: Extractor) -> None:
    result = run("--help")
    assert result.exit_code == 0
    for flag in ("--db URL", "--base-url URL", "--config FILE", "--log-format [text|json]", "-v, --verbose"):
        assert flag in result.stdout
    for flag in ("-q, --quiet", "--version", "-h, --help"):
        assert flag in result.stdout
    for command in COMMANDS:
        assert f"  {command} " in result.stdout
    for code in (
        "0 done",
        "1 unexpected failure",
        "2 bad input",
        "75 temporary failure",
        "130/143 interrupted",
    ):
        assert code in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "backfill",
            ["-s, --symbol SYM", "-i, --interval INT", "--start WHEN", "--end WHEN", "--concurrency N"],
        ),
        ("backfill", ["--market [spot|usdm|coinm]", "--source [auto|rest|archive]", "--archive-url URL"]),
        ("backfill", ["--progress / --no-progress", "--shard K/N"]),
        ("extract", ["-s, --symbol SYM", "-i, --interval INT", "--lookback DURATION", "--quote ASSET"]),
        ("status", ["-s, --symbol SYM", "-i, --interval INT", "--shard K/N", "--json"]),
        (
            "gaps",
            ["-s, --symbol SYM", "-i, --interval INT", "--start WHEN", "--end WHEN", "--repair", "--json"],
        ),
        ("gaps", ["--recheck"]),
        ("breakers", ["[status|reset]", "--json"]),
        ("check", ["-s, --symbol SYM", "--market [spot|usdm|coinm]"]),
    ],
)
def test_command_help_lists_the_documented_flags(run: Extractor, command: str, flags: list[str]) -> None:
    result = run(f"{command} -h")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: binance-extractor {command} ")
    for flag in flags:
        assert flag in result.stdout


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_help_ends_with_two_or_three_examples_of_that_command(run: Extractor, command: str) -> None:
    result = run(f"{command} --help")
    assert result.exit_code == 0, result.output
    head, _, examples = result.stdout.partition("\n  Examples:\n\n")
    assert examples, "no Examples section"
    assert "Options:" in head, "the examples come last, after the options"
    lines = examples.rstrip("\n").split("\n")
    assert 2 <= len(lines) <= 3, lines
    for line in lines:
        words = line.split()
        program = next(i for i, word in enumerate(words) if "=" not in word)  # after VAR=value prefixes
        assert words[program] == "binance-extractor", line
        if command:
            assert command in words[program + 1 :], line


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_accepts_the_global_options_after_its_name(run: Extractor, command: str) -> None:
    result = run(
        f"{command} --db sqlite:///x.db --base-url {run.exchange.url} --config c.toml",
        "--log-format=json",
        "-v",
        "-q",
        "-h",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: binance-extractor {command} ")


def test_global_options_after_the_command_take_effect_and_win_over_those_before(
    frozen: Extractor, tmp_path: Path
) -> None:
    before, after = tmp_path / "before.db", tmp_path / "after.db"
    result = frozen(
        f"--db sqlite:///{before} --log-format text extract -s ETHUSDT -i 1h --lookback 3h",
        f"--db=sqlite:///{after}",
        "--log-format",
        "json",
        "-v",
    )
    assert result.exit_code == 0, result.output
    assert not before.exists()
    with sqlite3.connect(after) as conn:
        assert conn.execute("SELECT COUNT(*) FROM klines").fetchone() == (2,)  # 10:00 and 11:00
    assert [json.loads(line)["message"] for line in result.stderr.splitlines()] == [
        "spot ETHUSDT 1h 2024-01-10T10:00:00Z..2024-01-10T12:00:00Z: 2 candles written, 1 request"
    ]


# ---------------------------------------------------------------------------------------------- backfill


def test_backfill_stores_every_candle_of_1m_1h_1w_1M_exactly_as_the_exchange_serves_them(
    run: Extractor,
) -> None:
    start, end = ms("2023-06-01"), ms("2023-06-03T12:00")
    result = run(
        "backfill -s BTCUSDT,ETHUSDT -i 1m -i 1h --start 2023-06-01 --end 2023-06-03T12:00 --source rest"
    )
    assert result.exit_code == 0, result.output
    span = "2023-06-01T00:00:00Z..2023-06-03T12:00:00Z"
    assert result.stdout.splitlines() == [  # 1,000 candles a page
        f"spot BTCUSDT 1m {span}: 3,600 candles written, 4 requests",
        f"spot BTCUSDT 1h {span}: 60 candles written, 1 request",
        f"spot ETHUSDT 1m {span}: 3,600 candles written, 4 requests",
        f"spot ETHUSDT 1h {span}: 60 candles written, 1 request",
    ]
    for symbol in ("BTCUSDT", "ETHUSDT"):
        for interval in ("1m", "1h"):
            run.assert_matches_exchange(symbol, interval, start, end)

    start, end = ms("2022-11-20"), ms("2023-07-15")
    result = run("backfill -s ETHUSDT -i 1w,1M --start 2022-11-20 --end 2023-07-15 --source rest")
    assert result.exit_code == 0, result.output
    span = "2022-11-20T00:00:00Z..2023-07-15T00:00:00Z"
    assert result.stdout.splitlines() == [
        f"spot ETHUSDT 1w {span}: 34 candles written, 1 request",
        f"spot ETHUSDT 1M {span}: 8 candles written, 1 request",
    ]
    run.assert_matches_exchange("ETHUSDT", "1w", start, end)
    run.assert_matches_exchange("ETHUSDT", "1M", start, end)
    assert run.stored("ETHUSDT", "1M", start, end)[0][0] == ms("2022-12-01")


def test_backfill_by_default_takes_closed_days_from_archive_files_and_the_rest_from_rest(
    run: Extractor,
) -> None:
    result = run("backfill -s BTCUSDT -i 1m --start 2023-06-01 --end 2023-06-03T12:00")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "spot BTCUSDT 1m 2023-06-01T00:00:00Z..2023-06-03T12:00:00Z: "
        "3,600 candles written, 2,880 from 2 archive files, 1 request\n"
    )
    assert result.stderr == ""
    # The half day of 06-03, and the listing probe (not counted in the line: it found a candle at --start).
    assert run.klines_requests() == 2
    assert sorted(run.exchange.archive_counts) == [
        f"/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-06-0{day}.zip{checksum}"
        for day in (1, 2)
        for checksum in ("", ".CHECKSUM")
    ]
    run.assert_matches_exchange("BTCUSDT", "1m", ms("2023-06-01"), ms("2023-06-03T12:00"))


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2023-06-01", "2023-06-02"),
        ("2023-06-01T00:00", "2023-06-02T00:00:00"),
        ("2023-06-01T02:00+02:00", "2023-06-01T19:00-05:00"),
        ("2023-06-01T00:00:00Z", "2023-06-02T00:00:00Z"),
        ("1685577600000", "1685664000000"),  # epoch milliseconds: 13 digits
        ("1685577600", "1685664000"),  # epoch seconds: 10 digits
        ("1685577600000000", "1685664000000000"),  # epoch microseconds: 16 digits
        ("1685577600", "1685664000000000"),
    ],
)
def test_backfill_reads_every_when_form_as_utc(run: Extractor, start: str, end: str) -> None:
    result = run("backfill -s ETHUSDT -i 1h --start", start, "--end", end)
    assert result.exit_code == 0, result.output
    assert (
        result.stdout == f"spot ETHUSDT 1h {JUNE_1}: 24 candles written, 24 from 1 archive file, 0 requests\n"
    )


@pytest.mark.parametrize("when", ["168557760", "16855776000", "168557760000000", "16855776000000000"])
def test_backfill_refuses_an_epoch_of_another_length_naming_the_rule(run: Extractor, when: str) -> None:
    result = run("backfill -s ETHUSDT -i 1h --start", when)
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: invalid --start '{when}': "
        "an epoch time has 10 digits (seconds), 13 (milliseconds) or 16 (microseconds)\n"
    )
    assert run.requests() == 0


def test_backfill_start_as_a_duration_ago_fetches_up_to_now(run: Extractor) -> None:
    before = run.exchange.now_ms()
    result = run("backfill -s ETHUSDT -i 1d --start 90d")
    after = run.exchange.now_ms()
    assert result.exit_code == 0, result.output
    head, _, tail = result.stdout.partition(": ")
    market, symbol, interval, span = head.split(" ")
    assert (market, symbol, interval) == ("spot", "ETHUSDT", "1d")
    first, last = (ms(t.rstrip("Z")) for t in span.split(".."))
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
    assert series == [
        f"spot {symbol} {interval}"
        for symbol in ("BTCUSDT", "ETHUSDT", "BNBUSDT")
        for interval in ("1d", "12h")
    ]
    run.assert_matches_exchange("BNBUSDT", "12h", ms("2023-06-01"), ms("2023-06-03"))


def test_backfill_progress_bars_only_when_asked(run: Extractor) -> None:
    shown = run("backfill -s ETHUSDT -i 1m --start 2023-06-01 --end 2023-06-02 --progress")
    assert shown.exit_code == 0, shown.output
    final = shown.stderr.split("\r")[-1]  # tqdm redraws the bar in place
    assert final.startswith("spot ETHUSDT 1m 100%|")
    assert "1.44k/1.44k candles" in final
    assert "candles/s]" in final
    assert "files 1/1" in final
    assert shown.stdout.startswith("spot ETHUSDT 1m ")

    for flag in ("--no-progress", ""):  # stderr is not a terminal under CliRunner
        quiet = run(f"backfill -s ETHUSDT -i 1m --start 2023-06-02 --end 2023-06-03 {flag}")
        assert quiet.exit_code == 0, quiet.output
        assert quiet.stderr == ""
        assert quiet.stdout.startswith("spot ETHUSDT 1m ")


def test_backfill_progress_over_rest_counts_every_candle_of_the_series(run: Extractor) -> None:
    shown = run(
        "backfill -s ETHUSDT -i 1m --start 2023-06-01 --end 2023-06-02T12:00 --progress --source rest"
    )
    assert shown.exit_code == 0, shown.output
    final = shown.stderr.split("\r")[-1]
    assert final.startswith("spot ETHUSDT 1m 100%|")
    assert "2.16k/2.16k candles" in final


def test_backfill_quiet_prints_nothing_but_still_stores(run: Extractor) -> None:
    result = run("-q backfill -s LUNAUSDT -i 1h --start 2023-06-01 --end 2023-06-02")
    assert result.exit_code == 0
    assert (result.stdout, result.stderr) == ("", "")
    run.assert_matches_exchange("LUNAUSDT", "1h", ms("2023-06-01"), ms("2023-06-02"))


@pytest.mark.parametrize("concurrency", ["0", "65", "-1", "2.9", "true", "many"])
def test_backfill_concurrency_out_of_bounds_or_not_whole_is_bad_input(
    run: Extractor, concurrency: str
) -> None:
    result = run("backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02 --concurrency", concurrency)
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: invalid concurrency (--concurrency) '{concurrency}': "
        "expected a whole number from 1 to 64\n"
    )
    assert run.requests() == 0


@pytest.mark.parametrize(
    ("where", "value", "shown"),
    [
        ("config", "2.9", "2.9"),
        ("config", "true", "True"),
        ("env", "2.9", "'2.9'"),
        ("env", "true", "'true'"),
    ],
)
def test_concurrency_from_the_config_or_environment_must_be_a_whole_number(
    run: Extractor, tmp_path: Path, where: str, value: str, shown: str
) -> None:
    config = tmp_path / "extractor.toml"
    config.write_text(f"concurrency = {value}\n")
    env = {"EXTRACTOR_CONFIG": str(config)} if where == "config" else {"EXTRACTOR_CONCURRENCY": value}
    culprit = f"concurrency in {config}" if where == "config" else "EXTRACTOR_CONCURRENCY"
    result = run("backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02", **env)
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: invalid concurrency ({culprit}) {shown}: "
        "expected a whole number from 1 to 64\n"
    )
    assert run.requests() == 0


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
        ("-i 1h", "no symbols: give -s/--symbol (or -s ALL) or set EXTRACTOR_SYMBOLS"),
        ("-s ETHUSDT", "no intervals: give -i/--interval or set EXTRACTOR_INTERVALS"),
        ("-s ' , ' -i 1h", "no symbols: give -s/--symbol (or -s ALL) or set EXTRACTOR_SYMBOLS"),
    ],
)
def test_backfill_without_series_is_bad_input(run: Extractor, args: str, message: str) -> None:
    result = run(f"backfill {args} --start 2023-06-01")
    assert result.exit_code == 2
    assert result.stderr == f"binance-extractor: error: {message}\n"
    assert run.requests() == 0


def test_backfill_rerun_of_a_finished_range_sends_no_klines_request_and_downloads_no_file(
    run: Extractor,
) -> None:
    command = "backfill -s BTCUSDT -i 1m,1h --start 2023-06-01 --end 2023-06-03T12:00"
    assert run(command).exit_code == 0
    klines, files = run.klines_requests(), run.archive_requests()
    again = run(command)
    assert again.exit_code == 0, again.output
    assert (run.klines_requests(), run.archive_requests()) == (klines, files)
    span = "2023-06-01T00:00:00Z..2023-06-03T12:00:00Z"
    assert again.stdout.splitlines() == [
        f"spot BTCUSDT 1m {span}: 0 candles written, 3,600 already stored, 0 requests",
        f"spot BTCUSDT 1h {span}: 0 candles written, 60 already stored, 0 requests",
    ]


def test_backfill_around_an_exchange_outage_stores_both_sides_and_reruns_ask_nothing(run: Extractor) -> None:
    start, end = ms("2023-03-24T12:00"), ms("2023-03-24T15:00")
    command = "backfill -s BTCUSDT -i 1m --start 2023-03-24T12:00 --end 2023-03-24T15:00"
    result = run(command)
    assert result.exit_code == 0, result.output
    # The page, and a second request aimed at the outage alone that confirms it empty.
    assert result.stdout == (
        "spot BTCUSDT 1m 2023-03-24T12:00:00Z..2023-03-24T15:00:00Z: "
        "100 candles written, 80 absent on the exchange, 2 requests\n"
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
    command = "backfill -s BNBUSDT -i 1d,1h --start 2017-11-01 --end 2017-11-08 --source rest"
    result = run(command)
    assert result.exit_code == 0, result.output
    span = "2017-11-01T00:00:00Z..2017-11-08T00:00:00Z"
    # One request finds the first candle, a second confirms nothing is before it, a third is the page.
    assert result.stdout.splitlines() == [
        f"spot BNBUSDT 1d {span}: 2 candles written, 5 absent on the exchange, 3 requests",
        f"spot BNBUSDT 1h {span}: 45 candles written, 123 absent on the exchange, 3 requests",
    ]
    assert run.klines_requests() == 6
    run.assert_matches_exchange("BNBUSDT", "1h", ms("2017-11-01"), ms("2017-11-08"))
    assert run.stored("BNBUSDT", "1h", 0, ms("2017-11-08"))[0][0] == ms("2017-11-06T03:00")

    before = run.klines_requests()
    for source in ("rest", "auto"):
        assert run(command.replace("rest", source)).exit_code == 0
    assert run.klines_requests() == before
    assert run.archive_requests() == 0


def test_backfill_of_a_symbol_on_break_warns_and_still_stores(run: Extractor) -> None:
    result = run("backfill -s LUNAUSDT -i 1h --start 2023-06-01 --end 2023-06-02")
    assert result.exit_code == 0, result.output
    assert result.stderr.endswith(
        " WARNING extractor.pipeline: LUNAUSDT is BREAK on spot: no new candles while it stays so\n"
    )
    assert result.stderr.count("\n") == 1
    assert result.stdout.endswith(": 24 candles written, 24 from 1 archive file, 0 requests\n")
    run.assert_matches_exchange("LUNAUSDT", "1h", ms("2023-06-01"), ms("2023-06-02"))


@pytest.mark.parametrize("symbols", ["NOPEUSDT", "BTCUSDT,NOPEUSDT"])
def test_backfill_of_an_unknown_symbol_names_it_and_writes_nothing(run: Extractor, symbols: str) -> None:
    result = run(f"backfill -s {symbols} -i 1h --start 2023-06-01 --end 2023-06-02")
    assert result.exit_code == 2
    assert result.stderr == (
        "binance-extractor: error: Binance rejected the request: Invalid symbol: NOPEUSDT (code -1121)\n"
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
        " INFO extractor.pipeline: spot ETHUSDT 1m 2024-01-10T09:01:00Z..2024-01-10T12:00:00Z: "
        "179 candles written, 1 request\n"
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
        ": spot BTCUSDT 1m 2024-01-10T12:00:00Z..2024-01-10T12:10:00Z: 10 candles written, 1 request\n"
    )
    assert frozen.klines_requests() - before == 1
    frozen.assert_matches_exchange("BTCUSDT", "1m", ms("2024-01-10T10:01"), ms("2024-01-10T12:10"))
    assert len(frozen.stored("BTCUSDT", "1m", 0, ms("2024-01-11"))) == 119 + 10

    again = frozen("-v extract -s BTCUSDT -i 1m")
    assert again.exit_code == 0
    assert again.stderr.endswith(": spot BTCUSDT 1m: nothing closed in the range yet\n")
    assert frozen.klines_requests() - before == 1


def _extracted_series(result: Result) -> set[str]:
    """``market SYMBOL interval`` of each summary line a verbose extract logged."""
    return {" ".join(line.split(": ")[1].split()[:3]) for line in result.stderr.splitlines()}


def test_extract_takes_symbols_and_intervals_from_config_then_env_then_flags(
    frozen: Extractor, tmp_path: Path
) -> None:
    config = tmp_path / "extractor.toml"
    config.write_text('symbols = ["BNBUSDT", "ETHUSDT"]\nintervals = "1h,4h"\nlookback = "8h"\n')

    from_config = frozen(f"-v --config {config} extract")
    assert from_config.exit_code == 0, from_config.output
    assert _extracted_series(from_config) == {
        "spot BNBUSDT 1h",
        "spot BNBUSDT 4h",
        "spot ETHUSDT 1h",
        "spot ETHUSDT 4h",
    }
    assert len(frozen.stored("BNBUSDT", "1h", 0, ms("2024-01-11"))) == 7  # 05:00..11:00

    from_env = frozen("-v extract", EXTRACTOR_CONFIG=str(config), EXTRACTOR_SYMBOLS="BTCUSDT")
    assert from_env.exit_code == 0, from_env.output
    assert _extracted_series(from_env) == {"spot BTCUSDT 1h", "spot BTCUSDT 4h"}

    from_flags = frozen(
        f"-v --config {config} extract -s SHIBUSDT -i 2h",
        EXTRACTOR_SYMBOLS="BTCUSDT",
        EXTRACTOR_INTERVALS="1m",
    )
    assert from_flags.exit_code == 0, from_flags.output
    assert _extracted_series(from_flags) == {"spot SHIBUSDT 2h"}


def test_extract_env_lists_alone_are_enough(frozen: Extractor) -> None:
    result = frozen("-v extract", EXTRACTOR_SYMBOLS="BTCUSDT, ETHUSDT", EXTRACTOR_INTERVALS="1h")
    assert result.exit_code == 0, result.output
    assert _extracted_series(result) == {"spot BTCUSDT 1h", "spot ETHUSDT 1h"}


def test_extract_without_symbols_is_bad_input(frozen: Extractor) -> None:
    result = frozen("extract -i 1h")
    assert result.exit_code == 2
    assert (
        result.stderr
        == "binance-extractor: error: no symbols: give -s/--symbol (or -s ALL) or set EXTRACTOR_SYMBOLS\n"
    )
    assert frozen.requests() == 0


@pytest.mark.parametrize("lookback", ["0h", "1y", "90"])
def test_extract_with_a_bad_lookback_is_bad_input(frozen: Extractor, lookback: str) -> None:
    result = frozen(f"extract -s ETHUSDT -i 1h --lookback {lookback}")
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: invalid lookback (--lookback) '{lookback}': "
        "use a positive number and a unit s, m, h, d or w (e.g. 90d, 12h, 30m)\n"
    )
    assert frozen.requests() == 0


@pytest.mark.parametrize("bad", ["NOPEUSDT", "FOOUSDT"])
def test_extract_stores_every_good_series_and_exits_2_naming_the_rejected_symbol(
    frozen: Extractor, bad: str
) -> None:
    command = f"extract -s BTCUSDT,{bad},ETHUSDT -i 1h --lookback 3h"
    for _ in range(2):  # a bad symbol in the crontab never stops the others, run after run
        result = frozen(command)
        assert result.exit_code == 2
        assert result.stderr == (
            f"binance-extractor: error: 1 series rejected by the exchange, the others stored: spot {bad} "
            "(not a spot symbol); fix or remove them in the configuration\n"
        )
        assert result.stdout == ""
    # Two a run (the symbols asked together, refused with -1121, then the list): never one per series.
    assert frozen.exchange.request_counts["/api/v3/exchangeInfo"] == 4
    for symbol in ("BTCUSDT", "ETHUSDT"):
        frozen.assert_matches_exchange(symbol, "1h", ms("2024-01-10T10:00"), ms("2024-01-10T12:00"))
    assert frozen.stored(bad, "1h", 0, ms("2024-01-11")) == []


def test_extract_skips_a_symbol_that_does_not_trade_with_a_warning_and_exits_0(frozen: Extractor) -> None:
    result = frozen("extract -s LUNAUSDT,BTCUSDT -i 1h --lookback 3h")
    assert result.exit_code == 0, result.output
    assert result.stderr.endswith(
        " WARNING extractor.pipeline: LUNAUSDT is BREAK on spot: no new candles while it stays so\n"
    )
    assert result.stderr.count("\n") == 1
    assert len(frozen.stored("BTCUSDT", "1h", 0, ms("2024-01-11"))) == 2
    assert frozen.stored("LUNAUSDT", "1h", 0, ms("2024-01-11")) == []


def test_extract_with_a_missing_config_file_names_it(frozen: Extractor, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = frozen(f"--config {missing} extract")
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: config file {missing} does not exist (--config / EXTRACTOR_CONFIG)\n"
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
        "message": "LUNAUSDT is BREAK on spot: no new candles while it stays so",
    }.items() <= next(e for e in entries if e["level"] == "WARNING").items()


def test_log_level_and_format_from_the_environment(frozen: Extractor) -> None:
    result = frozen("extract -s ETHUSDT -i 1h", LOG_LEVEL="INFO", LOG_FORMAT="json")
    assert result.exit_code == 0, result.output
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert entries[-1]["level"] == "INFO"
    assert entries[-1]["message"] == (
        "spot ETHUSDT 1h 2024-01-09T13:00:00Z..2024-01-10T12:00:00Z: 23 candles written, 1 request"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOG_LEVEL": "LOUD"}, "invalid LOG_LEVEL 'LOUD': use one of DEBUG, INFO, WARNING, ERROR"),
        ({"LOG_FORMAT": "xml"}, "invalid LOG_FORMAT 'xml': use one of text, json"),
    ],
)
def test_bad_logging_environment_is_bad_input(run: Extractor, env: dict[str, str], message: str) -> None:
    result = run("breakers", **env)
    assert result.exit_code == 2
    assert result.stderr == f"binance-extractor: error: {message}\n"
