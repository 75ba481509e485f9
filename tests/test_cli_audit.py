"""``gaps`` and ``status`` through CliRunner: what is stored, where its holes are, and what a repair did.

The harness is ``tests/cli_harness.py``; the exchange's outage of 2023-03-24 12:40-14:00 UTC (BTCUSDT)
and BNBUSDT's listing on 2017-11-06 are the fake's, as on the real exchange.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_harness import Extractor, ms

GAPS = "gaps -s BTCUSDT -i 1m --end 2023-03-24T15:00"
TABLE_HEADER = "  start                 end                     candles  kind"
OUTAGE_ROW = "  2023-03-24T12:40:00Z  2023-03-24T14:00:00Z         80  absent on the exchange (confirmed 2x)"
NOTHING_STORED = "nothing stored (run backfill or extract first)"


@pytest.fixture
def around_outage(run: Extractor) -> Extractor:
    """BTCUSDT 1m backfilled over 2023-03-24 12:00-15:00, which holds the exchange's 12:40-14:00 outage."""
    result = run("backfill -s BTCUSDT -i 1m --start 2023-03-24T12:00 --end 2023-03-24T15:00")
    assert result.exit_code == 0, result.output
    return run


# ---------------------------------------------------------------------------------------------- gaps


def test_gaps_lists_the_exchange_outage_as_absent_on_the_exchange(around_outage: Extractor) -> None:
    result = around_outage(GAPS)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["spot BTCUSDT 1m:", TABLE_HEADER, OUTAGE_ROW]
    assert result.stderr == ""


def test_gaps_tells_holes_never_fetched_apart_and_repair_refills_them(around_outage: Extractor) -> None:
    around_outage.delete("BTCUSDT", "1m", ms("2023-03-24T12:10"), ms("2023-03-24T12:20"))
    around_outage.delete("BTCUSDT", "1m", ms("2023-03-24T14:30"), ms("2023-03-24T14:31"))

    table = around_outage(GAPS)
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines() == [
        "spot BTCUSDT 1m:",
        TABLE_HEADER,
        "  2023-03-24T12:10:00Z  2023-03-24T12:20:00Z         10  missing (never fetched)",
        OUTAGE_ROW,
        "  2023-03-24T14:30:00Z  2023-03-24T14:31:00Z          1  missing (never fetched)",
    ]

    as_json = around_outage(f"{GAPS} --start 2023-03-24T12:00 --json")
    assert as_json.exit_code == 0, as_json.output
    [audit] = json.loads(as_json.stdout)
    assert (audit["series"], audit["stored"], audit["fetched"]) == ("spot BTCUSDT 1m", True, 0)
    found = audit["gaps"]
    assert [(g["kind"], g["start_utc"], g["end_utc"], g["candles"]) for g in found] == [
        ("missing", "2023-03-24T12:10:00Z", "2023-03-24T12:20:00Z", 10),
        ("exchange", "2023-03-24T12:40:00Z", "2023-03-24T14:00:00Z", 80),
        ("missing", "2023-03-24T14:30:00Z", "2023-03-24T14:31:00Z", 1),
    ]
    assert (found[0]["start"], found[0]["end"]) == (ms("2023-03-24T12:10"), ms("2023-03-24T12:20"))
    assert found[1]["confirmations"] == 2

    before = around_outage.klines_requests()
    repaired = around_outage(f"{GAPS} --repair")
    assert repaired.exit_code == 0, repaired.output
    assert repaired.stdout.splitlines() == [
        "spot BTCUSDT 1m: repair fetched 11 candles",
        "spot BTCUSDT 1m:",
        TABLE_HEADER,
        OUTAGE_ROW,
    ]
    assert around_outage.klines_requests() - before == 2
    around_outage.assert_matches_exchange("BTCUSDT", "1m", ms("2023-03-24T12:00"), ms("2023-03-24T15:00"))


