"""What the storage tests share: candles, series, breakers with a clock of their own, and readers that
look at a database without our code."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest

from extractor.errors import StorageUnavailable
from extractor.intervals import DAY, Interval
from extractor.klines import DECIMAL_FIELDS, FIELDS, Kline, KlineBlock, Series, parse_csv, to_row
from extractor.markets import Market
from extractor.storage.tables import binance_text
from utils.circuit_breaker import CircuitBreaker, MemoryStateStore

SPOT = Market.parse("spot")
USDM = Market.parse("usdm")
M1 = Interval.parse("1m")
H1 = Interval.parse("1h")
D3 = Interval.parse("3d")
W1 = Interval.parse("1w")
MONTH = Interval.parse("1M")
BTC = Series(SPOT, "BTCUSDT", M1)
T0 = 1_700_000_040_000 - 1_700_000_040_000 % DAY  # 2023-11-14 00:00 UTC
FOREVER = 2**62
EXACT = ("0.00000001", "123456789.12345678", "98765432109.87654321", "12345678901234.12345678")
"""Design §3's values and a 22-digit quote volume."""
WIDEST = (
    "999999999999999999999999999999.9999",
    "9999999999999999.999999999999999999",
    "0.000000000000000001",
    "0.999999999999999999",
)
"""The widest text the row check accepts: 30 integer digits, 18 places, 34 digits in all."""


class FakeClock:
    """Time that moves only when a test says so; it starts at the real time, so it can be a wall clock."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def db_breaker(
    clock: FakeClock | None = None, threshold: int = 3, state_store: MemoryStateStore | None = None
) -> CircuitBreaker:
    clock = clock or FakeClock()
    return CircuitBreaker(
        failure_threshold=threshold,
        recovery_timeout=60,
        expected_exception=StorageUnavailable,
        name="db",
        clock=clock,
        wall_clock=clock,  # a shared state store times the recovery by the wall clock
        state_store=state_store,
    )


def series_of(symbol: str = "BTCUSDT", interval: Interval = M1, market: Market = SPOT) -> Series:
    return Series(market, symbol, interval)


def candle(open_time: int, series: Series = BTC, price: str = "42000.12345678") -> Kline:
    """A sane closed candle: low = open = close, high 1.5 above, taker volumes half the volumes."""
    high = format(Decimal(price) + Decimal("1.5"), "f")
    return Kline(
        series.market.name,
        series.symbol,
        series.interval.name,
        open_time,
        price,
        high,
        price,
        price,
        "12.34500000",
        series.interval.close_time(open_time),
        "518400.99000000",
        1234,
        "6.17250000",
        "259200.49500000",
    )


def candles(start: int, count: int, series: Series = BTC, price: str = "42000.12345678") -> list[Kline]:
    return [candle(series.interval.advance(start, i), series, price) for i in range(count)]


def archive_blocks(klines: Sequence[Kline], series: Series = BTC, rows: int = 2_000) -> list[Sequence[Kline]]:
    """``klines`` as the archive reader hands them over: checked blocks of ``rows`` that carry their
    CSV lines."""
    lines = [",".join(map(str, to_row(k))) for k in klines]
    blocks = []
    for lo in range(0, len(lines), rows):
        block = parse_csv(series, lines[lo : lo + rows], 0, FOREVER)
        assert isinstance(block, KlineBlock) and block.text is not None
        blocks.append(block)
    return blocks


def every_decimal(kline: Kline, text: str) -> Kline:
    return Kline._make(text if name in DECIMAL_FIELDS else v for name, v in zip(FIELDS, kline, strict=True))


def backend_of(url: str) -> str:
    """``sqlite``, ``mysql``, ``postgres`` or ``mongo``: the fixture's name for the backend of ``url``."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    return {"postgresql": "postgres", "mongodb": "mongo"}.get(scheme, scheme)


def as_stored(url: str, text: str) -> str:
    """What ``url``'s backend gives back for ``text``: the same text, except on MySQL, whose fixed-scale
    DECIMAL(48,18) answers at Binance's 8 places when that is exact, else with as few places as exact."""
    return binance_text(Decimal(text)) if backend_of(url) == "mysql" else text


def side_by_side(*calls: Callable[[], object]) -> None:
    """Run every call at once, each on a thread of its own; fails with whatever any of them raised."""
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def eventually(check: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    """Poll ``check`` until true: for a server noticing that a killed client's socket closed."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds:.0f} s")
        time.sleep(0.05)


def table_names(url: str) -> set[str]:
    """What exists in the database of ``url``, read without our code."""
    import pymongo
    import sqlalchemy

    if backend_of(url) == "mongo":
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url.split("?")[0])
        try:
            return set(client.get_default_database().list_collection_names())
        finally:
            client.close()
    engine = sqlalchemy.create_engine(plain_driver_url(url))
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def plain_driver_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)
