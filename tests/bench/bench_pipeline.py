"""B1-B6, B8 and B9: the installed command as a user runs it, against the fake exchange in its own process.

Every measurement is a fresh ``binance-extractor`` process timed from spawn to exit, with its bytecode
cached as ``pip install`` leaves it; the fake serves from another process (so it has the other core) on
loopback, and peers run against the same fake. Run alone with ``python -m tests.bench bench_pipeline``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.bench.common import BenchRow, format_table
from tests.services import (
    DEFAULT_MYSQL_URL,
    DEFAULT_POSTGRES_URL,
    MongoServer,
    MySqlDatabases,
    PostgresDatabases,
    unique_name,
)

MINUTE_MS = 60_000
JAN_2022 = 1_640_995_200_000
JAN_2024 = 1_704_067_200_000
DAY_OF_1M = 1_440
ONE_MONTH = 31 * DAY_OF_1M  # 44,640: 2024-01-01 .. 2024-02-01
TWO_MONTHS = 60 * DAY_OF_1M  # 86,400: 2024-01-01 .. 2024-03-01 (2024 is a leap year)
THREE_MONTHS = 91 * DAY_OF_1M  # 131,040: 2024-01-01 .. 2024-04-01
ONE_YEAR = 365 * DAY_OF_1M  # 525,600: 2022-01-01 .. 2023-01-01 (BTCUSDT's fake outage is in 2023)
RUNS = 3
EXTRACTOR = Path(sys.executable).with_name("binance-extractor")
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
HEAVY_MODULES = ("sqlalchemy", "pymongo", "pymysql", "requests")

PEER_SCRIPT = """
import sys
from binance.client import Client

client = Client(ping=False)
client.API_URL = sys.argv[1] + "/api"
rows = client.get_historical_klines("BTCUSDT", "1m", int(sys.argv[2]), int(sys.argv[3]))
print(len(rows))
"""
"""python-binance 1.0.x as its README shows it; ``ping=False`` so nothing is asked of api.binance.com."""

IMPORT_CHECK = f"""
import json, sys
import extractor.cli
print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))
"""


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every measured process: no settings of ours leak in, and bytecode is cached.

    Proxies point at a closed port with loopback exempt, so a request meant for anywhere but the fake fails.
    """
    ours = ("DATABASE_URL", "BINANCE_", "EXTRACTOR_", "CIRCUIT_BREAKER_", "LOG_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(ours) and k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")
    }
    dead = "http://127.0.0.1:9"
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead)
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


