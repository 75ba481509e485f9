"""The Kline record, the series it belongs to, and the validation of raw kline rows.

Prices and volumes stay exact decimal text from the exchange's JSON string (or the archive's CSV field)
to the database: never ``float``. A row is accepted only if every backend can keep it exactly and it
describes a candle that can exist; anything else is a malformed answer, retried like a garbled one.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import compress, repeat
from typing import Any, NamedTuple, overload

from extractor.errors import BadInputError, MalformedResponse
from extractor.intervals import MONDAY_OFFSET, Interval
from extractor.markets import Market

SYMBOL_PATTERN = re.compile(r"[A-Z0-9\-_.]{1,20}")

MAX_DECIMAL_PLACES = 18
"""MySQL's DECIMAL(48,18) keeps 18 places; more would be rounded there."""
MAX_DECIMAL_CHARACTERS = 35
"""34 digits and a point: Decimal128 (MongoDB) keeps 34 significant digits exactly."""

# Binance sends plain non-negative decimal strings ("0.01634790") with no leading zeros; nothing else is
# accepted. [0-9], not \d: \d also matches Arabic-Indic and full-width digits. Possessive: a third faster.
_DECIMAL_TEXT = (
    rf"(?=[0-9.]{{1,{MAX_DECIMAL_CHARACTERS}}}+(?![0-9.]))"
    rf"(?:0|[1-9][0-9]{{0,29}}+)(?:\.[0-9]{{1,{MAX_DECIMAL_PLACES}}}+)?+"
)
_is_decimal = re.compile(_DECIMAL_TEXT).fullmatch
# The eight decimal fields of one row joined by NUL and checked by one regex: one call instead of eight.
_are_decimals = re.compile(_DECIMAL_TEXT + ("\x00" + _DECIMAL_TEXT) * 7).fullmatch

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
    """One closed candle, keyed by (market, symbol, interval, open_time); times are UTC epoch ms.

    Decimals are Binance's exact decimal text (``"0.01634790"``). On COIN-M, ``volume`` counts
    contracts and ``quote_asset_volume`` is the base asset volume, as Binance sends them in field 8.
    """

    market: str
    symbol: str
    interval: str
    open_time: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    close_time: int
    quote_asset_volume: str
    number_of_trades: int
    taker_buy_base_asset_volume: str
    taker_buy_quote_asset_volume: str


FIELDS: tuple[str, ...] = Kline._fields
KEY_FIELDS: tuple[str, ...] = FIELDS[:4]
DATA_FIELDS: tuple[str, ...] = FIELDS[3:]
_new_kline = tuple.__new__


class KlineBlock(Sequence[Kline]):
    """Candles of one series that passed the column checks, kept as the columns they were checked in.

    A sequence of Klines, each built when asked for; writers take the columns as they are
    (:meth:`flat`, :attr:`open_times`), so a backfill builds no tuple per candle. Only the checks in
    this module make one: its open times are strictly increasing and, for intervals with a fixed
    anchor, on the interval's grid.
    """

    __slots__ = ("columns", "key", "text")

    def __init__(
        self, key: tuple[str, str, str], columns: Sequence[Sequence[Any]], text: str | None = None
    ) -> None:
        self.key = key
        self.columns = tuple(columns)
        """The fields from ``open_time`` on, a column each, in Kline order."""
        self.text = text
        """The rows as CSV, a line each of the 11 fields from ``open_time`` on, cut from the archive
        file they were checked in (times in milliseconds; nothing but digits, points, commas and
        newlines), or None: what a bulk loader can hand the server as it is."""

    def __len__(self) -> int:
        return len(self.columns[0])

    @overload
    def __getitem__(self, index: int) -> Kline: ...

    @overload
    def __getitem__(self, index: slice) -> KlineBlock: ...

    def __getitem__(self, index: int | slice) -> Kline | KlineBlock:
        if isinstance(index, slice):
            if index.indices(len(self)) == (0, len(self), 1):
                return self
            return KlineBlock(self.key, [column[index] for column in self.columns])
        return _new_kline(Kline, (*self.key, *(column[index] for column in self.columns)))

    def __iter__(self) -> Iterator[Kline]:
        market, symbol, interval = map(repeat, self.key)
        return map(_new_kline, repeat(Kline), zip(market, symbol, interval, *self.columns, strict=False))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(map(operator.eq, self, other))

    __hash__ = None  # type: ignore[assignment]  # compared by value, like a list

    def __repr__(self) -> str:
        return f"KlineBlock({len(self)} candles of {' '.join(self.key)})"

    @property
    def open_times(self) -> Sequence[int]:
        return self.columns[0]

    def flat(self) -> list[Any]:
        """Every field of every candle, candle after candle, in Kline order: statement parameters laid
        out a column at a time, with no tuple per candle."""
        rows, width = len(self), len(FIELDS)
        flat: list[Any] = [None] * (rows * width)
        for index, value in enumerate(self.key):
            flat[index::width] = [value] * rows
        for index, column in enumerate(self.columns, len(self.key)):
            flat[index::width] = column
        return flat


