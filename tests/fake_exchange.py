"""A fake Binance spot REST API on loopback, faithful to design §5, with switchable faults.

Tests, ``make smoke`` and ``make bench`` prove the extractor against it, so it keeps Binance's paging,
weight, 429/418 and error-body semantics exactly, and it is fast enough to serve 50,000 klines/s.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import hashlib
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from typing import Any, cast
from urllib.parse import parse_qsl

import pytest

from extractor.intervals import DAY, INTERVAL_NAMES, Interval

E8 = 100_000_000
PAGE_LIMIT_DEFAULT = 500
PAGE_LIMIT_MAX = 1000
PAGE_CACHE_SIZE = 256
NO_RESPONSE = 0  # status logged for a reset or a hang: the client never got an answer

WEIGHTS: dict[str, int] = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
}

_SYMBOL_SYNTAX = re.compile(r"[A-Z0-9\-_.]{1,20}")
_SYMBOLS_SYNTAX = re.compile(r'\[("[A-Z0-9\-_.]{1,20}"(,"[A-Z0-9\-_.]{1,20}")*)?\]')
_DIGITS = re.compile(r"[0-9]{1,20}")
_QUOTE_ASSETS = ("USDT", "USDC", "BUSD", "FDUSD", "BTC", "ETH", "BNB")

_ROW = '[%d,"%d.%08d","%d.%08d","%d.%08d","%d.%08d","%d.%08d",%d,"%d.%08d",%d,"%d.%08d","%d.%08d","0"]'

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def _html_page(status: int, reason: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    418: "I'm a teapot",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class SymbolSpec:
    """How one symbol trades on the fake: when it was listed, its status, its outage gaps, its digits."""

    listed_at: int
    status: str = "TRADING"
    outages: list[tuple[int, int]] = field(default_factory=list)
    price_scale: str = "normal"


DEFAULT_SYMBOLS: dict[str, SymbolSpec] = {
    "BTCUSDT": SymbolSpec(1502942400000, outages=[(1679661600000, 1679666400000)]),
    "ETHUSDT": SymbolSpec(1502942400000),
    "BNBUSDT": SymbolSpec(1509937200000),
    "SHIBUSDT": SymbolSpec(1620644400000, price_scale="tiny"),
    "PEPEUSDT": SymbolSpec(1683291600000, price_scale="huge"),
    "LUNAUSDT": SymbolSpec(1598004000000, status="BREAK"),
    "HALTUSDT": SymbolSpec(1641196800000, status="HALT"),
}
"""BTCUSDT's outage is 2023-03-24 12:40-14:00 UTC; SHIB has 0.00000001-sized prices, PEPE 22-digit volumes."""

STATS_PATH = "/fake/stats"
"""Not Binance's: what the fake served, for benchmarks that run it in its own process."""


def synthetic_symbols(count: int) -> dict[str, SymbolSpec]:
    """``count`` more TRADING symbols, ``SYN000USDT`` on, listed 2020-01-01: many series for benchmarks."""
    return {f"SYN{n:03d}USDT": SymbolSpec(1577836800000) for n in range(count)}


@dataclass
class Faults:
    """Faults on ``/api/v3/klines``; change them at any time from any thread.

    Precedence: hang_next, fail_all, fail_first (503, empty body), then one seeded draw picks error
    (500/502/503, HTML or empty), reset (TCP RST), html (nginx 502) or truncated (200, JSON cut in half).
    All but truncation answer before the API sees the request, as the proxy in front of Binance would:
    no weight used, no weight headers. ``latency`` delays every klines answer; stop() cuts hangs short.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    html_rate: float = 0.0
    truncated_rate: float = 0.0
    fail_first: int = 0
    fail_all: int | None = None
    hang_next: int = 0
    seed: int = 0


class ManualClock:
    """A clock that moves only when told, to inject into FakeExchange (and the client) in tests."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _base_price_units(symbol: str) -> int:
    known = {"BTC": 30_000, "ETH": 2_000, "BNB": 300}
    for asset, price in known.items():
        if symbol.startswith(asset):
            return price * E8
    return (1 + _seed(symbol) % 999) * E8


