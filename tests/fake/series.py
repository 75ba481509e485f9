"""The deterministic candle generator behind every answer of the fake: REST pages and archive files alike.

A series is (market, symbol, interval). Its rows are a pure function of the series and the open time (the
forming candle also of the current time), so REST and the archive serve the same candles, two runs serve
the same data, and the market is part of the seed: USD-M ``BTCUSDT`` never equals spot ``BTCUSDT``.
Interval arithmetic is the fake's own, not the extractor's, so the two cannot agree by sharing a bug.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
MONDAY_OFFSET = 4 * DAY  # 1970-01-01 was a Thursday
MONTH = "1M"

LENGTHS: dict[str, int] = {
    "1s": SECOND,
    "1m": MINUTE,
    "3m": 3 * MINUTE,
    "5m": 5 * MINUTE,
    "15m": 15 * MINUTE,
    "30m": 30 * MINUTE,
    "1h": HOUR,
    "2h": 2 * HOUR,
    "4h": 4 * HOUR,
    "6h": 6 * HOUR,
    "8h": 8 * HOUR,
    "12h": 12 * HOUR,
    "1d": DAY,
    "3d": 3 * DAY,
    "1w": WEEK,
    MONTH: 0,  # calendar months: no fixed length
}
INTERVALS: tuple[str, ...] = tuple(LENGTHS)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15


def to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def month_start(ms: int) -> int:
    """The first millisecond of the calendar month (UTC) containing ``ms``."""
    moment = to_datetime(ms)
    return to_ms(datetime(moment.year, moment.month, 1, tzinfo=UTC))


def add_months(month: int, months: int) -> int:
    """The start of the month ``months`` after the month starting at ``month``."""
    moment = to_datetime(month)
    index = moment.year * 12 + moment.month - 1 + months
    return to_ms(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC))


def align(interval: str, ms: int) -> int:
    """The open time of the candle containing ``ms``; the fake's 3d candles open on epoch multiples."""
    if interval == MONTH:
        return month_start(ms)
    if interval == "1w":
        return ms - (ms - MONDAY_OFFSET) % WEEK
    return ms - ms % LENGTHS[interval]


def next_open(interval: str, open_time: int) -> int:
    if interval == MONTH:
        return add_months(open_time, 1)
    return open_time + LENGTHS[interval]


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class SymbolSpec:
    """How one symbol trades on the fake: when it was listed, its status, its outage gaps, its digits.

    Futures contracts also have a ``contract_type`` and, once delivered or settled, ``delivered_at``:
    no candle opens at or after it. ``price_scale`` other than ``normal`` is for spot symbols only.
    """

    listed_at: int
    status: str = "TRADING"
    outages: list[tuple[int, int]] = field(default_factory=list)
    price_scale: str = "normal"
    contract_type: str = "PERPETUAL"
    delivered_at: int | None = None


@dataclass(frozen=True)
class Digits:
    """Decimal places of a market's rows, and whether field 8 is the base volume of inverse contracts."""

    price: int
    volume: int
    quote: int
    inverse: bool = False
    volume_span: int = 5000
    """Volumes are drawn below this many whole units (COIN-M counts contracts)."""


def _piece(places: int) -> str:
    # "%.0s" prints nothing: a 0-place field takes the same (whole, fraction) pair as the others.
    return "%d.%0" + str(places) + "d" if places else "%d%.0s"


def row_templates(digits: Digits) -> tuple[str, str, str]:
    """``%``-templates of one row: REST JSON, archive CSV in ms, and archive CSV in microseconds."""
    p, v, q = _piece(digits.price), _piece(digits.volume), _piece(digits.quote)
    rest = f'[%d,"{p}","{p}","{p}","{p}","{v}",%d,"{q}",%d,"{v}","{q}","0"]'
    csv = f"%d,{p},{p},{p},{p},{v},%d,{q},%d,{v},{q},0"
    micro = f"%d000,{p},{p},{p},{p},{v},%d999,{q},%d,{v},{q},0"
    return rest, csv, micro


