"""Storage throughput: REST-page upserts and the bulk path of each SQL backend, klines per second.

Not part of ``make bench`` yet (its MODULES list decides); run alone with
``python -m tests.bench.bench_storage [sqlite] [mysql] [postgres]``. Candles are built before the clock
starts, so only the store is timed: 100 ``write()`` calls of 1,000 rows (REST pages), and ``write_all``
of one year of 1m (525,600 rows) in daily-file batches of 1,440, into a fresh database each time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from extractor.intervals import MINUTE, Interval
from extractor.klines import Kline, Series
from extractor.markets import Market
from extractor.storage import open_store
from tests.bench.common import BenchRow, format_table
from tests.services import (
    DEFAULT_MYSQL_URL,
    DEFAULT_POSTGRES_URL,
    MySqlDatabases,
    PostgresDatabases,
)

JAN_2022 = 1_640_995_200_000
YEAR = 525_600
PAGE = 1_000
PAGES = 100
DAY_BATCH = 1_440
SERIES = Series(Market.parse("spot"), "BTCUSDT", Interval.parse("1m"))
TARGETS = {  # issue 14 (PostgreSQL) and issue 13 (the archive's bulk path)
    ("postgres", "pages"): 50_000,
    ("postgres", "bulk"): 150_000,
    ("sqlite", "bulk"): 200_000,
    ("mysql", "bulk"): 100_000,
}


def year_of_candles() -> list[Kline]:
    """Binance-like text: 8 places, prices that move, volumes of several widths."""
    klines = []
    for i in range(YEAR):
        open_time = JAN_2022 + i * MINUTE
        price = 40_000 + (i * 7919 % 20_000) / 100
        low, high = f"{price:.8f}", f"{price + 12.5:.8f}"
        klines.append(
            Kline(
                "spot", "BTCUSDT", "1m", open_time, low, high, low, high, f"{i % 977 + 0.12345678:.8f}",
                open_time + MINUTE - 1, f"{(i % 977) * price:.8f}", i % 5_000, "0.00000000", "0.00000000",
            )
        )  # fmt: skip
    return klines


@contextmanager
def fresh(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{Path(folder) / 'bench.db'}"
        return
    databases = (
        MySqlDatabases(os.environ.get("MYSQL_URL", DEFAULT_MYSQL_URL))
        if backend == "mysql"
        else PostgresDatabases(os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL))
    )
    url = databases.create()
    try:
        yield url
    finally:
        databases.drop(url)


def timed(backend: str, run: Callable[[str], int]) -> float:
    with fresh(backend) as url:
        began = time.perf_counter()
        written = run(url)
        return written / (time.perf_counter() - began)


def pages(klines: list[Kline]) -> Callable[[str], int]:
    def run(url: str) -> int:
        with open_store(url) as store:
            return sum(store.write(klines[i : i + PAGE]) for i in range(0, PAGE * PAGES, PAGE))

    return run


def bulk(klines: list[Kline]) -> Callable[[str], int]:
    def run(url: str) -> int:
        batches = (klines[i : i + DAY_BATCH] for i in range(0, len(klines), DAY_BATCH))
        with open_store(url) as store:
            written = store.write_all(batches)
            assert store.count(SERIES, 0, 2**62) == len(klines)
            return written

    return run


def rows(backends: tuple[str, ...] = ("sqlite", "mysql", "postgres")) -> list[BenchRow]:
    klines = year_of_candles()
    out = []
    for backend in backends:
        for kind, job in (("pages", pages(klines)), ("bulk", bulk(klines))):
            rate = max(timed(backend, job) for _ in range(3))
            target = TARGETS.get((backend, kind))
            what = f"{PAGES} writes of {PAGE:,}" if kind == "pages" else f"write_all of {YEAR:,}"
            out.append(
                BenchRow(
                    f"storage {backend} {what} (best of 3)",
                    rate,
                    "klines/s",
                    f">= {target:,}" if target else "",
                    ok=None if target is None else rate >= target,
                )
            )
    return out


if __name__ == "__main__":
    print(format_table(rows(tuple(sys.argv[1:]) or ("sqlite", "mysql", "postgres"))))
