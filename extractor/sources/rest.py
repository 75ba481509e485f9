"""The REST source of one market: exchange info, the exchange's clock, klines pages and listing probes.

It is the KlineSource of ``--source rest`` and the authority every source defers to: it names the
symbols a market trades, tells which candles have closed by the exchange's clock, finds a listing's
first candle and confirms that a range the exchange answered empty really is empty.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from extractor.errors import ArchiveUnavailable, BadInputError, MalformedResponse, RequestRejected
from extractor.klines import Kline, Series, parse_rows, validate_symbol
from extractor.markets import Market
from extractor.sources.base import Rows, Window
from extractor.sources.http import RestClient

SYMBOL_CODES = (-1121, -1100)
LIGHT_WEIGHT = 1
TRADING = "TRADING"


@dataclass(frozen=True, slots=True)
class Listing:
    """What exchangeInfo says of one symbol: its status, and for futures when it was listed."""

    symbol: str
    status: str
    quote_asset: str
    onboard_ms: int | None = None


class RestSource:
    """Klines of one market from its REST API; safe to share between worker threads."""

    name = "rest"

    def __init__(
        self,
        market: Market,
        client: RestClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.market = market
        self.client = client
        self.page_limit = market.page_limit
        self.page_weight = market.klines_weight(self.page_limit)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._synced = False
        self._offset_ms = int((wall_clock() - clock()) * 1000)  # exchange ms minus monotonic ms
        self._skew_ms = 0
        client.budget.limit = market.weight_limit

    @property
    def base_url(self) -> str:
        return self.client.base_url

    def close(self) -> None:
        self.client.close()

    # -- the exchange's clock -------------------------------------------------------------------------

    def server_time(self) -> int:
        """The exchange's time in ms; also resynchronises :meth:`now_ms` and the weight minute."""
        server_ms, mono, wall = self.client.get(self.market.endpoint("time"), None, LIGHT_WEIGHT, self._stamp)
        self._adopt_time(server_ms, mono, wall)
        return server_ms

    def _stamp(self, body: Any) -> tuple[int, float, float]:
        received = (self._clock(), self._wall_clock())
        server_ms = body.get("serverTime") if isinstance(body, dict) else None
        if type(server_ms) is not int:
            raise MalformedResponse(
                f"{self.market.endpoint('time')}: expected {{'serverTime': ms}}, got {body!r:.80}"
            )
        return server_ms, *received

    def _adopt_time(self, server_ms: int, received_mono: float, received_wall: float) -> None:
        with self._lock:
            # Stamped at receipt, our idea of exchange time is slightly behind it: a candle we call closed is.
            self._offset_ms = server_ms - int(received_mono * 1000)
            self._skew_ms = server_ms - int(received_wall * 1000)
            self._synced = True

    def now_ms(self) -> int:
        """Exchange time in ms: the last sync carried forward by the monotonic clock."""
        return self.exchange_time_at(self._clock())

    def monotonic(self) -> float:
        return self._clock()

    def exchange_time_at(self, monotonic: float) -> int:
        """Exchange time in ms at an earlier :meth:`monotonic` reading, by the last sync's measure."""
        if not self._synced:
            with self._sync_lock:  # the first threads to need the time wait for one sync, not one each
                if not self._synced:
                    self.server_time()
        return int(monotonic * 1000) + self._offset_ms

    def server_offset_ms(self) -> int:
        """Exchange minus monotonic ms, for the weight budget's minute."""
        return self._offset_ms

    def local_time_ms(self) -> int:
        """This machine's wall clock in ms: the exchange's time as far as it is known before a sync."""
        return int(self._wall_clock() * 1000)

    def clock_skew_ms(self) -> int:
        self.now_ms()
        return self._skew_ms

    def ping(self) -> float:
        """Round trip of the market's ping in seconds."""
        started = self._clock()
        self.client.get(self.market.endpoint("ping"), None, LIGHT_WEIGHT, _expect_object)
        return self._clock() - started

    # -- symbols --------------------------------------------------------------------------------------

    def listings(self, symbols: Sequence[str] = ()) -> dict[str, Listing]:
        """What exchangeInfo says of ``symbols`` (every symbol of the market when empty), in one request.

        Spot narrows the answer to the symbols asked for; when it refuses the list because one of them
        is unknown, the whole list is asked for instead, so the unknown ones can be named. The answer's
        clock and weight limit are adopted: no separate time request is needed.
        """
        for symbol in symbols:
            validate_symbol(symbol)
        params = None
        if symbols and self.market.lists_symbols_on_request:
            params = {"symbols": json.dumps(list(symbols), separators=(",", ":"))}
        try:
            return self._exchange_info(params)
        except RequestRejected as exc:
            if params is None or exc.code not in SYMBOL_CODES:
                raise
            return self._exchange_info(None)

    def _exchange_info(self, params: dict[str, str] | None) -> dict[str, Listing]:
        path = self.market.endpoint("exchangeInfo")
        listed, weight_limit, server_ms = self.client.get(
            path, params, self.market.exchange_info_weight, _parse_exchange_info
        )
        if server_ms is not None:
            self._adopt_time(server_ms, self._clock(), self._wall_clock())
        if weight_limit is not None:
            self.client.budget.limit = weight_limit
        return listed

    # -- klines ---------------------------------------------------------------------------------------

    def klines(self, series: Series, start: int, end: int) -> Sequence[Kline]:
        """Every candle the exchange returns with ``start <= open_time < end``, a page per request.

        ``end`` must not pass the forming candle's open time (the caller knows the exchange's clock):
        the answer is then closed candles only. Pages hold at most ``page_limit`` candles (and, on
        COIN-M, 200 days), so every market returns each page whole.
        """
        self._check(series)
        tiles = series.interval.tiles(start, end, self.page_limit, self.market.max_span_ms)
        pages = [self._page(series, lo, hi, self.page_limit) for lo, hi in tiles]
        return pages[0] if len(pages) == 1 else [kline for page in pages for kline in page]

    def any_open_time(self, series: Series, start: int, end: int) -> int | None:
        """The open time of some candle in ``[start, end)``, or None when the exchange has none there.

        One request of one candle where the market answers oldest first; on COIN-M, which answers
        newest first and at most 200 days at a time, one per 200 days.
        """
        self._check(series)
        for lo, hi in self._spans(start, end):
            rows = self._page(series, lo, hi, 1)
            if rows:
                return rows[0].open_time
        return None

    def first_open_time(self, series: Series, start: int, end: int) -> int | None:
        """The listing probe: the first candle at or after ``start`` (below ``end``), or None.

        Oldest-first markets answer it in one request. On COIN-M the 200-day span holding the first
        candle is found, then halved until one page covers it.
        """
        self._check(series)
        interval = series.interval
        if self.market.max_span_ms is None:
            rows = self._page(series, start, end, 1)
            return rows[0].open_time if rows else None
        for lo, hi in self._spans(start, end):
            if self.any_open_time(series, lo, hi) is None:
                continue
            while interval.count(lo, hi) > self.page_limit:
                middle = interval.ceil(lo + (hi - lo) // 2)
                if middle <= lo or middle >= hi:
                    break
                if self.any_open_time(series, lo, middle) is not None:
                    hi = middle
                else:
                    lo = middle
            rows = self.klines(series, lo, hi)
            if rows:
                return rows[0].open_time
        return None

    def _spans(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        span = self.market.max_span_ms
        if span is None:
            yield start, end
            return
        lo = start
        while lo < end:
            yield lo, min(end, lo + span)
            lo += span

    def _page(self, series: Series, start: int, end: int, limit: int) -> Sequence[Kline]:
        params: dict[str, str | int] = {
            "symbol": series.symbol,
            "interval": series.interval.name,
            "startTime": start,
            "endTime": end - 1,
            "limit": limit,
        }

        def parse(rows: Any) -> Sequence[Kline]:
            if self.market.max_span_ms is not None and isinstance(rows, list) and len(rows) > 1:
                rows = sorted(rows, key=_open_time_or_first)  # COIN-M answers newest first
            return parse_rows(series, rows, start, end)

        try:
            return self.client.get(
                self.market.endpoint("klines"), params, self.market.klines_weight(limit), parse
            )
        except RequestRejected as exc:
            if exc.code == -1121 or (exc.code == -1100 and "'symbol'" in exc.msg):
                raise RequestRejected(
                    exc.code, f"{exc.msg.rstrip('.')}: {series.symbol}", exc.status
                ) from exc
            if exc.code == -1120:
                raise RequestRejected(
                    exc.code, f"{exc.msg.rstrip('.')}: {series.interval}", exc.status
                ) from exc
            raise

    def _check(self, series: Series) -> None:
        if series.market is not self.market:
            raise BadInputError(f"{series} asked of the {self.market.name} REST source")
        if not self.market.supports(series.interval.name):
            raise BadInputError(
                f"{self.market.title} has no {series.interval.name} klines; intervals there: "
                + " ".join(self.market.intervals)
            )

    # -- the KlineSource protocol ---------------------------------------------------------------------

    def plan(self, series: Series, start: int, end: int) -> Iterator[Window]:
        self._check(series)
        weight = self.page_weight
        interval = series.interval
        for lo, hi in interval.tiles(start, end, self.page_limit, self.market.max_span_ms):
            yield Window(series, lo, hi, weight, interval.count(lo, hi) or 1)

    def fetch(self, window: Window) -> Rows:
        return Rows(window, self.klines(window.series, window.start, window.end))

    def replan(self, window: Window, reason: ArchiveUnavailable) -> list[Window]:
        raise reason

    def capacity(self) -> int:
        """Pages the weight left in this minute pays for."""
        return self.client.budget.left() // max(1, self.page_weight)


def _open_time_or_first(row: Any) -> int | float:
    """A row's open time to sort by; a row without a numeric one first, where parse_rows names it."""
    open_time = row[0] if isinstance(row, list) and row else None
    if type(open_time) is int or type(open_time) is float:
        return open_time
    return float("-inf")


def _expect_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(body).__name__}")
    return body


def _parse_exchange_info(body: Any) -> tuple[dict[str, Listing], int | None, int | None]:
    """Listings, the REQUEST_WEIGHT per minute limit and the serverTime of an exchangeInfo answer.

    Spot and USD-M name a symbol's state ``status``, COIN-M ``contractStatus``.
    """
    listed = _expect_object(body).get("symbols")
    if not isinstance(listed, list):
        raise MalformedResponse("exchangeInfo: no symbols list")
    listings: dict[str, Listing] = {}
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str):
            continue
        status = entry.get("status", entry.get("contractStatus"))
        if not isinstance(status, str):
            status = (
                entry.get("contractStatus") if isinstance(entry.get("contractStatus"), str) else "UNKNOWN"
            )
        onboard = entry.get("onboardDate")
        quote = entry.get("quoteAsset")
        listings[entry["symbol"]] = Listing(
            entry["symbol"],
            str(status),
            quote if isinstance(quote, str) else "",
            onboard if type(onboard) is int else None,
        )
    weight_limit = None
    rate_limits = body.get("rateLimits")
    for rule in rate_limits if isinstance(rate_limits, list) else ():
        if (
            isinstance(rule, dict)
            and rule.get("rateLimitType") == "REQUEST_WEIGHT"
            and rule.get("interval") == "MINUTE"
            and rule.get("intervalNum") == 1
            and type(rule.get("limit")) is int
            and rule["limit"] > 0
        ):
            weight_limit = rule["limit"]
    server_ms = body.get("serverTime")
    return listings, weight_limit, server_ms if type(server_ms) is int else None
