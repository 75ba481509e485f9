"""The fleet (issue 15): shard runs side by side on one database, only what closed is asked for, each
source address with its own budget, breaker and ban, and the acceptance run: four shards on four loopback
addresses do in one minute what one address could not do in three.

Shard runs are real processes of ``python -m extractor``; the fake exchange counts weight per client
address. Where a minute must pass, the fake's clock is moved (or shared, as a virtual clock, with an
in-process run): no test waits for a real minute.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from extractor.errors import ExchangeUnavailable
from extractor.intervals import DAY, MINUTE, Interval
from extractor.klines import Series, parse_rows
from extractor.lifecycle import RunStop
from extractor.markets import SPOT
from extractor.pipeline import commands
from extractor.pipeline.plan import closed_limit
from extractor.pipeline.shards import shard_series
from extractor.sources.http import BanRecord, RestClient
from extractor.sources.rest import RestSource
from extractor.sources.weight import WeightBudget
from extractor.storage import KlineStore, open_store
from tests.fake_exchange import AddressUsage, FakeExchange, LoggedRequest, ManualClock, synthetic_symbols
from utils.circuit_breaker import CircuitBreaker

OUR_PREFIXES = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "BINANCE_", "DATABASE_URL", "LOG_", "JOB_COMPLETION_INDEX")
RUN_TIMEOUT = 120.0
"""A safety net for a run that hangs; no test waits for it on purpose."""
EX_TEMPFAIL = 75
NOON_07 = 1_772_539_625.0  # 2026-03-03 12:07:05 UTC


def extractor_env(fake: FakeExchange, db_url: str, state_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of one run: the caller's without our variables, the fake, the database, a state dir."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(OUR_PREFIXES)}
    return {
        **inherited,
        "BINANCE_API_URL": fake.url,
        "DATABASE_URL": db_url,
        "EXTRACTOR_STATE_DIR": str(state_dir),
        **settings,
    }


def start_extract(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "extractor", "extract", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_extract(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    process = start_extract(args, env)
    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def sent_from(fake: FakeExchange, address: str, endpoint: str = "") -> list[dict[str, str]]:
    """The parameters of every request ``address`` sent (to paths ending in ``endpoint``)."""
    return sent_from_log(list(fake.log), address, endpoint)


def sent_from_log(log: list[LoggedRequest], address: str, endpoint: str = "") -> list[dict[str, str]]:
    return [r.params for r in log if r.client == address and r.path.endswith(endpoint)]


def seed(
    fake: FakeExchange, store: KlineStore, series: list[Series], last_open_times: dict[str, int]
) -> None:
    """Store each series up to the candle opening at ``last_open_times[interval]``, as the fake serves it."""
    batches = []
    for one in series:
        last = last_open_times[one.interval.name]
        rows = fake.rows(one.symbol, one.interval.name, last, last + 1)
        batches.append(parse_rows(one, rows, last, last + 1))
    store.write_all(batches)


def fleet_series(symbols: list[str], intervals: list[str]) -> list[Series]:
    return [Series(SPOT, symbol, Interval.parse(i)) for symbol in symbols for i in intervals]


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database every shard of the test shares: a SQLite file or a fresh MariaDB database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return str(request.getfixturevalue("fresh_mysql_url"))


# -- locks per shard ----------------------------------------------------------------------------------


def test_shards_run_side_by_side_and_a_second_run_of_one_shard_exits_75_at_once(
    fake_exchange: FakeExchange, db_url: str, tmp_path: Path
) -> None:
    symbols = sorted(fake_exchange.symbols)
    series = fleet_series(symbols, ["1m"])
    first, second = shard_series(series, 1, 2), shard_series(series, 2, 2)
    assert first and second
    fake_exchange.faults.hang_next = 1  # the first klines request never answers: shard 1 keeps its lock
    args = ["-s", ",".join(symbols), "-i", "1m", "--lookback", "10m"]

    def env(address: str) -> dict[str, str]:
        return extractor_env(
            fake_exchange,
            db_url,
            tmp_path / address,
            EXTRACTOR_SOURCE_ADDRESS=address,
            EXTRACTOR_TIMEOUT="300",
        )

    holder = start_extract([*args, "--shard", "1/2"], env("127.0.0.2"))
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not sent_from(fake_exchange, "127.0.0.2", "/klines"):
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "shard 1 never asked for klines"
            time.sleep(0.02)
        again = run_extract([*args, "--shard", "1/2"], env("127.0.0.3"))
        assert again.returncode == EX_TEMPFAIL, again.stderr
        assert "extract-shard-1-of-2 lock" in again.stderr
        assert sent_from(fake_exchange, "127.0.0.3") == []  # nothing fetched
        other = run_extract([*args, "--shard", "2/2"], env("127.0.0.4"))
        assert other.returncode == 0, other.stderr
        asked = {(p["symbol"], p["interval"]) for p in sent_from(fake_exchange, "127.0.0.4", "/klines")}
        assert asked == {(one.symbol, one.interval.name) for one in second}
        with open_store(db_url) as store:
            assert all(store.last_open_time(one) is not None for one in second)
    finally:
        holder.terminate()
        holder.communicate(timeout=RUN_TIMEOUT)


# -- only what closed ---------------------------------------------------------------------------------


def test_at_12_07_a_1h_series_sends_nothing_and_a_1m_series_sends(tmp_path: Path) -> None:
    clock = ManualClock(NOON_07)
    with FakeExchange(clock=clock) as fake:
        db_url = f"sqlite:///{tmp_path / 'k.db'}"
        series = fleet_series(["BTCUSDT"], ["1m", "1h"])
        noon = int(NOON_07 * 1000) - 7 * MINUTE - 5_000
        with open_store(db_url) as store:
            seed(fake, store, series, {"1m": noon + 5 * MINUTE, "1h": noon - 60 * MINUTE})
        env = extractor_env(fake, db_url, tmp_path / "state")
        done = run_extract(["-s", "BTCUSDT", "-i", "1m,1h"], env)
        assert done.returncode == 0, done.stderr
        asked = [(p["interval"], int(p["startTime"])) for p in sent_from(fake, "127.0.0.1", "/klines")]
        assert asked == [("1m", noon + 6 * MINUTE)]  # the 12:06 candle; the 12:00 hour is still open
        clock.advance(53 * 60)  # 13:00:05: the 12:00 hour has closed
        fake.reset_counts()
        done = run_extract(["-s", "BTCUSDT", "-i", "1m,1h"], env)
        assert done.returncode == 0, done.stderr
        asked = [(p["interval"], int(p["startTime"])) for p in sent_from(fake, "127.0.0.1", "/klines")]
        assert sorted(asked) == [("1h", noon), ("1m", noon + 7 * MINUTE)]


# -- the source address -------------------------------------------------------------------------------


def test_every_request_leaves_from_the_source_address(fake_exchange: FakeExchange, tmp_path: Path) -> None:
    env = extractor_env(
        fake_exchange, f"sqlite:///{tmp_path / 'k.db'}", tmp_path / "s", EXTRACTOR_SOURCE_ADDRESS="127.0.0.2"
    )
    done = run_extract(["-s", "BTCUSDT,ETHUSDT", "-i", "1m", "--lookback", "1h"], env)
    assert done.returncode == 0, done.stderr
    clients = {r.client for r in fake_exchange.log}
    assert clients == {"127.0.0.2"}
    assert fake_exchange.usage()["127.0.0.2"].weight > 0


def test_a_ban_of_one_source_address_does_not_stop_another(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    """The 418 is remembered per (host, address) in the one state directory both addresses share."""
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    args = ["-s", "BTCUSDT", "-i", "1m", "--lookback", "10m"]
    fake_exchange.ban(fake_exchange.clock() + 600, "spot", "127.0.0.2")
    banned = run_extract(
        args, extractor_env(fake_exchange, db_url, tmp_path, EXTRACTOR_SOURCE_ADDRESS="127.0.0.2")
    )
    assert banned.returncode == EX_TEMPFAIL, banned.stderr
    assert "banned" in banned.stderr
    other = run_extract(
        args, extractor_env(fake_exchange, db_url, tmp_path, EXTRACTOR_SOURCE_ADDRESS="127.0.0.3")
    )
    assert other.returncode == 0, other.stderr
    assert sent_from(fake_exchange, "127.0.0.3", "/klines")
    fake_exchange.ban(None, "spot", "127.0.0.2")
    fake_exchange.reset_counts()
    again = run_extract(
        args, extractor_env(fake_exchange, db_url, tmp_path, EXTRACTOR_SOURCE_ADDRESS="127.0.0.2")
    )
    assert again.returncode == EX_TEMPFAIL, again.stderr
    assert sent_from(fake_exchange, "127.0.0.2") == []  # the remembered ban of .2 holds it back


def test_an_open_breaker_of_one_source_address_does_not_stop_another(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    args = ["-s", "BTCUSDT", "-i", "1m", "--lookback", "10m"]
    strict = {"CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "1", "EXTRACTOR_ATTEMPTS": "1"}

    def env(address: str) -> dict[str, str]:
        return extractor_env(fake_exchange, db_url, tmp_path, EXTRACTOR_SOURCE_ADDRESS=address, **strict)

    fake_exchange.faults.fail_all = 503
    failed = run_extract(args, env("127.0.0.2"))
    assert failed.returncode == EX_TEMPFAIL, failed.stderr
    fake_exchange.faults.fail_all = None
    other = run_extract(args, env("127.0.0.3"))
    assert other.returncode == 0, other.stderr
    fake_exchange.reset_counts()
    again = run_extract(args, env("127.0.0.2"))
    assert again.returncode == EX_TEMPFAIL, again.stderr
    assert "circuit breaker" in again.stderr.lower()
    assert sent_from(fake_exchange, "127.0.0.2") == []


# -- the acceptance run: four shards, four addresses, one minute --------------------------------------

FLEET_SYMBOLS = 600
FLEET_INTERVALS = ["1m", "5m", "15m"]
ADDRESS_LIMIT = 1000
"""Weight per address a minute, lowered from 6,000 so that 600 symbols × 3 intervals (3,600) is over
three minutes' work for one address."""
ADDRESSES = [f"127.0.0.{k}" for k in range(2, 6)]


