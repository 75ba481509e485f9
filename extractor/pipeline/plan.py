"""Range algebra for planning: what has closed, what is missing, and where a run of candles has holes.

Pure functions of intervals and sorted half-open ranges; no I/O, so every rule here is tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from extractor.intervals import Interval
from extractor.klines import Kline, KlineBlock, open_times

Range = tuple[int, int]


def closed_limit(interval: Interval, now_ms: int) -> int:
    """The smallest open time whose candle has not closed at ``now_ms`` (the forming candle's open)."""
    if interval.is_anchored:
        return interval.align(now_ms)
    return now_ms - interval.length_ms + 1


def subtract(ranges: Sequence[Range], remove: Sequence[Range]) -> list[Range]:
    """``ranges`` minus ``remove``; both sorted, non-overlapping, half-open."""
    out: list[Range] = []
    j = 0
    for lo, hi in ranges:
        cursor = lo
        while j < len(remove) and remove[j][1] <= cursor:
            j += 1
        k = j
        while k < len(remove) and remove[k][0] < hi:
            r_lo, r_hi = remove[k]
            if r_lo > cursor:
                out.append((cursor, r_lo))
            cursor = max(cursor, r_hi)
            k += 1
        if cursor < hi:
            out.append((cursor, hi))
    return out


def intersect(ranges: Sequence[Range], keep: Sequence[Range]) -> list[Range]:
    """The parts of ``ranges`` inside ``keep``."""
    return subtract(ranges, subtract(ranges, keep))


def candles_in(interval: Interval, ranges: Iterable[Range]) -> int:
    """How many candles open in ``ranges``."""
    return sum(interval.count(lo, hi) for lo, hi in ranges)


def holes_between(interval: Interval, previous: int | None, open_times: Iterable[int]) -> list[Range]:
    """Ranges strictly between consecutive candles (``previous``, then ``open_times``) where the grid
    expects candles: the only places an empty answer may be taken for an exchange gap."""
    holes: list[Range] = []
    last = previous
    for open_time in open_times:
        if last is not None:
            expected = interval.next_open(last)
            if expected < open_time:
                holes.append((expected, open_time))
        last = open_time
    return holes


def holes_in(interval: Interval, previous: int | None, klines: Sequence[Kline]) -> list[Range]:
    """:func:`holes_between` ``previous`` and a batch of candles: a block whose open times lie on a
    fixed grid and span exactly its length has no hole inside, so only its first candle is looked at."""
    times = open_times(klines)
    if (
        isinstance(klines, KlineBlock)
        and interval.is_anchored
        and not interval.is_calendar
        and times[-1] - times[0] == (len(times) - 1) * interval.length_ms
    ):
        times = times[:1]
    return holes_between(interval, previous, times)
