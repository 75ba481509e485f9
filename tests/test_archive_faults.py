"""The archive's faults, and kills: each bad file falls back to REST with exactly the right data and one
WARNING naming the file and the reason, or fails the series under ``--source archive``; nothing of a bad
or interrupted file is written, and a rerun fetches only what is missing.

The bad row of a spoilt file is in its middle, past the first chunks the writer has already stored
inside the file's transaction: finding only whole files afterwards proves that transaction rolled back.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fake_exchange import ARCHIVE_FAULT_KINDS, FakeExchange
from tests.test_archive import Extractor, archive_files, klines_requests, ms, series_of, warnings

SERIES = series_of("spot", "ETHUSDT", "1m")
START, END = "2024-12-31", "2025-02-01"
BAD_FILE = "ETHUSDT-1m-2025-01.zip"
JANUARY = (ms("2025-01-01"), ms("2025-02-01"))
REASONS = {
    "missing": "not in the archive (HTTP 404)",
    "damaged": "checksum mismatch",
    "truncated": "fields, not 12",
    "duplicated": "is not after the previous row",
    "off_grid": "is not a 1m open time",
}
EX_TEMPFAIL, EXIT_SIGTERM = 75, 143
WAIT_SECONDS = 60.0
"""A safety net for a cue that never comes; no test waits for it on purpose."""


@pytest.fixture
def extractor(fake_exchange: FakeExchange, tmp_path: Path) -> Extractor:
    return Extractor(fake_exchange, tmp_path)


def spoil(fake: FakeExchange, kind: str) -> None:
    fake.archive_faults.files[f"data/spot/monthly/klines/ETHUSDT/1m/{BAD_FILE}"] = kind


def test_every_fault_kind_has_a_reason_here() -> None:
    assert set(REASONS) == set(ARCHIVE_FAULT_KINDS)


@pytest.mark.parametrize("kind", ARCHIVE_FAULT_KINDS)
def test_a_bad_file_falls_back_to_rest_with_the_right_data_and_one_warning(
    extractor: Extractor, kind: str
) -> None:
    spoil(extractor.fake, kind)

    result = extractor.backfill("spot", "ETHUSDT", "1m", START, END, source="auto")

    assert result.exit_code == 0, result.output
    lo, hi = ms(START), ms(END)
    assert extractor.stored("auto", SERIES, lo, hi) == extractor.fake.rows("ETHUSDT", "1m", lo, hi)
    [warning] = warnings(result)
    assert f"data/spot/monthly/klines/ETHUSDT/1m/{BAD_FILE}" in warning and REASONS[kind] in warning
    pages = [p for p in klines_requests(extractor.fake) if p["limit"] != "1"]  # not the listing probe
    covered = sorted((int(p["startTime"]), int(p["endTime"])) for p in pages)
    assert covered[0][0] == JANUARY[0] and covered[-1][1] == JANUARY[1] - 1, "REST for January, no more"
    assert result.stdout == (
        "spot ETHUSDT 1m 2024-12-31T00:00:00Z..2025-02-01T00:00:00Z: 46,080 candles written, "
        f"1,440 from 1 archive file, 45 requests, REST instead of {BAD_FILE}\n"
    )


@pytest.mark.parametrize("kind", ARCHIVE_FAULT_KINDS)
def test_archive_alone_fails_the_series_with_the_reason_and_writes_nothing_of_the_file(
    extractor: Extractor, kind: str
) -> None:
    spoil(extractor.fake, kind)

    result = extractor.backfill("spot", "ETHUSDT", "1m", START, END, source="archive")

    assert result.exit_code == EX_TEMPFAIL, result.output
    assert f"spot ETHUSDT 1m: data/spot/monthly/klines/ETHUSDT/1m/{BAD_FILE}" in result.stderr
    assert REASONS[kind] in result.stderr
    assert extractor.stored("archive", SERIES, *JANUARY) == []
    assert len(extractor.stored("archive", SERIES, ms(START), ms(END))) == 1_440  # 2024-12-31, whole
    assert all(p["limit"] == "1" for p in klines_requests(extractor.fake)), "no REST page, the probe alone"


def test_a_5xx_storm_opens_the_archive_breaker_and_the_whole_plan_comes_from_rest(
    extractor: Extractor,
) -> None:
    extractor.fake.archive_faults.fail_all = 503

    result = extractor.backfill("spot", "ETHUSDT", "1m", START, END, source="auto")

    assert result.exit_code == 0, result.output
    lo, hi = ms(START), ms(END)
    assert extractor.stored("auto", SERIES, lo, hi) == extractor.fake.rows("ETHUSDT", "1m", lo, hi)
    ours = [w for w in warnings(result) if "extractor.sources" in w]
    assert len(ours) == 1 and "the archive is unavailable, the rest of the plan comes from REST" in ours[0]
    assert "circuit breaker is open" in ours[0] and "HTTP 503" in ours[0]
    assert any("CLOSED -> OPEN" in w for w in warnings(result))
    assert "REST instead of ETHUSDT-1m-2024-12-31.zip, ETHUSDT-1m-2025-01.zip" in result.stdout
    assert sum(extractor.fake.archive_counts.values()) <= 10, "the breaker stopped the archive requests"


def test_a_5xx_storm_under_archive_alone_ends_75_naming_the_breaker(extractor: Extractor) -> None:
    extractor.fake.archive_faults.fail_all = 503

    result = extractor.backfill("spot", "ETHUSDT", "1m", START, END, source="archive")

    assert result.exit_code == EX_TEMPFAIL, result.output
    assert "the archive circuit breaker is open" in result.stderr and "HTTP 503" in result.stderr
    assert extractor.stored("archive", SERIES, ms(START), ms(END)) == []


def test_a_few_5xx_are_retried_and_every_file_still_comes_from_the_archive(extractor: Extractor) -> None:
    extractor.fake.archive_faults.fail_first = 2

    result = extractor.backfill("spot", "ETHUSDT", "1m", START, END, source="auto")

    assert result.exit_code == 0, result.output
    assert warnings(result) == []
    assert "46,080 candles written, 46,080 from 2 archive files, 0 requests" in result.stdout


# -- kill and resume ----------------------------------------------------------------------------------


def start_backfill(run: Extractor, db: str, *args: str) -> subprocess.Popen[str]:
    ours = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "BINANCE_", "DATABASE_URL", "LOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)} | run.env(db)
    command = [sys.executable, "-m", "extractor", "backfill", *args, "--source", "auto", "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def counts_by_period(path: Path, starts: list[int]) -> list[int]:
    """Candles stored in each period between consecutive ``starts`` (a reader beside the writer)."""
    if not path.exists():
        return [0] * (len(starts) - 1)
    with sqlite3.connect(path, timeout=10) as conn:
        try:
            return [
                int(
                    conn.execute(
                        "SELECT COUNT(*) FROM klines WHERE open_time >= ? AND open_time < ?", p
                    ).fetchone()[0]
                )
                for p in itertools.pairwise(starts)
            ]
        except sqlite3.OperationalError as exc:  # the run has not created its tables yet
            assert "no such table" in str(exc)
            return [0] * (len(starts) - 1)


def wait_for(cue: str, condition: object) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {cue} within {WAIT_SECONDS:.0f} s")
        time.sleep(0.01)


def test_sigterm_while_a_file_is_awaited_leaves_whole_files_and_the_rerun_fetches_only_the_rest(
    extractor: Extractor, tmp_path: Path
) -> None:
    fake = extractor.fake
    days = [ms(f"2024-12-{d}") for d in range(25, 32)] + [ms("2025-01-01")]
    fake.archive_faults.latency_for["*ETHUSDT-1m-2024-12-29.zip"] = WAIT_SECONDS
    db = tmp_path / "kill.db"
    extractor.urls["kill"] = f"sqlite:///{db}"
    args = ["-s", "ETHUSDT", "-i", "1m", "--start", "2024-12-25", "--end", "2025-01-01"]

    process = start_backfill(extractor, "kill", *args)
    try:
        wait_for("four days stored", lambda: counts_by_period(db, days)[:4] == [1_440] * 4)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == EXIT_SIGTERM, stderr
    assert counts_by_period(db, days) == [1_440] * 4 + [0] * 3

    fake.archive_faults.latency_for.clear()
    fake.reset_counts()
    again = extractor.backfill("spot", "ETHUSDT", "1m", "2024-12-25", "2025-01-01", source="auto", db="kill")
    assert again.exit_code == 0, again.output
    assert archive_files(fake) == Counter({f"ETHUSDT-1m-2024-12-{d}.zip": 1 for d in (29, 30, 31)})
    assert (
        "4,320 candles written, 4,320 from 3 archive files, 5,760 already stored, 0 requests" in again.stdout
    )
    lo, hi = days[0], days[-1]
    assert extractor.stored("kill", SERIES, lo, hi) == fake.rows("ETHUSDT", "1m", lo, hi)


def test_sigkill_at_any_moment_leaves_whole_files_and_the_rerun_fetches_only_the_missing_ones(
    extractor: Extractor, tmp_path: Path
) -> None:
    fake = extractor.fake
    months = [ms(m) for m in ("2024-09-01", "2024-10-01", "2024-11-01", "2024-12-01", "2025-01-01")]
    sizes = [30 * 1_440, 31 * 1_440, 30 * 1_440, 31 * 1_440]
    db = tmp_path / "kill.db"
    extractor.urls["kill"] = f"sqlite:///{db}"
    args = ["-s", "ETHUSDT", "-i", "1m", "--start", "2024-09-01", "--end", "2025-01-01"]

    process = start_backfill(extractor, "kill", *args)
    try:
        wait_for("the first month stored", lambda: counts_by_period(db, months)[0] > 0)
        process.kill()
        process.communicate(timeout=10)
    finally:
        process.kill()
    stored = counts_by_period(db, months)
    assert all(count in (0, size) for count, size in zip(stored, sizes, strict=True)), stored
    kept = [size == count for count, size in zip(stored, sizes, strict=True)]
    assert kept[0] and kept == sorted(kept, reverse=True), "a prefix of whole files"

    fake.reset_counts()
    again = extractor.backfill("spot", "ETHUSDT", "1m", "2024-09-01", "2025-01-01", source="auto", db="kill")
    assert again.exit_code == 0, again.output
    names = [f"ETHUSDT-1m-2024-{m:02d}.zip" for m in (9, 10, 11, 12)]
    assert archive_files(fake) == Counter({n: 1 for n, k in zip(names, kept, strict=True) if not k})
    assert extractor.stored("kill", SERIES, months[0], months[-1]) == fake.rows(
        "ETHUSDT", "1m", months[0], months[-1]
    )
