"""A fake Binance on loopback (spot, USD-M and COIN-M REST, the data.binance.vision archive), with faults.

Tests, ``make smoke`` and ``make bench`` prove the extractor against it, so it keeps Binance's paging,
weight, 429/418 and error-body semantics exactly, and it is fast enough to serve 50,000 klines/s. The
package ``tests/fake/`` holds it; this module is what other tests import, and the pytest plugin.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fake.archive import CACHE_BYTES, DAILY_DELAY, MONTHLY_DELAY
from tests.fake.faults import ARCHIVE_FAULT_KINDS, BAD_ROW_KINDS, ArchiveFaults, Faults
from tests.fake.markets import (
    DEFAULT_COINM_SYMBOLS,
    DEFAULT_SYMBOLS,
    DEFAULT_USDM_SYMBOLS,
    MARKETS,
    synthetic_symbols,
)
from tests.fake.replies import NO_RESPONSE
from tests.fake.series import SymbolSpec
from tests.fake.server import STATS_PATH, FakeExchange, LoggedRequest, ManualClock
from tests.fake.weight import AddressUsage

__all__ = [
    "ARCHIVE_FAULT_KINDS",
    "BAD_ROW_KINDS",
    "DEFAULT_COINM_SYMBOLS",
    "DEFAULT_SYMBOLS",
    "DEFAULT_USDM_SYMBOLS",
    "MARKETS",
    "NO_RESPONSE",
    "STATS_PATH",
    "AddressUsage",
    "ArchiveFaults",
    "FakeExchange",
    "Faults",
    "LoggedRequest",
    "ManualClock",
    "SymbolSpec",
    "fake_exchange",
    "fake_exchanges",
    "synthetic_symbols",
]


@pytest.fixture
def fake_exchange() -> Iterator[FakeExchange]:
    """A started FakeExchange with the default symbols and the real clock, stopped after the test."""
    exchange = FakeExchange().start()
    try:
        yield exchange
    finally:
        exchange.stop()


@pytest.fixture
def http() -> Iterator[Any]:
    """A requests session for talking to a fake directly, closed after the test."""
    import requests

    with requests.Session() as session:
        yield session


@pytest.fixture
def fake_exchanges() -> Iterator[Callable[..., FakeExchange]]:
    """A factory of started FakeExchanges (options as the constructor's), all stopped after the test."""
    started: list[FakeExchange] = []

    def start(**options: Any) -> FakeExchange:
        exchange = FakeExchange(**options).start()
        started.append(exchange)
        return exchange

    try:
        yield start
    finally:
        for exchange in started:
            exchange.stop()


def main() -> None:
    """``python -m tests.fake_exchange``: serve on its own process (and core) until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weight-limit", type=int, default=6000, help="spot weight per IP a minute")
    parser.add_argument("--usdm-weight-limit", type=int, default=2400, help="USD-M weight per IP a minute")
    parser.add_argument("--coinm-weight-limit", type=int, default=2400, help="COIN-M weight per IP a minute")
    parser.add_argument(
        "--shared-ip", action="store_true", help="count every client address as one IP (one pool per market)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="SECONDS", help="delay of every REST answer"
    )
    parser.add_argument(
        "--archive-latency", type=float, default=0.0, metavar="SECONDS", help="delay of every archive file"
    )
    parser.add_argument("--archive-daily-delay", type=float, default=DAILY_DELAY, metavar="SECONDS")
    parser.add_argument("--archive-monthly-delay", type=float, default=MONTHLY_DELAY, metavar="SECONDS")
    parser.add_argument(
        "--archive-cache-mb", type=int, default=CACHE_BYTES >> 20, metavar="MB", help="built zips kept"
    )
    parser.add_argument(
        "--extra-symbols",
        type=int,
        default=0,
        metavar="N",
        help="serve N synthetic symbols more (spot, USD-M)",
    )
    args = parser.parse_args()
    extra = synthetic_symbols(args.extra_symbols)
    exchange = FakeExchange(
        symbols={**DEFAULT_SYMBOLS, **extra},
        usdm_symbols={**DEFAULT_USDM_SYMBOLS, **extra},
        weight_limit=args.weight_limit,
        usdm_weight_limit=args.usdm_weight_limit,
        coinm_weight_limit=args.coinm_weight_limit,
        shared_ip=args.shared_ip,
        round_trip=args.latency,
        archive_daily_delay=args.archive_daily_delay,
        archive_monthly_delay=args.archive_monthly_delay,
        archive_cache_bytes=args.archive_cache_mb << 20,
    )
    exchange.archive_faults.latency = args.archive_latency
    with exchange:
        print(exchange.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