class QuarterHourClock:
    """The exchange's clock: real time, set back to just after the last quarter hour, when 1m, 5m and 15m
    candles have all just closed; it runs on at real speed, so a real minute is the exchange's minute."""

    def __init__(self) -> None:
        now = time.time()
        self.shift = now % 900 - 0.25
        self.start = now - self.shift

    def __call__(self) -> float:
        return time.time() - self.shift


def seeded_fleet(fake: FakeExchange, db_url: str, now_ms: int) -> list[Series]:
    """Every series of the fleet stored up to the candle before the last closed one: one page each to ask."""
    series = fleet_series(sorted(fake.symbols), FLEET_INTERVALS)
    lengths = {name: Interval.parse(name).length_ms for name in FLEET_INTERVALS}
    with open_store(db_url) as store:
        seed(fake, store, series, {name: now_ms - now_ms % n - 2 * n for name, n in lengths.items()})
    return series


@dataclass
class FleetRun:
    """What the fake saw of one run of the fleet's work, and how long it took."""

    series: list[Series]
    db_url: str
    start: float
    """The exchange's time when the run began (just after a quarter hour)."""
    seconds: float
    """Real seconds for the fleet; exchange seconds for one process on the virtual clock."""
    log: list[LoggedRequest]
    usage: dict[str, AddressUsage]


