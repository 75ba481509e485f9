"""The times and durations users type: WHEN (dates, epoch s/ms/µs, ``now``, ``90d`` ago) and DURATION.

Every result is UTC epoch milliseconds; a date or time given without a zone means UTC, never local time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from extractor.errors import BadInputError

_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_DURATION_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_EPOCH_DIGITS = re.compile(r"[0-9]+")
_EPOCH_SCALE = {10: (1_000, 1), 13: (1, 1), 16: (1, 1_000)}
"""Digits → (multiplier, divisor) to milliseconds: 10 digits are seconds, 13 ms, 16 µs."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last instant a date can show."""


def parse_duration(text: str, *, what: str = "duration") -> int:
    """``90d`` / ``12h`` / ``30m`` / ``45s`` / ``2w`` as milliseconds (must be positive)."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise BadInputError(
            f"invalid {what} {text!r}: use a positive number and a unit s, m, h, d or w (e.g. 90d, 12h, 30m)"
        )
    return int(match.group(1)) * _DURATION_MS[match.group(2)]


def parse_when(text: str, *, now_ms: int, what: str = "time") -> int:
    """A user's WHEN as UTC epoch ms: ISO date/time (no zone means UTC), epoch s/ms/µs, ``now``, ``90d``."""
    if not isinstance(text, str) or not text.strip():
        raise BadInputError(f"invalid {what} {text!r}: empty")
    value = text.strip()
    if value == "now":
        return now_ms
    if _EPOCH_DIGITS.fullmatch(value):
        scale = _EPOCH_SCALE.get(len(value))
        if scale is None:
            raise BadInputError(
                f"invalid {what} {text!r}: an epoch time has 10 digits (seconds), 13 (milliseconds) "
                "or 16 (microseconds)"
            )
        multiplier, divisor = scale
        return _in_range(int(value) * multiplier // divisor, text, what)
    if _DURATION.fullmatch(value):
        return _in_range(now_ms - parse_duration(value, what=what), text, what)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise BadInputError(
            f"invalid {what} {text!r}: use 2024-01-01, 2024-01-01T12:30, ISO 8601 with an offset, "
            "epoch seconds, milliseconds or microseconds, now, or a duration ago such as 90d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _in_range((moment - _EPOCH) // timedelta(milliseconds=1), text, what)


def _in_range(epoch_ms: int, text: str, what: str) -> int:
    if epoch_ms < 0:
        raise BadInputError(f"invalid {what} {text!r}: before 1970-01-01")
    if epoch_ms > LAST_MS:
        raise BadInputError(f"invalid {what} {text!r}: after 9999-12-31")
    return epoch_ms
