"""Kline rows: exact decimal text, the limits every backend keeps, candles that can exist, and a
MalformedResponse naming the row and the field of every bad row."""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from extractor.errors import BadInputError, MalformedResponse
from extractor.intervals import DAY, INTERVAL_NAMES, Interval
from extractor.klines import (
    DATA_FIELDS,
    DECIMAL_FIELDS,
    FIELDS,
    KEY_FIELDS,
    MAX_DECIMAL_CHARACTERS,
    MAX_DECIMAL_PLACES,
    Kline,
    KlineBlock,
    Series,
    _row_by_row,
    is_decimal,
    is_sane,
    open_times,
    parse_csv,
    parse_rows,
    to_row,
    validate_symbol,
)
from extractor.markets import COINM, SPOT, USDM
from extractor.storage.tables import flat_values

MINUTE = Interval.parse("1m")
START = 1_709_164_800_000  # 2024-02-29T00:00:00Z, a Thursday
END = START + 10 * 60_000
BTC_1M = Series(SPOT, "BTCUSDT", MINUTE)
ULP = Decimal("1e-18")
"""The smallest step a valid decimal can take."""

Row = list[Any]
WIRE_FIELDS = FIELDS[3:]
"""The 11 named fields of a wire row, in order (field 12 is unused)."""


def wire_row(interval: Interval, opened: int, **fields: Any) -> Row:
    """A valid Binance row for the candle opening at ``opened``; keyword fields override its values."""
    values: dict[str, Any] = {
        "open_time": opened,
        "open": "0.01634790",
        "high": "0.80000000",
        "low": "0.01575800",
        "close": "0.01577100",
        "volume": "148976.11427815",
        "close_time": interval.close_time(opened),
        "quote_asset_volume": "2434.19055334",
        "number_of_trades": 308,
        "taker_buy_base_asset_volume": "1756.87402397",
        "taker_buy_quote_asset_volume": "28.46694368",
    }
    assert set(fields) <= set(values), set(fields) - set(values)
    values.update(fields)
    return [*values.values(), "0"]


def flat(interval: Interval, opened: int, price: str, volume: str = "0", **fields: Any) -> Row:
    """A candle whose four prices are ``price`` and whose volumes are all ``volume``."""
    decimals: dict[str, Any] = {name: price for name in ("open", "high", "low", "close")}
    decimals.update({name: volume for name in DECIMAL_FIELDS[4:]})
    decimals.update(fields)
    return wire_row(interval, opened, **decimals)


def minute_page(count: int = 3) -> list[Row]:
    return [wire_row(MINUTE, START + i * 60_000) for i in range(count)]


def malformed(rows: Any, *, series: Series = BTC_1M, start: int = START, end: int = END) -> str:
    with pytest.raises(MalformedResponse) as caught:
        parse_rows(series, rows, start, end)
    return str(caught.value)


def assert_malformed(rows: Any, *fragments: str, **where: Any) -> None:
    message = malformed(rows, **where)
    for fragment in fragments:
        assert fragment in message, message


# -- the record -----------------------------------------------------------------------------------


def test_a_valid_page_parses_to_klines_keeping_the_decimal_text() -> None:
    klines = parse_rows(BTC_1M, minute_page(), START, END)

    assert [k.open_time for k in klines] == [START, START + 60_000, START + 120_000]
    assert klines[0] == Kline(
        market="spot",
        symbol="BTCUSDT",
        interval="1m",
        open_time=START,
        open="0.01634790",
        high="0.80000000",
        low="0.01575800",
        close="0.01577100",
        volume="148976.11427815",
        close_time=START + 59_999,
        quote_asset_volume="2434.19055334",
        number_of_trades=308,
        taker_buy_base_asset_volume="1756.87402397",
        taker_buy_quote_asset_volume="28.46694368",
    )
    assert not hasattr(klines[0], "__dict__")


def test_the_key_is_market_symbol_interval_open_time() -> None:
    assert KEY_FIELDS == ("market", "symbol", "interval", "open_time")
    assert DATA_FIELDS[0] == "open_time"
    assert KEY_FIELDS + DATA_FIELDS[1:] == FIELDS
    assert len(WIRE_FIELDS) == 11