def run_fleet(tmp_path: Path, symbols: int = FLEET_SYMBOLS) -> FleetRun:
    """The fleet's work done by N shard processes, pod K on 127.0.0.(K+2), as an Indexed Job sets them."""
    clock = QuarterHourClock()
    with FakeExchange(symbols=synthetic_symbols(symbols), weight_limit=ADDRESS_LIMIT, clock=clock) as fake:
        db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
        series = seeded_fleet(fake, db_url, int(clock.start * 1000))
        began = time.monotonic()
        shards = [
            start_extract(
                [],
                extractor_env(
                    fake,
                    db_url,
                    tmp_path / f"pod-{index}",
                    JOB_COMPLETION_INDEX=str(index),
                    EXTRACTOR_SHARDS=str(len(ADDRESSES)),
                    EXTRACTOR_SOURCE_ADDRESS=address,
                    EXTRACTOR_SYMBOLS="ALL",
                    EXTRACTOR_QUOTES="USDT",
                    EXTRACTOR_INTERVALS=",".join(FLEET_INTERVALS),
                ),
            )
            for index, address in enumerate(ADDRESSES)
        ]
        for shard in shards:
            _, stderr = shard.communicate(timeout=RUN_TIMEOUT)
            assert shard.returncode == 0, stderr
        seconds = time.monotonic() - began
        return FleetRun(series, db_url, clock.start, seconds, list(fake.log), fake.usage())


