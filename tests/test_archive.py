"""The archive fast path (issue 13) through the CLI: ``--source auto`` and ``archive`` store exactly what
``--source rest`` stores, from the fake serving both from one generator.

Ranges cross months and days, 2024 into 2025 (spot files switch to microseconds), a listing mid-month,
an outage, ``1s``, ``1M`` (``1mo`` files), ``3d`` (monthly files only) and futures files with a header
row. The fake runs on the real clock unless a test says otherwise: every range here closed long ago, so
which files are published is fixed. Faults, kills and resumes are in ``test_archive_faults.py``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from extractor.cli import cli
from extractor.intervals import Interval
from extractor.klines import Series, to_row
from extractor.markets import Market
from extractor.storage import open_store
from extractor.when import parse_when
from tests.fake.markets import default_symbols
from tests.fake_exchange import FakeExchange, ManualClock, SymbolSpec
from tests.services import BACKENDS

SPOT_SYMBOL = {"spot": "BTCUSDT", "usdm": "BTCUSDT", "coinm": "BTCUSD_PERP"}


def ms(when: str) -> int:
    return parse_when(when, now_ms=0)


@dataclass
class Extractor:
    """The CLI against one fake, with a SQLite file (or ``db_url``) per database name."""

    fake: FakeExchange
    tmp: Path
    urls: dict[str, str] = field(default_factory=dict)

    def url(self, db: str) -> str:
        return self.urls.setdefault(db, f"sqlite:///{self.tmp / f'{db}.db'}")

    def env(self, db: str) -> dict[str, str]:
        return {
            "EXTRACTOR_STATE_DIR": str(self.tmp / f"state-{db}"),
            "DATABASE_URL": self.url(db),
            "BINANCE_API_URL": self.fake.url,
            "BINANCE_ARCHIVE_URL": self.fake.archive_url,
            "LOG_LEVEL": "WARNING",
        }

    def backfill(
        self, market: str, symbol: str, interval: str, start: str, end: str, *, source: str, db: str = ""
    ) -> Result:
        args = ["backfill", "--market", market, "-s", symbol, "-i", interval, "--start", start, "--end", end]
        args += ["--source", source, "--no-progress"]
        return CliRunner().invoke(cli, args, env=self.env(db or source), catch_exceptions=False)

    def stored(self, db: str, series: Series, start: int, end: int) -> list[list[Any]]:
        with open_store(self.url(db)) as store:
            return [to_row(k) for k in store.read(series, start, end)]

    def gaps(self, db: str, series: Series, start: int, end: int) -> list[tuple[int, int]]:
        with open_store(self.url(db)) as store:
            return [(g.start, g.end) for g in store.exchange_gaps(series, start, end)]


@pytest.fixture
def extractor(fake_exchange: FakeExchange, tmp_path: Path) -> Extractor:
    return Extractor(fake_exchange, tmp_path)


def series_of(market: str, symbol: str, interval: str) -> Series:
    return Series(Market.parse(market), symbol, Interval.parse(interval))


def archive_files(fake: FakeExchange) -> Counter[str]:
    """Zips downloaded (not their CHECKSUMs), by file name."""
    return Counter({p.rsplit("/", 1)[1]: n for p, n in fake.archive_counts.items() if p.endswith(".zip")})


def klines_requests(fake: FakeExchange) -> list[dict[str, str]]:
    return [r.params for r in fake.log if r.path.endswith("/klines")]


def warnings(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if " WARNING " in line]


def assert_same_as_rest(
    run: Extractor, market: str, symbol: str, interval: str, start: str, end: str, source: str = "auto"
) -> Result:
    """Backfill the range through REST and through ``source`` into two databases: the same rows, field
    for field, the same exchange gaps, and both what the fake serves. Returns the ``source`` run."""
    rest = run.backfill(market, symbol, interval, start, end, source="rest")
    assert rest.exit_code == 0, rest.output
    run.fake.reset_counts()
    fast = run.backfill(market, symbol, interval, start, end, source=source)
    assert fast.exit_code == 0, fast.output
    series = series_of(market, symbol, interval)
    lo, hi = ms(start), ms(end)
    expected = run.fake.rows(symbol, interval, lo, hi, market=market)
    assert run.stored("rest", series, lo, hi) == expected
    assert run.stored(source, series, lo, hi) == expected
    assert run.gaps(source, series, lo, hi) == run.gaps("rest", series, lo, hi)
    return fast


# -- exactness ----------------------------------------------------------------------------------------


def test_auto_across_months_and_days_into_2025_is_rest_exactly_from_5_files_and_no_page(
    extractor: Extractor,
) -> None:
    result = assert_same_as_rest(extractor, "spot", "BTCUSDT", "1m", "2024-12-30", "2025-02-03")

    days = [f"BTCUSDT-1m-2024-12-{d}.zip" for d in range(30, 32)] + [
        "BTCUSDT-1m-2025-02-01.zip",
        "BTCUSDT-1m-2025-02-02.zip",
    ]
    assert archive_files(extractor.fake) == Counter({name: 1 for name in [*days, "BTCUSDT-1m-2025-01.zip"]})
    assert [p["limit"] for p in klines_requests(extractor.fake)] == ["1"]  # the listing probe alone
    assert result.stdout == (
        "spot BTCUSDT 1m 2024-12-30T00:00:00Z..2025-02-03T00:00:00Z: 50,400 candles written, "
        "50,400 from 5 archive files, 0 requests\n"
    )
    assert warnings(result) == []


def test_archive_alone_across_the_microsecond_switch_is_rest_exactly(extractor: Extractor) -> None:
    """2024-12-31 in milliseconds, January 2025 in microseconds, REST for the part-days at each end."""
    result = assert_same_as_rest(
        extractor, "spot", "ETHUSDT", "5m", "2024-12-30T07:35", "2025-02-01T12:00", source="archive"
    )
    assert set(archive_files(extractor.fake)) == {
        "ETHUSDT-5m-2024-12-31.zip",
        "ETHUSDT-5m-2025-01.zip",
    }
    asked = [(int(p["startTime"]), int(p["endTime"])) for p in klines_requests(extractor.fake)]
    assert asked and all(lo < ms("2024-12-31") or lo >= ms("2025-02-01") for lo, _ in asked)
    assert "from 2 archive files" in result.stdout


def test_a_listing_mid_month_is_rest_exactly_and_the_time_before_it_a_recorded_gap(
    fake_exchanges: Any, tmp_path: Path
) -> None:
    listed = ms("2024-11-13T08:00")
    fake = fake_exchanges(symbols={**default_symbols("spot"), "NEWUSDT": SymbolSpec(listed)})
    run = Extractor(fake, tmp_path)

    result = assert_same_as_rest(run, "spot", "NEWUSDT", "15m", "2024-11-01", "2025-01-02")

    series = series_of("spot", "NEWUSDT", "15m")
    assert run.gaps("auto", series, ms("2024-11-01"), ms("2025-01-02")) == [(ms("2024-11-01"), listed)]
    assert run.stored("auto", series, 0, ms("2025-01-02"))[0][0] == listed
    assert set(archive_files(fake)) == {
        "NEWUSDT-15m-2024-11.zip",
        "NEWUSDT-15m-2024-12.zip",
        "NEWUSDT-15m-2025-01-01.zip",
    }
    assert "absent on the exchange" in result.stdout


def test_a_range_years_before_the_listing_asks_for_no_file_that_cannot_exist(
    fake_exchanges: Any, tmp_path: Path
) -> None:
    """--start 2017 for a symbol listed in 2024: the probe answers first, so no month before the listing
    is asked of the archive (each would be a 404 and a warning)."""
    listed = ms("2024-11-13T08:00")
    fake = fake_exchanges(symbols={**default_symbols("spot"), "NEWUSDT": SymbolSpec(listed)})
    run = Extractor(fake, tmp_path)

    result = run.backfill("spot", "NEWUSDT", "1d", "2017-01-01", "2025-01-01", source="auto")

    assert result.exit_code == 0, result.output
    assert warnings(result) == []
    asked = [p for p in fake.archive_counts if "/NEWUSDT-1d-" in p]
    assert asked and all(p.rsplit("-1d-", 1)[1] >= "2024-11-13" for p in asked), sorted(asked)
    assert not [r for r in fake.log if r.status == 404]
    series = series_of("spot", "NEWUSDT", "1d")
    assert run.stored("auto", series, 0, ms("2025-01-01")) == fake.rows(
        "NEWUSDT", "1d", ms("2017-01-01"), ms("2025-01-01")
    )


def test_the_range_before_candles_stored_from_the_listing_on_is_recorded_once_and_never_asked_again(
    fake_exchanges: Any, tmp_path: Path
) -> None:
    """A first backfill stored from the listing on; one from years before finds nothing there (the
    probe and a confirmation), records it as absent, and a rerun sends no klines request at all."""
    listed = ms("2024-11-13")
    fake = fake_exchanges(symbols={**default_symbols("spot"), "NEWUSDT": SymbolSpec(listed)})
    run = Extractor(fake, tmp_path)
    first = run.backfill("spot", "NEWUSDT", "1h", "2024-11-13", "2024-12-01", source="rest", db="one")
    assert first.exit_code == 0, first.output

    fake.reset_counts()
    earlier = run.backfill("spot", "NEWUSDT", "1h", "2020-01-01", "2024-12-01", source="rest", db="one")
    assert earlier.exit_code == 0, earlier.output
    probes = [p for p in klines_requests(fake) if p.get("limit") == "1"]
    assert len(probes) == 2  # the probe and its confirmation (pages may start beside the probe)
    series = series_of("spot", "NEWUSDT", "1h")
    assert run.gaps("one", series, 0, listed) == [(ms("2020-01-01"), listed)]

    fake.reset_counts()
    again = run.backfill("spot", "NEWUSDT", "1h", "2020-01-01", "2024-12-01", source="rest", db="one")
    assert again.exit_code == 0, again.output
    assert klines_requests(fake) == []
    assert run.stored("one", series, 0, ms("2024-12-01")) == fake.rows(
        "NEWUSDT", "1h", ms("2020-01-01"), ms("2024-12-01")
    )


def test_an_outage_inside_a_daily_file_is_recorded_in_exchange_gaps_as_rest_records_it(
    extractor: Extractor,
) -> None:
    """BTCUSDT spot has no candles 2023-03-24 12:40-14:00 on the fake."""
    assert_same_as_rest(extractor, "spot", "BTCUSDT", "1m", "2023-03-23", "2023-03-26")

    series = series_of("spot", "BTCUSDT", "1m")
    outage = (ms("2023-03-24T12:40"), ms("2023-03-24T14:00"))
    assert extractor.gaps("auto", series, ms("2023-03-23"), ms("2023-03-26")) == [outage]
    assert set(archive_files(extractor.fake)) == {f"BTCUSDT-1m-2023-03-{d}.zip" for d in (23, 24, 25)}


def test_an_outage_inside_a_monthly_file_too(extractor: Extractor) -> None:
    assert_same_as_rest(extractor, "spot", "BTCUSDT", "5m", "2023-03-01", "2023-04-01", source="archive")

    series = series_of("spot", "BTCUSDT", "5m")
    assert extractor.gaps("archive", series, 0, ms("2023-04-01")) == [
        (ms("2023-03-24T12:40"), ms("2023-03-24T14:00"))
    ]
    assert set(archive_files(extractor.fake)) == {"BTCUSDT-5m-2023-03.zip"}


def test_1s_comes_from_daily_files_in_microseconds(extractor: Extractor) -> None:
    result = assert_same_as_rest(extractor, "spot", "BTCUSDT", "1s", "2024-12-31T23:00", "2025-01-02")

    assert set(archive_files(extractor.fake)) == {"BTCUSDT-1s-2025-01-01.zip"}
    assert "90,000 candles written, 86,400 from 1 archive file" in result.stdout


def test_1M_comes_from_1mo_files(extractor: Extractor) -> None:
    result = assert_same_as_rest(extractor, "spot", "BTCUSDT", "1M", "2024-06-01", "2025-02-01")

    names = {f"BTCUSDT-1mo-2024-{m:02d}.zip" for m in range(6, 13)} | {"BTCUSDT-1mo-2025-01.zip"}
    assert set(archive_files(extractor.fake)) == names
    assert all("/1mo/" in path for path in extractor.fake.archive_counts)
    assert "8 candles written, 8 from 8 archive files, 0 requests" in result.stdout


def test_3d_has_monthly_files_only_and_rest_covers_a_month_begun_part_way(extractor: Extractor) -> None:
    result = assert_same_as_rest(extractor, "spot", "ETHUSDT", "3d", "2024-10-10", "2025-01-20")

    assert set(archive_files(extractor.fake)) == {"ETHUSDT-3d-2024-11.zip", "ETHUSDT-3d-2024-12.zip"}
    assert not any("/daily/" in path for path in extractor.fake.archive_counts)
    assert "from 2 archive files" in result.stdout


@pytest.mark.parametrize(
    ("market", "symbol", "start", "end", "files"),
    [
        # 2022-04 files have no header row, 2022-05 on have one (the fake's cut-over, as Binance's)
        (
            "usdm",
            "BTCUSDT",
            "2022-04-29",
            "2022-06-02T06:00",
            ["2022-04-29", "2022-04-30", "2022-05", "2022-06-01"],
        ),
        (
            "coinm",
            "BTCUSD_PERP",
            "2024-12-30",
            "2025-02-02",
            ["2024-12-30", "2024-12-31", "2025-01", "2025-02-01"],
        ),
    ],
)
def test_futures_files_with_and_without_a_header_row_are_rest_exactly(
    extractor: Extractor, market: str, symbol: str, start: str, end: str, files: list[str]
) -> None:
    result = assert_same_as_rest(extractor, market, symbol, "1h", start, end, source="archive")

    assert set(archive_files(extractor.fake)) == {f"{symbol}-1h-{period}.zip" for period in files}
    assert all(path.startswith(f"/data/futures/{market[0]}m/") for path in extractor.fake.archive_counts)
    assert f"from {len(files)} archive files" in result.stdout
    assert warnings(result) == []


# -- reruns, summary, progress -------------------------------------------------------------------------


def test_a_rerun_downloads_nothing_and_asks_for_no_candle(extractor: Extractor) -> None:
    first = extractor.backfill("spot", "BTCUSDT", "1m", "2024-12-28", "2025-02-02T12:00", source="auto")
    assert first.exit_code == 0, first.output
    extractor.fake.reset_counts()

    again = extractor.backfill("spot", "BTCUSDT", "1m", "2024-12-28", "2025-02-02T12:00", source="auto")

    assert again.exit_code == 0, again.output
    assert extractor.fake.archive_counts == Counter()
    assert klines_requests(extractor.fake) == []
    assert "0 candles written, 52,560 already stored, 0 requests" in again.stdout


def test_progress_counts_files_and_candles(extractor: Extractor) -> None:
    args = ["backfill", "-s", "ETHUSDT", "-i", "1h", "--start", "2024-11-29", "--end", "2025-01-01T06:00"]
    result = CliRunner().invoke(cli, [*args, "--progress"], env=extractor.env("auto"), catch_exceptions=False)

    assert result.exit_code == 0, result.output
    bars = re.findall(r"(\d+)/(\d+) candles .* files (\d+)/(\d+)", result.stderr.replace("\r", "\n"))
    assert bars, result.stderr
    assert bars[-1] == ("798", "798", "3", "3")  # 2024-11-29, -30 and December (+6 h of REST)


def test_the_fake_clock_decides_what_is_published_and_today_comes_from_rest(
    fake_exchanges: Any, tmp_path: Path
) -> None:
    """At 2025-02-10 00:00:30 the daily file of 02-09 is not out yet, nor is the forming candle closed."""
    clock = ManualClock(ms("2025-02-10T00:00:30") / 1000)
    run = Extractor(fake_exchanges(clock=clock), tmp_path)

    result = run.backfill("spot", "BTCUSDT", "1h", "2025-01-30", "2025-02-11", source="auto")

    assert result.exit_code == 0, result.output
    series = series_of("spot", "BTCUSDT", "1h")
    assert run.stored("auto", series, 0, ms("2025-02-11")) == run.fake.rows(
        "BTCUSDT", "1h", ms("2025-01-30"), ms("2025-02-10")
    )
    used = set(archive_files(run.fake))
    assert "BTCUSDT-1h-2025-02-08.zip" in used and "BTCUSDT-1h-2025-02-09.zip" not in used
    asked = {int(p["startTime"]) for p in klines_requests(run.fake)}
    assert ms("2025-02-09") in asked
    assert "264 candles written, 240 from 10 archive files, 1 request" in result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_stores_the_archive_as_rest_serves_it(
    backend: str, request: pytest.FixtureRequest, extractor: Extractor
) -> None:
    """SQLite's rows are REST's exactly (above); each server's are the fake's rows, field for field."""
    if backend != "sqlite":
        fixture = {"mysql": "fresh_mysql_url", "postgres": "fresh_postgres_url", "mongo": "fresh_mongo_url"}
        extractor.urls["auto"] = str(request.getfixturevalue(fixture[backend]))

    result = extractor.backfill("spot", "BTCUSDT", "5m", "2024-12-30T12:00", "2025-02-01", source="auto")

    assert result.exit_code == 0, result.output
    lo, hi = ms("2024-12-30T12:00"), ms("2025-02-01")
    expected = extractor.fake.rows("BTCUSDT", "5m", lo, hi)
    assert extractor.stored("auto", series_of("spot", "BTCUSDT", "5m"), lo, hi) == expected
    assert result.stdout == (
        "spot BTCUSDT 5m 2024-12-30T12:00:00Z..2025-02-01T00:00:00Z: 9,360 candles written, "
        "9,216 from 2 archive files, 1 request\n"
    )
