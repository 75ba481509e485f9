"""Spot, USD-M and COIN-M side by side: one database, each series apart, each market at its own weight.

The acceptance of issue 12: a week of BTCUSDT 1m on spot and on usdm into one database, stored exactly
and apart; USD-M asked with its cheapest page (499 candles, weight 2) under its 2,400 a minute; COIN-M's
200-day span and newest-first answers followed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from extractor.cli import cli
from extractor.intervals import DAY, Interval
from extractor.klines import Series, to_row
from extractor.markets import COINM, SPOT, USDM, Market
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange

WEEK_START, WEEK_END = 1_717_200_000_000, 1_717_200_000_000 + 7 * DAY  # 2024-06-01 .. 06-08


@pytest.fixture
def run(tmp_path: Path, fake_exchange: FakeExchange) -> Iterator[Any]:
    env = {
        "EXTRACTOR_STATE_DIR": str(tmp_path / "state"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'klines.db'}",
        "BINANCE_API_URL": fake_exchange.url,
        "LOG_LEVEL": "WARNING",
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    invoke.url = env["DATABASE_URL"]  # type: ignore[attr-defined]
    yield invoke


def stored(url: str, market: Market, symbol: str, interval: str, start: int, end: int) -> list[list[Any]]:
    with open_store(url) as store:
        return [to_row(k) for k in store.read(Series(market, symbol, Interval.parse(interval)), start, end)]


def klines_requests(exchange: FakeExchange, market: str) -> list[dict[str, str]]:
    return [r.params for r in exchange.log if r.market == market and r.path.endswith("/klines")]


def test_spot_and_usdm_of_one_symbol_are_stored_apart_and_exactly(
    run: Any, fake_exchange: FakeExchange
) -> None:
    for market in ("spot", "usdm"):
        result = run(
            "backfill",
            "--market",
            market,
            "-s",
            "BTCUSDT",
            "-i",
            "1m",
            "--start",
            str(WEEK_START),
            "--end",
            str(WEEK_END),
            "--no-progress",
            "--source",
            "rest",
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(
            f"{market} BTCUSDT 1m 2024-06-01T00:00:00Z..2024-06-08T00:00:00Z: 10,080 "
        )

    spot = stored(run.url, SPOT, "BTCUSDT", "1m", WEEK_START, WEEK_END)
    usdm = stored(run.url, USDM, "BTCUSDT", "1m", WEEK_START, WEEK_END)
    assert spot == fake_exchange.rows("BTCUSDT", "1m", WEEK_START, WEEK_END, market="spot")
    assert usdm == fake_exchange.rows("BTCUSDT", "1m", WEEK_START, WEEK_END, market="usdm")
    assert len(spot) == len(usdm) == 10_080
    assert spot[0] != usdm[0], "the fake serves different rows per market: neither overwrote the other"

    status = json.loads(run("status", "--json").stdout)
    assert {(s["market"], s["symbol"], s["interval"], s["candles"]) for s in status} == {
        ("spot", "BTCUSDT", "1m", 10_080),
        ("usdm", "BTCUSDT", "1m", 10_080),
    }
    for market in ("spot", "usdm"):
        gaps = ("gaps", "--market", market, "-s", "BTCUSDT", "-i", "1m", "--end", str(WEEK_END), "--json")
        audit = json.loads(run(*gaps).stdout)
        assert audit == [
            {"series": f"{market} BTCUSDT 1m", "stored": True, "fetched": 0, "refilled": 0, "gaps": []}
        ]


def test_usdm_pages_are_the_cheapest_per_candle_and_stay_under_its_own_limit(
    run: Any, fake_exchange: FakeExchange
) -> None:
    result = run(
        "backfill",
        "--market",
        "usdm",
        "-s",
        "BTCUSDT,ETHUSDT",
        "-i",
        "1m",
        "--start",
        str(WEEK_START),
        "--end",
        str(WEEK_END),
        "--no-progress",
        "--source",
        "rest",
    )

    assert result.exit_code == 0, result.output
    pages = klines_requests(fake_exchange, "usdm")
    assert {p["limit"] for p in pages if p["startTime"] != p.get("endTime")} <= {"499", "1"}
    assert sum(1 for p in pages if p["limit"] == "499") == 2 * -(-10_080 // 499)
    assert fake_exchange.total_weight_429s == 0
    usage = fake_exchange.usage("usdm")
    assert max(max(u.by_minute.values()) for u in usage.values()) <= 2_400
    assert not klines_requests(fake_exchange, "spot"), "USD-M weight was never asked of the spot API"


def test_coinm_asks_at_most_200_days_at_a_time_and_stores_the_whole_span(
    run: Any, fake_exchange: FakeExchange
) -> None:
    start, end = 1_640_995_200_000, 1_704_067_200_000  # 2022-01-01 .. 2024-01-01: 730 days of 1d

    result = run(
        "backfill",
        "--market",
        "coinm",
        "-s",
        "BTCUSD_PERP",
        "-i",
        "1d",
        "--start",
        str(start),
        "--end",
        str(end),
        "--no-progress",
        "--source",
        "rest",
    )

    assert result.exit_code == 0, result.output
    for page in klines_requests(fake_exchange, "coinm"):
        assert int(page["endTime"]) - int(page["startTime"]) < 200 * DAY
    rows = stored(run.url, COINM, "BTCUSD_PERP", "1d", start, end)
    assert rows == fake_exchange.rows("BTCUSD_PERP", "1d", start, end, market="coinm")
    assert len(rows) == 730


def test_an_interval_a_market_lacks_is_bad_input_before_any_request(
    run: Any, fake_exchange: FakeExchange
) -> None:
    result = run(
        "backfill", "--market", "usdm", "-s", "BTCUSDT", "-i", "1s", "--start", "1d", "--no-progress"
    )

    assert result.exit_code == 2
    assert "USD-M futures has no 1s klines" in result.stderr
    assert not fake_exchange.log


def test_extract_from_a_config_of_two_markets_keeps_each_up_to_date(
    run: Any, fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    config = tmp_path / "markets.toml"
    config.write_text(
        '[[series]]\nmarket = "spot"\nsymbols = ["ETHUSDT"]\nintervals = ["1h"]\n\n'
        '[[series]]\nmarket = "coinm"\nsymbols = ["ETHUSD_PERP"]\nintervals = ["1h"]\n'
    )

    result = run("--config", str(config), "extract", "--lookback", "2d")

    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("", "")
    lines = {(s["market"], s["symbol"]): s["candles"] for s in json.loads(run("status", "--json").stdout)}
    assert set(lines) == {("spot", "ETHUSDT"), ("coinm", "ETHUSD_PERP")}
    assert all(45 <= candles <= 48 for candles in lines.values())