def open_times(klines: Sequence[Kline]) -> Sequence[int]:
    """The open times of ``klines``, in order."""
    if isinstance(klines, KlineBlock):
        return klines.open_times
    return [kline.open_time for kline in klines]


@dataclass(frozen=True, slots=True)
class Series:
    """The candles of one symbol at one interval on one market: the unit of planning and storage."""

    market: Market
    symbol: str
    interval: Interval

    def __str__(self) -> str:
        return f"{self.market.name} {self.symbol} {self.interval.name}"


def validate_symbol(symbol: str) -> str:
    """Return ``symbol`` if it matches Binance's symbol syntax, else raise a bad-input error."""
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise BadInputError(
            f"invalid symbol {symbol!r}: symbols are 1-20 characters of A-Z 0-9 - _ . (upper case, "
            "e.g. BTCUSDT)"
        )
    return symbol


def is_decimal(text: Any) -> bool:
    """True for the decimal text every backend stores exactly."""
    return type(text) is str and _is_decimal(text) is not None


def is_sane(o: str, h: str, lo: str, c: str, v: str, qv: str, tbv: str, tqv: str) -> bool:
    """A candle that can exist: low ≤ open, close ≤ high, and taker volumes within the volumes.

    Decimals with a point, of one scale and without leading zeros (what the row check lets through),
    order as their (length, text): the common case, decided without building a number. Others
    (whole numbers, mixed scales) are compared exactly.
    """
    points = (
        o.find("."),
        h.find("."),
        lo.find("."),
        c.find("."),
        v.find("."),
        tbv.find("."),
        qv.find("."),
        tqv.find("."),
    )
    if min(points) >= 0 and (
        len(o) - points[0] == len(h) - points[1] == len(lo) - points[2] == len(c) - points[3]
        and len(v) - points[4] == len(tbv) - points[5]
        and len(qv) - points[6] == len(tqv) - points[7]
    ):
        low, high = (len(lo), lo), (len(h), h)
        return (
            low <= (len(o), o) <= high
            and low <= (len(c), c) <= high
            and (len(tbv), tbv) <= (len(v), v)
            and (len(tqv), tqv) <= (len(qv), qv)
        )
    do, dh, dl, dc = Decimal(o), Decimal(h), Decimal(lo), Decimal(c)
    return dl <= do <= dh and dl <= dc <= dh and Decimal(tbv) <= Decimal(v) and Decimal(tqv) <= Decimal(qv)


_DOT = "."


def _first_scale(text: str) -> int | None:
    """Places after the point of one decimal text, or None without a point (or a place)."""
    point = text.find(_DOT)
    return len(text) - point - 1 if 0 <= point < len(text) - 1 else None


