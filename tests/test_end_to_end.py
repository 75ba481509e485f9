"""The installed console script, as a user runs it, against the fake exchange and every storage backend.

The exchange's clock stands still a little after the backfilled range, so the cron ``extract`` that
follows has a few new candles to fetch and ``gaps`` can be asked about the whole stored history.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from extractor import __version__
from extractor.intervals import Interval
from extractor.klines import to_row
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
        return [to_row(k) for k in store.read(symbol, Interval.parse(interval), start, end)]


def test_backfill_rerun_extract_and_gaps_through_the_console_script(
    exchange: FakeExchange, db_url: str, tmp_path: Path
) -> None:
    env = {
        **clean_environ(),
        "DATABASE_URL": db_url,
        "BINANCE_API_URL": exchange.url,
        "EXTRACTOR_STATE_DIR": str(tmp_path / "state"),
    }
    backfill = shlex.split("backfill -s BTCUSDT,ETHUSDT -i 1m -i 1h --start 2024-01-01 --end 2024-01-04")
    first = run(backfill, env, tmp_path)
    assert first.returncode == 0, first.stderr
    span = "2024-01-01T00:00:00Z..2024-01-04T00:00:00Z"
    assert first.stdout.splitlines() == [
        f"{symbol} {interval} {span}: {count} candles written, {requests} requests"
        for symbol in SYMBOLS
        for interval, count, requests in (("1m", "4,320", 5), ("1h", "72", 1))
    ]
    assert first.stderr == ""
    for symbol in SYMBOLS:
        for interval in ("1m", "1h"):
            want = exchange.rows(symbol, interval, ms("2024-01-01"), ms("2024-01-04"))
            assert len(want) == {"1m": 4320, "1h": 72}[interval]
            assert stored(db_url, symbol, interval, ms("2024-01-01"), ms("2024-01-04")) == want

    klines_before = exchange.request_counts[KLINES]
    again = run(backfill, env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert exchange.request_counts[KLINES] == klines_before
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
        assert json.loads(audit.stdout) == []
    table = run(["gaps", "-s", "ETHUSDT", "-i", "1h", "--end", "2024-01-04T00:00"], env, tmp_path)
    assert table.returncode == 0, table.stderr
    assert table.stdout == "ETHUSDT 1h: no gaps\n"


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


@pytest.mark.parametrize("command", [[], ["backfill"], ["extract"], ["gaps"], ["breakers"], ["check"]])
def test_help_loads_neither_http_nor_database_drivers(command: list[str], tmp_path: Path) -> None:
    result = python_m_extractor([*command, "--help"], tmp_path, ("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: binance-extractor {' '.join(command)}".rstrip() + " ")
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert imported.isdisjoint(DRIVERS), sorted(imported & set(DRIVERS))