def _base_price(symbol: str) -> int:
    known = {"BTC": 30_000, "ETH": 2_000, "BNB": 300}
    for asset, price in known.items():
        if symbol.startswith(asset):
            return price
    return 1 + _seed(symbol) % 999


class Series:
    """The candles of one (market, symbol, interval): which open times exist, and each row's values."""

    def __init__(self, market: str, symbol: str, interval: str, spec: SymbolSpec, digits: Digits) -> None:
        if interval not in LENGTHS:
            raise ValueError(f"{interval!r} is not an interval")
        self.market = market
        self.symbol = symbol
        self.interval = interval
        self.step = LENGTHS[interval]
        self.first_open = align(interval, spec.listed_at)
        self.end = spec.delivered_at  # no candle opens at or after it
        self.outages = sorted(spec.outages)
        # spot keeps the seed it had before markets existed, so its data did not change
        self.seed = _seed(f"{symbol}/{interval}" if market == "spot" else f"{market}:{symbol}/{interval}")
        self.seed2 = _mix(self.seed)
        self.rest_row, self.csv_row, self.csv_row_us = row_templates(digits)
        self.price_unit = 10**digits.price
        self.volume_unit = 10**digits.volume
        self.quote_unit = 10**digits.quote
        self.inverse = digits.inverse
        self.contract_size = 100 if symbol.startswith("BTC") else 10
        if self.inverse:  # base volume = contracts × contract size (USD) / price
            self.quote_factor = self.contract_size * self.quote_unit * self.price_unit
        else:  # quote volume = volume × price
            self.quote_factor = self.volume_unit * self.price_unit // self.quote_unit
        self._scale(spec, symbol, digits)

    def _scale(self, spec: SymbolSpec, symbol: str, digits: Digits) -> None:
        e8 = 100_000_000
        if spec.price_scale == "normal":
            base = _base_price(symbol) * self.price_unit
            self.low_min, self.low_span, self.width_max = base, base // 10, base // 100
            self.vol_min = self.volume_unit // 1000
            self.vol_span = digits.volume_span * self.volume_unit
            self.trades_max = 5000
            return
        if digits.price != 8 or digits.volume != 8:
            raise ValueError(f"price_scale {spec.price_scale!r} needs 8-decimal rows (spot)")
        if spec.price_scale == "tiny":
            self.low_min, self.low_span, self.width_max = 1, 9000, 999
            self.vol_min, self.vol_span, self.trades_max = 10**6 * e8, 10**10 * e8, 900
        elif spec.price_scale == "huge":
            self.low_min, self.low_span, self.width_max = 200 * e8, 700 * e8, 99 * e8
            self.vol_min, self.vol_span, self.trades_max = 5 * 10**10 * e8, 5 * 10**10 * e8 - 1, 90_000
        else:
            raise ValueError(f"price_scale {spec.price_scale!r} is not normal, tiny or huge")

    # -- which candles exist ----------------------------------------------------------------------

    def align(self, ms: int) -> int:
        return align(self.interval, ms)

    def next_open(self, open_time: int) -> int:
        return open_time + self.step if self.step else add_months(open_time, 1)

    def close_time(self, open_time: int) -> int:
        return self.next_open(open_time) - 1

    def is_closed(self, open_time: int, now: int) -> bool:
        return self.next_open(open_time) - 1 < now

    def ceil(self, ms: int) -> int:
        opened = self.align(ms)
        return opened if opened == ms else self.next_open(opened)

    def _last_open(self, last: int) -> int:
        """``last`` bounded by the end of trading (delivery), as an inclusive open-time bound."""
        return last if self.end is None else min(last, self.end - 1)

    def _in_outage(self, open_time: int) -> bool:
        return any(start <= open_time < end for start, end in self.outages)

    def _filtered(self, times: Iterable[int], lo: int, hi: int) -> Iterable[int]:
        if any(start <= hi and end > lo for start, end in self.outages):
            return (t for t in times if not self._in_outage(t))
        return times

    def ascending(self, start: int, last: int, limit: int) -> list[int]:
        """Existing open times ``>= start`` and ``<= last``, oldest first, at most ``limit``."""
        first = max(self.ceil(start), self.first_open)
        last = self._last_open(last)
        if first > last:
            return []
        times: Iterable[int]
        times = range(first, last + 1, self.step) if self.step else self._months(first, last)
        return list(islice(self._filtered(times, first, last), limit))

    def descending(self, last: int, limit: int, lowest: int | None = None) -> list[int]:
        """The ``limit`` newest existing open times ``<= last`` (and ``>= lowest``), oldest first."""
        bottom = self.first_open if lowest is None else max(self.ceil(lowest), self.first_open)
        top = self.align(self._last_open(last))
        if top < bottom:
            return []
        times: Iterable[int]
        times = range(top, bottom - 1, -self.step) if self.step else self._months_down(top, bottom)
        newest = list(islice(self._filtered(times, bottom, top), limit))
        newest.reverse()
        return newest

    def newest_closed(self, now: int) -> int | None:
        """The open time of the newest candle that has closed by ``now``, if any."""
        closed = [t for t in self.descending(now, 2) if self.is_closed(t, now)]
        return closed[-1] if closed else None

    def _months(self, first: int, last: int) -> Iterator[int]:
        t = first
        while t <= last:
            yield t
            t = add_months(t, 1)

    def _months_down(self, top: int, bottom: int) -> Iterator[int]:
        t = top
        while t >= bottom:
            yield t
            t = add_months(t, -1)

    # -- what each candle holds -------------------------------------------------------------------

    def values(self, open_time: int, now: int) -> tuple[int, ...]:
        """The 11 used fields as integers, decimals split in (whole, fraction): a row template's input.

        A sane candle every time: low <= open, close <= high; taker volumes <= volumes. The candle
        containing ``now`` is forming: its volumes grow and its close moves as ``now`` does.
        """
        h = _mix((open_time * _GOLDEN + self.seed) & _M64)
        g = _mix(h ^ self.seed2)
        low = self.low_min + h % self.low_span
        width = (h >> 24) % (self.width_max + 1)
        high = low + width
        open_ = low + (h >> 40) % (width + 1)
        close = low + g % (width + 1)
        volume = self.vol_min + (g >> 8) % self.vol_span
        trades = 1 + (g >> 40) % self.trades_max
        taker = volume * ((h >> 52) % 1001) // 1000
        close_time = (open_time + self.step if self.step else add_months(open_time, 1)) - 1
        if close_time >= now:
            length = close_time + 1 - open_time
            elapsed = min(max(now - open_time + 1, 1), length)
            volume = volume * elapsed // length
            taker = taker * elapsed // length
            trades = trades * elapsed // length
            close = low + _mix((now // 1000) ^ self.seed2) % (width + 1)
        vwap = (low + high) >> 1
        if self.inverse:
            quote = volume * self.quote_factor // vwap
            taker_quote = taker * self.quote_factor // vwap
        else:
            quote = volume * vwap // self.quote_factor
            taker_quote = taker * vwap // self.quote_factor
        p, v, q = self.price_unit, self.volume_unit, self.quote_unit
        return (
            open_time,
            *divmod(open_, p),
            *divmod(high, p),
            *divmod(low, p),
            *divmod(close, p),
            *divmod(volume, v),
            close_time,
            *divmod(quote, q),
            trades,
            *divmod(taker, v),
            *divmod(taker_quote, q),
        )

    def render(self, open_times: Iterable[int], now: int, template: str) -> list[str]:
        """Each candle's row through ``template`` (``rest_row``, ``csv_row`` or ``csv_row_us``)."""
        values = self.values
        return [template % values(t, now) for t in open_times]

    def page_json(self, open_times: list[int], now: int) -> bytes:
        return ("[" + ",".join(self.render(open_times, now, self.rest_row)) + "]").encode()