class FakeProcess:
    """``python -m tests.fake_exchange`` in its own process; ``stats()`` reads what it has served."""

    def __init__(self, *flags: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_exchange", *flags],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.close()
            raise RuntimeError(f"the fake exchange did not start (printed {self.url!r})")

    def stats(self, *, log: bool = False) -> dict[str, Any]:
        with NO_PROXY_OPENER.open(f"{self.url}/fake/stats{'?log=1' if log else ''}", timeout=30) as answer:
            return dict(json.loads(answer.read()))

    def refusals(self) -> int:
        """429 and 418 answers so far."""
        statuses = self.stats()["statuses"]
        return int(statuses.get("429", 0)) + int(statuses.get("418", 0))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@contextmanager
def fake_exchange(*flags: str) -> Iterator[FakeProcess]:
    fake = FakeProcess(*flags)
    try:
        yield fake
    finally:
        fake.close()


@dataclass(frozen=True)
class Run:
    """One process: wall seconds from spawn to exit, its own peak RSS, and what it printed."""

    seconds: float
    peak_rss_mb: float
    stdout: str


MEASURE = """
import json, os, subprocess, sys, time
report, command = sys.argv[1], sys.argv[2:]
began = time.perf_counter()
child = subprocess.Popen(command)
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - began
with open(report, "w") as out:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Runs a command as the child of a small interpreter and reports its time and peak RSS. Linux keeps the
peak RSS of the address space a process had before ``exec``, and a child of the bench (which holds
hundreds of MB after the in-process rows) would report the bench's own peak as its own."""


def run_process(command: Sequence[str], env: dict[str, str]) -> Run:
    """Run ``command`` to the end, timed from spawn to exit; fails loudly unless it exits 0."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        report = Path(tmp) / "measured.json"
        process = subprocess.run(
            [sys.executable, "-c", MEASURE, str(report), *command],
            stdout=out,
            stderr=err,
            env=env,
            check=False,
        )
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        measured = json.loads(report.read_text()) if report.exists() else {}
    if process.returncode != 0 or not measured:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {stderr.strip()[-500:]}")
    return Run(float(measured["seconds"]), int(measured["maxrss_kib"]) / 1024, stdout)


def extractor(db_url: str, fake: FakeProcess, state_dir: Path, *command: str) -> Run:
    args = [str(EXTRACTOR), "--db", db_url, "--base-url", fake.url, *command]
    return run_process(args, child_env(EXTRACTOR_STATE_DIR=str(state_dir)))


def backfill_args(start: int, candles: int, market: str = "spot") -> list[str]:
    """BTCUSDT 1m from ``start`` (epoch ms) for ``candles`` minutes, through REST pages."""
    end = start + candles * MINUTE_MS
    return [
        "backfill",
        "--market",
        market,
        "--source",
        "rest",
        "-s",
        "BTCUSDT",
        "-i",
        "1m",
        "--start",
        str(start),
        "--end",
        str(end),
        "--no-progress",
    ]


def expect_written(run: Run, candles: int) -> Run:
    if f"{candles:,} candles written" not in run.stdout:
        raise RuntimeError(f"expected {candles:,} candles written, the run said: {run.stdout.strip()}")
    return run


def fresh_sqlite(work: Path) -> Path:
    """A database file no earlier run has touched."""
    return work / f"run-{next(_files)}.db"


_files = itertools.count()


def sqlite_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM klines").fetchone()[0])


def best_backfill_into_sqlite(fake: FakeProcess, work: Path, start: int, candles: int) -> float:
    """Best of RUNS fresh-file backfills, after one run that warms the fake's page cache."""
    times = []
    for attempt in range(RUNS + 1):
        db = fresh_sqlite(work)
        run = expect_written(
            extractor(f"sqlite:///{db}", fake, work / "state", *backfill_args(start, candles)), candles
        )
        if sqlite_count(db) != candles:
            raise RuntimeError(f"{db} holds {sqlite_count(db):,} klines, not {candles:,}")
        if attempt:
            times.append(run.seconds)
    return min(times)


# ---------------------------------------------------------------------------------------------- rows


def b1_sqlite(fake: FakeProcess, work: Path) -> BenchRow:
    seconds = best_backfill_into_sqlite(fake, work, JAN_2024, ONE_MONTH)
    ours = ONE_MONTH / seconds
    before = fake.stats()["requests"].get("/api/v3/klines", 0)
    end = JAN_2024 + ONE_MONTH * MINUTE_MS - 1  # python-binance's endTime is inclusive
    peer_run = run_process(
        [sys.executable, "-c", PEER_SCRIPT, fake.url, str(JAN_2024), str(end)], child_env()
    )
    if peer_run.stdout.strip() != str(ONE_MONTH):
        raise RuntimeError(f"python-binance returned {peer_run.stdout.strip()} klines, not {ONE_MONTH}")
    peer_requests = fake.stats()["requests"].get("/api/v3/klines", 0) - before
    peer = ONE_MONTH / peer_run.seconds
    return BenchRow(
        "B1 backfill 1 month 1m -> SQLite (best of 3, warm fake)",
        ours,
        "klines/s",
        ">= 50,000",
        f"python-binance {peer:,.0f}/s ({peer_requests} requests, {peer_run.seconds:.1f} s); "
        f"{ours / peer:.1f}x",
        ours >= 50_000,
    )


def _server_backfill(
    name: str, fake: FakeProcess, work: Path, databases: MySqlDatabases | PostgresDatabases, target: int
) -> BenchRow:
    """Best of RUNS backfills of one month into a fresh database of a server each."""
    try:
        times = []
        for _ in range(RUNS):
            url = databases.create()
            try:
                run = extractor(url, fake, work / "state", *backfill_args(JAN_2024, ONE_MONTH))
                times.append(expect_written(run, ONE_MONTH).seconds)
            finally:
                databases.drop(url)
    except Exception as exc:  # no server here: say so rather than fail the whole table
        return BenchRow(name, 0, "klines/s", f">= {target:,}", f"not measured: {exc}"[:100], False)
    rate = ONE_MONTH / min(times)
    return BenchRow(name, rate, "klines/s", f">= {target:,}", "REST pages, best of 3", rate >= target)


def b2_mariadb(fake: FakeProcess, work: Path) -> BenchRow:
    databases = MySqlDatabases(os.environ.get("MYSQL_URL", DEFAULT_MYSQL_URL))
    return _server_backfill("B2 backfill 1 month 1m -> MariaDB (best of 3)", fake, work, databases, 30_000)


def b2_postgres(fake: FakeProcess, work: Path) -> BenchRow:
    databases = PostgresDatabases(os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL))
    return _server_backfill("B2 backfill 1 month 1m -> PostgreSQL (best of 3)", fake, work, databases, 50_000)


