"""Intervals: parsing, calendar alignment and tiling a range into windows, checked against datetime."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from extractor.errors import BadInputError
from extractor.intervals import DAY, INTERVAL_NAMES, Interval

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)

DESIGN_NAMES = [
    "1s",
    "1m",
    "3m",
    "5m",
    "15m",
    "30m",
    "1h",
    "2h",
    "4h",
    "6h",
    "8h",
    "12h",
    "1d",
    "3d",
    "1w",
    "1M",
]
FIXED_LENGTHS: dict[str, int] = {
    name: span // ONE_MS
    for name, span in {
        "1s": timedelta(seconds=1),
        "1m": timedelta(minutes=1),
        "3m": timedelta(minutes=3),
        "5m": timedelta(minutes=5),
        "15m": timedelta(minutes=15),
        "30m": timedelta(minutes=30),
        "1h": timedelta(hours=1),
        "2h": timedelta(hours=2),
        "4h": timedelta(hours=4),
        "6h": timedelta(hours=6),
        "8h": timedelta(hours=8),
        "12h": timedelta(hours=12),
        "1d": timedelta(days=1),
        "3d": timedelta(days=3),
    }.items()
}
WEEK_MS = timedelta(weeks=1) // ONE_MS
DAY_MS = timedelta(days=1) // ONE_MS


def ms(dt: datetime) -> int:
    return (dt - EPOCH) // ONE_MS


def utc(ms_value: int) -> datetime:
    return EPOCH + ms_value * ONE_MS


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return ms(datetime(year, month, day, hour, minute, tzinfo=UTC))


FIRST_MS = at(1970, 1, 1)
LAST_MS = at(2101, 1, 1)
PAGE = 1000
COINM_SPAN = 200 * DAY
LANDMARKS = [
    at(1970, 1, 1),
    at(1970, 1, 5),  # the first Monday after the epoch
    at(1999, 12, 31),
    at(2000, 2, 29),
    at(2000, 3, 1),
    at(2023, 4, 30),
    at(2024, 2, 29),
    at(2024, 3, 1),
    at(2024, 12, 30),
    at(2100, 2, 28),
    at(2100, 3, 1),
    at(2100, 12, 31),
]


def _month_after(dt: datetime) -> datetime:
    return dt.replace(year=dt.year + dt.month // 12, month=dt.month % 12 + 1)


def reference_first_open(name: str, ms_value: int) -> int:
    """The first open time at or after ``ms_value``, computed with datetime (``3d``: none assumed)."""
    dt = utc(ms_value)
    if name == "1M":
        first = dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return ms(first if first == dt else _month_after(first))
    midnight = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    if name == "1w":
        monday = midnight - timedelta(days=midnight.weekday())
        return ms(monday if monday == dt else monday + timedelta(weeks=1))
    if name == "3d":
        return ms_value
    length = FIXED_LENGTHS[name]
    return -(-ms_value // length) * length


def reference_open_times(name: str, start: int, end: int) -> Sequence[int]:
    """Every open time in ``[start, end)``, by stepping calendar months, weeks or fixed lengths."""
    first = reference_first_open(name, start)
    if name == "1M":
        opens: list[int] = []
        dt = utc(first)
        while ms(dt) < end:
            opens.append(ms(dt))
            dt = _month_after(dt)
        return opens
    return range(first, end, WEEK_MS if name == "1w" else FIXED_LENGTHS[name])


def near(landmark: int, offset: int) -> int:
    return min(max(landmark + offset, FIRST_MS), LAST_MS)


instants = st.one_of(
    st.integers(FIRST_MS, LAST_MS),
    st.sampled_from(LANDMARKS),
    st.builds(near, st.sampled_from(LANDMARKS), st.integers(-3 * DAY_MS, 3 * DAY_MS)),
    st.builds(near, st.sampled_from(LANDMARKS), st.integers(-2, 2)),
)
names = st.sampled_from(DESIGN_NAMES)
anchored_names = st.sampled_from([n for n in DESIGN_NAMES if n != "3d"])


def longest_ms(name: str) -> int:
    return {"1M": 31 * DAY_MS, "1w": WEEK_MS}.get(name) or FIXED_LENGTHS[name]


# -- parse ----------------------------------------------------------------------------------------


def test_the_sixteen_intervals_of_the_design_in_order() -> None:
    assert list(INTERVAL_NAMES) == DESIGN_NAMES


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_parse_accepts_every_valid_name(name: str) -> None:
    interval = Interval.parse(name)
    assert interval.name == name
    assert str(interval) == name
    assert Interval.parse(name) == interval
    if name in FIXED_LENGTHS:
        assert interval.length_ms == FIXED_LENGTHS[name]


def test_1M_is_a_month_and_1m_a_minute() -> None:
    month, minute = Interval.parse("1M"), Interval.parse("1m")
    assert month != minute
    assert minute.length_ms == 60_000
    assert month.is_calendar and not minute.is_calendar
    assert month.next_open(at(2024, 2, 1)) == at(2024, 3, 1)
    assert minute.next_open(at(2024, 2, 1)) == at(2024, 2, 1, 0, 1)


@pytest.mark.parametrize("text", ["1min", "60m", "", "1H", "2d", "1W", "1y", " 1m", "1m ", "m1", "1s\n"])
def test_parse_rejects_unknown_names_and_lists_the_valid_ones(text: str) -> None:
    with pytest.raises(BadInputError) as caught:
        Interval.parse(text)
    message = str(caught.value)
    assert repr(text) in message
    assert " ".join(DESIGN_NAMES) in message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=6) | st.sampled_from(DESIGN_NAMES))
def test_parse_returns_an_interval_or_raises_bad_input(text: str) -> None:
    try:
        interval = Interval.parse(text)
    except BadInputError as exc:
        assert text not in DESIGN_NAMES
        assert "1s 1m 3m" in str(exc)
    else:
        assert interval.name == text
        assert text in DESIGN_NAMES


# -- alignment ------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(anchored_names, instants)
def test_align_gives_the_open_time_of_the_candle_containing_the_instant(name: str, instant: int) -> None:
    interval = Interval.parse(name)
    opened = interval.align(instant)
    assert opened <= instant < interval.next_open(opened)
    assert interval.align(opened) == opened
    assert reference_first_open(name, opened) == opened
    assert interval.next_open(opened) == reference_first_open(name, opened + 1)
    assert interval.close_time(opened) == interval.next_open(opened) - 1
    assert interval.ceil(instant) == reference_first_open(name, instant)


@settings(max_examples=100, deadline=None)
@given(names, instants, st.integers(0, 40))
def test_advance_equals_repeated_next_open(name: str, instant: int, candles: int) -> None:
    interval = Interval.parse(name)
    opened = interval.ceil(instant)
    expected = opened
    for _ in range(candles):
        expected = interval.next_open(expected)
    assert interval.advance(opened, candles) == expected


@pytest.mark.parametrize(
    ("name", "instant", "opened"),
    [
        ("1M", at(2024, 2, 29, 23, 59), at(2024, 2, 1)),
        ("1M", at(2024, 3, 1), at(2024, 3, 1)),
        ("1M", at(2100, 2, 28, 12), at(2100, 2, 1)),
        ("1M", at(1999, 12, 31, 23, 59), at(1999, 12, 1)),
        ("1w", at(2024, 3, 3, 23, 59), at(2024, 2, 26)),  # a Sunday belongs to the week of Monday 26 Feb
        ("1w", at(2024, 3, 4), at(2024, 3, 4)),
        ("1w", at(1970, 1, 1), at(1969, 12, 29)),  # the epoch was a Thursday
        ("1d", at(2024, 2, 29, 13), at(2024, 2, 29)),
        ("4h", at(2024, 2, 29, 7, 59), at(2024, 2, 29, 4)),
        ("3d", at(2024, 2, 29, 7, 59), at(2024, 2, 29, 7, 59)),  # no anchor is assumed for 3d
    ],
)
def test_align_examples(name: str, instant: int, opened: int) -> None:
    assert Interval.parse(name).align(instant) == opened


@pytest.mark.parametrize(
    ("month_start", "days"),
    [
        ((2024, 2), 29),
        ((2023, 2), 28),
        ((2000, 2), 29),
        ((2100, 2), 28),
        ((2024, 1), 31),
        ((2024, 4), 30),
        ((2099, 12), 31),
    ],
)
def test_monthly_close_time_follows_the_calendar(month_start: tuple[int, int], days: int) -> None:
    opened = at(*month_start, 1)
    assert Interval.parse("1M").close_time(opened) == opened + days * DAY_MS - 1


def test_a_thousand_months_from_january_2024_is_may_2107() -> None:
    assert Interval.parse("1M").advance(at(2024, 1, 1), 1000) == at(2107, 5, 1)


def test_ceil_moves_to_the_next_open_unless_already_open() -> None:
    month = Interval.parse("1M")
    assert month.ceil(at(2024, 2, 1)) == at(2024, 2, 1)
    assert month.ceil(at(2024, 2, 1) + 1) == at(2024, 3, 1)
    assert Interval.parse("1w").ceil(at(2024, 2, 29)) == at(2024, 3, 4)


# -- open times and counts ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["1M", "1w"])
def test_calendar_open_times_from_1970_to_2100_match_datetime(name: str) -> None:
    opens = list(Interval.parse(name).open_times(FIRST_MS, LAST_MS))
    assert opens == list(reference_open_times(name, FIRST_MS, LAST_MS))
    for opened in opens:
        dt = utc(opened)
        assert (dt.hour, dt.minute, dt.second, dt.microsecond) == (0, 0, 0, 0)
        assert (dt.day == 1) if name == "1M" else (dt.weekday() == 0)
    assert len(opens) == (131 * 12 if name == "1M" else len(range(at(1970, 1, 5), LAST_MS, WEEK_MS)))


@settings(max_examples=300, deadline=None)
@given(names, instants, st.integers(-3, 3000), st.integers(0, 10**6))
def test_count_equals_the_number_of_open_times(name: str, start: int, candles: int, jitter: int) -> None:
    interval = Interval.parse(name)
    end = start + candles * longest_ms(name) + jitter % longest_ms(name)
    opens = list(interval.open_times(start, end))
    assert interval.count(start, end) == len(opens)
    if name != "3d":
        assert opens == list(reference_open_times(name, start, end))
    assert all(start <= t < end for t in opens)


# -- tiles ----------------------------------------------------------------------------------------


@st.composite
def ranges(draw: st.DrawFn) -> tuple[str, int, int | None, int, int]:
    """An interval, a candle count, an optional span and a range small enough to step through cheaply."""
    name = draw(names)
    limit = draw(st.sampled_from([PAGE, PAGE, 499, 1500, 1, 2, 7, 500]))
    span = draw(st.sampled_from([None, None, COINM_SPAN, DAY, 3 * DAY + 1]))
    start = draw(instants)
    if name in ("1M", "1w") and limit >= 7 and draw(st.booleans()):
        return name, limit, span, start, draw(instants)
    candles = draw(st.integers(0, 4 * limit) | st.integers(limit, 4 * limit))
    end = start + candles * longest_ms(name) + draw(st.integers(0, longest_ms(name)))
    if span is not None:
        end = min(end, start + 40 * span)
    return name, limit, span, start, end


@settings(max_examples=1200, deadline=None)
@given(ranges())
@example(("1M", PAGE, None, FIRST_MS, LAST_MS))
@example(("1M", 1, None, FIRST_MS, LAST_MS))
@example(("1w", 1, None, FIRST_MS, LAST_MS))
@example(("1w", PAGE, None, at(2024, 2, 29, 1), at(2100, 3, 1)))
@example(("1d", PAGE, None, FIRST_MS, LAST_MS))
@example(("3d", PAGE, None, FIRST_MS, LAST_MS))
@example(("1s", PAGE, None, at(2024, 2, 29) - 1, at(2024, 2, 29) + 2_000_001))
@example(("1d", 1500, COINM_SPAN, at(2019, 8, 10, 3), at(2024, 6, 1)))
@example(("1M", 1500, COINM_SPAN, at(2019, 8, 10), at(2024, 6, 1)))
@example(("1m", 1500, COINM_SPAN, at(2024, 2, 29) - 1, at(2024, 3, 3)))
def test_tiles_cover_the_range_with_no_gap_or_overlap(case: tuple[str, int, int | None, int, int]) -> None:
    name, limit, span, start, end = case
    interval = Interval.parse(name)
    windows = list(interval.tiles(start, end, limit, span))
    if start >= end:
        assert windows == []
        return
    assert windows[0][0] == start
    assert windows[-1][1] == end
    for (_, hi), (next_lo, _) in pairwise(windows):
        assert hi == next_lo
    for index, (lo, hi) in enumerate(windows):
        assert lo < hi
        is_last = index == len(windows) - 1
        full_span = span is not None and hi - lo == span
        if span is not None:
            assert hi - lo <= span, "a COIN-M page over 200 days is refused by the exchange"
        if name == "3d":
            # whatever phase the exchange uses, a span of limit * 3 days holds at most limit open times
            assert hi - lo <= limit * FIXED_LENGTHS["3d"]
            assert is_last or full_span or hi - lo == limit * FIXED_LENGTHS["3d"]
        else:
            held = len(reference_open_times(name, lo, hi))
            assert held <= limit
            assert is_last or full_span or held == limit, "a window short of both limits wastes a request"
    if name != "3d" or span is None or span % FIXED_LENGTHS["3d"] == 0:
        # (3d counts from each window's own start, so only windows of whole 3d steps add up)
        assert sum(interval.count(lo, hi) for lo, hi in windows) == interval.count(start, end)


def test_tiles_of_a_thousand_hours() -> None:
    hour = Interval.parse("1h")
    start = at(2024, 1, 1)
    assert list(hour.tiles(start, start + 2500 * 3_600_000, PAGE)) == [
        (start, start + 1000 * 3_600_000),
        (start + 1000 * 3_600_000, start + 2000 * 3_600_000),
        (start + 2000 * 3_600_000, start + 2500 * 3_600_000),
    ]


def test_an_unaligned_start_keeps_its_window_edge_and_a_full_page() -> None:
    month = Interval.parse("1M")
    start = at(2024, 2, 29, 12)
    first, second = list(month.tiles(start, at(2200, 1, 1), PAGE))[:2]
    assert first == (start, at(2107, 7, 1))  # March 2024 plus 999 months
    assert second[0] == first[1]


def test_a_span_caps_daily_windows_at_200_days_as_coin_m_needs() -> None:
    day = Interval.parse("1d")
    start = at(2020, 1, 1)
    end = start + 499 * DAY
    assert list(day.tiles(start, end, 499, COINM_SPAN)) == [
        (start, start + 200 * DAY),
        (start + 200 * DAY, start + 400 * DAY),
        (start + 400 * DAY, end),
    ]
    # a minute page holds 499 candles long before 200 days: the span does not shorten it
    minute = Interval.parse("1m")
    assert list(minute.tiles(start, start + 600 * 60_000, 499, COINM_SPAN)) == [
        (start, start + 499 * 60_000),
        (start + 499 * 60_000, start + 600 * 60_000),
    ]


def test_an_empty_or_reversed_range_has_no_tiles() -> None:
    minute = Interval.parse("1m")
    assert list(minute.tiles(at(2024, 1, 1), at(2024, 1, 1), PAGE)) == []
    assert list(minute.tiles(at(2024, 1, 2), at(2024, 1, 1), PAGE, COINM_SPAN)) == []
