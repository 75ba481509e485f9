"""F1-F4: what the fake exchange itself costs, so B1 and B10 measure the extractor and not the fake.

F1 builds one month of 1m as a zip in this process (cold: generate, CSV, deflate, sha256); F2 serves it
again from the cache over HTTP; F3 downloads one year of 1m (12 monthly zips, warm) from the fake in its
own process; F4 pages one month of 1m through REST (warm). Run alone with ``python -m tests.bench
bench_fake``.
"""

from __future__ import annotations

import statistics
import time

from tests.bench.bench_pipeline import NO_PROXY_OPENER, fake_exchange
from tests.bench.common import BenchRow, format_table
from tests.fake.archive import ArchiveHost
from tests.fake.server import FakeExchange, ManualClock

NOW = 1739145600.0  # 2025-02-10: every month of 2024 is published
MONTHS_2024 = [f"2024-{month:02d}" for month in range(1, 13)]
CANDLES_2024 = 366 * 1440
JAN_2024 = 1_704_067_200_000
RUNS = 5


def _month_path(exchange: FakeExchange, month: str) -> str:
    return exchange.archive_path("spot", "BTCUSDT", "1m", month)


def f1_cold_build() -> BenchRow:
    seconds = []
    size = 0
    for _ in range(RUNS):
        exchange = FakeExchange(clock=ManualClock(NOW))
        host: ArchiveHost = exchange.archive
        file = host.parse(_month_path(exchange, "2024-01"))
        assert file is not None
        began = time.perf_counter()
        size = len(host.built(file).zip)
        seconds.append(time.perf_counter() - began)
    return BenchRow(
        "F1 fake: build one month of 1m as a zip (cold, median of 5)",
        statistics.median(seconds) * 1000,
        "ms",
        "<= 1,000",
        f"44,640 rows, {size / 1e6:.1f} MB",
        statistics.median(seconds) <= 1.0,
    )


def f2_cached_serve() -> BenchRow:
    with FakeExchange(clock=ManualClock(NOW)) as exchange:
        url = exchange.url + _month_path(exchange, "2024-01")
        NO_PROXY_OPENER.open(url, timeout=60).read()
        seconds = []
        for _ in range(RUNS):
            began = time.perf_counter()
            NO_PROXY_OPENER.open(url, timeout=60).read()
            seconds.append(time.perf_counter() - began)
    return BenchRow(
        "F2 fake: serve that zip again from the cache (median of 5)",
        statistics.median(seconds) * 1000,
        "ms",
        "<= 50",
        "",
        statistics.median(seconds) <= 0.05,
    )


def f3_f4_serving() -> list[BenchRow]:
    with fake_exchange() as fake:
        paths = [f"/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-{month}.zip" for month in MONTHS_2024]
        began = time.perf_counter()
        for path in paths:
            NO_PROXY_OPENER.open(fake.url + path, timeout=120).read()
        cold = time.perf_counter() - began
        began = time.perf_counter()
        for path in paths:
            NO_PROXY_OPENER.open(fake.url + path + ".CHECKSUM", timeout=60).read()
            NO_PROXY_OPENER.open(fake.url + path, timeout=60).read()
        warm = time.perf_counter() - began
        rest = []
        for _ in range(2):
            began = time.perf_counter()
            for page in range(45):  # 44,640 rows in pages of 1000
                start = JAN_2024 + page * 1000 * 60_000
                query = f"symbol=BTCUSDT&interval=1m&startTime={start}&limit=1000"
                NO_PROXY_OPENER.open(f"{fake.url}/api/v3/klines?{query}", timeout=60).read()
            rest.append(time.perf_counter() - began)
        built = fake.stats()["archive"]
    return [
        BenchRow(
            "F3 fake: one year of 1m as 12 monthly zips + CHECKSUMs (warm, one client)",
            CANDLES_2024 / warm,
            "klines/s",
            ">= 1,000,000",
            f"cold {CANDLES_2024 / cold:,.0f}/s ({cold:.1f} s for {built['built']} builds)",
            CANDLES_2024 / warm >= 1_000_000,
        ),
        BenchRow(
            "F4 fake: one month of 1m through REST, pages of 1000 (warm, one client)",
            44_640 / rest[1],
            "klines/s",
            ">= 100,000",
            f"cold {44_640 / rest[0]:,.0f}/s",
            44_640 / rest[1] >= 100_000,
        ),
    ]


def rows() -> list[BenchRow]:
    return [f1_cold_build(), f2_cached_serve(), *f3_f4_serving()]


if __name__ == "__main__":
    print(format_table(rows()))