def b2_mongo(fake: FakeProcess, work: Path) -> BenchRow:
    name = "B2 backfill 1 month 1m -> MongoDB protocol (nx-27017)"
    folder = work / "nx-27017"
    folder.mkdir()
    server = MongoServer(folder)
    try:
        server.start()
        times = []
        for _ in range(RUNS):
            run = extractor(
                server.url(unique_name("bench")), fake, work / "state", *backfill_args(JAN_2024, ONE_MONTH)
            )
            times.append(expect_written(run, ONE_MONTH).seconds)
    except (Exception, pytest.skip.Exception) as exc:
        return BenchRow(name, 0, "klines/s", "report", f"not measured: {exc}"[:100])
    finally:
        server.stop()
    return BenchRow(name, ONE_MONTH / min(times), "klines/s", "report", "?decimals=string, best of 3")


def b3_latency(fast: FakeProcess, work: Path) -> BenchRow:
    with fake_exchange("--latency", "0.1") as slow:
        at_zero = TWO_MONTHS / best_backfill_into_sqlite(fast, work, JAN_2024, TWO_MONTHS)
        at_100ms = TWO_MONTHS / best_backfill_into_sqlite(slow, work, JAN_2024, TWO_MONTHS)
        refused = fast.refusals() + slow.refusals()
    ratio = at_100ms / at_zero
    return BenchRow(
        "B3 2 months 1m: throughput at 100 ms / at 0 ms",
        ratio,
        "ratio",
        ">= 0.80, zero 429",
        f"0 ms {at_zero:,.0f}/s; 100 ms {at_100ms:,.0f}/s; {refused} 429/418",
        ratio >= 0.80 and refused == 0,
    )


def b4_weight_budget(work: Path) -> BenchRow:
    """65 windows (130 weight) + exchangeInfo (20; it sets the clock too) under 100/min: one forced wait."""
    candles = 65_000
    with fake_exchange("--weight-limit", "100") as fake:
        run = extractor(
            f"sqlite:///{work / 'b4.db'}", fake, work / "state", *backfill_args(JAN_2024, candles)
        )
        expect_written(run, candles)
        stats = fake.stats(log=True)
    times = [at for at, _, _ in stats["log"]]
    waited = forced = 0.0
    for before, after in itertools.pairwise(times):
        boundary = math.floor(after / 60) * 60
        if before < boundary:
            waited += after - before
            forced += boundary - before
    refused = int(stats["statuses"].get("429", 0)) + int(stats["statuses"].get("418", 0))
    return BenchRow(
        "B4 weight limit 100/min, 150 weight needed: seconds waited",
        waited,
        "s",
        "<= forced + 1 s, zero 429/418",
        f"budget forced {forced:.1f} s; {refused} 429/418; {run.seconds:.1f} s in all",
        waited <= forced + 1.0 and refused == 0,
    )


def b5_memory(fake: FakeProcess, work: Path) -> list[BenchRow]:
    """Peak RSS of the 1-year backfill at 0, 100 and 300 ms per answer, and flat in the range's length."""
    runs = {}
    for start, candles in ((JAN_2024, ONE_MONTH), (JAN_2024, THREE_MONTHS), (JAN_2022, ONE_YEAR)):
        db = fresh_sqlite(work)
        runs[candles] = expect_written(
            extractor(f"sqlite:///{db}", fake, work / "state", *backfill_args(start, candles)), candles
        )
    month, quarter, year = (runs[n].peak_rss_mb for n in (ONE_MONTH, THREE_MONTHS, ONE_YEAR))
    year_rate = ONE_YEAR / runs[ONE_YEAR].seconds
    rows = [
        BenchRow(
            "B5 peak RSS, 1-year 1m backfill -> SQLite, 0 ms",
            year,
            "MB",
            "<= 100",
            f"1 month {month:.1f}, 3 months {quarter:.1f} MB; the year at {year_rate:,.0f}/s",
            year <= 100,
        )
    ]
    for latency in ("0.1", "0.3"):
        with fake_exchange("--latency", latency) as slow:
            db = fresh_sqlite(work)
            run = expect_written(
                extractor(f"sqlite:///{db}", slow, work / "state", *backfill_args(JAN_2022, ONE_YEAR)),
                ONE_YEAR,
            )
        rows.append(
            BenchRow(
                f"B5 peak RSS, 1-year 1m backfill -> SQLite, {float(latency) * 1000:.0f} ms",
                run.peak_rss_mb,
                "MB",
                "<= 100",
                f"the year at {ONE_YEAR / run.seconds:,.0f}/s",
                run.peak_rss_mb <= 100,
            )
        )
    return rows


