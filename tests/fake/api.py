"""The REST market-data API of one market: klines paging, exchangeInfo, and Binance's error codes.

Spot and USD-M page ascending from ``startTime`` (the newest ``limit`` rows without it); COIN-M answers
the newest ``limit`` rows between ``startTime`` and ``endTime``, which may be at most 200 days apart.
"""

from __future__ import annotations

import collections
import copy
import json
import re
import threading
from typing import Any, cast

from tests.fake.markets import PERPETUAL_DELIVERY, MarketRules
from tests.fake.series import Series, SymbolSpec

PAGE_CACHE_SIZE = 256

_SYMBOL_SYNTAX = re.compile(r"[A-Z0-9\-_.]{1,20}")
_SYMBOLS_SYNTAX = re.compile(r'\[("[A-Z0-9\-_.]{1,20}"(,"[A-Z0-9\-_.]{1,20}")*)?\]')
_DIGITS = re.compile(r"[0-9]{1,20}")
_QUOTE_ASSETS = ("USDT", "USDC", "BUSD", "FDUSD", "BTC", "ETH", "BNB", "USD")


class RequestError(Exception):
    """A request Binance rejects with 400 and a code."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _mandatory(name: str) -> RequestError:
    return RequestError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _illegal(name: str, legal: str) -> RequestError:
    return RequestError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


def _symbol_param(params: dict[str, str]) -> str:
    symbol = params.get("symbol", "")
    if not symbol:
        raise _mandatory("symbol")
    if not _SYMBOL_SYNTAX.fullmatch(symbol):
        raise _illegal("symbol", "^[A-Z0-9-_.]{1,20}$")
    return symbol


def _int_param(params: dict[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not _DIGITS.fullmatch(text):
        raise _illegal(name, "^[0-9]{1,20}$")
    return int(text)


def _assets(symbol: str) -> tuple[str, str]:
    pair = symbol.split("_")[0]
    quote = next((q for q in _QUOTE_ASSETS if pair.endswith(q) and len(pair) > len(q)), "")
    return pair[: len(pair) - len(quote)], quote


class MarketApi:
    """One market as the fake serves it: rules, symbols, weight limit, series and a page cache."""

    def __init__(self, rules: MarketRules, symbols: dict[str, SymbolSpec], weight_limit: int) -> None:
        self.rules = rules
        self.symbols = copy.deepcopy(symbols)
        self.weight_limit = weight_limit
        self._series: dict[tuple[str, str], Series] = {}
        self._pages: collections.OrderedDict[tuple[str, str, int | None, int | None, int], bytes] = (
            collections.OrderedDict()
        )
        self._pages_lock = threading.Lock()

    def series(self, symbol: str, interval: str) -> Series:
        key = (symbol, interval)
        series = self._series.get(key)
        if series is None:
            spec = self.symbols[symbol]
            series = self._series[key] = Series(self.rules.name, symbol, interval, spec, self.rules.digits)
        return series

    def weight(self, endpoint: str, params: dict[str, str]) -> int:
        """The request weight of one call to ``endpoint`` (``/klines``), charged even if it fails."""
        if endpoint == "/klines":
            text = params.get("limit", "")
            limit = int(text) if _DIGITS.fullmatch(text) else self.rules.limit_default
            return self.rules.klines_weight(limit)
        if endpoint == "/exchangeInfo":
            return self.rules.exchange_info_weight
        return 1 if endpoint in ("/ping", "/time") else 0

    # -- klines ----------------------------------------------------------------------------------

    def klines(self, params: dict[str, str], now: int) -> tuple[bytes, Series]:
        """The page a klines request gets, and its series (for the data faults)."""
        rules = self.rules
        symbol = _symbol_param(params)
        interval = params.get("interval", "")
        if not interval:
            raise _mandatory("interval")
        if interval not in rules.intervals:
            raise RequestError(-1120, "Invalid interval.")
        start = _int_param(params, "startTime")
        end = _int_param(params, "endTime")
        limit = _int_param(params, "limit")
        if start is not None and end is not None and start > end:
            raise RequestError(-1023, "Start time is greater than end time.")
        if limit is None:
            limit = rules.limit_default
        elif not 1 <= limit <= rules.limit_max:
            raise RequestError(-1130, "Data sent for parameter 'limit' is not valid.")
        span = rules.max_span_ms
        if span is not None and start is not None and end is not None and end - start > span:
            raise RequestError(-1127, f"More than {span // 3_600_000} hours between startTime and endTime.")
        if symbol not in self.symbols:
            raise RequestError(-1121, "Invalid symbol.")
        series = self.series(symbol, interval)
        if rules.newest_in_span:
            return self._newest_in_span(series, start, end, limit, now), series
        if start is None:
            return series.page_json(
                series.descending(now if end is None else min(end, now), limit), now
            ), series
        key = (symbol, interval, start, end, limit)
        page = self._cached(key)
        if page is not None:
            return page, series
        times = series.ascending(start, now if end is None else min(end, now), limit)
        page = series.page_json(times, now)
        settled = len(times) == limit or (end is not None and end < now)
        if settled and (not times or series.is_closed(times[-1], now)):
            self._cache(key, page)
        return page, series

    def _newest_in_span(
        self, series: Series, start: int | None, end: int | None, limit: int, now: int
    ) -> bytes:
        """COIN-M: the newest ``limit`` rows of [startTime, endTime], the span completed to 200 days."""
        span = cast(int, self.rules.max_span_ms)
        if start is not None and end is None:
            end = min(start + span, now)
        elif start is None and end is not None:
            start = end - span
        top = now if end is None else min(end, now)
        key = (series.symbol, series.interval, start, end, limit)
        if end is not None:
            page = self._cached(key)
            if page is not None:
                return page
        times = series.descending(top, limit, start)
        page = series.page_json(times, now)
        if end is not None and end < now and (not times or series.is_closed(times[-1], now)):
            self._cache(key, page)
        return page

    def _cached(self, key: tuple[str, str, int | None, int | None, int]) -> bytes | None:
        with self._pages_lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def _cache(self, key: tuple[str, str, int | None, int | None, int], page: bytes) -> None:
        with self._pages_lock:
            self._pages[key] = page
            if len(self._pages) > PAGE_CACHE_SIZE:
                self._pages.popitem(last=False)

    # -- exchangeInfo ----------------------------------------------------------------------------

    def exchange_info(self, params: dict[str, str], now: int) -> bytes:
        if self.rules.name == "spot":
            return self._spot_info(params, now)
        rules = self.rules
        limits: list[dict[str, Any]] = [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": self.weight_limit,
            },
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        ]
        info: dict[str, Any] = {"timezone": "UTC", "serverTime": now}
        if rules.name == "usdm":
            info["futuresType"] = "U_MARGINED"
            limits.append({"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300})
        info["rateLimits"] = limits
        info["exchangeFilters"] = []
        info["symbols"] = [self._contract_info(symbol, spec) for symbol, spec in self.symbols.items()]
        return json.dumps(info, separators=(",", ":")).encode()

    def _contract_info(self, symbol: str, spec: SymbolSpec) -> dict[str, Any]:
        digits = self.rules.digits
        base, quote = _assets(symbol)
        inverse = digits.inverse
        contract: dict[str, Any] = {
            "symbol": symbol,
            "pair": symbol.split("_")[0],
            "contractType": spec.contract_type,
            "deliveryDate": spec.delivered_at or PERPETUAL_DELIVERY,
            "onboardDate": spec.listed_at,
            self.rules.status_field: spec.status,
        }
        if inverse:
            contract["contractSize"] = 100 if symbol.startswith("BTC") else 10
        contract.update(
            {
                "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000",
                "baseAsset": base,
                "quoteAsset": quote,
                "marginAsset": base if inverse else quote,
                "pricePrecision": digits.price,
                "quantityPrecision": digits.volume,
                "baseAssetPrecision": 8,
                "quotePrecision": 8,
                "underlyingType": "COIN",
                "underlyingSubType": [],
                "triggerProtect": "0.0500",
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "tickSize": _unit(digits.price),
                        "minPrice": _unit(digits.price),
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "stepSize": _unit(digits.volume),
                        "minQty": _unit(digits.volume),
                    },
                ],
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            }
        )
        return contract

    def _spot_info(self, params: dict[str, str], now: int) -> bytes:
        if "symbol" in params:
            wanted = [_symbol_param(params)]
        elif "symbols" in params:
            text = params["symbols"]
            if not _SYMBOLS_SYNTAX.fullmatch(text):
                raise _illegal("symbols", '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$')
            wanted = cast(list[str], json.loads(text))
        else:
            wanted = list(self.symbols)
        if any(symbol not in self.symbols for symbol in wanted):
            raise RequestError(-1121, "Invalid symbol.")
        info = {
            "timezone": "UTC",
            "serverTime": now,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.weight_limit,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [_spot_symbol_info(symbol, self.symbols[symbol]) for symbol in wanted],
        }
        return json.dumps(info, separators=(",", ":")).encode()


def _unit(places: int) -> str:
    return f"{1 / 10**places:.{places}f}" if places else "1"


def _spot_symbol_info(symbol: str, spec: SymbolSpec) -> dict[str, Any]:
    base, quote = _assets(symbol)
    tick = "0.00000001" if spec.price_scale == "tiny" else "0.01000000"
    return {
        "symbol": symbol,
        "status": spec.status,
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": spec.status == "TRADING",
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "1000000.00000000",
                "tickSize": tick,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": "0.00001000",
                "maxQty": "9000.00000000",
                "stepSize": "0.00001000",
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
    }