@pytest.mark.parametrize("market", [SPOT, USDM, COINM])
def test_each_kline_carries_the_market_of_its_series(market: Any) -> None:
    series = Series(market, "BTCUSD_PERP", Interval.parse("1h"))
    hour = Interval.parse("1h")
    (kline,) = parse_rows(series, [wire_row(hour, START)], START, START + 3_600_000)
    assert (kline.market, kline.symbol, kline.interval) == (market.name, "BTCUSD_PERP", "1h")
    assert str(series) == f"{market.name} BTCUSD_PERP 1h"


@pytest.mark.parametrize(
    "text",
    [
        "0.00000001",
        "123456789.12345678",
        "98765432109.87654321",
        "1234567890123456789012.12345678",  # a 22-digit quote volume
        "1234567890123456789012",
        "0.01634790",
        "1.00000000",
        "0",
        "0.00000000",
        "100",
        "0.000000000000000001",  # 18 places: what MySQL's DECIMAL(48,18) keeps
        "123456789012345678901234567890",  # 30 integer digits, the most DECIMAL(48,18) keeps
        "123456789012345678901234567890.1234",  # 35 characters, 34 digits: Decimal128 keeps them
        "1234567890123456.123456789012345678",  # 35 characters with 18 places
    ],
)
def test_decimals_are_kept_as_the_exact_text_sent(text: str) -> None:
    row = flat(MINUTE, START, text, text)
    (kline,) = parse_rows(BTC_1M, [row], START, END)

    for name in DECIMAL_FIELDS:
        value = getattr(kline, name)
        assert type(value) is str
        assert value == text
    assert to_row(kline) == row


def test_an_empty_page_is_no_klines() -> None:
    assert parse_rows(BTC_1M, [], START, END) == []


# -- what every backend keeps exactly -------------------------------------------------------------


def test_the_limits_are_what_every_backend_keeps() -> None:
    assert MAX_DECIMAL_PLACES == 18
    assert MAX_DECIMAL_CHARACTERS == 35


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0.0000000000000000001", "19 places: MySQL would round it"),
        ("1." + "1" * 19, "19 places"),
        ("1234567890123456789012345678901", "31 integer digits"),
        ("123456789012345678901234567890.12345", "36 characters"),
        ("12345678901234567.123456789012345678", "36 characters, each part within its own limit"),
    ],
)
def test_a_decimal_past_the_limits_is_refused_naming_them(text: str, why: str) -> None:
    rows = minute_page()
    rows[1] = flat(MINUTE, START + 60_000, "1", "1", quote_asset_volume=text)
    message = malformed(rows)
    assert "kline row 1" in message and "field quote_asset_volume " in message, why
    assert "at most 18 places and 34 digits" in message
    assert not is_decimal(text)


# -- malformed rows -------------------------------------------------------------------------------


BAD_DECIMALS = [
    ("open", 0.1),  # a JSON float instead of a string
    ("open", 1),
    ("open", True),
    ("high", "NaN"),
    ("high", "Infinity"),
    ("low", "1e5"),
    ("low", "1E5"),
    ("close", "-1"),
    ("close", "+1"),
    ("volume", " 1"),
    ("volume", "1 "),
    ("volume", "1\n"),
    ("volume", "1\x001"),  # the fast path joins fields with NUL: one field must not pose as two
    ("quote_asset_volume", "1_000"),
    ("quote_asset_volume", "1,5"),
    ("taker_buy_base_asset_volume", ""),
    ("taker_buy_base_asset_volume", "1."),
    ("taker_buy_base_asset_volume", ".5"),
    ("taker_buy_base_asset_volume", "0x1"),
    ("taker_buy_quote_asset_volume", "\u0661\u0662"),  # Arabic-Indic digits: Decimal() would take them
    ("taker_buy_quote_asset_volume", "\uff11"),  # a full-width one
    ("taker_buy_quote_asset_volume", None),
    ("taker_buy_quote_asset_volume", ["1"]),
    ("open", Decimal("1")),
]


@pytest.mark.parametrize(("field", "value"), BAD_DECIMALS)
def test_a_bad_decimal_names_its_row_and_field(field: str, value: Any) -> None:
    rows = minute_page()
    rows[2] = wire_row(MINUTE, START + 120_000, **{field: value})
    assert_malformed(rows, "kline row 2", f"field {field} ", "not a decimal")