@functools.cache
def _is_scaled_column(scale: int) -> Callable[[str], re.Match[str] | None]:
    """``fullmatch`` of a column of decimals joined by NUL, every one with exactly ``scale`` places: what
    ``_DECIMAL_TEXT`` accepts (at most 30 integer digits, 35 characters), narrowed to one scale."""
    if not 1 <= scale <= MAX_DECIMAL_PLACES:
        return lambda text: None
    digits = min(29, MAX_DECIMAL_CHARACTERS - 2 - scale)
    one = rf"(?:0|[1-9][0-9]{{0,{digits}}}+)\.[0-9]{{{scale}}}"
    return re.compile(f"{one}(?:\x00{one})*+").fullmatch


_Sized = tuple[tuple[str, ...], tuple[int, ...]]
"""A column of decimal text and the length of each."""


def _ordered(low: _Sized, high: _Sized) -> bool:
    """Every ``low[i] <= high[i]``, for decimals of one scale without leading zeros (see is_sane): the
    shorter is the smaller, and of equal lengths the text decides."""
    (low_text, low_lengths), (high_text, high_lengths) = low, high
    if low_lengths == high_lengths:
        return all(map(operator.le, low_text, high_text))
    if not all(map(operator.le, low_lengths, high_lengths)):
        return False
    same = list(map(operator.eq, low_lengths, high_lengths))
    return all(map(operator.le, compress(low_text, same), compress(high_text, same)))


def _from_columns(
    series: Series, columns: list[tuple[Any, ...]], start: int, end: int, *, typed: bool = False
) -> KlineBlock | None:
    """The checks of :func:`parse_rows` on a page that is valid throughout, a column at a time with
    C-level builtins (several times faster than row by row). ``typed``: every field is of its type
    already (the CSV reader made times and trade counts ints, the rest text).

    Returns None at the first doubt; the row-by-row check then decides (and names the bad row), so
    this may refuse what is valid but never accepts what the row check refuses.
    """
    interval = series.interval
    if interval.is_calendar or len(columns) != 12:
        return None
    ot, o, h, lo, c, v, ct, qv, trades, tbv, tqv, _ = columns
    if not typed and (
        set(map(type, ot)) != {int} or set(map(type, ct)) != {int} or set(map(type, trades)) != {int}
    ):
        return None
    if min(trades) < 0 or not start <= ot[0] or not ot[-1] < end or not all(map(operator.lt, ot, ot[1:])):
        return None
    step = interval.length_ms
    if set(map(operator.sub, ct, ot)) != {step - 1}:
        return None
    if interval.is_anchored:
        phase = MONDAY_OFFSET % step if interval.name == "1w" else 0
        if set(map(step.__rmod__, map((-phase).__add__, ot))) != {0}:
            return None
    scales = []
    decimals = (o, h, lo, c, v, qv, tbv, tqv)
    for column in decimals:
        if not typed and set(map(type, column)) != {str}:
            return None
        scale = _first_scale(column[0])
        if scale is None or not _is_scaled_column(scale)("\x00".join(column)):
            return None
        scales.append(scale)
    price, high, low, close, volume, quote, taker, taker_quote = scales
    if not price == high == low == close or volume != taker or quote != taker_quote:
        return None
    so, sh, slo, sc, sv, sqv, stbv, stqv = ((column, tuple(map(len, column))) for column in decimals)
    if not (
        _ordered(slo, so)
        and _ordered(so, sh)
        and _ordered(slo, sc)
        and _ordered(sc, sh)
        and _ordered(stbv, sv)
        and _ordered(stqv, sqv)
    ):
        return None
    key = (series.market.name, series.symbol, interval.name)
    return KlineBlock(key, (ot, o, h, lo, c, v, ct, qv, trades, tbv, tqv))


_is_digits_column = re.compile(r"[0-9]{1,20}+(?:\x00[0-9]{1,20}+)*+").fullmatch
MICROSECONDS = 10**14
"""Times above this are microseconds (spot archive files from 2025 on); milliseconds stay below until 5138."""