def b9_usdm(work: Path) -> BenchRow:
    """One month of USD-M 1m into SQLite: the cheapest page (499 candles, weight 2) under 2,400 a minute."""
    with fake_exchange() as fake:
        db = fresh_sqlite(work)
        run = expect_written(
            extractor(f"sqlite:///{db}", fake, work / "state", *backfill_args(JAN_2024, ONE_MONTH, "usdm")),
            ONE_MONTH,
        )
        stats = fake.stats()
    usdm = stats["weight"]["usdm"].values()
    weight = sum(int(address["weight"]) for address in usdm)
    peak = max((int(address["peak"]) for address in usdm), default=0)
    refused = int(stats["statuses"].get("429", 0)) + int(stats["statuses"].get("418", 0))
    per_thousand = weight * 1000 / ONE_MONTH
    rate = ONE_MONTH / run.seconds
    pages = stats["requests"].get("/fapi/v1/klines", 0)
    return BenchRow(
        "B9 backfill 1 month 1m usdm -> SQLite",
        rate,
        "klines/s",
        "report; <= 2,400 weight/min, zero 429",
        f"{per_thousand:.2f} weight per 1,000 candles ({pages} pages, {weight} weight, peak {peak}/min); "
        f"{refused} 429/418",
        peak <= 2400 and refused == 0,
    )


def b6_startup() -> list[BenchRow]:
    env = child_env()
    help_ms = min(run_process([str(EXTRACTOR), "--help"], env).seconds for _ in range(5)) * 1000
    loaded = json.loads(run_process([sys.executable, "-c", IMPORT_CHECK], env).stdout)
    return [
        BenchRow(
            "B6 binance-extractor --help, whole process (best of 5)",
            help_ms,
            "ms",
            "<= 200",
            "",
            help_ms <= 200,
        ),
        BenchRow(
            "B6 heavy modules loaded by importing extractor.cli",
            len(loaded),
            "modules",
            "0",
            ", ".join(loaded) or f"none of {', '.join(HEAVY_MODULES)}",
            not loaded,
        ),
    ]


def b8_cron_extract(work: Path) -> BenchRow:
    """20 symbols x 2 intervals, pre-filled by a first run; the second run finds nothing new."""
    symbols = ",".join(f"SYN{n:03d}USDT" for n in range(20))
    command = ("extract", "-s", symbols, "-i", "1m,1h", "--lookback", "1d")
    db_url = f"sqlite:///{work / 'b8.db'}"
    with fake_exchange("--latency", "0.1", "--extra-symbols", "20") as fake:
        if 60 - time.time() % 60 < 15:  # a 1m candle closing between the runs would be something new
            time.sleep(60 - time.time() % 60 + 0.5)
        extractor(db_url, fake, work / "state", *command)
        before = fake.stats()["requests"]
        run = extractor(db_url, fake, work / "state", *command)
        after = fake.stats()["requests"]
    asked = {path: n - before.get(path, 0) for path, n in after.items() if n > before.get(path, 0)}
    return BenchRow(
        "B8 cron extract, 20 symbols x 2 intervals, nothing new, 100 ms latency",
        run.seconds,
        "s",
        "<= 2",
        "requests: " + (", ".join(f"{p.rsplit('/', 1)[-1]} {n}" for p, n in sorted(asked.items())) or "none"),
        run.seconds <= 2,
    )


def rows() -> list[BenchRow]:
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        with fake_exchange() as fake:
            results = [b1_sqlite(fake, work), b2_mariadb(fake, work), b2_postgres(fake, work)]
            results += [b2_mongo(fake, work), b3_latency(fake, work)]
            memory = b5_memory(fake, work)
        return [
            *results,
            b4_weight_budget(work),
            *memory,
            *b6_startup(),
            b8_cron_extract(work),
            b9_usdm(work),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(format_table(rows()))
