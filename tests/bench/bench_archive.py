"""B10, the archive fast path (issue 13): one year of 1m (525,600 klines) from the fake's archive.

Each figure is a fresh ``binance-extractor backfill --source archive`` process timed from spawn to exit
(its own peak RSS from ``wait4``), against the fake in its own process on loopback, after one run that
has the fake build and cache every zip. Our own REST path (``--source rest``) backfills the same year
from the same fake in the same run for the ratio. Run alone with ``python -m tests.bench bench_archive``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tests.bench.bench_pipeline import (
    EXTRACTOR,
    JAN_2022,
    ONE_YEAR,
    FakeProcess,
    Run,
    backfill_args,
    child_env,
    expect_written,
    fake_exchange,
    fresh_sqlite,
    run_process,
    sqlite_count,
)
from tests.bench.common import BenchRow, format_table
from tests.services import DEFAULT_MYSQL_URL, DEFAULT_POSTGRES_URL, MySqlDatabases, PostgresDatabases

RUNS = 2
LATENCY_SECONDS = 0.05
SQLITE_TARGET = 200_000
REST_RATIO_TARGET = 3.0
MARIADB_TARGET = 100_000
POSTGRES_TARGET = 150_000
RSS_TARGET_MB = 150
LATENCY_RATIO_TARGET = 0.8
FILES = 12


def backfill(db_url: str, fake: FakeProcess, state_dir: Path, source: str) -> Run:
    """One year of BTCUSDT 1m (2022) from ``source``, into ``db_url``; fails unless all of it landed."""
    args = [str(EXTRACTOR), "--db", db_url, "--base-url", fake.url, *backfill_args(JAN_2022, ONE_YEAR)]
    env = child_env(EXTRACTOR_STATE_DIR=str(state_dir), BINANCE_ARCHIVE_URL=fake.url)
    run = expect_written(run_process([*args, "--source", source], env), ONE_YEAR)
    if source != "rest" and f"from {FILES} archive files" not in run.stdout:
        raise RuntimeError(f"expected {FILES} archive files, the run said: {run.stdout.strip()}")
    return run


def best_sqlite(fake: FakeProcess, work: Path, source: str, runs: int = RUNS) -> Run:
    best: Run | None = None
    for _ in range(runs):
        db = fresh_sqlite(work)
        run = backfill(f"sqlite:///{db}", fake, work / "state", source)
        if sqlite_count(db) != ONE_YEAR:
            raise RuntimeError(f"{db} holds {sqlite_count(db):,} klines, not {ONE_YEAR:,}")
        db.unlink()
        if best is None or run.seconds < best.seconds:
            best = run
    assert best is not None
    return best


def server_run(fake: FakeProcess, work: Path, backend: str, runs: int = RUNS) -> Run | str:
    """The archive year into a fresh MariaDB or PostgreSQL database each run, the best of ``runs``, or
    why that server is not there."""
    databases: MySqlDatabases | PostgresDatabases = (
        MySqlDatabases(os.environ.get("MYSQL_URL", DEFAULT_MYSQL_URL))
        if backend == "mysql"
        else PostgresDatabases(os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL))
    )
    best: Run | None = None
    for _ in range(runs):
        try:
            url = databases.create()
        except Exception as exc:  # a missing server is a row that says so, not a failed bench
            return f"not measured: {type(exc).__name__}: {str(exc)[:80]}"
        try:
            run = backfill(url, fake, work / "state", "archive")
        finally:
            databases.drop(url)
        if best is None or run.seconds < best.seconds:
            best = run
    assert best is not None
    return best


def _rate(run: Run) -> float:
    return ONE_YEAR / run.seconds


def _server_row(name: str, result: Run | str, target: int) -> BenchRow:
    if isinstance(result, str):
        return BenchRow(name, 0, "klines/s", f">= {target:,}", result, None)
    return BenchRow(
        name,
        _rate(result),
        "klines/s",
        f">= {target:,}",
        f"{result.seconds:.2f} s, peak RSS {result.peak_rss_mb:.0f} MB",
        _rate(result) >= target,
    )


def rows() -> list[BenchRow]:
    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        with fake_exchange() as fake:
            best_sqlite(fake, work, "archive", runs=1)  # the fake builds and caches the year's zips
            archive = best_sqlite(fake, work, "archive")
            rest = best_sqlite(fake, work, "rest", runs=1)
            mariadb = server_run(fake, work, "mysql")
            postgres = server_run(fake, work, "postgres")
        with fake_exchange("--archive-latency", str(LATENCY_SECONDS)) as slow:
            best_sqlite(slow, work, "archive", runs=1)
            latent = best_sqlite(slow, work, "archive")  # best of RUNS, as the 0 ms figure it is held to
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = _rate(archive) / _rate(rest)
    latency_ratio = _rate(latent) / _rate(archive)
    peak = max(archive.peak_rss_mb, latent.peak_rss_mb)
    return [
        BenchRow(
            f"B10 archive -> sqlite, one year of 1m, {FILES} files (best of {RUNS})",
            _rate(archive),
            "klines/s",
            f">= {SQLITE_TARGET:,} and >= {REST_RATIO_TARGET:.0f}x REST",
            f"{archive.seconds:.2f} s; our REST {_rate(rest):,.0f}/s ({rest.seconds:.1f} s): {ratio:.1f}x",
            _rate(archive) >= SQLITE_TARGET and ratio >= REST_RATIO_TARGET,
        ),
        _server_row(f"B10 archive -> mariadb, one year of 1m (best of {RUNS})", mariadb, MARIADB_TARGET),
        _server_row(f"B10 archive -> postgresql, one year of 1m (best of {RUNS})", postgres, POSTGRES_TARGET),
        BenchRow(
            "B10 archive -> sqlite, peak RSS",
            peak,
            "MB",
            f"<= {RSS_TARGET_MB}",
            f"0 ms {archive.peak_rss_mb:.0f} MB, {LATENCY_SECONDS * 1000:.0f} ms {latent.peak_rss_mb:.0f} MB",
            peak <= RSS_TARGET_MB,
        ),
        BenchRow(
            f"B10 archive -> sqlite, {LATENCY_SECONDS * 1000:.0f} ms per archive answer (best of {RUNS})",
            _rate(latent),
            "klines/s",
            f">= {LATENCY_RATIO_TARGET:.0%} of 0 ms",
            f"{latent.seconds:.2f} s: {latency_ratio:.0%} of 0 ms",
            latency_ratio >= LATENCY_RATIO_TARGET,
        ),
    ]


if __name__ == "__main__":
    print(format_table(rows()))