def test_gaps_quiet_repair_prints_nothing_when_only_exchange_gaps_are_left(around_outage: Extractor) -> None:
    """The crontab's daily ``gaps -q --repair``: cron mails nothing while all is well."""
    around_outage.delete("BTCUSDT", "1m", ms("2023-03-24T12:10"), ms("2023-03-24T12:11"))
    result = around_outage(f"-q {GAPS} --repair")
    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("", "")
    around_outage.assert_matches_exchange("BTCUSDT", "1m", ms("2023-03-24T12:00"), ms("2023-03-24T15:00"))


def test_gaps_repair_says_one_candle_not_one_candles(around_outage: Extractor) -> None:
    around_outage.delete("BTCUSDT", "1m", ms("2023-03-24T14:30"), ms("2023-03-24T14:31"))
    result = around_outage(f"{GAPS} --repair")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "spot BTCUSDT 1m: repair fetched 1 candle"


def test_gaps_json_of_a_complete_series_has_no_gaps(run: Extractor) -> None:
    assert run("backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02").exit_code == 0
    result = run("gaps -s ETHUSDT -i 1h --end 2023-06-02 --json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"series": "spot ETHUSDT 1h", "stored": True, "fetched": 0, "refilled": 0, "gaps": []}
    ]
    table = run("gaps -s ETHUSDT -i 1h --end 2023-06-02")
    assert table.stdout == "spot ETHUSDT 1h: no gaps\n"


def test_gaps_without_stored_data_says_nothing_is_stored(run: Extractor) -> None:
    result = run("gaps -s BTCUSDT -i 1m")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"spot BTCUSDT 1m: {NOTHING_STORED}\n"
    assert run.requests() == 0
    as_json = run("gaps -s BTCUSDT -i 1m --json")
    assert json.loads(as_json.stdout) == [
        {"series": "spot BTCUSDT 1m", "stored": False, "fetched": 0, "refilled": 0, "gaps": []}
    ]


def test_gaps_audits_every_symbol_and_interval_given(around_outage: Extractor) -> None:
    result = around_outage("gaps -s BTCUSDT -s ETHUSDT -i 1m,1h --end 2023-03-24T15:00")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "spot BTCUSDT 1m:",
        TABLE_HEADER,
        OUTAGE_ROW,
        f"spot BTCUSDT 1h: {NOTHING_STORED}",
        f"spot ETHUSDT 1m: {NOTHING_STORED}",
        f"spot ETHUSDT 1h: {NOTHING_STORED}",
    ]


def test_gaps_takes_the_series_from_the_environment(around_outage: Extractor) -> None:
    result = around_outage(
        "gaps --end 2023-03-24T15:00", EXTRACTOR_SYMBOLS="BTCUSDT", EXTRACTOR_INTERVALS="1m"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "spot BTCUSDT 1m:"


def test_gaps_repair_with_a_start_fills_a_range_never_fetched(run: Extractor) -> None:
    result = run("gaps -s BTCUSDT -i 1m --start 2023-06-01 --end 2023-06-01T00:10 --repair")
    assert result.exit_code == 0, result.output
    assert result.stdout == "spot BTCUSDT 1m: repair fetched 10 candles\n"
    run.assert_matches_exchange("BTCUSDT", "1m", ms("2023-06-01"), ms("2023-06-01T00:10"))
    assert len(run.stored("BTCUSDT", "1m", 0, ms("2023-06-02"))) == 10


def test_gaps_repair_without_a_start_on_nothing_stored_fetches_nothing(run: Extractor) -> None:
    result = run("gaps -s BTCUSDT -i 1m --repair")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"spot BTCUSDT 1m: {NOTHING_STORED}\n"
    assert run.klines_requests() == 0


def test_gaps_with_end_before_start_is_bad_input(run: Extractor) -> None:
    result = run("gaps -s BTCUSDT -i 1m --start 2023-06-02 --end 2023-06-01")
    assert result.exit_code == 2
    assert result.stderr == (
        "binance-extractor: error: --start 2023-06-02T00:00:00Z is not before --end 2023-06-01T00:00:00Z\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("-s BTCUSDT", "no intervals: give -i/--interval or set EXTRACTOR_INTERVALS"),
        ("-i 1m", "no symbols: give -s/--symbol (or -s ALL) or set EXTRACTOR_SYMBOLS"),
    ],
)
def test_gaps_needs_symbols_and_intervals(run: Extractor, args: str, message: str) -> None:
    result = run(f"gaps {args}")
    assert result.exit_code == 2
    assert result.stderr == f"binance-extractor: error: {message}\n"


