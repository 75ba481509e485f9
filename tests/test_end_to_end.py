"""The installed console script, as a user runs it, against the fake exchange and every storage backend.

The exchange's clock stands still a little after the backfilled range, so the cron ``extract`` that
follows has a few new candles to fetch and ``gaps`` can be asked about the whole stored history.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from extractor import __version__
from extractor.intervals import Interval
from extractor.klines import Series, to_row
from extractor.markets import SPOT
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange, ManualClock

CONSOLE_SCRIPT = Path(sys.executable).with_name("binance-extractor")
KLINES = "/api/v3/klines"
SYMBOLS = ("BTCUSDT", "ETHUSDT")
DRIVERS = ("requests", "sqlalchemy", "pymysql", "pymongo")
_OUR_PREFIXES = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "LOG_", "BINANCE_", "DATABASE_URL")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def clean_environ() -> dict[str, str]:
    """The environment without any of our variables the developer's shell may have set."""
    return {name: value for name, value in os.environ.items() if not name.startswith(_OUR_PREFIXES)}


@pytest.fixture
def exchange() -> Iterator[FakeExchange]:
    """Exchange time stands at 2024-01-04T00:20:30Z: the twenty 1m candles since midnight are closed."""
    with FakeExchange(clock=ManualClock(ms("2024-01-04T00:20:30") / 1000)) as fake:
        yield fake


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("mongo", marks=pytest.mark.mongo),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'klines.db'}"
    return str(request.getfixturevalue(f"fresh_{request.param}_url"))


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def stored(db_url: str, symbol: str, interval: str, start: int, end: int) -> list[list[object]]:
    with open_store(db_url) as store:
        return [to_row(k) for k in store.read(Series(SPOT, symbol, Interval.parse(interval)), start, end)]


def test_backfill_rerun_extract_and_gaps_through_the_console_script(
    exchange: FakeExchange, db_url: str, tmp_path: Path
) -> None:
    env = {
        **clean_environ(),
        "DATABASE_URL": db_url,
        "BINANCE_API_URL": exchange.url,
        "BINANCE_ARCHIVE_URL": exchange.archive_url,
        "EXTRACTOR_STATE_DIR": str(tmp_path / "state"),
    }
    backfill = shlex.split("backfill -s BTCUSDT,ETHUSDT -i 1m -i 1h --start 2024-01-01 --end 2024-01-04")
    first = run(backfill, env, tmp_path)
    assert first.returncode == 0, first.stderr
    span = "2024-01-01T00:00:00Z..2024-01-04T00:00:00Z"
    # The default source: 01-01 and 01-02 from the archive's daily files; 01-03's is not published yet at
    # 00:20 on 01-04, so its day comes from REST, without a warning.
    assert first.stdout.splitlines() == [
        f"spot {symbol} {interval} {span}: {count} candles written, {archived} from 2 archive files, "
        + requests
        for symbol in SYMBOLS
        for interval, count, archived, requests in (
            ("1m", "4,320", "2,880", "2 requests"),
            ("1h", "72", "48", "1 request"),
        )
    ]
    assert first.stderr == ""
    for symbol in SYMBOLS:
        for interval in ("1m", "1h"):
            want = exchange.rows(symbol, interval, ms("2024-01-01"), ms("2024-01-04"))
            assert len(want) == {"1m": 4320, "1h": 72}[interval]
            assert stored(db_url, symbol, interval, ms("2024-01-01"), ms("2024-01-04")) == want

    requests_before = exchange.request_counts.copy()
    again = run(backfill, env, tmp_path)
    assert again.returncode == 0, again.stderr
    asked = exchange.request_counts - requests_before
    assert asked[KLINES] == 0
    assert not any(path.startswith("/data/") for path in asked)
    assert all(" 0 candles written, " in line for line in again.stdout.splitlines())

    extract = run(["extract", "-s", "BTCUSDT,ETHUSDT", "-i", "1m,1h"], env, tmp_path)
    assert extract.returncode == 0, extract.stderr
    assert (extract.stdout, extract.stderr) == ("", "")
    for symbol in SYMBOLS:
        want = exchange.rows(symbol, "1m", ms("2024-01-01"), ms("2024-01-04T00:20"))
        assert len(want) == 4320 + 20
        assert stored(db_url, symbol, "1m", 0, ms("2024-01-05")) == want
        assert len(stored(db_url, symbol, "1h", 0, ms("2024-01-05"))) == 72

    for symbol in SYMBOLS:
        audit = run(["gaps", "-s", symbol, "-i", "1m", "--end", "2024-01-04T00:20", "--json"], env, tmp_path)
        assert audit.returncode == 0, audit.stderr
        assert [a["gaps"] for a in json.loads(audit.stdout)] == [[]]
    table = run(["gaps", "-s", "ETHUSDT", "-i", "1h", "--end", "2024-01-04T00:00"], env, tmp_path)
    assert table.returncode == 0, table.stderr
    assert table.stdout == "spot ETHUSDT 1h: no gaps\n"

    status = run(["status", "--json"], env, tmp_path)
    assert status.returncode == 0, status.stderr
    assert [(s["symbol"], s["interval"], s["candles"], s["holes"]) for s in json.loads(status.stdout)] == [
        ("BTCUSDT", "1h", 72, 0),
        ("BTCUSDT", "1m", 4340, 0),
        ("ETHUSDT", "1h", 72, 0),
        ("ETHUSDT", "1m", 4340, 0),
    ]


