"""What the reliability tests share: running the installed script, killing it on cue, reading the store back.

Also two stand-ins the fake exchange does not offer: a load balancer in front of it that can answer 503 to
every path (to count breaker trials, then heal on the same address), and a Runtime whose REST sources
take their clocks and sleeps from the test.
"""

from __future__ import annotations

import bisect
import contextlib
import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from extractor.errors import ExchangeUnavailable
from extractor.intervals import DAY, Interval
from extractor.klines import Series, to_row
from extractor.markets import SPOT, Market
from extractor.pipeline.runtime import Runtime, dependency_key
from extractor.settings import API_FAILURE_THRESHOLD, Settings
from extractor.sources.http import BanRecord, RestClient, RetryPolicy
from extractor.sources.rest import RestSource
from extractor.sources.weight import WeightBudget
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange, ManualClock

EXECUTABLE = Path(sys.executable).with_name("binance-extractor")
OUR_PREFIXES = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "BINANCE_", "DATABASE_URL", "LOG_")
LOG_RECORD = re.compile(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ |\{"ts": )')
RUN_TIMEOUT = 120.0
"""A safety net for a run that hangs; no test waits for it on purpose."""
KLINES = "/api/v3/klines"


def cli_env(**settings: str) -> dict[str, str]:
    """The caller's environment without any of our variables, plus ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(OUR_PREFIXES)}
    return {**inherited, **settings}


def exchange_env(state_dir: Path, exchange: FakeExchange, db_url: str, **extra: str) -> dict[str, str]:
    """An environment for the CLI on ``exchange`` alone: its REST API and its archive, never the network.

    ``extra`` adds variables or replaces these (``BINANCE_API_URL`` of a proxy in front of it)."""
    settings = {
        "EXTRACTOR_STATE_DIR": str(state_dir),
        "DATABASE_URL": db_url,
        "BINANCE_API_URL": exchange.url,
        "BINANCE_ARCHIVE_URL": exchange.archive_url,
    }
    return cli_env(**{**settings, **extra})


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One run of the installed ``binance-extractor``, as cron would start it."""
    return subprocess.run(
        [str(EXECUTABLE), *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(EXECUTABLE), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    """Poll ``condition`` while ``process`` runs; fail if it ends first (the moment was missed)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended (exit {process.returncode}) before {what}: {err or out}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.002)


def pages_asked(exchange: FakeExchange, market: Market = SPOT) -> list[int]:
    """The start of every full REST page of ``market`` the exchange answered (200), in the order asked.

    A listing probe (``limit=1``) is not a page; a page asked again after a fault answers twice.
    """
    limit = str(market.page_limit)
    return [
        int(r.params["startTime"])
        for r in list(exchange.log)
        if r.market == market.name
        and r.path.endswith("/klines")
        and r.status == 200
        and r.params.get("limit") == limit
    ]


def kill_after_klines_requests(
    exchange: FakeExchange, process: subprocess.Popen[str], requests_seen: int
) -> None:
    """SIGKILL ``process`` once the exchange has seen ``requests_seen`` klines requests from it."""
    wait_until(
        lambda: exchange.request_counts[KLINES] >= requests_seen, process, f"{requests_seen} klines requests"
    )
    process.kill()
    process.communicate()


def one_line(stderr: str) -> str:
    """The single line a failed run must print when nothing else happened; no traceback, nothing more."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr}"
    return lines[0]


def the_error(stderr: str) -> str:
    """The one error line of a failed run, printed last; anything before it must be a log record."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("binance-extractor: ")]
    assert errors == lines[-1:], f"expected one error line, last: {stderr}"
    for line in lines[:-1]:
        assert LOG_RECORD.match(line), f"not a log record: {line}"
    return lines[-1]


def series_of(symbol: str, interval: str, market: Market = SPOT) -> Series:
    return Series(market, symbol, Interval.parse(interval))


def stored_rows(
    url: str, symbol: str, interval: str, start: int, end: int, market: Market = SPOT
) -> list[list[Any]]:
    """Stored candles in wire format, to compare field by field with ``FakeExchange.rows``."""
    with open_store(url) as store:
        return [to_row(k) for k in store.read(series_of(symbol, interval, market), start, end)]


def window_fill(
    url: str, exchange: FakeExchange, symbol: str, interval: str, start: int, end: int, market: Market = SPOT
) -> list[tuple[int, int]]:
    """(stored, served) candles per REST page of ``[start, end)``, in the REST source's tiling."""
    series = series_of(symbol, interval, market)
    with open_store(url) as store:
        stored = list(store.open_times(series, start, end))
    served = [row[0] for row in exchange.rows(symbol, interval, start, end, market=market.name)]
    return [
        (
            bisect.bisect_left(stored, hi) - bisect.bisect_left(stored, lo),
            bisect.bisect_left(served, hi) - bisect.bisect_left(served, lo),
        )
        for lo, hi in series.interval.tiles(start, end, market.page_limit, market.max_span_ms)
    ]


def breaker_file(state_dir: Path) -> Path:
    return state_dir / "breakers.json"


def breaker_name(group: str, url: str) -> str:
    """The persisted name of the api breaker of the exchange at ``url`` (``api:127.0.0.1:8080``)."""
    return f"{group}:{dependency_key(url)}"


def age_breaker(state_dir: Path, name: str, seconds: float) -> None:
    """Move a persisted breaker's times ``seconds`` into the past, as if that time had gone by."""
    path = breaker_file(state_dir)
    state = json.loads(path.read_text())
    entry = state[name]
    for key in ("last_failure_time", "opened_at", "open_until"):
        if entry.get(key) is not None:
            entry[key] -= seconds
    entry["permits"] = [[number, granted - seconds] for number, granted in entry.get("permits", [])]
    path.write_text(json.dumps(state))


def ban_file(state_dir: Path) -> Path:
    """The one file a run has recorded an IP ban in."""
    found = sorted(state_dir.glob("ban-*.json"))
    assert len(found) == 1, f"expected one ban file in {state_dir}, found {found}"
    return found[0]


def via_proxy(url: str, address: str) -> str:
    """``url`` with its host and port replaced by a proxy's ``host:port``; user and password kept."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, f"{userinfo}{at}{address}", parts.path, parts.query, parts.fragment))


class SharedClock:
    """A ManualClock that worker threads may all advance: their sleeps move it, one at a time."""

    def __init__(self, start: float) -> None:
        self.clock = ManualClock(start)
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.clock()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.clock.advance(seconds)


class RuntimeOnClock(Runtime):
    """A Runtime whose REST sources read ``clock`` (as monotonic and wall clock) and sleep on it.

    Everything else (breakers, state directory, store) is the composition root's own.
    """

    def __init__(self, settings: Settings, clock: SharedClock) -> None:
        super().__init__(settings)
        self.clock = clock
        self._sources: dict[str, RestSource] = {}

    def exchange(self, market: Market) -> RestSource:
        found = self._sources.get(market.name)
        if found is not None:
            return found
        settings, clock = self.settings, self.clock
        base_url = settings.base_url_for(market)
        key = dependency_key(base_url)
        budget = WeightBudget(market.weight_limit, clock=clock, sleep=clock.sleep)
        client = RestClient(
            base_url,
            breaker=self.breaker(f"api:{key}", "api", ExchangeUnavailable, API_FAILURE_THRESHOLD),
            budget=budget,
            bans=BanRecord(self.state_dir / "ban-on-clock.json", wall_clock=clock),
            stop=self.stop,
            retry=RetryPolicy(settings.attempts, settings.retry_budget, settings.backoff),
            concurrency=settings.concurrency,
            read_timeout=settings.read_timeout,
            sleep=clock.sleep,
            clock=clock,
        )
        source = RestSource(market, client, clock=clock, wall_clock=clock)
        budget.server_offset_ms = source.server_offset_ms
        self._sources[market.name] = source
        return source

    def close(self) -> None:
        try:
            super().close()
        finally:
            for source in self._sources.values():
                source.close()


class ExchangeFront:
    """A load balancer on its own port in front of ``exchange``: while ``down`` it answers 503 with an
    HTML page to every path; otherwise it forwards each GET. ``paths`` lists what reached it."""

    def __init__(self, exchange: FakeExchange) -> None:
        self.down = True
        self.paths: list[str] = []
        self._lock = threading.Lock()
        upstream = urlsplit(exchange.url)
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with front._lock:
                    front.paths.append(self.path.partition("?")[0])
                if front.down:
                    status, headers = 503, [("Content-Type", "text/html")]
                    body = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
                else:
                    connection = http.client.HTTPConnection(
                        upstream.hostname or "", upstream.port, timeout=30
                    )
                    try:
                        connection.request("GET", self.path)
                        answer = connection.getresponse()
                        body = answer.read()
                        status = answer.status
                        headers = [
                            (k, v)
                            for k, v in answer.getheaders()
                            if k.lower() not in ("content-length", "connection")
                        ]
                    finally:
                        connection.close()
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.paths)

    def __enter__(self) -> ExchangeFront:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the scenario most tests share: two months of BTCUSDT 1m from REST ----------------------------------

START, END = "2024-01-01", "2024-03-01"
START_MS, END_MS = 1_704_067_200_000, 1_709_251_200_000
WINDOWS = 87
"""REST pages for BTCUSDT 1m over START..END: 86,400 candles, 1,000 per page."""
SHORT_END_MS = START_MS + 2 * DAY
BACKFILL = [
    "backfill",
    "-s",
    "BTCUSDT",
    "-i",
    "1m",
    "--start",
    START,
    "--end",
    END,
    "--no-progress",
    "--source",
    "rest",
]
"""REST paging is what these tests disturb; ``--source auto`` would read these months from the archive."""
EXTRACT = ["extract", "-s", "ETHUSDT", "-i", "1m", "--lookback", "1d"]
BREAKER_OPEN = re.compile(
    r"^binance-extractor: error: the (api|db) circuit breaker is open after repeated failures of the "
    r"(exchange|database) at [^ ]+( \(last error: .*\))?; next trial at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) "
    r"— retry after that, or run `binance-extractor breakers reset` once the cause is fixed$"
)


def backfill_with(changes: list[str]) -> list[str]:
    """BACKFILL with each ``--flag value`` in ``changes`` replacing the default one."""
    args = BACKFILL[1:]
    for flag, value in zip(changes[::2], changes[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return ["backfill", *args]


SHORT_BACKFILL = backfill_with(["--end", str(SHORT_END_MS)])


def sqlite_url_in(folder: Path) -> str:
    return f"sqlite:///{folder / 'klines.db'}"


def assert_exact(url: str, exchange: FakeExchange, start: int = START_MS, end: int = END_MS) -> None:
    """Stored candles equal the exchange's field by field: nothing missing, nothing twice, nothing else."""
    want = exchange.rows("BTCUSDT", "1m", start, end)
    got = stored_rows(url, "BTCUSDT", "1m", start, end)
    assert len(got) == len(want)
    assert got == want


def assert_no_duplicate_or_hole(url: str, env: dict[str, str], start: str = START, end: str = END) -> None:
    """No open time stored twice (SQLite's own count), and ``gaps`` finds no hole."""
    path = url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT open_time) FROM klines"
            " WHERE market = 'spot' AND symbol = 'BTCUSDT' AND interval = '1m'"
        ).fetchone()
    assert total == distinct
    audit = run_cli(["gaps", "-s", "BTCUSDT", "-i", "1m", "--start", start, "--end", end, "--json"], env)
    assert audit.returncode == 0, audit.stderr
    assert [entry["gaps"] for entry in json.loads(audit.stdout)] == [[]]


def breaker_states(env: dict[str, str]) -> dict[str, str]:
    """The state of each persisted breaker by its group (api, db, archive), as ``breakers --json`` says."""
    status = run_cli(["breakers", "--json"], env)
    assert status.returncode == 0, status.stderr
    states: dict[str, str] = {}
    for entry in json.loads(status.stdout):
        group = entry["name"].partition(":")[0]
        assert group not in states, f"two {group} breakers: {status.stdout}"
        states[group] = entry["state"]
    return states


class Gate:
    """Holds every REST request the exchange receives once it has seen ``after`` klines requests, until
    :meth:`open`: a run frozen at a known point, with what came before answered and written.

    A request racing with the ``after``-th may be held too. A context manager: leaving it opens the gate
    and detaches it, so no server thread stays blocked.
    """

    def __init__(self, exchange: FakeExchange, after: int) -> None:
        self.exchange = exchange
        self.after = after
        self.held = 0
        self.clients: list[str] = []
        """The client address of every REST request, held or not, as it arrived."""
        self._opened = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> Gate:
        self.exchange.before_admit = self._admit
        return self

    def __exit__(self, *exc: object) -> None:
        self.exchange.before_admit = None
        self.open()

    def open(self) -> None:
        self._opened.set()

    def _admit(self, market: str, client: str) -> None:
        with self._lock:
            self.clients.append(client)
        if self._opened.is_set() or self.exchange.request_counts[KLINES] <= self.after:
            return
        with self._lock:
            self.held += 1
        self._opened.wait(RUN_TIMEOUT)


@contextlib.contextmanager
def counting_stored(url: str, symbol: str = "BTCUSDT", interval: str = "1m") -> Iterator[Callable[[], int]]:
    """A poll of how many candles of the series the database at ``url`` holds, on one store of the test's
    own (which makes the schema first, as the run would)."""
    series = series_of(symbol, interval)
    with open_store(url) as store:
        yield lambda: store.count(series, 0, 2**62)


def settled_prefix(exchange: FakeExchange, gate: Gate, start: int, end: int) -> int | None:
    """Candles of the BTCUSDT 1m pages of ``[start, end)`` answered in plan order up to the first page
    not answered, once every klines request that passed ``gate`` has been answered (None before that):
    what a run frozen at the gate has stored once its writer has caught up."""
    logged = sum(1 for r in list(exchange.log) if r.path == KLINES)
    if gate.held == 0 or exchange.request_counts[KLINES] != logged + gate.held:
        return None
    answered = set(pages_asked(exchange))
    candles = 0
    for lo, hi in Interval.parse("1m").tiles(start, end, SPOT.page_limit):
        if lo not in answered:
            break
        candles += len(exchange.rows("BTCUSDT", "1m", lo, hi))
    return candles