BAD_INTEGERS = [
    ("open_time", str(START + 120_000)),
    ("open_time", float(START + 120_000)),
    ("open_time", True),
    ("close_time", str(START + 179_999)),
    ("number_of_trades", "308"),
    ("number_of_trades", 308.0),
    ("number_of_trades", True),  # bool is a subclass of int in Python but not an integer on the wire
    ("close_time", None),
]


@pytest.mark.parametrize(("field", "value"), BAD_INTEGERS)
def test_a_bad_integer_names_its_row_and_field(field: str, value: Any) -> None:
    rows = minute_page()
    rows[2] = wire_row(MINUTE, START + 120_000, **{field: value})
    assert_malformed(rows, "kline row 2", f"field {field} ", "not an integer")


@pytest.mark.parametrize("size", [0, 11, 13])
def test_a_row_with_the_wrong_field_count_is_rejected(size: int) -> None:
    rows = minute_page()
    rows[1] = (rows[1] + ["0", "0"])[:size]
    assert_malformed(rows, "kline row 1", "12 fields")


@pytest.mark.parametrize("row", [{"open_time": START}, tuple(wire_row(MINUTE, START + 60_000)), "row", None])
def test_a_row_that_is_not_a_list_is_rejected(row: Any) -> None:
    rows: list[Any] = minute_page()
    rows[1] = row
    assert_malformed(rows, "kline row 1", "12 fields")


@pytest.mark.parametrize("body", [{"code": -1121, "msg": "Invalid symbol."}, None, "[]", 0, ()])
def test_a_body_that_is_not_a_list_is_rejected(body: Any) -> None:
    assert_malformed(body, "not a list of rows", type(body).__name__)


def test_close_time_must_close_the_candle() -> None:
    for close_time in (START + 60_000, START + 59_998, START + 60_000 + 59_999):
        assert_malformed(
            [wire_row(MINUTE, START, close_time=close_time)],
            "kline row 0",
            f"close_time {close_time}",
            f"opening at {START}",
        )


def test_an_unaligned_minute_open_time_is_rejected() -> None:
    open_time = START + 60_000 + 1
    rows = [wire_row(MINUTE, START), wire_row(MINUTE, open_time)]
    assert_malformed(rows, "kline row 1", f"open_time {open_time}", "not a 1m open time")


def test_a_week_opening_on_a_sunday_is_rejected() -> None:
    week = Interval.parse("1w")
    sunday = START + 3 * DAY
    assert_malformed(
        [wire_row(week, sunday)],
        "kline row 0",
        f"open_time {sunday}",
        "not a 1w open time",
        series=Series(SPOT, "BTCUSDT", week),
        end=START + 30 * DAY,
    )


@pytest.mark.parametrize("third_open", [START + 60_000, START])
def test_rows_must_strictly_increase(third_open: int) -> None:
    rows = [wire_row(MINUTE, START), wire_row(MINUTE, START + 60_000), wire_row(MINUTE, third_open)]
    assert_malformed(rows, "kline row 2", f"open_time {third_open}", "not after the previous row")


@pytest.mark.parametrize(("name", "early"), [("1m", START - 60_000), ("3d", START - 1)])
def test_a_row_before_the_requested_start_is_rejected(name: str, early: int) -> None:
    interval = Interval.parse(name)
    rows = [wire_row(interval, early)]
    assert_malformed(
        rows,
        "kline row 0",
        f"open_time {early}",
        f"start {START}",
        series=Series(SPOT, "BTCUSDT", interval),
    )


@pytest.mark.parametrize("open_time", [END, END + 60_000])
def test_a_row_at_or_after_the_window_end_is_rejected(open_time: int) -> None:
    rows = [wire_row(MINUTE, START), wire_row(MINUTE, open_time)]
    assert_malformed(rows, "kline row 1", f"open_time {open_time}", f"end {END}")


def test_a_negative_trade_count_is_rejected() -> None:
    rows = minute_page()
    rows[1] = wire_row(MINUTE, START + 60_000, number_of_trades=-1)
    assert_malformed(rows, "kline row 1", "number_of_trades", "negative")


