"""The KlineStore contract over every backend: run locks, runs starting together, and probes that
create nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from extractor.errors import BadInputError, RunLocked
from extractor.intervals import Interval
from extractor.klines import Series
from extractor.markets import SPOT
from extractor.storage import KlineStore, open_store
from tests.storage_cases import (
    BTC,
    FOREVER,
    M1,
    T0,
    backend_of,
    candles,
    db_breaker,
    eventually,
    side_by_side,
    table_names,
)

# ---------------------------------------------------------------------------------------------- run locks


def test_a_second_run_on_the_same_database_is_locked_out(
    kline_store: KlineStore, second_kline_store: KlineStore
) -> None:
    with kline_store.run_lock("extract"):
        with pytest.raises(RunLocked) as locked, second_kline_store.run_lock("extract"):
            pass
        with second_kline_store.run_lock("backfill"):  # another name is another lock
            pass
    message = str(locked.value)
    assert message.startswith(f"another binance-extractor run holds the extract lock on {kline_store.url} (")
    assert message.endswith("try again when it finishes")
    with second_kline_store.run_lock("extract"):  # released on exit
        pass
    with pytest.raises(BadInputError, match="invalid lock name"), kline_store.run_lock("Extract Now"):
        pass


HOLD_A_LOCK = """
import sys, time
from extractor.storage import open_store
kline_store = open_store(sys.argv[1])
lock = kline_store.run_lock("extract")
lock.__enter__()
print("held", flush=True)
time.sleep(600)
"""


def test_the_lock_of_a_killed_run_is_released(kline_store: KlineStore, backend_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LOCK, backend_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(RunLocked), kline_store.run_lock("extract"):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()

    def free() -> bool:
        try:
            with kline_store.run_lock("extract"):
                return True
        except RunLocked:
            return False

    eventually(free, "the killed run's lock was not released")


def test_runs_opening_a_new_database_at_once_all_succeed(backend_url: str) -> None:
    """Shards of one CronJob start together: creating the tables must not race."""
    start = threading.Barrier(3, timeout=30)

    def run() -> None:
        start.wait()
        with open_store(backend_url, breaker=db_breaker()) as opened:
            opened.write(candles(T0, 5))

    side_by_side(run, run, run)
    with open_store(backend_url, breaker=db_breaker()) as opened:
        assert opened.count(BTC, T0, FOREVER) == 5


# ---------------------------------------------------------------------------------------------- probes


def test_check_writable_says_what_it_checked_and_creates_nothing(backend_url: str) -> None:
    probe = open_store(backend_url, breaker=db_breaker(), create=False)
    try:
        detail = probe.check_writable()
        probe.check_writable()
    finally:
        probe.close()

    assert "writable" in detail
    if backend_of(backend_url) == "sqlite":
        assert not Path(backend_url.removeprefix("sqlite:///")).exists()
        assert detail == "does not exist yet; its directory is writable (nothing created)"
    else:
        assert table_names(backend_url) == set(), "the probe left something behind"


def test_check_writable_on_a_created_database_leaves_no_probe_behind(
    kline_store: KlineStore, backend_url: str
) -> None:
    before = table_names(backend_url)

    assert "writable" in kline_store.check_writable()

    assert table_names(backend_url) == before
    assert kline_store.series() == []


# ---------------------------------------------------------------------------------------------- series locks

ETH = Series(SPOT, "ETHUSDT", M1)
BTC_HOUR = Series(SPOT, "BTCUSDT", Interval.parse("1h"))


def test_a_series_another_run_writes_is_busy_until_that_run_lets_go(
    kline_store: KlineStore, second_kline_store: KlineStore
) -> None:
    with kline_store.lock_series([BTC, ETH]) as mine:
        assert (mine.held, mine.busy) == ([BTC, ETH], [])
        with second_kline_store.lock_series([ETH, BTC_HOUR]) as theirs:
            assert (theirs.held, theirs.busy) == ([BTC_HOUR], [ETH])
    with second_kline_store.lock_series([BTC, ETH, BTC_HOUR]) as later:
        assert (later.held, later.busy) == ([BTC, ETH, BTC_HOUR], [])


HOLD_SERIES = """
import sys, time
from extractor.intervals import Interval
from extractor.klines import Series
from extractor.markets import SPOT
from extractor.storage import open_store
kline_store = open_store(sys.argv[1])
locks = kline_store.lock_series([Series(SPOT, "BTCUSDT", Interval.parse("1m"))])
locks.__enter__()
print("held", flush=True)
time.sleep(600)
"""


def test_the_series_locks_of_a_killed_run_are_released(kline_store: KlineStore, backend_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SERIES, backend_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with kline_store.lock_series([BTC]) as locks:
            assert locks.busy == [BTC]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()

    def free() -> bool:
        with kline_store.lock_series([BTC]) as locks:
            return locks.held == [BTC]

    eventually(free, "the killed run's series lock was not released")
