"""What the pipeline tests share: a RestSource against the fake exchange, a manual clock both sides move,
a SQLite store and the stored candles in wire format.

A test builds the collaborators the composition root would build (``Runtime``), with its own clock,
sleep and breaker where it needs them, and hands them to ``commands``; nothing is patched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from extractor.errors import ExchangeUnavailable
from extractor.intervals import Interval
from extractor.klines import Series, to_row
from extractor.lifecycle import RunStop
from extractor.markets import SPOT, Market
from extractor.sources.http import BanRecord, RestClient, RetryPolicy
from extractor.sources.rest import RestSource
from extractor.sources.weight import WeightBudget
from extractor.storage import KlineStore, open_store
from utils.circuit_breaker import CircuitBreaker


def series(symbol: str = "BTCUSDT", interval: str = "1m", market: Market = SPOT) -> Series:
    return Series(market, symbol, Interval.parse(interval))


class SharedClock:
    """A manual clock that the fake, the client and its worker threads share, moved only by their sleeps:
    minutes of waiting pass in no real time. A sleep moves it to ``seconds`` after the moment this
    thread last read it, never back, so workers waiting for the same minute move it once."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.slept: list[float] = []
        self._lock = threading.Lock()
        self._read = threading.local()

    def __call__(self) -> float:
        with self._lock:
            self._read.at = self.now
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now = max(self.now, getattr(self._read, "at", self.now) + max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def rest_source(
    url: str,
    *,
    market: Market = SPOT,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] | None = None,
    concurrency: int = 8,
    stop: RunStop | None = None,
    breaker: CircuitBreaker | None = None,
    bans: BanRecord | None = None,
    retry: RetryPolicy | None = None,
    source_class: type[RestSource] = RestSource,
    **source_options: Any,
) -> RestSource:
    """The REST source of ``market`` at ``url``, wired as ``Runtime.exchange`` wires it, on the given
    clocks: ``sleep`` serves the budget's and the retries' waits (the stop's, by default)."""
    stop = stop if stop is not None else RunStop()
    sleep = sleep if sleep is not None else stop.sleep
    budget = WeightBudget(market.weight_limit, clock=clock, sleep=sleep)
    client = RestClient(
        url,
        breaker=breaker
        if breaker is not None
        else CircuitBreaker(10, 60, ExchangeUnavailable, name="api", clock=clock, wall_clock=wall_clock),
        budget=budget,
        bans=bans if bans is not None else BanRecord(None, wall_clock=wall_clock),
        stop=stop,
        retry=retry if retry is not None else RetryPolicy(attempts=5, budget=30.0, backoff=0.01),
        concurrency=concurrency,
        sleep=sleep,
        clock=clock,
    )
    source = source_class(market, client, clock=clock, wall_clock=wall_clock, **source_options)
    budget.server_offset_ms = source.server_offset_ms
    return source


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def open_sqlite(path: Path) -> KlineStore:
    """A SQLite store at ``path``, created on first use; a context manager that closes it."""
    return open_store(sqlite_url(path))


def stored_rows(url: str, one: Series, start: int, end: int) -> list[list[Any]]:
    """Stored candles of ``one`` in wire format, to compare field by field with ``FakeExchange.rows``."""
    with open_store(url) as store:
        return [to_row(k) for k in store.read(one, start, end)]


def stored_gaps(url: str, one: Series, start: int, end: int) -> list[tuple[int, int]]:
    """The ranges recorded as absent on the exchange."""
    with open_store(url) as store:
        return [(g.start, g.end) for g in store.exchange_gaps(one, start, end)]