# -- candles that can exist -----------------------------------------------------------------------


IMPOSSIBLE = [
    # (overrides of a flat candle at 5 with volumes 7, the field the message must name, the rule)
    ({"low": "6"}, "low", "above open"),
    ({"low": "5.5", "open": "6", "high": "6"}, "low", "above close"),
    ({"high": "4"}, "high", "below open"),
    ({"high": "5.5", "close": "6", "low": "5", "open": "5"}, "high", "below close"),
    ({"low": "6", "open": "7", "close": "7", "high": "5.9"}, "high", "below open"),
    ({"taker_buy_base_asset_volume": "7.1"}, "taker_buy_base_asset_volume", "above volume"),
    ({"taker_buy_quote_asset_volume": "8"}, "taker_buy_quote_asset_volume", "above quote_asset_volume"),
]


@pytest.mark.parametrize(("fields", "named", "rule"), IMPOSSIBLE)
def test_an_impossible_candle_is_malformed_naming_the_field(
    fields: dict[str, str], named: str, rule: str
) -> None:
    rows = [flat(MINUTE, START, "5", "7"), flat(MINUTE, START + 60_000, "5", "7", **fields)]
    message = malformed(rows)
    assert "kline row 1" in message and "impossible candle" in message
    assert named in message and rule in message, message


def test_ties_are_possible_candles() -> None:
    """open == high == low == close and taker volumes equal to the volumes: a quiet minute."""
    rows = [flat(MINUTE, START, "5", "7"), flat(MINUTE, START + 60_000, "0", "0")]
    assert len(parse_rows(BTC_1M, rows, START, END)) == 2
    assert is_sane("5", "5", "5", "5", "7", "7", "7", "7")
    assert is_sane("0", "0", "0", "0", "0", "0", "0", "0")


# Pairs whose floats are equal though the decimals differ (in the 18th place, or the 2nd of a large
# number): the order must be decided exactly, never by the floats.
NEAR = [
    ("0.100000000000000001", "0.100000000000000002"),
    ("1.000000000000000000", "1.000000000000000001"),
    ("1234567890123456.01", "1234567890123456.02"),
    ("123456789012345678901234567890", "123456789012345678901234567891"),
]


@pytest.mark.parametrize(("smaller", "larger"), NEAR)
def test_float_rounding_never_decides_a_near_tie(smaller: str, larger: str) -> None:
    assert float(smaller) == float(larger)  # the premise: floats would call these equal
    v, q = "9", "9"
    # low one step above open, close and high: impossible, though the floats are all equal
    assert not is_sane(smaller, larger, larger, smaller, v, v, q, q)
    assert not is_sane(smaller, smaller, larger, smaller, v, v, q, q)
    # high one step below open or close
    assert not is_sane(larger, smaller, smaller, smaller, v, v, q, q)
    assert not is_sane(smaller, smaller, smaller, larger, v, v, q, q)
    # taker volumes one step above the volumes
    assert not is_sane("1", "1", "1", "1", smaller, "9", larger, "9")
    assert not is_sane("1", "1", "1", "1", "9", smaller, "9", larger)
    # the same numbers the right way round are a real candle
    assert is_sane(smaller, larger, smaller, larger, larger, larger, smaller, smaller)
    assert is_sane(larger, larger, smaller, smaller, larger, larger, larger, larger)

    rows = [flat(MINUTE, START, smaller, "1", low=larger, high=larger)]
    assert_malformed(rows, "kline row 0", f"low {larger} is above open {smaller}")


# -- every valid candle accepted, every corrupted one refused (hypothesis) ------------------------


def _text(value: Decimal) -> str:
    return format(value, "f")


def _place_texts(draw: st.DrawFn) -> str:
    """A decimal of up to 13 integer digits and 18 places, written as Binance would."""
    whole = draw(st.integers(0, 10**13 - 1))
    places = draw(st.integers(0, MAX_DECIMAL_PLACES))
    if places == 0:
        return str(whole)
    return f"{whole}.{draw(st.integers(0, 10**places - 1)):0{places}d}"


@st.composite
def decimal_texts(draw: st.DrawFn) -> str:
    return _place_texts(draw)


