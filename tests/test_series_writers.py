"""One series, one writer at a time (issue 15 point 3): an extract skips a series another run is
writing and says so; a backfill waits for it, says so once, and then stores it whole."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from extractor.cli import cli
from extractor.lifecycle import RunStop
from extractor.pipeline import commands
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange
from tests.pipeline_helpers import rest_source, series, stored_rows

START, END = 1_704_067_200_000, 1_704_067_200_000 + 2 * 86_400_000


def test_extract_skips_a_series_another_run_is_writing_and_stores_the_others(
    tmp_path: Path, fake_exchange: FakeExchange
) -> None:
    url = f"sqlite:///{tmp_path / 'klines.db'}"
    env = {
        "EXTRACTOR_STATE_DIR": str(tmp_path / "state"),
        "DATABASE_URL": url,
        "BINANCE_API_URL": fake_exchange.url,
        "BINANCE_ARCHIVE_URL": fake_exchange.archive_url,  # extract reads no archive; never the real one
    }

    with open_store(url) as other_run, other_run.lock_series([series("ETHUSDT")]):
        result = CliRunner().invoke(
            cli, ["-v", "extract", "-s", "ETHUSDT,BNBUSDT", "-i", "1m", "--lookback", "2h"], env=env
        )

    assert result.exit_code == 0, result.output
    assert "spot ETHUSDT 1m: another run is writing it; skipped" in result.stderr
    with open_store(url) as store:
        assert store.last_open_time(series("ETHUSDT")) is None
        assert store.last_open_time(series("BNBUSDT")) is not None
    asked = {r.params["symbol"] for r in fake_exchange.log if r.path.endswith("/klines")}
    assert asked == {"BNBUSDT"}


class Releasing(RunStop):
    """The backfill's stop, whose first wait for a busy series ends the other run's hold."""

    def __init__(self, release: list[object]) -> None:
        super().__init__()
        self.release = release
        self.waits = 0

    def sleep(self, seconds: float) -> None:
        self.waits += 1
        while self.release:
            self.release.pop().__exit__(None, None, None)  # type: ignore[attr-defined]


def test_backfill_waits_for_a_series_another_run_is_writing_then_stores_it(
    tmp_path: Path, fake_exchange: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'klines.db'}"
    other_run = open_store(url)
    hold = other_run.lock_series([series()])
    hold.__enter__()
    stop = Releasing([hold])
    source = rest_source(fake_exchange.url)

    with caplog.at_level(logging.WARNING, "extractor"), open_store(url) as store:
        result = commands.backfill(source, source, store, [series()], START, END, stop=stop, concurrency=4)
    other_run.close()

    assert stop.waits == 1
    assert [r.getMessage() for r in caplog.records] == [
        "waiting for another run to finish writing spot BTCUSDT 1m"
    ]
    assert result.written == 2_880
    assert stored_rows(url, series(), START, END) == fake_exchange.rows("BTCUSDT", "1m", START, END)
