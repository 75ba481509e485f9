"""Markets: hosts, endpoints, limits, and the page size each weight table makes cheapest per candle."""

from __future__ import annotations

from typing import Any

import pytest

from extractor.errors import BadInputError
from extractor.intervals import DAY, INTERVAL_NAMES
from extractor.markets import COINM, MARKET_NAMES, MARKETS, SPOT, USDM, Market


def test_the_three_markets_by_name() -> None:
    assert MARKET_NAMES == ("spot", "usdm", "coinm")
    assert [MARKETS[name] for name in MARKET_NAMES] == [SPOT, USDM, COINM]
    assert [str(market) for market in (SPOT, USDM, COINM)] == list(MARKET_NAMES)


@pytest.mark.parametrize(
    ("market", "host", "path"),
    [
        (SPOT, "https://api.binance.com", "/api/v3"),
        (USDM, "https://fapi.binance.com", "/fapi/v1"),
        (COINM, "https://dapi.binance.com", "/dapi/v1"),
    ],
)
def test_hosts_and_endpoints(market: Market, host: str, path: str) -> None:
    assert market.base_url == host
    for endpoint in ("klines", "exchangeInfo", "time", "ping"):
        assert market.endpoint(endpoint) == f"{path}/{endpoint}"


def test_limits_of_design_section_5() -> None:
    assert (SPOT.max_limit, SPOT.weight_limit, SPOT.max_span_ms) == (1000, 6000, None)
    assert (USDM.max_limit, USDM.weight_limit, USDM.max_span_ms) == (1500, 2400, None)
    assert (COINM.max_limit, COINM.weight_limit, COINM.max_span_ms) == (1500, 2400, 200 * DAY)
    assert SPOT.lists_symbols_on_request and not USDM.lists_symbols_on_request
    assert not COINM.lists_symbols_on_request


def test_futures_have_no_one_second_klines() -> None:
    assert SPOT.supports("1s") and not USDM.supports("1s") and not COINM.supports("1s")
    for market in (USDM, COINM):
        assert market.intervals == tuple(name for name in INTERVAL_NAMES if name != "1s")
    assert all(SPOT.supports(name) for name in INTERVAL_NAMES)


def test_spot_costs_two_at_any_limit_and_pages_a_thousand() -> None:
    assert {SPOT.klines_weight(limit) for limit in range(1, 1001)} == {2}
    assert SPOT.page_limit == 1000


@pytest.mark.parametrize("market", [USDM, COINM])
def test_futures_weight_table(market: Market) -> None:
    expected = {1: 1, 99: 1, 100: 2, 499: 2, 500: 5, 1000: 5, 1001: 10, 1500: 10}
    assert {limit: market.klines_weight(limit) for limit in expected} == expected


@pytest.mark.parametrize("market", [USDM, COINM])
def test_futures_page_499_candles_at_weight_two(market: Market) -> None:
    """Cheaper per candle than 1000 at weight 5 or 1500 at weight 10: ~10,000 klines/s, not 8,000 or 6,000."""
    assert market.page_limit == 499
    assert market.klines_weight(499) == 2
    per_second = {
        limit: market.weight_limit / market.klines_weight(limit) * limit / 60 for limit in (499, 1000, 1500)
    }
    assert round(per_second[499], -2) == 10_000
    assert round(per_second[1000], -2) == 8_000
    assert round(per_second[1500], -2) == 6_000


@pytest.mark.parametrize("market", [SPOT, USDM, COINM])
def test_no_page_size_is_cheaper_per_candle_than_the_chosen_one(market: Market) -> None:
    chosen = market.page_limit
    best = market.klines_weight(chosen) / chosen
    for limit in range(1, market.max_limit + 1):
        cost = market.klines_weight(limit) / limit
        assert cost > best or (cost == best and limit <= chosen), limit


def test_the_page_size_follows_the_table_not_a_constant() -> None:
    """A table whose top step is cheapest per candle picks the largest page."""
    flat_top = Market(
        name="x",
        title="x",
        base_url="https://x.test",
        api_path="/x",
        archive_path="x",
        max_limit=1500,
        weight_limit=100,
        klines_weights=((1, 1), (100, 2), (500, 3)),
        exchange_info_weight=1,
        lists_symbols_on_request=False,
        max_span_ms=None,
        intervals=INTERVAL_NAMES,
    )
    assert flat_top.page_limit == 1500
    assert flat_top.klines_weight(1500) == 3


@pytest.mark.parametrize(
    ("text", "market"), [("spot", SPOT), ("usdm", USDM), (" COINM ", COINM), ("UsdM", USDM)]
)
def test_parse_takes_any_case_and_spacing(text: str, market: Market) -> None:
    assert Market.parse(text) is market


@pytest.mark.parametrize("text", ["futures", "", "usd-m", "um", None, 1, ["spot"]])
def test_parse_refuses_others_naming_them_and_the_choices(text: Any) -> None:
    with pytest.raises(BadInputError) as caught:
        Market.parse(text)
    message = str(caught.value)
    assert f"unknown market {text!r}" in message
    assert "spot, usdm (USD-M futures) or coinm (COIN-M futures)" in message