def parse_csv(series: Series, lines: list[str], start: int, end: int) -> Sequence[Kline]:
    """Validate CSV rows of an archive file (the REST fields in REST order) and turn them into Klines.

    The same checks as a REST page (:func:`parse_rows`), once the CSV's text fields have REST's types:
    times and trade counts as integers, microsecond times as milliseconds, value by value.
    """
    if not lines:
        return []
    if set(map(str.count, lines, repeat(","))) != {11}:
        bad = next(i for i, line in enumerate(lines) if line.count(",") != 11)
        raise MalformedResponse(
            f"csv row {bad}: {lines[bad].count(',') + 1} fields, not 12: {lines[bad]!r:.80}"
        )
    # Every line has 12 fields: one split of the whole chunk, then a slice per column (C-level, no
    # list per row).
    joined = "\n".join(lines)
    flat = joined.replace("\n", ",").split(",")
    columns: list[tuple[Any, ...]] = [tuple(flat[i::12]) for i in range(12)]
    del flat
    for index in (0, 6, 8):
        if not _is_digits_column("\x00".join(columns[index])):
            bad = next(
                i for i, value in enumerate(columns[index]) if not (value.isascii() and value.isdigit())
            )
            name = ("open_time", "close_time", "number_of_trades")[(0, 6, 8).index(index)]
            raise MalformedResponse(f"csv row {bad}: {name} is {columns[index][bad]!r:.40}, not digits")
        columns[index] = tuple(map(int, columns[index]))
    exact_text = set(columns[11]) == {"0"}  # the unused field, as Binance writes it
    for index in (0, 6):
        if max(columns[index]) > MICROSECONDS:
            columns[index] = tuple(t // 1000 if t > MICROSECONDS else t for t in columns[index])
            exact_text = False
    fast = _from_columns(series, columns, start, end, typed=True)
    if fast is not None:
        if exact_text:  # every field checked as digits or decimal text: the lines say what the block holds
            fast.text = (joined + "\n").replace(",0\n", "\n")
        return fast
    return _row_by_row(series, list(map(list, zip(*columns, strict=True))), start, end)


def parse_rows(series: Series, rows: Any, start: int, end: int) -> Sequence[Kline]:
    """Validate raw kline rows for ``start <= open_time < end`` and turn them into Klines.

    Rows must have 12 fields of the documented types, ``close_time == next_open(open_time) - 1``,
    open times on the interval's grid, strictly increasing and inside the window, decimals every
    backend keeps exactly, and sane prices and volumes. REST pages and archive files (their CSV rows
    converted to this shape) both come here. This is the hot path of every backfill: rows are checked
    in bulk, and the first that fails goes to :func:`_explain`, which names the field and the row.
    """
    if type(rows) is list and rows and set(map(type, rows)) == {list} and set(map(len, rows)) == {12}:
        fast = _from_columns(series, list(zip(*rows, strict=True)), start, end)
        if fast is not None:
            return fast
    return _row_by_row(series, rows, start, end)


def _row_by_row(series: Series, rows: Any, start: int, end: int) -> list[Kline]:
    """The checks of :func:`parse_rows` one row at a time; the first row that fails is explained."""
    if type(rows) is not list:
        _explain(series, rows, start, end)
    interval = series.interval
    market, symbol, name = series.market.name, series.symbol, interval.name
    step = interval.length_ms
    fixed = interval.is_anchored and not interval.is_calendar
    phase = MONDAY_OFFSET % step if name == "1w" else 0
    out: list[Kline] = []
    append = out.append
    previous = start - 1
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
        if not is_sane(o, h, lo, c, v, qv, tbv, tqv):
            break
        append(
            _new_kline(
                Kline,
                (market, symbol, name, open_time, o, h, lo, c, v, close_time, qv, trades, tbv, tqv),
            )
        )
        previous = open_time
    else:
        return out
    _explain(series, rows, start, end)
    raise MalformedResponse(f"kline row {len(out)}: not a valid {name} kline row")  # pragma: no cover


def _explain(series: Series, rows: Any, start: int, end: int) -> None:
    """The careful, slow validation: raises MalformedResponse naming the first bad field and row."""
    if not isinstance(rows, list):
        raise MalformedResponse(f"klines response is {type(rows).__name__}, not a list of rows")
    interval = series.interval
    previous = start - 1
    name = interval.name
    for row_no, row in enumerate(rows):
        if type(row) is not list or len(row) != 12:
            raise MalformedResponse(f"kline row {row_no}: expected a list of 12 fields, got {row!r:.80}")
        (open_time, o, h, lo, c, v, close_time, qv, trades, tbv, tqv, _unused) = row
        for field_name, number in (
            ("open_time", open_time),
            ("close_time", close_time),
            ("number_of_trades", trades),
        ):
            if type(number) is not int:
                raise MalformedResponse(
                    f"kline row {row_no}: field {field_name} is {number!r}, not an integer"
                )
        if open_time <= previous:
            what = "not after the previous row" if row_no else f"before the requested start {start}"
            raise MalformedResponse(f"kline row {row_no}: open_time {open_time} is {what}")
        if open_time >= end:
            raise MalformedResponse(f"kline row {row_no}: open_time {open_time} is past the window end {end}")
        if interval.is_anchored and interval.align(open_time) != open_time:
            raise MalformedResponse(f"kline row {row_no}: open_time {open_time} is not a {name} open time")
        if close_time != interval.next_open(open_time) - 1:
            raise MalformedResponse(
                f"kline row {row_no}: close_time {close_time} does not close the {name} candle "
                f"opening at {open_time}"
            )
        if trades < 0:
            raise MalformedResponse(f"kline row {row_no}: field number_of_trades is negative ({trades})")
        for field_name, value in zip(DECIMAL_FIELDS, (o, h, lo, c, v, qv, tbv, tqv), strict=True):
            if not is_decimal(value):
                raise MalformedResponse(
                    f"kline row {row_no}: field {field_name} is {value!r:.60}, not a decimal of at most "
                    f"{MAX_DECIMAL_PLACES} places and {MAX_DECIMAL_CHARACTERS - 1} digits"
                )
        if not is_sane(o, h, lo, c, v, qv, tbv, tqv):
            raise MalformedResponse(f"kline row {row_no}: impossible candle: {_impossibility(row)}")
        previous = open_time


# (field, relation, other field): a candle breaking one of these cannot exist. Low above high follows
# from the first four, so it needs no rule of its own.
_SANITY_RULES = (
    ("low", "above", "open"),
    ("low", "above", "close"),
    ("high", "below", "open"),
    ("high", "below", "close"),
    ("taker_buy_base_asset_volume", "above", "volume"),
    ("taker_buy_quote_asset_volume", "above", "quote_asset_volume"),
)
_WIRE_INDEX = {name: index for index, name in enumerate(DATA_FIELDS)}


def _impossibility(row: list[Any]) -> str:
    """Which rule of a candle ``row`` breaks, naming both fields and their values; decided exactly."""
    for name, relation, other in _SANITY_RULES:
        value, other_value = row[_WIRE_INDEX[name]], row[_WIRE_INDEX[other]]
        exact, other_exact = Decimal(value), Decimal(other_value)
        if exact > other_exact if relation == "above" else exact < other_exact:
            return f"{name} {value} is {relation} {other} {other_value}"
    return "prices or volumes out of order"  # pragma: no cover - is_sane and the rules agree


def to_row(kline: Kline) -> list[Any]:
    """The Binance wire row of a Kline (field 12 as ``"0"``), for fakes and comparisons."""
    return [*kline[3:], "0"]
