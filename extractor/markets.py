"""The three Binance markets this tool reads: everything that differs between them, and nothing else.

Spot, USD-M futures and COIN-M futures serve the same 12-field klines from different hosts and paths,
with their own page sizes, weight tables and per-IP limits (Binance counts spot and futures apart).
COIN-M also caps the span between ``startTime`` and ``endTime`` at 200 days and answers with the newest
rows of that span, so its pages must hold no more candles than one answer returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from extractor.errors import BadInputError
from extractor.intervals import DAY, INTERVAL_NAMES

FUTURES_INTERVALS = tuple(name for name in INTERVAL_NAMES if name != "1s")


@dataclass(frozen=True, slots=True)
class Market:
    """One market: ``Market.parse("usdm")``."""

    name: str
    title: str
    base_url: str
    api_path: str
    archive_path: str
    max_limit: int
    weight_limit: int
    """REQUEST_WEIGHT per minute per IP, until exchangeInfo says otherwise."""
    klines_weights: tuple[tuple[int, int], ...]
    """``(first limit, weight)`` steps: a page of ``limit`` candles costs the weight of the last step ≤ it."""
    exchange_info_weight: int
    lists_symbols_on_request: bool
    """Spot's exchangeInfo takes ``symbols=[...]``; the futures ones always list every contract."""
    max_span_ms: int | None
    intervals: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Market:
        market = MARKETS.get(text.strip().lower()) if isinstance(text, str) else None
        if market is None:
            raise BadInputError(
                f"unknown market {text!r}: use spot, usdm (USD-M futures) or coinm (COIN-M futures)"
            )
        return market

    def endpoint(self, name: str) -> str:
        """The path of one REST endpoint: ``klines`` → ``/fapi/v1/klines``."""
        return f"{self.api_path}/{name}"

    def klines_weight(self, limit: int) -> int:
        """The request weight of one klines page of ``limit`` candles."""
        weight = self.klines_weights[0][1]
        for first, step_weight in self.klines_weights:
            if limit >= first:
                weight = step_weight
        return weight

    @property
    def page_limit(self) -> int:
        """The page size that costs the least weight per candle (the larger one on a tie)."""
        candidates = {
            self.max_limit,
            *(min(self.max_limit, first - 1) for first, _ in self.klines_weights[1:]),
        }
        return min(candidates, key=lambda limit: (self.klines_weight(limit) / limit, -limit))

    def supports(self, interval: str) -> bool:
        return interval in self.intervals

    def __str__(self) -> str:
        return self.name


_FUTURES_WEIGHTS = ((1, 1), (100, 2), (500, 5), (1001, 10))

SPOT = Market(
    name="spot",
    title="spot",
    base_url="https://api.binance.com",
    api_path="/api/v3",
    archive_path="spot",
    max_limit=1000,
    weight_limit=6000,
    klines_weights=((1, 2),),
    exchange_info_weight=20,
    lists_symbols_on_request=True,
    max_span_ms=None,
    intervals=INTERVAL_NAMES,
)
USDM = Market(
    name="usdm",
    title="USD-M futures",
    base_url="https://fapi.binance.com",
    api_path="/fapi/v1",
    archive_path="futures/um",
    max_limit=1500,
    weight_limit=2400,
    klines_weights=_FUTURES_WEIGHTS,
    exchange_info_weight=1,
    lists_symbols_on_request=False,
    max_span_ms=None,
    intervals=FUTURES_INTERVALS,
)
COINM = Market(
    name="coinm",
    title="COIN-M futures",
    base_url="https://dapi.binance.com",
    api_path="/dapi/v1",
    archive_path="futures/cm",
    max_limit=1500,
    weight_limit=2400,
    klines_weights=_FUTURES_WEIGHTS,
    exchange_info_weight=1,
    lists_symbols_on_request=False,
    max_span_ms=200 * DAY,
    intervals=FUTURES_INTERVALS,
)

MARKETS: dict[str, Market] = {market.name: market for market in (SPOT, USDM, COINM)}
MARKET_NAMES: tuple[str, ...] = tuple(MARKETS)
