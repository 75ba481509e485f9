"""The Kline record and the validation of raw ``/api/v3/klines`` rows.

Prices and volumes stay exact ``Decimal``s from the JSON string to the database: never ``float``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, NamedTuple

from extractor.errors import BadInputError, MalformedResponse
from extractor.intervals import MONDAY_OFFSET, Interval

SYMBOL_PATTERN = re.compile(r"[A-Z0-9\-_.]{1,20}")

# Binance sends plain non-negative decimal strings ("0.01634790"); nothing else is accepted.
# [0-9], not \d: \d also matches Arabic-Indic and full-width digits, which Decimal() would take.
_DECIMAL_TEXT = r"[0-9]{1,30}+(?:\.[0-9]{1,30}+)?+"  # possessive: a third faster, same matches
_is_decimal = re.compile(_DECIMAL_TEXT).fullmatch

DECIMAL_FIELDS: tuple[str, ...] = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_asset_volume",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)


class Kline(NamedTuple):
    """One closed candle, keyed by (symbol, interval, open_time); times are UTC epoch ms."""

    symbol: str
    interval: str
    open_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    close_time: int
    quote_asset_volume: Decimal
    number_of_trades: int
    taker_buy_base_asset_volume: Decimal
    taker_buy_quote_asset_volume: Decimal


FIELDS: tuple[str, ...] = Kline._fields


def validate_symbol(symbol: str) -> str:
    """Return ``symbol`` if it matches Binance's symbol syntax, else raise a bad-input error."""
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise BadInputError(
            f"invalid symbol {symbol!r}: symbols are 1-20 characters of A-Z 0-9 - _ . (upper case, "
            "e.g. BTCUSDT)"
        )
    return symbol


def plain(value: Decimal) -> str:
    """A Decimal as a plain string with no exponent (``1E-8`` -> ``0.00000001``), trailing zeros kept."""
    text = str(value)  # fast, and already plain unless the exponent is large or very small
    return format(value, "f") if "E" in text else text


def _check_decimal(row_no: int, name: str, value: Any) -> None:
    if type(value) is not str or not _is_decimal(value):
        raise MalformedResponse(f"kline row {row_no}: field {name} is {value!r}, not a decimal string")


def _check_integer(row_no: int, name: str, value: Any) -> None:
    if type(value) is not int:
        raise MalformedResponse(f"kline row {row_no}: field {name} is {value!r}, not an integer")


# The eight decimal fields of one row joined by NUL and checked by one regex: one call instead of eight.
_are_decimals = re.compile(_DECIMAL_TEXT + ("\x00" + _DECIMAL_TEXT) * 7).fullmatch
_new_kline = tuple.__new__


def parse_rows(
    symbol: str,
    interval: Interval,
    rows: Any,
    start: int,
    end: int,
) -> list[Kline]:
    """Validate raw API rows for ``start <= open_time < end`` and turn them into Klines.

    Rows must have 12 fields of the documented types, ``close_time == next_open(open_time) - 1``,
    open times aligned to the interval, strictly increasing and inside the requested window. This is
    the hot path of every backfill: rows are checked in bulk, and the first row that fails is handed to
    :func:`_explain`, which names the field and the row.
    """
    if type(rows) is not list:
        _explain(interval, rows, start, end)
    name = interval.name
    step = interval.length_ms
    fixed = interval.is_anchored and not interval.is_calendar
    phase = MONDAY_OFFSET % step if name == "1w" else 0
    out: list[Kline] = []
    append = out.append
    previous = start - 1
    decimal = Decimal
    for row in rows:
        if type(row) is not list or len(row) != 12:
            break
        open_time, o, h, lo, c, v, close_time, qv, trades, tbv, tqv, _unused = row
        if (
            type(open_time) is not int
            or type(close_time) is not int
            or type(trades) is not int
            or trades < 0
            or not previous < open_time < end
        ):
            break
        if fixed:
            if close_time != open_time + step - 1 or (open_time - phase) % step:
                break
        elif close_time != interval.next_open(open_time) - 1 or (
            interval.is_calendar and interval.align(open_time) != open_time
        ):
            break
        try:
            if not _are_decimals(f"{o}\x00{h}\x00{lo}\x00{c}\x00{v}\x00{qv}\x00{tbv}\x00{tqv}"):
                break
        except TypeError:
            break
        if type(o) is not str or type(h) is not str or type(lo) is not str or type(c) is not str:
            break
        if type(v) is not str or type(qv) is not str or type(tbv) is not str or type(tqv) is not str:
            break
        append(
            _new_kline(
                Kline,
                (
                    symbol,
                    name,
                    open_time,
                    decimal(o),
                    decimal(h),
                    decimal(lo),
                    decimal(c),
                    decimal(v),
                    close_time,
                    decimal(qv),
                    trades,
                    decimal(tbv),
                    decimal(tqv),
                ),
            )
        )
        previous = open_time
    else:
        return out
    _explain(interval, rows, start, end)
    raise MalformedResponse(f"kline row {len(out)}: not a valid {name} kline row")  # pragma: no cover


def _explain(interval: Interval, rows: Any, start: int, end: int) -> None:
    """The careful, slow validation: raises MalformedResponse naming the first bad field and row."""
    if not isinstance(rows, list):
        raise MalformedResponse(f"klines response is {type(rows).__name__}, not a list of rows")
    previous = start - 1
    anchored = interval.is_anchored
    name = interval.name
    for row_no, row in enumerate(rows):
        if type(row) is not list or len(row) != 12:
            raise MalformedResponse(f"kline row {row_no}: expected a list of 12 fields, got {row!r:.80}")
        (open_time, o, h, lo, c, v, close_time, qv, trades, tbv, tqv, _unused) = row
        _check_integer(row_no, "open_time", open_time)
        _check_integer(row_no, "close_time", close_time)
        _check_integer(row_no, "number_of_trades", trades)
        if open_time <= previous:
            what = "not after the previous row" if row_no else f"before the requested start {start}"
            raise MalformedResponse(f"kline row {row_no}: open_time {open_time} is {what}")
        if open_time >= end:
            raise MalformedResponse(f"kline row {row_no}: open_time {open_time} is past the window end {end}")
        if anchored and interval.align(open_time) != open_time:
            raise MalformedResponse(f"kline row {row_no}: open_time {open_time} is not a {name} open time")
        if close_time != interval.next_open(open_time) - 1:
            raise MalformedResponse(
                f"kline row {row_no}: close_time {close_time} does not close the {name} candle "
                f"opening at {open_time}"
            )
        if trades < 0:
            raise MalformedResponse(f"kline row {row_no}: field number_of_trades is negative ({trades})")
        for field_name, value in zip(DECIMAL_FIELDS, (o, h, lo, c, v, qv, tbv, tqv), strict=True):
            _check_decimal(row_no, field_name, value)
        previous = open_time


def to_row(kline: Kline) -> list[Any]:
    """The Binance wire row of a Kline (field 12 as ``"0"``), for fakes and comparisons."""
    return [
        kline.open_time,
        plain(kline.open),
        plain(kline.high),
        plain(kline.low),
        plain(kline.close),
        plain(kline.volume),
        kline.close_time,
        plain(kline.quote_asset_volume),
        kline.number_of_trades,
        plain(kline.taker_buy_base_asset_volume),
        plain(kline.taker_buy_quote_asset_volume),
        "0",
    ]
