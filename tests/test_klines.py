"""Kline rows: exact decimals, and a clear MalformedResponse naming the row and field for each bad row."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractor.errors import BadInputError, MalformedResponse
from extractor.intervals import INTERVAL_NAMES, Interval
from extractor.klines import DECIMAL_FIELDS, FIELDS, Kline, parse_rows, plain, to_row, validate_symbol

MINUTE = Interval.parse("1m")
START = 1_709_164_800_000  # 2024-02-29T00:00:00Z, a Thursday
END = START + 10 * 60_000
DAY_MS = 86_400_000

Row = list[Any]


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
    values.update(fields)
    return [*values.values(), "0"]


def minute_page(count: int = 3) -> list[Row]:
    return [wire_row(MINUTE, START + i * 60_000) for i in range(count)]


def assert_malformed(
    rows: Any, *fragments: str, interval: Interval = MINUTE, start: int = START, end: int = END
) -> None:
    with pytest.raises(MalformedResponse) as caught:
        parse_rows("BTCUSDT", interval, rows, start, end)
    for fragment in fragments:
        assert fragment in str(caught.value)


# -- exact values ---------------------------------------------------------------------------------


def test_a_valid_page_parses_to_klines() -> None:
    klines = parse_rows("BTCUSDT", MINUTE, minute_page(), START, END)
    assert [k.open_time for k in klines] == [START, START + 60_000, START + 120_000]
    first = klines[0]
    assert first == Kline(
        symbol="BTCUSDT",
        interval="1m",
        open_time=START,
        open=Decimal("0.01634790"),
        high=Decimal("0.80000000"),
        low=Decimal("0.01575800"),
        close=Decimal("0.01577100"),
        volume=Decimal("148976.11427815"),
        close_time=START + 59_999,
        quote_asset_volume=Decimal("2434.19055334"),
        number_of_trades=308,
        taker_buy_base_asset_volume=Decimal("1756.87402397"),
        taker_buy_quote_asset_volume=Decimal("28.46694368"),
    )
    assert FIELDS[:3] == ("symbol", "interval", "open_time")
    assert not hasattr(first, "__dict__")


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
    ],
)
def test_decimals_are_exact_and_keep_their_trailing_zeros(text: str) -> None:
    row = wire_row(MINUTE, START, low=text, quote_asset_volume=text, taker_buy_quote_asset_volume=text)
    (kline,) = parse_rows("BTCUSDT", MINUTE, [row], START, END)
    for value in (kline.low, kline.quote_asset_volume, kline.taker_buy_quote_asset_volume):
        assert type(value) is Decimal
        assert value == Decimal(text)
        assert plain(value) == text


def test_plain_never_writes_an_exponent() -> None:
    assert plain(Decimal("1E-8")) == "0.00000001"
    assert plain(Decimal("1.5E+3")) == "1500"
    assert plain(Decimal("0E-8")) == "0.00000000"


def test_an_empty_page_is_no_klines() -> None:
    assert parse_rows("BTCUSDT", MINUTE, [], START, END) == []


# -- malformed rows -------------------------------------------------------------------------------


BAD_DECIMALS = [
    ("open", 0.1),  # a JSON float instead of a string
    ("open", 1),
    ("high", "NaN"),
    ("high", "Infinity"),
    ("low", "1e5"),
    ("low", "1E5"),
    ("close", "-1"),
    ("close", "+1"),
    ("volume", " 1"),
    ("volume", "1 "),
    ("volume", "1\n"),
    ("quote_asset_volume", "1_000"),
    ("quote_asset_volume", "1,5"),
    ("taker_buy_base_asset_volume", ""),
    ("taker_buy_base_asset_volume", "1."),
    ("taker_buy_base_asset_volume", ".5"),
    ("taker_buy_quote_asset_volume", "\u0661\u0662"),  # Arabic-Indic digits: Decimal() would take them
    ("taker_buy_quote_asset_volume", "\uff11"),  # a full-width one
    ("taker_buy_quote_asset_volume", None),
    ("open", Decimal("1")),
]


@pytest.mark.parametrize(("field", "value"), BAD_DECIMALS)
def test_a_bad_decimal_names_its_row_and_field(field: str, value: Any) -> None:
    rows = minute_page()
    rows[2] = wire_row(MINUTE, START + 120_000, **{field: value})
    assert_malformed(rows, "kline row 2", f"field {field} ", "not a decimal string")


BAD_INTEGERS = [
    ("open_time", str(START + 120_000)),
    ("open_time", float(START + 120_000)),
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


def test_a_bool_open_time_is_not_an_integer() -> None:
    assert_malformed([wire_row(MINUTE, START, open_time=True)], "kline row 0", "field open_time")


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
    sunday = START + 3 * DAY_MS
    assert_malformed(
        [wire_row(week, sunday)],
        "kline row 0",
        f"open_time {sunday}",
        "not a 1w open time",
        interval=week,
        end=START + 30 * DAY_MS,
    )


@pytest.mark.parametrize("third_open", [START + 60_000, START])
def test_rows_must_strictly_increase(third_open: int) -> None:
    rows = [wire_row(MINUTE, START), wire_row(MINUTE, START + 60_000), wire_row(MINUTE, third_open)]
    assert_malformed(rows, "kline row 2", f"open_time {third_open}", "not after the previous row")


@pytest.mark.parametrize(("name", "early"), [("1m", START - 60_000), ("3d", START - 1)])
def test_a_row_before_the_requested_start_is_rejected(name: str, early: int) -> None:
    interval = Interval.parse(name)
    rows = [wire_row(interval, early)]
    assert_malformed(rows, "kline row 0", f"open_time {early}", f"start {START}", interval=interval)


@pytest.mark.parametrize("open_time", [END, END + 60_000])
def test_a_row_at_or_after_the_window_end_is_rejected(open_time: int) -> None:
    rows = [wire_row(MINUTE, START), wire_row(MINUTE, open_time)]
    assert_malformed(rows, "kline row 1", f"open_time {open_time}", f"end {END}")


def test_a_negative_trade_count_is_rejected() -> None:
    rows = minute_page()
    rows[1] = wire_row(MINUTE, START + 60_000, number_of_trades=-1)
    assert_malformed(rows, "kline row 1", "number_of_trades", "negative")


# -- calendar and unanchored intervals ------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 3 * DAY_MS - 1))
def test_3d_rows_with_any_phase_are_accepted(phase: int) -> None:
    three_days = Interval.parse("3d")
    start = 1_577_836_800_000  # 2020-01-01
    opens = [start + phase + i * 3 * DAY_MS for i in range(3)]
    rows = [wire_row(three_days, t) for t in opens]
    klines = parse_rows("BTCUSDT", three_days, rows, start, start + 10 * 3 * DAY_MS)
    assert [(k.open_time, k.close_time) for k in klines] == [(t, t + 3 * DAY_MS - 1) for t in opens]


def test_monthly_close_time_spans_a_leap_february() -> None:
    month = Interval.parse("1M")
    february, march = 1_706_745_600_000, 1_709_251_200_000  # 2024-02-01, 2024-03-01
    (kline,) = parse_rows(
        "BTCUSDT", month, [wire_row(month, february, close_time=march - 1)], february, march
    )
    assert kline.close_time == february + 29 * DAY_MS - 1
    assert_malformed(
        [wire_row(month, february, close_time=february + 28 * DAY_MS - 1)],
        "close_time",
        "1M",
        interval=month,
        start=february,
        end=march,
    )


def test_a_month_not_opening_on_the_first_is_rejected() -> None:
    month = Interval.parse("1M")
    second_of_march = 1_709_337_600_000
    assert_malformed(
        [wire_row(month, second_of_march)],
        "kline row 0",
        "not a 1M open time",
        interval=month,
        end=second_of_march + 40 * DAY_MS,
    )


# -- round trip -----------------------------------------------------------------------------------

fractions = st.integers(1, 8).flatmap(
    lambda digits: st.integers(0, 10**digits - 1).map(lambda value: f".{value:0{digits}d}")
)
decimal_strings = st.builds(str, st.integers(0, 10**22 - 1)).flatmap(
    lambda whole: (st.just("") | fractions).map(lambda fraction: whole + fraction)
)


@st.composite
def pages(draw: st.DrawFn) -> tuple[Interval, int, list[Row]]:
    """A valid page: an interval, a window start and increasing rows with exact decimal strings."""
    interval = Interval.parse(draw(st.sampled_from(INTERVAL_NAMES)))
    start = interval.ceil(draw(st.integers(0, 4_102_444_800_000)))  # up to 2100
    steps = draw(st.lists(st.integers(1, 3), max_size=5))
    rows: list[Row] = []
    open_time = interval.advance(start, -1)
    for step in steps:
        open_time = interval.advance(open_time, step)
        trades = draw(st.integers(0, 10**12))
        values = {name: draw(decimal_strings) for name in DECIMAL_FIELDS}
        rows.append(wire_row(interval, open_time, number_of_trades=trades, **values))
    return interval, start, rows


@settings(max_examples=200, deadline=None)
@given(pages())
def test_rows_survive_a_round_trip(page: tuple[Interval, int, list[Row]]) -> None:
    interval, start, rows = page
    end = interval.next_open(rows[-1][0]) if rows else start + 1
    klines = parse_rows("ETHBTC", interval, rows, start, end)
    assert [to_row(k) for k in klines] == rows
    assert all(k.symbol == "ETHBTC" and k.interval == interval.name for k in klines)


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
