"""What differs between the fake's three markets (spot, USD-M, COIN-M), and the symbols each lists.

Facts from Binance's documentation: spot ``/api/v3`` pages up to 1000 rows at weight 2, 6,000 weight a
minute; the futures APIs page up to 1500 with weight by ``limit`` ([1,100) 1, [100,500) 2, [500,1000] 5,
more 10), 2,400 a minute, exchangeInfo weight 1 listing every contract, no ``1s`` interval. COIN-M caps
``endTime - startTime`` at 200 days and answers the newest ``limit`` rows of that span.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.fake.series import DAY, INTERVALS, Digits, SymbolSpec

FUTURES_WEIGHTS = ((1, 1), (100, 2), (500, 5), (1001, 10))
PERPETUAL_DELIVERY = 4133404800000  # 2100-12-25 08:00 UTC, what Binance gives perpetuals as deliveryDate


@dataclass(frozen=True)
class MarketRules:
    """One market's endpoints, limits, weights, digits and wording: constants, shared by every fake."""

    name: str
    api: str
    """Path prefix of the REST API: ``/api/v3``."""
    archive: str
    """Path part of its archive files: ``spot``, ``futures/um``, ``futures/cm``."""
    limit_max: int
    klines_weights: tuple[tuple[int, int], ...]
    """``(first limit, weight)`` steps: a page of ``limit`` rows weighs the last step at or below it."""
    exchange_info_weight: int
    weight_limit: int
    intervals: tuple[str, ...]
    digits: Digits
    max_span_ms: int | None = None
    newest_in_span: bool = False
    """True for COIN-M: between startTime and endTime the newest ``limit`` rows are returned."""
    status_field: str = "status"
    weight_headers: tuple[str, ...] = ("X-MBX-USED-WEIGHT-1M",)
    limit_default: int = 500

    def klines_weight(self, limit: int) -> int:
        weight = self.klines_weights[0][1]
        for first, step_weight in self.klines_weights:
            if limit >= first:
                weight = step_weight
        return weight

    def too_many(self, limit: int, address: str) -> str:
        if self.name == "spot":
            return (
                f"Too many requests; current limit of IP({address}) request weight per minute is {limit}. "
                "Please use WebSocket Streams for live updates to avoid polling the API."
            )
        return (
            f"Too many requests; current limit is {limit} requests per minute. "
            "Please use the websocket for live updates to avoid polling the API."
        )

    def banned(self, until_ms: int, address: str) -> str:
        if self.name == "spot":
            return (
                f"Way too many requests; IP({address}) banned until {until_ms}. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
        return (
            f"Way too many requests; IP banned until {until_ms}. "
            "Please use the websocket for live updates to avoid bans."
        )


FUTURES_INTERVALS = tuple(name for name in INTERVALS if name != "1s")

SPOT = MarketRules(
    name="spot",
    api="/api/v3",
    archive="spot",
    limit_max=1000,
    klines_weights=((1, 2),),
    exchange_info_weight=20,
    weight_limit=6000,
    intervals=INTERVALS,
    digits=Digits(price=8, volume=8, quote=8),
    weight_headers=("X-MBX-USED-WEIGHT-1M", "X-MBX-USED-WEIGHT"),
)
USDM = MarketRules(
    name="usdm",
    api="/fapi/v1",
    archive="futures/um",
    limit_max=1500,
    klines_weights=FUTURES_WEIGHTS,
    exchange_info_weight=1,
    weight_limit=2400,
    intervals=FUTURES_INTERVALS,
    digits=Digits(price=2, volume=3, quote=5),
)
COINM = MarketRules(
    name="coinm",
    api="/dapi/v1",
    archive="futures/cm",
    limit_max=1500,
    klines_weights=FUTURES_WEIGHTS,
    exchange_info_weight=1,
    weight_limit=2400,
    intervals=FUTURES_INTERVALS,
    digits=Digits(price=1, volume=0, quote=8, inverse=True, volume_span=500_000),
    max_span_ms=200 * DAY,
    newest_in_span=True,
    status_field="contractStatus",
)
MARKETS: dict[str, MarketRules] = {rules.name: rules for rules in (SPOT, USDM, COINM)}
WEIGHTS_OF_OTHER_ENDPOINTS = {"/ping": 1, "/time": 1}

DEFAULT_SYMBOLS: dict[str, SymbolSpec] = {
    "BTCUSDT": SymbolSpec(1502942400000, outages=[(1679661600000, 1679666400000)]),
    "ETHUSDT": SymbolSpec(1502942400000),
    "BNBUSDT": SymbolSpec(1509937200000),
    "SHIBUSDT": SymbolSpec(1620644400000, price_scale="tiny"),
    "PEPEUSDT": SymbolSpec(1683291600000, price_scale="huge"),
    "LUNAUSDT": SymbolSpec(1598004000000, status="BREAK"),
    "HALTUSDT": SymbolSpec(1641196800000, status="HALT"),
}
"""Spot. BTCUSDT's outage is 2023-03-24 12:40-14:00 UTC; SHIB has 0.00000001-sized prices, PEPE
22-digit volumes."""

QUARTER_LISTED, QUARTER_DELIVERED = 1703836800000, 1719561600000  # 2023-12-29 08:00, 2024-06-28 08:00 UTC

DEFAULT_USDM_SYMBOLS: dict[str, SymbolSpec] = {
    "BTCUSDT": SymbolSpec(1567900800000, outages=[(1692064800000, 1692066600000)]),
    "ETHUSDT": SymbolSpec(1574812800000),
    "BNBUSDT": SymbolSpec(1581292800000),
    "MATICUSDT": SymbolSpec(1603324800000, status="SETTLING", delivered_at=1726012800000),
    "BTCUSDT_240628": SymbolSpec(
        QUARTER_LISTED, status="DELIVERED", contract_type="CURRENT_QUARTER", delivered_at=QUARTER_DELIVERED
    ),
}
"""USD-M, listed after spot: BTCUSDT 2019-09-08, with an outage 2023-08-15 02:00-02:30 UTC; MATICUSDT
settled 2024-09-11; the June 2024 quarterly was delivered on 2024-06-28 08:00 UTC."""

DEFAULT_COINM_SYMBOLS: dict[str, SymbolSpec] = {
    "BTCUSD_PERP": SymbolSpec(1597017600000),
    "ETHUSD_PERP": SymbolSpec(1597622400000),
    "BTCUSD_240628": SymbolSpec(
        QUARTER_LISTED, status="DELIVERED", contract_type="CURRENT_QUARTER", delivered_at=QUARTER_DELIVERED
    ),
}
"""COIN-M: BTCUSD_PERP from 2020-08-10, ETHUSD_PERP from 2020-08-17, and a delivered quarterly."""


def default_symbols(market: str) -> dict[str, SymbolSpec]:
    return {"spot": DEFAULT_SYMBOLS, "usdm": DEFAULT_USDM_SYMBOLS, "coinm": DEFAULT_COINM_SYMBOLS}[market]


def synthetic_symbols(count: int) -> dict[str, SymbolSpec]:
    """``count`` more TRADING symbols, ``SYN000USDT`` on, listed 2020-01-01: many series for benchmarks."""
    return {f"SYN{n:03d}USDT": SymbolSpec(1577836800000) for n in range(count)}