@st.composite
def ordered(draw: st.DrawFn, count: int) -> list[str]:
    """``count`` decimal texts in ascending order; often equal, or one 18th-place step apart."""
    base = Decimal(_place_texts(draw))
    values: list[Decimal] = []
    for _ in range(count):
        kind = draw(st.sampled_from(["free", "tie", "step"]))
        if kind == "free" or not values:
            values.append(Decimal(_place_texts(draw)) if values else base)
        elif kind == "tie":
            values.append(values[-1])
        else:
            values.append(Decimal(_step(_text(values[-1]), 1)))
    return [_text(v) for v in sorted(values)]


@st.composite
def candles(draw: st.DrawFn, interval: Interval, opened: int) -> Row:
    """A valid wire row: low <= open, close <= high; taker volumes within the volumes."""
    low, a, b, high = draw(ordered(4))
    open_, close = (a, b) if draw(st.booleans()) else (b, a)
    taker, volume = draw(ordered(2))
    taker_quote, quote = draw(ordered(2))
    return wire_row(
        interval,
        opened,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        quote_asset_volume=quote,
        taker_buy_base_asset_volume=taker,
        taker_buy_quote_asset_volume=taker_quote,
        number_of_trades=draw(st.integers(0, 10**12)),
    )


@st.composite
def pages(draw: st.DrawFn) -> tuple[Series, int, int, list[Row]]:
    """A valid page: a series, a window and increasing rows of valid candles inside it."""
    interval = Interval.parse(draw(st.sampled_from(INTERVAL_NAMES)))
    market = draw(st.sampled_from([SPOT, USDM, COINM]))
    start = interval.ceil(draw(st.integers(0, 4_102_444_800_000)))  # up to 2100
    if interval.name == "3d":
        start += draw(st.integers(0, 3 * DAY - 1))  # 3d keeps whatever phase the exchange uses
    steps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=5))
    rows: list[Row] = []
    open_time = interval.advance(start, -1)
    for step in steps:
        open_time = interval.advance(open_time, step)
        rows.append(draw(candles(interval, open_time)))
    end = interval.next_open(rows[-1][0]) + draw(st.sampled_from([0, 1, interval.length_ms]))
    return Series(market, "ETHBTC", interval), start, end, rows


@settings(max_examples=300, deadline=None)
@given(pages())
def test_valid_candles_are_accepted_and_round_trip(page: tuple[Series, int, int, list[Row]]) -> None:
    series, start, end, rows = page
    klines = parse_rows(series, rows, start, end)
    assert [to_row(k) for k in klines] == rows
    assert all(k[:3] == (series.market.name, "ETHBTC", series.interval.name) for k in klines)


BAD_TEXTS = ["", "-1", "1e5", "NaN", " 1", "1.", ".1", "1.0000000000000000001", "1" * 31, "\uff11", "0x10"]
BAD_VALUES: list[Any] = [None, 1, 1.5, True, ["1"], {"v": "1"}]


def _step(value: str, steps: int) -> str:
    with localcontext(prec=60):  # exact: the default 28 digits would round a 30-digit value
        return _text(Decimal(value) + steps * ULP)


def _above(value: str) -> str:
    return _step(value, 1)


def _below(value: str) -> str:
    return _step(value, -1)  # below zero it is no decimal: refused all the same


