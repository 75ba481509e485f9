"""Binance kline intervals: lengths, open-time alignment, and tiling a range into windows.

Candles up to ``1d`` open on multiples of their length since the epoch, ``1w`` on Mondays 00:00 UTC,
``1M`` on the first of each calendar month. ``3d`` has no anchor we may assume: its open times are
taken from what the exchange returns, so it is never aligned here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from extractor.errors import BadInputError

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
MONDAY_OFFSET = 4 * DAY  # 1970-01-01 was a Thursday; the first Monday is 4 days later

_LENGTHS: dict[str, int] = {
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
    "1M": 31 * DAY,  # the longest month; used only to bound window sizes
}

INTERVAL_NAMES: tuple[str, ...] = tuple(_LENGTHS)


def _month_index(ms: int) -> int:
    days = ms // DAY
    # civil-from-days (Howard Hinnant), to avoid datetime for a hot, tiny computation
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    year = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    if month <= 2:
        year += 1
    return year * 12 + (month - 1)


def _month_start(index: int) -> int:
    year, month0 = divmod(index, 12)
    month = month0 + 1
    y = year - 1 if month <= 2 else year
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = month - 3 if month > 2 else month + 9
    doy = (153 * mp + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146097 + doe - 719468) * DAY


@dataclass(frozen=True, slots=True)
class Interval:
    """One kline interval, e.g. ``Interval.parse("1h")``."""

    name: str
    length_ms: int

    @classmethod
    def parse(cls, text: str) -> Interval:
        length = _LENGTHS.get(text)
        if length is None:
            raise BadInputError(
                f"unknown interval {text!r}; valid intervals are {' '.join(INTERVAL_NAMES)} "
                "(case-sensitive: 1m is a minute, 1M a month)"
            )
        return _INTERVALS[text]

    @property
    def is_calendar(self) -> bool:
        """True for intervals whose open times follow the calendar, not a fixed step."""
        return self.name == "1M"

    @property
    def is_anchored(self) -> bool:
        """False for ``3d``, whose phase is whatever the exchange uses."""
        return self.name != "3d"

    def align(self, ms: int) -> int:
        """The open time of the candle containing ``ms`` (``3d``: ``ms`` itself)."""
        if self.name == "1M":
            return _month_start(_month_index(ms))
        if self.name == "1w":
            return ms - (ms - MONDAY_OFFSET) % WEEK
        if self.name == "3d":
            return ms
        return ms - ms % self.length_ms

    def ceil(self, ms: int) -> int:
        """The first open time at or after ``ms``."""
        opened = self.align(ms)
        return opened if opened == ms else self.next_open(opened)

    def next_open(self, open_ms: int) -> int:
        """The open time of the candle after the one opening at ``open_ms``."""
        if self.name == "1M":
            return _month_start(_month_index(open_ms) + 1)
        return open_ms + self.length_ms

    def advance(self, open_ms: int, candles: int) -> int:
        """The open time ``candles`` candles after ``open_ms``."""
        if self.name == "1M":
            return _month_start(_month_index(open_ms) + candles)
        return open_ms + candles * self.length_ms

    def close_time(self, open_ms: int) -> int:
        """Binance's close_time of the candle opening at ``open_ms``."""
        return self.next_open(open_ms) - 1

    def open_times(self, start: int, end: int) -> Iterator[int]:
        """Every open time in ``[start, end)`` (``3d``: stepping from ``start``)."""
        t = self.ceil(start)
        while t < end:
            yield t
            t = self.next_open(t)

    def count(self, start: int, end: int) -> int:
        """How many candles open in ``[start, end)``."""
        first = self.ceil(start)
        if first >= end:
            return 0
        if self.name == "1M":
            return _month_index(end - 1) - _month_index(first) + 1
        return (end - 1 - first) // self.length_ms + 1

    def tiles(
        self, start: int, end: int, candles: int, span_ms: int | None = None
    ) -> Iterator[tuple[int, int]]:
        """Tile ``[start, end)`` into half-open windows of at most ``candles`` candles (and ``span_ms``).

        Windows touch with no gap and no overlap; the first starts at ``start`` and the last ends at
        ``end`` so every open time in the range falls in exactly one window.
        """
        lo = start
        while lo < end:
            hi = min(self.advance(self.ceil(lo), candles), end)
            if span_ms is not None:
                hi = min(hi, lo + span_ms)
            yield lo, hi
            lo = hi

    def __str__(self) -> str:
        return self.name


_INTERVALS: dict[str, Interval] = {name: Interval(name, length) for name, length in _LENGTHS.items()}