class VirtualClock:
    """The exchange's and one client's clock, moving only when a client thread waits: a wait for the next
    minute's weight costs no real time, and the fake counts weight by the same minutes."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._read = threading.local()

    def __call__(self) -> float:
        with self._lock:
            self._read.at = self._now
            return self._now

    def sleep(self, seconds: float) -> None:
        """Move to ``seconds`` after this thread last read the clock, never back: threads waiting for
        the same minute move it once."""
        with self._lock:
            self._now = max(self._now, getattr(self._read, "at", self._now) + seconds)


def run_one_address(tmp_path: Path, symbols: int = FLEET_SYMBOLS) -> FleetRun:
    """The same work done by one extract on one address, on a virtual clock shared with the fake."""
    start = NOON_07 - NOON_07 % 900 + 0.25
    clock = VirtualClock(start)
    with FakeExchange(symbols=synthetic_symbols(symbols), weight_limit=ADDRESS_LIMIT, clock=clock) as fake:
        db_url = f"sqlite:///{tmp_path / 'one.db'}"
        series = seeded_fleet(fake, db_url, int(start * 1000))
        budget = WeightBudget(SPOT.weight_limit, clock=clock, sleep=clock.sleep)
        client = RestClient(
            fake.url,
            breaker=CircuitBreaker(expected_exception=ExchangeUnavailable, name="api"),
            budget=budget,
            bans=BanRecord(None, wall_clock=clock),
            stop=RunStop(),
            source_address=ADDRESSES[0],
            sleep=clock.sleep,
            clock=clock,
        )
        source = RestSource(SPOT, client, clock=clock, wall_clock=clock)
        budget.server_offset_ms = source.server_offset_ms
        wanted = commands.Wanted(
            source, ("ALL",), tuple(map(Interval.parse, FLEET_INTERVALS)), ("USDT",), True
        )
        with open_store(db_url) as store:
            commands.extract([wanted], store, lookback_ms=DAY, stop=RunStop(), concurrency=8)
        client.close()
        return FleetRun(series, db_url, start, clock() - start, list(fake.log), fake.usage())


def assert_every_series_landed_once(run: FleetRun) -> None:
    """Each series asked for once and stored: the seeded candle and the one that closed after it."""
    asked = Counter((r.params["symbol"], r.params["interval"]) for r in run.log if r.path.endswith("/klines"))
    assert asked == Counter((one.symbol, one.interval.name) for one in run.series)
    with open_store(run.db_url) as store:
        for one in run.series:
            last = store.last_open_time(one)
            assert last == closed_limit(one.interval, int(run.start * 1000)) - one.interval.length_ms
            assert store.count(one, 0, last + 1) == 2


def test_four_shards_on_four_addresses_do_in_one_minute_what_one_address_cannot(tmp_path: Path) -> None:
    run = run_fleet(tmp_path)
    assert_every_series_landed_once(run)
    for index, address in enumerate(ADDRESSES):
        mine = {
            (one.symbol, one.interval.name) for one in shard_series(run.series, index + 1, len(ADDRESSES))
        }
        assert {(p["symbol"], p["interval"]) for p in sent_from_log(run.log, address, "/klines")} == mine
    # No 429, each address within its own limit, all of it inside the first minute.
    first_minute = math.floor(run.start / 60)
    assert {math.floor(r.at / 60) for r in run.log} == {first_minute}
    assert set(run.usage) == set(ADDRESSES)
    for address in ADDRESSES:
        assert run.usage[address].refused == {}
        assert set(run.usage[address].by_minute) == {first_minute}
        assert run.usage[address].peak <= ADDRESS_LIMIT
    # What one address may send in a minute is less than a third of the fleet's work.
    assert sum(u.weight for u in run.usage.values()) > 3 * ADDRESS_LIMIT


def test_one_address_spreads_the_same_work_over_four_minutes_under_its_budget(tmp_path: Path) -> None:
    """The weight budget holds each minute to the limit (no burst past it, no 429) and so needs four."""
    run = run_one_address(tmp_path)
    assert_every_series_landed_once(run)
    usage = run.usage[ADDRESSES[0]]
    assert usage.refused == {}
    first = math.floor(run.start / 60)
    assert sorted(usage.by_minute) == [first, first + 1, first + 2, first + 3]
    assert all(weight <= ADDRESS_LIMIT for weight in usage.by_minute.values())
    assert run.start + run.seconds >= (first + 3) * 60  # its last requests wait for the fourth minute