def _impossible(row: Row, field: str) -> Any:
    """``field`` of ``row`` moved one step past what the other fields allow."""
    v = dict(zip(WIRE_FIELDS, row, strict=False))
    prices = [v["open"], v["high"], v["low"], v["close"]]
    if field == "low":
        return _above(max(prices, key=Decimal))
    if field == "high":
        return _below(min(prices, key=Decimal))
    if field == "open":
        return _above(v["high"])
    if field == "close":
        return _below(v["low"])
    if field == "volume":
        return _below(v["taker_buy_base_asset_volume"])
    if field == "quote_asset_volume":
        return _below(v["taker_buy_quote_asset_volume"])
    if field == "taker_buy_base_asset_volume":
        return _above(v["volume"])
    return _above(v["quote_asset_volume"])


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[Series, int, int, list[Row], int, str]:
    """A valid page with one field of one row made wrong, and which row and field that was."""
    series, start, end, rows = draw(pages())
    interval = series.interval
    index = draw(st.integers(0, len(rows) - 1))
    field = draw(st.sampled_from(WIRE_FIELDS))
    row = list(rows[index])
    position = WIRE_FIELDS.index(field)
    value = row[position]
    if field in DECIMAL_FIELDS:
        bad = draw(
            st.sampled_from(BAD_TEXTS) | st.sampled_from(BAD_VALUES) | st.just(_impossible(row, field))
        )
    elif field == "open_time":
        previous = rows[index - 1][0] if index else start - 1
        choices: list[Any] = [str(value), float(value), True, None, previous, end, end + interval.length_ms]
        if interval.is_anchored:
            choices.append(value + 1)
        bad = draw(st.sampled_from(choices))
        if bad in (end, end + interval.length_ms):
            row[6] = interval.close_time(bad)  # a whole candle, only past the window
    elif field == "close_time":
        bad = draw(st.sampled_from([value + 1, value - 1, str(value), None, float(value)]))
    else:
        bad = draw(st.sampled_from([-1, str(value), float(value), True, None]))
    row[position] = bad
    rows = [*rows[:index], row, *rows[index + 1 :]]
    return series, start, end, rows, index, field


@settings(max_examples=400, deadline=None)
@given(corrupted())
@example((BTC_1M, START, END, [flat(MINUTE, START, "1", "1", open="1.000000000000000001")], 0, "open"))
@example(
    (
        BTC_1M,
        START,
        END,
        [flat(MINUTE, START, "1", "1", quote_asset_volume=_below("1"))],
        0,
        "quote_asset_volume",
    )
)
def test_any_single_corrupted_field_is_refused_naming_row_and_field(
    case: tuple[Series, int, int, list[Row], int, str],
) -> None:
    series, start, end, rows, index, field = case
    message = malformed(rows, series=series, start=start, end=end)
    assert f"kline row {index}:" in message
    assert field in message, message


# -- symbols --------------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["BTCUSDT", "1000SATSUSDT", "A", "ABCDEFGHIJ0123456789", "BTC-USD_T.X"])
def test_valid_symbols_are_returned_unchanged(symbol: str) -> None:
    assert validate_symbol(symbol) == symbol


@pytest.mark.parametrize(
    "symbol",
    [
        "btcusdt",
        "BTCusdt",
        "ABCDEFGHIJ0123456789K",
        "",
        "BTC USDT",
        " BTCUSDT",
        "BTCUSDT\n",
        "BTC'; DROP TABLE klines;--",
        "BTCÜSDT",
        "BTC\u0661",
        "ＢＴＣ",
        "BTC/USDT",
    ],
)
def test_invalid_symbols_are_rejected_by_name(symbol: str) -> None:
    with pytest.raises(BadInputError) as caught:
        validate_symbol(symbol)
    assert repr(symbol) in str(caught.value)
    assert "A-Z 0-9" in str(caught.value)


@pytest.mark.parametrize("symbol", [None, 42, b"BTCUSDT", ["BTCUSDT"]])
def test_a_symbol_that_is_not_text_is_rejected(symbol: Any) -> None:
    with pytest.raises(BadInputError) as caught:
        validate_symbol(symbol)
    assert repr(symbol) in str(caught.value)


@st.composite
def one_scale_pages(draw: st.DrawFn) -> tuple[Series, int, int, list[Row]]:
    """Pages as Binance writes them (every price at one scale, each volume pair at one), so the column
    check decides them; now and then one field is nudged, re-scaled or made a whole number."""
    scale = draw(st.integers(0, 8))
    volume_scale = draw(st.integers(0, 8))

    def fixed(value: Decimal, places: int) -> str:
        return _text(value.quantize(Decimal(1).scaleb(-places))) if places else str(int(value))

    rows: list[Row] = []
    start = 1_709_164_800_000
    for index in range(draw(st.integers(1, 6))):
        low, a, b, high = sorted(Decimal(draw(st.integers(0, 10**6))) / 100 for _ in range(4))
        taker, volume = sorted(Decimal(draw(st.integers(0, 10**6))) / 100 for _ in range(2))
        rows.append(
            wire_row(
                MINUTE,
                start + index * 60_000,
                open=fixed(a, scale),
                high=fixed(high, scale),
                low=fixed(low, scale),
                close=fixed(b, scale),
                volume=fixed(volume, volume_scale),
                quote_asset_volume=fixed(volume, volume_scale),
                taker_buy_base_asset_volume=fixed(taker, volume_scale),
                taker_buy_quote_asset_volume=fixed(taker, volume_scale),
            )
        )
    if draw(st.booleans()):
        row = draw(st.sampled_from(rows))
        column = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 9, 10]))
        row[column] = draw(
            st.sampled_from([_above(row[column]), str(Decimal(row[column]).to_integral()), row[column] + "0"])
        )
    return BTC_1M, start, start + 10 * 60_000, rows


