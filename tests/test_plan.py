"""Holes between candles: the block fast path finds exactly what the candle-by-candle walk finds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractor.intervals import Interval
from extractor.klines import KlineBlock, Series, parse_rows, to_row
from extractor.markets import SPOT
from extractor.pipeline.plan import holes_between, holes_in
from tests.test_klines import wire_row

START = 1_709_164_800_000  # 2024-02-29T00:00:00Z, a Thursday


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["1m", "1h", "1w", "3d", "1M"]),
    present=st.lists(st.booleans(), min_size=1, max_size=40).filter(any),
    before=st.integers(min_value=0, max_value=3),
)
def test_holes_in_a_batch_are_the_holes_between_its_open_times(
    name: str, present: list[bool], before: int
) -> None:
    interval = Interval.parse(name)
    start = interval.align(START) if interval.is_anchored else START
    grid = [start]
    for _ in present[1:]:
        grid.append(interval.next_open(grid[-1]))
    opened = [t for t, keep in zip(grid, present, strict=True) if keep]
    rows = [wire_row(interval, t) for t in opened]
    series = Series(SPOT, "BTCUSDT", interval)
    klines = parse_rows(series, rows, start, interval.next_open(grid[-1]))
    assert [to_row(k) for k in klines] == rows
    previous = start
    for _ in range(before + 1):
        previous = interval.advance(previous, -1)

    assert holes_in(interval, previous, klines) == holes_between(interval, previous, opened)
    assert holes_in(interval, None, klines) == holes_between(interval, None, opened)


@pytest.mark.parametrize("name", ["1m", "1w"])
def test_a_whole_block_on_a_fixed_grid_has_a_hole_only_before_it(name: str) -> None:
    interval = Interval.parse(name)
    start = interval.align(START)
    times = [start]
    for _ in range(9):
        times.append(interval.next_open(times[-1]))
    klines = parse_rows(
        Series(SPOT, "BTCUSDT", interval), [wire_row(interval, t) for t in times], start, times[-1] + 1
    )
    assert isinstance(klines, KlineBlock)
    earlier = interval.advance(start, -3)
    assert holes_in(interval, earlier, klines) == [(interval.advance(start, -2), start)]
    assert holes_in(interval, interval.advance(start, -1), klines) == []