class _Series:
    """The candles of one (symbol, interval): which open times exist, and each row's wire JSON."""

    def __init__(self, symbol: str, interval: Interval, spec: SymbolSpec) -> None:
        self.interval = interval
        self.step = 0 if interval.is_calendar else interval.length_ms
        self.first_open = self.align(spec.listed_at)
        self.outages = sorted(spec.outages)
        self.seed = _seed(f"{symbol}/{interval.name}")
        self.seed2 = _mix(self.seed)
        if spec.price_scale == "tiny":
            self.low_min, self.low_span, self.width_max = 1, 9000, 999
            self.vol_min, self.vol_span, self.trades_max = 10**6 * E8, 10**10 * E8, 900
        elif spec.price_scale == "huge":
            self.low_min, self.low_span, self.width_max = 200 * E8, 700 * E8, 99 * E8
            self.vol_min, self.vol_span, self.trades_max = 5 * 10**10 * E8, 5 * 10**10 * E8 - 1, 90_000
        elif spec.price_scale == "normal":
            base = _base_price_units(symbol)
            self.low_min, self.low_span, self.width_max = base, base // 10, base // 100
            self.vol_min, self.vol_span, self.trades_max = E8 // 1000, 5000 * E8, 5000
        else:
            raise ValueError(f"price_scale {spec.price_scale!r} is not normal, tiny or huge")

    def align(self, ms: int) -> int:
        """The open time of the candle containing ``ms``; 3d uses epoch multiples of three days."""
        if self.interval.name == "3d":
            return ms - ms % (3 * DAY)
        return self.interval.align(ms)

    def ceil(self, ms: int) -> int:
        opened = self.align(ms)
        return opened if opened == ms else self.next_open(opened)

    def next_open(self, open_time: int) -> int:
        return open_time + self.step if self.step else self.interval.next_open(open_time)

    def _in_outage(self, open_time: int) -> bool:
        return any(start <= open_time < end for start, end in self.outages)

    def _filtered(self, times: Iterable[int], lo: int, hi: int) -> Iterable[int]:
        if any(start <= hi and end > lo for start, end in self.outages):
            return (t for t in times if not self._in_outage(t))
        return times

    def ascending(self, start: int, last: int, limit: int) -> list[int]:
        """Existing open times ``>= start`` and ``<= last``, oldest first, at most ``limit``."""
        first = max(self.ceil(start), self.first_open)
        if first > last:
            return []
        if self.step:
            times: Iterable[int] = range(first, last + 1, self.step)
        else:
            times = self._months(first, last)
        return list(islice(self._filtered(times, first, last), limit))

    def descending(self, last: int, limit: int) -> list[int]:
        """The ``limit`` newest existing open times ``<= last``, oldest first."""
        top = self.align(last)
        if top < self.first_open:
            return []
        if self.step:
            times: Iterable[int] = range(top, self.first_open - 1, -self.step)
        else:
            times = self._months_down(top)
        newest = list(islice(self._filtered(times, self.first_open, top), limit))
        newest.reverse()
        return newest

    def _months(self, first: int, last: int) -> Iterator[int]:
        t = first
        while t <= last:
            yield t
            t = self.interval.next_open(t)

    def _months_down(self, top: int) -> Iterator[int]:
        t = top
        while t >= self.first_open:
            yield t
            t = self.interval.advance(t, -1)

    def row_json(self, open_time: int, now: int) -> str:
        """The wire row of one candle; the one containing ``now`` is forming and changes with ``now``."""
        h = _mix((open_time * 0x9E3779B97F4A7C15 + self.seed) & 0xFFFFFFFFFFFFFFFF)
        g = _mix(h ^ self.seed2)
        low = self.low_min + h % self.low_span
        width = (h >> 24) % (self.width_max + 1)
        high = low + width
        open_ = low + (h >> 40) % (width + 1)
        close = low + g % (width + 1)
        volume = self.vol_min + (g >> 8) % self.vol_span
        trades = 1 + (g >> 40) % self.trades_max
        taker = volume * ((h >> 52) % 1001) // 1000
        close_time = (open_time + self.step if self.step else self.interval.next_open(open_time)) - 1
        if close_time >= now:
            length = close_time + 1 - open_time
            elapsed = min(max(now - open_time + 1, 1), length)
            volume = volume * elapsed // length
            taker = taker * elapsed // length
            trades = trades * elapsed // length
            close = low + _mix((now // 1000) ^ self.seed2) % (width + 1)
        vwap = (low + high) >> 1
        quote = volume * vwap // E8
        taker_quote = taker * vwap // E8
        return _ROW % (
            open_time,
            *divmod(open_, E8),
            *divmod(high, E8),
            *divmod(low, E8),
            *divmod(close, E8),
            *divmod(volume, E8),
            close_time,
            *divmod(quote, E8),
            trades,
            *divmod(taker, E8),
            *divmod(taker_quote, E8),
        )

    def page_json(self, open_times: list[int], now: int) -> str:
        row_json = self.row_json
        return "[" + ",".join([row_json(t, now) for t in open_times]) + "]"

    def is_closed(self, open_time: int, now: int) -> bool:
        return self.next_open(open_time) - 1 < now


class _Reply:
    """One HTTP answer, or none at all when ``drop`` is "reset" or "hang"."""

    __slots__ = ("body", "content_type", "drop", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json;charset=UTF-8",
        drop: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []
        self.content_type = content_type
        self.drop = drop


def _gateway_error(status: int, html: bool) -> _Reply:
    return _Reply(status, _html_page(status, _REASONS.get(status, "Error")) if html else b"", [], "text/html")


def _weight_headers(used: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("X-MBX-USED-WEIGHT-1M", str(used)), ("X-MBX-USED-WEIGHT", str(used)), *extra]


def _binance_error(status: int, code: int, msg: str, headers: list[tuple[str, str]]) -> _Reply:
    return _Reply(status, json.dumps({"code": code, "msg": msg}, separators=(",", ":")).encode(), headers)


def _mandatory(name: str) -> tuple[int, str]:
    return -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."


def _illegal(name: str, legal: str) -> tuple[int, str]:
    return -1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'."


class _RequestError(Exception):
    """A request Binance rejects with 400 and a code."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class FakeExchange:
    """A threaded HTTP/1.1 server on 127.0.0.1 speaking Binance's public spot market-data API."""

    def __init__(
        self,
        *,
        symbols: dict[str, SymbolSpec] | None = None,
        weight_limit: int = 6000,
        clock: Callable[[], float] = time.time,
        ban_after_429s: int = 3,
        ban_seconds: float = 120.0,
        retry_after: int | None = None,
        round_trip: float = 0.0,
    ) -> None:
        self.symbols = copy.deepcopy(DEFAULT_SYMBOLS if symbols is None else symbols)
        self.weight_limit = weight_limit
        self.clock = clock
        self.ban_after_429s = ban_after_429s
        self.ban_seconds = ban_seconds
        self.retry_after = retry_after
        self.round_trip = round_trip
        """Seconds added to every API answer, as a distant network would (faults.latency is klines only)."""
        self.url = ""
        self.faults = Faults()
        self.request_counts: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[float, str, dict[str, str], int]] = []
        self.banned_until: float | None = None
        self._total_429s = 0
        self._lock = threading.Lock()
        self._weight_minute = -1
        self._weight_used = 0
        self._retry_until: float | None = None
        self._strikes = 0
        self._rng = random.Random(0)
        self._rng_for: tuple[Faults, int] | None = None
        self._series: dict[tuple[str, str], _Series] = {}
        self._pages: collections.OrderedDict[tuple[str, str, int, int | None, int], bytes] = (
            collections.OrderedDict()
        )
        self._pages_lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeExchange:
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.exchange = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-exchange", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, and release hung handlers and idle keep-alive connections."""
        self._stopping.set()
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
        self._server = None

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read -------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def total_weight_429s(self) -> int:
        """How many 429 answers were sent since start (or the last reset_counts)."""
        return self._total_429s

    def reset_counts(self) -> None:
        """Forget request counts, the request log and the 429 tally; weight and bans are kept."""
        with self._lock:
            self.request_counts.clear()
            self.requests.clear()
            self._total_429s = 0

    def rows(self, symbol: str, interval: str, start: int, end: int) -> list[list[Any]]:
        """The closed candles the exchange serves with ``start <= open_time < end``, in wire format."""
        if symbol not in self.symbols:
            raise ValueError(f"{symbol} is not a symbol of this fake exchange")
        series = self._series_for(symbol, Interval.parse(interval))
        now = self.now_ms()
        if end <= start:
            return []
        times = series.ascending(start, min(end - 1, now), end - start)
        closed = [t for t in times if series.is_closed(t, now)]
        return cast(list[list[Any]], json.loads(series.page_json(closed, now)))

    # -- serving ---------------------------------------------------------------------------------

    def _series_for(self, symbol: str, interval: Interval) -> _Series:
        key = (symbol, interval.name)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(symbol, interval, self.symbols[symbol])
        return series

    def _log(self, at: float, path: str, params: dict[str, str], status: int) -> None:
        with self._lock:
            self.requests.append((at, path, params, status))

    def _gateway_fault(self) -> tuple[_Reply | None, bool]:
        """This klines request's fault: an answer replacing the API's, and whether to cut the API's JSON."""
        faults = self.faults
        with self._lock:
            if faults.hang_next > 0:
                faults.hang_next -= 1
                return _Reply(NO_RESPONSE, drop="hang"), False
            if faults.fail_all is not None:
                return _gateway_error(faults.fail_all, html=True), False
            if faults.fail_first > 0:
                faults.fail_first -= 1
                return _gateway_error(503, html=False), False
            if self._rng_for is None or self._rng_for[0] is not faults or self._rng_for[1] != faults.seed:
                self._rng = random.Random(faults.seed)
                self._rng_for = (faults, faults.seed)
            draw = self._rng.random()
            error_status = self._rng.choice((500, 502, 503))
            error_html = self._rng.random() < 0.5
        threshold = faults.error_rate
        if draw < threshold:
            return _gateway_error(error_status, error_html), False
        threshold += faults.reset_rate
        if draw < threshold:
            return _Reply(NO_RESPONSE, drop="reset"), False
        threshold += faults.html_rate
        if draw < threshold:
            return _Reply(502, NGINX_502, [], "text/html"), False
        return None, draw < threshold + faults.truncated_rate

    def _admit(self, path: str) -> tuple[_Reply | None, list[tuple[str, str]]]:
        """Charge the request's weight or refuse it with 429/418; returns the weight headers to send."""
        weight = WEIGHTS.get(path, 0)
        with self._lock:
            now = self.clock()
            minute = math.floor(now / 60)
            if minute != self._weight_minute:
                self._weight_minute, self._weight_used = minute, 0
            if self.banned_until is not None:
                if now < self.banned_until:
                    return self._banned(now), []
                self.banned_until, self._retry_until, self._strikes = None, None, 0
            if self._retry_until is not None and now < self._retry_until:
                self._strikes += 1
                if self._strikes >= self.ban_after_429s:
                    self.banned_until = now + self.ban_seconds
                    return self._banned(now), []
                return self._too_many(math.ceil(self._retry_until - now)), []
            self._retry_until, self._strikes = None, 0
            if self._weight_used + weight > self.weight_limit:
                retry = (
                    self.retry_after if self.retry_after is not None else math.ceil((minute + 1) * 60 - now)
                )
                self._retry_until = now + retry
                return self._too_many(retry), []
            self._weight_used += weight
            return None, _weight_headers(self._weight_used)

    def _too_many(self, retry: int) -> _Reply:
        self._total_429s += 1
        msg = (
            f"Too many requests; current limit of IP(127.0.0.1) request weight per minute is "
            f"{self.weight_limit}. Please use WebSocket Streams for live updates to avoid polling the API."
        )
        return _binance_error(
            429, -1003, msg, _weight_headers(self._weight_used, ("Retry-After", str(retry)))
        )

    def _banned(self, now: float) -> _Reply:
        until = cast(float, self.banned_until)
        msg = (
            f"Way too many requests; IP(127.0.0.1) banned until {int(until * 1000)}. "
            "Please use WebSocket Streams for live updates to avoid bans."
        )
        retry = ("Retry-After", str(math.ceil(until - now)))
        return _binance_error(418, -1003, msg, _weight_headers(self._weight_used, retry))

    def stats(self, *, with_log: bool = False) -> dict[str, Any]:
        """Requests per path and answers per status since start; ``with_log`` adds [at, path, status] each."""
        with self._lock:
            served = [(at, path, status) for at, path, _, status in self.requests if path != STATS_PATH]
            counts = {path: n for path, n in self.request_counts.items() if path != STATS_PATH}
        statuses = collections.Counter(str(status) for _, _, status in served)
        stats: dict[str, Any] = {"requests": counts, "statuses": dict(statuses)}
        if with_log:
            stats["log"] = served
        return stats

    def _answer(self, path: str, params: dict[str, str]) -> tuple[_Reply, bool]:
        """The reply to one GET, and whether a truncation fault cuts its body."""
        if path == STATS_PATH:
            body = json.dumps(self.stats(with_log=params.get("log") == "1"), separators=(",", ":"))
            return _Reply(200, body.encode()), False
        with self._lock:
            self.request_counts[path] += 1
        truncate = False
        if path == "/api/v3/klines":
            fault, truncate = self._gateway_fault()
            if fault is not None:
                return fault, False
        refused, headers = self._admit(path)
        if refused is not None:
            return refused, False
        try:
            if path == "/api/v3/klines":
                return _Reply(200, self._klines(params), headers), truncate
            if path == "/api/v3/ping":
                return _Reply(200, b"{}", headers), False
            if path == "/api/v3/time":
                return _Reply(200, b'{"serverTime":%d}' % self.now_ms(), headers), False
            if path == "/api/v3/exchangeInfo":
                return _Reply(200, self._exchange_info(params), headers), False
        except _RequestError as exc:
            return _binance_error(400, exc.code, exc.msg, headers), False
        return _Reply(404, _html_page(404, "Not Found"), headers, "text/html"), False

    def _symbol_param(self, params: dict[str, str]) -> str:
        symbol = params.get("symbol", "")
        if not symbol:
            raise _RequestError(*_mandatory("symbol"))
        if not _SYMBOL_SYNTAX.fullmatch(symbol):
            raise _RequestError(*_illegal("symbol", "^[A-Z0-9-_.]{1,20}$"))
        return symbol

    def _int_param(self, params: dict[str, str], name: str) -> int | None:
        text = params.get(name)
        if text is None:
            return None
        if not _DIGITS.fullmatch(text):
            raise _RequestError(*_illegal(name, "^[0-9]{1,20}$"))
        return int(text)

    def _klines(self, params: dict[str, str]) -> bytes:
        symbol = self._symbol_param(params)
        interval_name = params.get("interval", "")
        if not interval_name:
            raise _RequestError(*_mandatory("interval"))
        if interval_name not in INTERVAL_NAMES:
            raise _RequestError(-1120, "Invalid interval.")
        start = self._int_param(params, "startTime")
        end = self._int_param(params, "endTime")
        limit = self._int_param(params, "limit")
        if start is not None and end is not None and start > end:
            raise _RequestError(-1023, "Start time is greater than end time.")
        if limit is None:
            limit = PAGE_LIMIT_DEFAULT
        elif not 1 <= limit <= PAGE_LIMIT_MAX:
            raise _RequestError(-1130, "Data sent for parameter 'limit' is not valid.")
        if symbol not in self.symbols:
            raise _RequestError(-1121, "Invalid symbol.")
        series = self._series_for(symbol, Interval.parse(interval_name))
        now = self.now_ms()
        if start is None:
            times = series.descending(now if end is None else min(end, now), limit)
            return series.page_json(times, now).encode()
        key = (symbol, interval_name, start, end, limit)
        with self._pages_lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
                return page
        times = series.ascending(start, now if end is None else min(end, now), limit)
        page = series.page_json(times, now).encode()
        settled = len(times) == limit or (end is not None and end < now)
        if settled and (not times or series.is_closed(times[-1], now)):
            with self._pages_lock:
                self._pages[key] = page
                if len(self._pages) > PAGE_CACHE_SIZE:
                    self._pages.popitem(last=False)
        return page

    def _exchange_info(self, params: dict[str, str]) -> bytes:
        if "symbol" in params:
            wanted = [self._symbol_param(params)]
        elif "symbols" in params:
            text = params["symbols"]
            if not _SYMBOLS_SYNTAX.fullmatch(text):
                legal = '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$'
                raise _RequestError(*_illegal("symbols", legal))
            wanted = cast(list[str], json.loads(text))
        else:
            wanted = list(self.symbols)
        if any(symbol not in self.symbols for symbol in wanted):
            raise _RequestError(-1121, "Invalid symbol.")
        info = {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
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
            "symbols": [_symbol_info(symbol, self.symbols[symbol]) for symbol in wanted],
        }
        return json.dumps(info, separators=(",", ":")).encode()


def _symbol_info(symbol: str, spec: SymbolSpec) -> dict[str, Any]:
    quote = next((q for q in _QUOTE_ASSETS if symbol.endswith(q) and len(symbol) > len(q)), "")
    tick = "0.00000001" if spec.price_scale == "tiny" else "0.01000000"
    return {
        "symbol": symbol,
        "status": spec.status,
        "baseAsset": symbol[: len(symbol) - len(quote)],
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    exchange: FakeExchange

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is routine here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        exchange = cast(_Server, self.server).exchange
        with exchange._lock:
            exchange._connections.add(self.connection)

    def finish(self) -> None:
        exchange = cast(_Server, self.server).exchange
        with exchange._lock:
            exchange._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake serves thousands of requests per second."""

    def do_GET(self) -> None:
        exchange = cast(_Server, self.server).exchange
        path, _, query = self.path.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        at = exchange.clock()
        reply, truncate = exchange._answer(path, params)
        exchange._log(at, path, params, reply.status)
        if reply.drop:
            if reply.drop == "hang":
                exchange._stopping.wait()
                self.close_connection = True
            else:
                self._reset()
            return
        latency = exchange.round_trip if path.startswith("/api/") else 0.0
        if path == "/api/v3/klines":
            latency += exchange.faults.latency
        if latency > 0 and exchange._stopping.wait(latency):
            self.close_connection = True
            return
        body = reply.body[: len(reply.body) // 2] if truncate else reply.body
        head = [
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in reply.headers),
        ]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST, as a crashing load balancer does."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


@pytest.fixture
def fake_exchange() -> Iterator[FakeExchange]:
    """A started FakeExchange with the default symbols and the real clock, stopped after the test."""
    exchange = FakeExchange().start()
    try:
        yield exchange
    finally:
        exchange.stop()


def main() -> None:
    """``python -m tests.fake_exchange``: serve on its own process (and core) until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weight-limit", type=int, default=6000)
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="SECONDS", help="delay of every API answer"
    )
    parser.add_argument(
        "--extra-symbols", type=int, default=0, metavar="N", help="serve N synthetic symbols more"
    )
    args = parser.parse_args()
    symbols = {**DEFAULT_SYMBOLS, **synthetic_symbols(args.extra_symbols)}
    with FakeExchange(weight_limit=args.weight_limit, symbols=symbols, round_trip=args.latency) as exchange:
        print(exchange.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
