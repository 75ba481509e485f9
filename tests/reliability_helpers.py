"""What the reliability tests share: running the installed script, killing it on cue, reading the store back.

Also two stand-ins the fake exchange does not offer: an exchange whose every endpoint answers 503
(to count breaker trials), and a Runtime whose exchange client shares a manual clock with the fake.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from extractor.binance import BinanceClient
from extractor.intervals import Interval
from extractor.klines import to_row
from extractor.pipeline import Runtime
from extractor.settings import Settings
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange, ManualClock

EXECUTABLE = Path(sys.executable).with_name("binance-extractor")
OUR_PREFIXES = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "BINANCE_", "DATABASE_URL", "LOG_")
LOG_RECORD = re.compile(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ |\{"ts": )')
RUN_TIMEOUT = 120.0
"""A safety net for a run that hangs; no test waits for it on purpose."""


def cli_env(**settings: str) -> dict[str, str]:
    """The caller's environment without any of our variables, plus ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(OUR_PREFIXES)}
    return {**inherited, **settings}


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


def kill_after_klines_requests(
    exchange: FakeExchange, process: subprocess.Popen[str], requests_seen: int
) -> None:
    """SIGKILL ``process`` once the exchange has seen ``requests_seen`` klines requests from it."""
    wait_until(
        lambda: exchange.request_counts["/api/v3/klines"] >= requests_seen,
        process,
        f"{requests_seen} klines requests",
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


def stored_rows(url: str, symbol: str, interval: str, start: int, end: int) -> list[list[Any]]:
    """Stored candles in wire format, to compare field by field with ``FakeExchange.rows``."""
    with open_store(url) as store:
        return [to_row(k) for k in store.read(symbol, Interval.parse(interval), start, end)]


def window_fill(
    url: str, exchange: FakeExchange, symbol: str, interval: str, start: int, end: int
) -> list[tuple[int, int]]:
    """(stored, served) candles per request window of ``[start, end)``, in the pipeline's tiling."""
    series = Interval.parse(interval)
    with open_store(url) as store:
        stored = list(store.open_times(symbol, series, start, end))
    served = [row[0] for row in exchange.rows(symbol, interval, start, end)]
    return [
        (
            bisect.bisect_left(stored, hi) - bisect.bisect_left(stored, lo),
            bisect.bisect_left(served, hi) - bisect.bisect_left(served, lo),
        )
        for lo, hi in series.windows(start, end)
    ]


def age_breaker(state_file: Path, name: str, seconds: float) -> None:
    """Move a persisted breaker's last failure ``seconds`` into the past, as if that time had gone by."""
    state = json.loads(state_file.read_text())
    for key in ("last_failure_time", "opened_at"):
        if state[name][key] is not None:
            state[name][key] -= seconds
    state_file.write_text(json.dumps(state))


def via_proxy(url: str, address: str) -> str:
    """``url`` with its host and port replaced by a proxy's ``host:port``; user and password kept."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, f"{userinfo}{at}{address}", parts.path, parts.query, parts.fragment))


def spend_weight(exchange: FakeExchange, leave: int) -> None:
    """Another client on the same IP uses this minute's request weight until only ``leave`` is left."""
    used = 0
    with requests.Session() as neighbour:
        while used < exchange.weight_limit - leave:
            left = exchange.weight_limit - leave - used
            path = "/api/v3/exchangeInfo?symbol=BTCUSDT" if left >= 20 else "/api/v3/ping"
            answer = neighbour.get(exchange.url + path, timeout=5)
            answer.raise_for_status()
            used = int(answer.headers["X-MBX-USED-WEIGHT-1M"])


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


class RuntimeWithClient(Runtime):
    """A Runtime whose exchange client takes clock and sleep from the test, with the usual breaker."""

    def __init__(
        self, settings: Settings, client_class: type[BinanceClient] = BinanceClient, **client_options: Any
    ) -> None:
        super().__init__(settings)
        self._test_client = client_class(
            settings.base_url,
            breaker=self.api_breaker,
            concurrency=settings.concurrency,
            ban_file=self.ban_file,
            backoff_base=settings.backoff_base,
            **client_options,
        )

    @property
    def client(self) -> BinanceClient:
        return self._test_client

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._test_client.close()


class DeadExchange:
    """An exchange whose load balancer answers 503 to every path: counts what reaches it."""

    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        dead = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with dead._lock:
                    dead.requests += 1
                body = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
                self.send_response(503)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> DeadExchange:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