@settings(max_examples=500, deadline=None)
@given(one_scale_pages())
def test_the_column_check_never_accepts_what_the_row_check_refuses(
    page: tuple[Series, int, int, list[Row]],
) -> None:
    from extractor.klines import _from_columns, _row_by_row

    series, start, end, rows = page
    fast = _from_columns(series, list(zip(*rows, strict=True)), start, end)
    try:
        slow = _row_by_row(series, rows, start, end)
    except MalformedResponse:
        assert fast is None
        return
    assert fast is None or fast == slow


# -- the column block -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(pages())
def test_a_page_checked_by_columns_holds_what_the_row_by_row_check_returns(
    page: tuple[Series, int, int, list[Row]],
) -> None:
    series, start, end, rows = page
    checked = parse_rows(series, rows, start, end)
    one_by_one = _row_by_row(series, rows, start, end)
    assert list(checked) == one_by_one
    assert checked == one_by_one and one_by_one == checked
    assert flat_values(checked) == [value for kline in one_by_one for value in kline]
    assert list(open_times(checked)) == [k.open_time for k in one_by_one]


def test_a_valid_page_is_a_block_of_columns_that_reads_like_a_list() -> None:
    rows = minute_page(5)
    block = parse_rows(BTC_1M, rows, START, END)
    klines = _row_by_row(BTC_1M, rows, START, END)

    assert isinstance(block, KlineBlock)
    assert len(block) == 5 and block[0] == klines[0] and block[-1] == klines[-1]
    assert isinstance(block[1:3], KlineBlock) and block[1:3] == klines[1:3]
    assert block.flat() == flat_values(klines) and len(block.flat()) == 5 * len(FIELDS)
    assert block.open_times == tuple(k.open_time for k in klines)
    assert block != klines[:4] and block != "not klines"
    with pytest.raises(TypeError):
        hash(block)


def test_a_page_the_columns_cannot_vouch_for_is_checked_row_by_row() -> None:
    mixed_scales = [wire_row(MINUTE, START), wire_row(MINUTE, START + 60_000, open="0.0163479")]
    klines = parse_rows(BTC_1M, mixed_scales, START, END)
    assert not isinstance(klines, KlineBlock)
    assert [k.open for k in klines] == ["0.01634790", "0.0163479"]


def _csv_lines(rows: list[Row]) -> list[str]:
    return [",".join(map(str, row)) for row in rows]


def test_an_archive_block_keeps_its_lines_as_the_eleven_fields_it_holds() -> None:
    rows = minute_page(4)
    block = parse_csv(BTC_1M, _csv_lines(rows), START, END)

    assert isinstance(block, KlineBlock) and block == _row_by_row(BTC_1M, rows, START, END)
    assert block.text == "".join(",".join(map(str, row[:11])) + "\n" for row in rows)
    assert block[:] is block and block[1:].text is None  # a part of the block is not its lines


@pytest.mark.parametrize(
    "change",
    [
        lambda row: [*row[:11], "1"],  # an unused field that is not Binance's "0"
        lambda row: [row[0] * 1000, *row[1:6], row[6] * 1000 + 999, *row[7:]],  # microseconds
    ],
)
def test_an_archive_block_whose_lines_differ_from_its_values_keeps_no_lines(change: Any) -> None:
    rows = minute_page(3)
    rows[1] = change(rows[1])
    block = parse_csv(BTC_1M, _csv_lines(rows), START, END)

    assert isinstance(block, KlineBlock) and block.text is None
    assert [k.open_time for k in block] == [START, START + 60_000, START + 120_000]
