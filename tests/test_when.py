"""What users type for times and durations: WHEN (dates, epoch s/ms/µs, now, 90d ago) and DURATION."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractor.errors import BadInputError
from extractor.when import LAST_MS, parse_duration, parse_when

NOW = 1_732_700_000_000  # 2024-11-27T09:33:20Z
EPOCH_RULE = "an epoch time has 10 digits (seconds), 13 (milliseconds) or 16 (microseconds)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01", 1_704_067_200_000),
        ("2024-01-01T12:30", 1_704_112_200_000),
        ("2024-01-01T12:30:00Z", 1_704_112_200_000),
        ("2024-01-01T12:30:00z", 1_704_112_200_000),
        ("2024-01-01T14:30+02:00", 1_704_112_200_000),
        ("2024-01-01 12:30:00.250", 1_704_112_200_250),
        (" 2024-01-01 ", 1_704_067_200_000),
        ("now", NOW),
        ("90d", NOW - 90 * 86_400_000),
        ("12h", NOW - 12 * 3_600_000),
        ("30m", NOW - 30 * 60_000),
        ("45s", NOW - 45_000),
        ("2w", NOW - 14 * 86_400_000),
    ],
)
def test_when_accepts_every_documented_form_as_utc(text: str, expected: int) -> None:
    assert parse_when(text, now_ms=NOW) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1704067200", 1_704_067_200_000),  # 10 digits: seconds
        ("1704067200123", 1_704_067_200_123),  # 13 digits: milliseconds
        ("1704067200123456", 1_704_067_200_123),  # 16 digits: microseconds, truncated to the ms
        ("0000000000", 0),
        ("9999999999", 9_999_999_999_000),
    ],
)
def test_epoch_seconds_milliseconds_and_microseconds_by_their_digits(text: str, expected: int) -> None:
    assert parse_when(text, now_ms=NOW) == expected


@pytest.mark.parametrize("digits", [1, 8, 9, 11, 12, 14, 15, 17, 19])
def test_other_digit_counts_are_refused_with_the_rule(digits: int) -> None:
    text = "1704067200123456789"[:digits]
    with pytest.raises(BadInputError) as caught:
        parse_when(text, now_ms=NOW, what="--start")
    assert str(caught.value) == f"invalid --start {text!r}: {EPOCH_RULE}"


@pytest.mark.parametrize(
    "text", ["", "  ", "yesterday", "2024-13-01", "2024-01-01T25:00", "90x", "-5d", "0d", "1969-12-31", "1M"]
)
def test_when_rejects_nonsense_naming_the_flag(text: str) -> None:
    with pytest.raises(BadInputError, match="--start"):
        parse_when(text, now_ms=NOW, what="--start")


def test_the_nonsense_message_shows_every_form() -> None:
    with pytest.raises(BadInputError) as caught:
        parse_when("yesterday", now_ms=NOW, what="--end")
    message = str(caught.value)
    for form in ("2024-01-01", "2024-01-01T12:30", "ISO 8601", "epoch seconds", "microseconds", "now", "90d"):
        assert form in message, form


def test_times_outside_1970_to_9999_are_refused() -> None:
    with pytest.raises(BadInputError, match="before 1970-01-01"):
        parse_when("1969-12-31T23:59:59.999", now_ms=NOW)
    with pytest.raises(BadInputError, match="before 1970-01-01"):
        parse_when("999999999w", now_ms=NOW)
    assert parse_when("9999-12-31T23:59:59.999", now_ms=NOW) == LAST_MS


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_when_never_fails_with_anything_but_bad_input(text: str) -> None:
    try:
        value = parse_when(text, now_ms=NOW)
    except BadInputError:
        return
    assert isinstance(value, int)
    assert 0 <= value <= LAST_MS


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)))
@settings(max_examples=200, deadline=None)
def test_naive_datetimes_mean_utc_to_the_millisecond(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    expected = (moment.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_when(moment.isoformat(), now_ms=NOW) == expected


@given(st.integers(0, 9_999_999_999))
@settings(max_examples=200, deadline=None)
def test_every_epoch_second_in_three_spellings_is_the_same_time(seconds: int) -> None:
    expected = seconds * 1000
    assert parse_when(f"{seconds:010d}", now_ms=NOW) == expected
    assert parse_when(f"{seconds * 1000:013d}", now_ms=NOW) == expected
    assert parse_when(f"{seconds * 1_000_000:016d}", now_ms=NOW) == expected


def test_duration_units() -> None:
    assert parse_duration("45s") == 45_000
    assert parse_duration("30m") == 30 * 60_000
    assert parse_duration("12h") == 12 * 3_600_000
    assert parse_duration("90d") == 90 * 86_400_000
    assert parse_duration("2w") == 14 * 86_400_000
    assert parse_duration(" 1d ") == 86_400_000


@pytest.mark.parametrize("text", ["1M", "0d", "d", "1.5h", "-1d", "1 d", "", "1y"])
def test_bad_durations_name_what_they_are(text: str) -> None:
    with pytest.raises(BadInputError) as caught:
        parse_duration(text, what="lookback")
    assert f"invalid lookback {text!r}" in str(caught.value)
    assert "s, m, h, d or w" in str(caught.value)