def python_m_extractor(
    args: list[str], cwd: Path, interpreter_options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``python OPTIONS -m extractor ARGS`` in a clean environment."""
    return subprocess.run(
        [sys.executable, *interpreter_options, "-m", "extractor", *args],
        env=clean_environ(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_dash_m_extractor_prints_the_version(tmp_path: Path) -> None:
    result = python_m_extractor(["--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"binance-extractor, version {__version__}\n"


@pytest.mark.parametrize(
    "command", [[], ["backfill"], ["extract"], ["gaps"], ["status"], ["breakers"], ["check"]]
)
def test_help_loads_neither_http_nor_database_drivers(command: list[str], tmp_path: Path) -> None:
    result = python_m_extractor([*command, "--help"], tmp_path, ("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: binance-extractor {' '.join(command)}".rstrip() + " ")
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert imported.isdisjoint(DRIVERS), sorted(imported & set(DRIVERS))


def _stored_count(db: Path) -> int:
    """Candles in the SQLite file so far (0 while it is still being created)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM klines").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize(("signal_name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_mid_backfill_exits_at_once_with_one_line_and_the_rerun_resumes(
    fake_exchange: FakeExchange, tmp_path: Path, signal_name: str, code: int
) -> None:
    """Requests in flight hang (the client would wait 300 s for each): the signal must abandon them."""
    db = tmp_path / "klines.db"
    env = {
        **clean_environ(),
        "DATABASE_URL": f"sqlite:///{db}",
        "BINANCE_API_URL": fake_exchange.url,
        "EXTRACTOR_STATE_DIR": str(tmp_path / "state"),
        "EXTRACTOR_TIMEOUT": "300",
        "EXTRACTOR_CONCURRENCY": "2",
    }
    fake_exchange.faults.latency = 0.05
    args = shlex.split(
        "backfill -s BTCUSDT -i 1m --start 2023-01-01 --end 2023-03-01 --source rest --no-progress"
    )
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while _stored_count(db) == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        fake_exchange.faults.hang_next = 1_000_000  # from now on no klines request is ever answered
        time.sleep(0.2)  # let the next requests reach the hang
        process.send_signal(getattr(signal, signal_name))
        if signal_name == "SIGINT":
            process.send_signal(signal.SIGINT)  # an impatient second Ctrl-C
        stdout, stderr = process.communicate(timeout=60)  # far below one hung request's 300 s
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, stderr
    assert stdout == ""
    [line] = stderr.splitlines()
    said = re.fullmatch(
        rf"binance-extractor: interrupted by {signal_name}: ([\d,]+) candles? stored in this run; "
        "run the same command to resume",
        line,
    )
    assert said, line
    stored_in_run = int(said.group(1).replace(",", ""))
    assert stored_in_run == _stored_count(db) > 0  # whole pages only, as the line says

    fake_exchange.faults.hang_next = 0
    rerun = run(args, env, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(
        "spot BTCUSDT 1m 2023-01-01T00:00:00Z..2023-03-01T00:00:00Z: "
        f"{84_960 - stored_in_run:,} candles written, {stored_in_run:,} already stored, "
    )
    want = fake_exchange.rows("BTCUSDT", "1m", ms("2023-01-01"), ms("2023-03-01"))
    assert stored(f"sqlite:///{db}", "BTCUSDT", "1m", ms("2023-01-01"), ms("2023-03-01")) == want