# ---------------------------------------------------------------------------------------------- status

STATUS_HEADER = (
    "market symbol         int  first                last                     candles    holes gap candles"
    "  last write"
)


def test_status_lists_each_stored_series_with_its_first_last_count_holes_and_gaps(
    around_outage: Extractor,
) -> None:
    assert around_outage("backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02").exit_code == 0
    around_outage.delete("BTCUSDT", "1m", ms("2023-03-24T12:10"), ms("2023-03-24T12:20"))
    result = around_outage("status")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header == STATUS_HEADER
    assert [row.rsplit("  ", 1)[0] for row in rows] == [
        "spot   BTCUSDT        1m   2023-03-24T12:00:00Z 2023-03-24T14:59:00Z"
        "          90       10          80",
        "spot   ETHUSDT        1h   2023-06-01T00:00:00Z 2023-06-01T23:00:00Z"
        "          24        0           0",
    ]
    for row in rows:  # the last write, to the second
        assert row.rsplit("  ", 1)[1].endswith("Z")
    assert result.stderr == ""


def test_status_json_gives_the_same_facts_with_epoch_and_utc_times(around_outage: Extractor) -> None:
    before = sum(around_outage.exchange.request_counts.values())
    result = around_outage("status --json")
    assert result.exit_code == 0, result.output
    [line] = json.loads(result.stdout)
    last_write = line.pop("last_write")
    assert isinstance(last_write, int)
    assert line.pop("last_write_utc").endswith("Z")
    assert line == {
        "market": "spot",
        "symbol": "BTCUSDT",
        "interval": "1m",
        "first_open_time": ms("2023-03-24T12:00"),
        "first_utc": "2023-03-24T12:00:00Z",
        "last_open_time": ms("2023-03-24T14:59"),
        "last_utc": "2023-03-24T14:59:00Z",
        "candles": 100,
        "holes": 0,
        "exchange_gap_candles": 80,
    }
    assert sum(around_outage.exchange.request_counts.values()) == before  # status asks the exchange nothing


def test_status_narrows_to_the_series_asked_for(around_outage: Extractor) -> None:
    assert around_outage("backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02").exit_code == 0
    assert around_outage("backfill -s ETHUSDT -i 1d --start 2023-06-01 --end 2023-06-02").exit_code == 0

    def listed(command: str) -> list[tuple[str, str]]:
        result = around_outage(command)
        assert result.exit_code == 0, result.output
        return [(s["symbol"], s["interval"]) for s in json.loads(result.stdout)]

    assert listed("status -s ETHUSDT --json") == [("ETHUSDT", "1d"), ("ETHUSDT", "1h")]
    assert listed("status -i 1h,1m --json") == [("BTCUSDT", "1m"), ("ETHUSDT", "1h")]
    assert listed("status -s ETHUSDT,BTCUSDT -i 1d --json") == [("ETHUSDT", "1d")]
    assert listed("status --market usdm -s ETHUSDT --json") == []


def test_status_of_an_empty_database_says_so_naming_it_without_its_password(run: Extractor) -> None:
    assert run("status").stdout == f"nothing stored in {run.db_url}\n"
    as_json = run("status --json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == []


def test_status_of_a_database_that_does_not_exist_says_nothing_is_stored(
    run: Extractor, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "typo.db"
    for args in ("", " -s BTCUSDT", " -i 1m"):
        result = run(f"status --db sqlite:///{elsewhere}{args}")
        assert result.exit_code == 0, result.output
        assert result.stdout == f"nothing stored in sqlite:///{elsewhere}\n"
        assert not elsewhere.exists(), "asking what is stored created the database"
