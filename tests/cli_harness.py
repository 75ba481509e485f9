"""The CLI under CliRunner, bound to one fake exchange, one SQLite file and one state directory.

A pytest plugin (registered in ``conftest.py``) for the ``test_cli*`` modules: ``run`` against an exchange
on the real clock, ``frozen`` against one whose clock stands still until the test advances it. Nothing
comes from the developer's shell, and the archive is the fake's too, so the default ``--source auto``
never leaves loopback.
"""

from __future__ import annotations

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
from extractor.klines import Series, to_row
from extractor.markets import MARKETS
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange, ManualClock

KLINES = "/api/v3/klines"
DAY = 86_400_000
_OUR_PREFIXES = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "LOG_", "BINANCE_", "DATABASE_URL")


def ms(text: str) -> int:
    """A UTC ISO time as epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


class Extractor:
    """``binance-extractor`` bound to one exchange (REST and archive), one SQLite file, one state directory.

    One attempt per request and no backoff, so the failure paths answer at once.
    """

    def __init__(self, exchange: FakeExchange, folder: Path) -> None:
        self.exchange = exchange
        self.folder = folder
        self.db_path = folder / "klines.db"
        self.db_url = f"sqlite:///{self.db_path}"
        self.env: dict[str, str | None] = {
            name: None for name in os.environ if name.startswith(_OUR_PREFIXES)
        }
        self.env.update(
            EXTRACTOR_STATE_DIR=str(folder / "state"),
            DATABASE_URL=self.db_url,
            BINANCE_API_URL=exchange.url,
            BINANCE_ARCHIVE_URL=exchange.archive_url,
            EXTRACTOR_ATTEMPTS="1",
            EXTRACTOR_BACKOFF="0",
        )

    def __call__(self, command: str, *more_args: str, **env: str | None) -> Result:
        """Run ``binance-extractor <command> <more_args>``, with ``env`` over the test's environment."""
        args = [*shlex.split(command), *more_args]
        return CliRunner().invoke(cli, args, env={**self.env, **env}, prog_name="binance-extractor")

    def klines_requests(self) -> int:
        return self.exchange.request_counts[KLINES]

    def archive_requests(self) -> int:
        return sum(self.exchange.archive_counts.values())

    def requests(self) -> int:
        return sum(self.exchange.request_counts.values())

    def stored(
        self, symbol: str, interval: str, start: int, end: int, market: str = "spot"
    ) -> list[list[Any]]:
        """Stored candles in the exchange's wire format."""
        series = Series(MARKETS[market], symbol, Interval.parse(interval))
        with open_store(self.db_url) as store:
            return [to_row(k) for k in store.read(series, start, end)]

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


@pytest.fixture
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
def run(fake_exchange: FakeExchange, tmp_path: Path, restore_loggers: None) -> Extractor:
    return Extractor(fake_exchange, tmp_path)


# 2024-01-10T12:00:30Z: half a minute into a candle, so a few ms of drift never closes one more.
FROZEN_AT = ms("2024-01-10T12:00:30") / 1000


@pytest.fixture
def frozen_clock() -> ManualClock:
    return ManualClock(FROZEN_AT)


@pytest.fixture
def frozen(frozen_clock: ManualClock, tmp_path: Path, restore_loggers: None) -> Iterator[Extractor]:
    """The CLI against an exchange whose clock stands still until the test advances it."""
    with FakeExchange(clock=frozen_clock) as exchange:
        yield Extractor(exchange, tmp_path)
