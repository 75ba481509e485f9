"""The fake exchange's HTTP/1.1 server: spot, USD-M and COIN-M REST APIs and the archive on one port.

Routing by path prefix (``/api/v3``, ``/fapi/v1``, ``/dapi/v1``, ``/data``), weight per (client address,
market), the switchable faults, a log of every request with its client address and market, and
``/fake/stats`` (not Binance's) for benchmarks that run the fake in its own process.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from tests.fake.api import MarketApi, RequestError
from tests.fake.archive import CACHE_BYTES, DAILY_DELAY, FUTURES_HEADER_FROM, MONTHLY_DELAY, ArchiveHost
from tests.fake.faults import ArchiveFaults, Faults, GatewayDraws, spoil_page, take_data_fault
from tests.fake.http import Handler, Server
from tests.fake.markets import MARKETS, default_symbols
from tests.fake.replies import Reply, binance_error, html_page
from tests.fake.series import SymbolSpec
from tests.fake.weight import AddressUsage, WeightBook

STATS_PATH = "/fake/stats"
"""Not Binance's: what the fake served, for benchmarks that run it in its own process."""


class ManualClock:
    """A clock that moves only when told, to inject into FakeExchange (and the client) in tests."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LoggedRequest(NamedTuple):
    """One request as the fake saw it; ``market`` is "" for a path of no market."""

    at: float
    client: str
    market: str
    path: str
    params: dict[str, str]
    status: int
    weight: int

    @property
    def is_archive(self) -> bool:
        return self.path.startswith("/data/")


class _Served(NamedTuple):
    reply: Reply
    truncate: bool
    latency: float
    market: str
    weight: int


def _has_data_faults(faults: Faults) -> bool:
    return (
        faults.empty_next > 0
        or faults.short_next > 0
        or faults.hole_next > 0
        or faults.tail_next > 0
        or faults.bad_rows_next > 0
    )


class FakeExchange:
    """A threaded HTTP/1.1 server on 127.0.0.1 speaking Binance's public market data and archive.

    ``symbols``, ``usdm_symbols`` and ``coinm_symbols`` replace a market's default listings; the
    ``*weight_limit`` arguments set each market's per-IP limit (what its exchangeInfo reports).
    Weight is counted per client address and market unless ``shared_ip``; ``round_trip`` delays every
    REST answer (``Faults.latency`` adds to klines only, ``ArchiveFaults.latency`` to archive files).
    """

    def __init__(
        self,
        *,
        symbols: dict[str, SymbolSpec] | None = None,
        usdm_symbols: dict[str, SymbolSpec] | None = None,
        coinm_symbols: dict[str, SymbolSpec] | None = None,
        weight_limit: int = 6000,
        usdm_weight_limit: int = 2400,
        coinm_weight_limit: int = 2400,
        clock: Callable[[], float] = time.time,
        ban_after_429s: int = 3,
        ban_seconds: float = 120.0,
        retry_after: int | None = None,
        round_trip: float = 0.0,
        shared_ip: bool = False,
        archive_daily_delay: float = DAILY_DELAY,
        archive_monthly_delay: float = MONTHLY_DELAY,
        archive_cache_bytes: int = CACHE_BYTES,
        futures_header_from: int = FUTURES_HEADER_FROM,
    ) -> None:
        listings = {"spot": symbols, "usdm": usdm_symbols, "coinm": coinm_symbols}
        limits = {"spot": weight_limit, "usdm": usdm_weight_limit, "coinm": coinm_weight_limit}
        self.markets: dict[str, MarketApi] = {}
        for name, rules in MARKETS.items():
            listing = listings[name]
            self.markets[name] = MarketApi(
                rules, default_symbols(name) if listing is None else listing, limits[name]
            )
        self._routes = {api.rules.api: api for api in self.markets.values()}
        self.archive = ArchiveHost(
            self.markets,
            daily_delay=archive_daily_delay,
            monthly_delay=archive_monthly_delay,
            cache_bytes=archive_cache_bytes,
            futures_header_from=futures_header_from,
        )
        self.clock = clock
        self.round_trip = round_trip
        """Seconds added to every REST answer, as a distant network would (faults.latency is klines only)."""
        self.url = ""
        self.faults = Faults()
        """Faults on every market's klines, after the market's own in ``market_faults``."""
        self.market_faults: dict[str, Faults] = {name: Faults() for name in MARKETS}
        self.request_counts: collections.Counter[str] = collections.Counter()
        self.log: list[LoggedRequest] = []
        self.before_admit: Callable[[str, str], None] | None = None
        """Called with (market, client address) before each REST request is charged: a test's other
        client on the same IP spends its weight here, between this client's requests."""
        self._weights = WeightBook(
            shared_ip=shared_ip,
            ban_after_429s=ban_after_429s,
            ban_seconds=ban_seconds,
            retry_after=retry_after,
        )
        self._lock = threading.Lock()
        self._draws = GatewayDraws()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeExchange:
        self._stopping.clear()
        server = Server(("127.0.0.1", 0), Handler)
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

    # -- what tests read and set -----------------------------------------------------------------

    @property
    def archive_url(self) -> str:
        """The archive's base URL: the same server, files under ``/data/``."""
        return self.url

    @property
    def archive_faults(self) -> ArchiveFaults:
        return self.archive.faults

    @archive_faults.setter
    def archive_faults(self, faults: ArchiveFaults) -> None:
        self.archive.faults = faults

    @property
    def symbols(self) -> dict[str, SymbolSpec]:
        """Spot's listings (``markets[name].symbols`` for the others)."""
        return self.markets["spot"].symbols

    @property
    def weight_limit(self) -> int:
        """Spot's per-IP weight limit a minute (``markets[name].weight_limit`` for the others)."""
        return self.markets["spot"].weight_limit

    @weight_limit.setter
    def weight_limit(self, limit: int) -> None:
        self.markets["spot"].weight_limit = limit

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def requests(self) -> list[tuple[float, str, dict[str, str], int]]:
        """The log as (at, path, params, status); ``log`` also has the client address, market and weight."""
        with self._lock:
            return [(r.at, r.path, r.params, r.status) for r in self.log]

    @property
    def archive_counts(self) -> collections.Counter[str]:
        """Archive requests by path."""
        with self._lock:
            return collections.Counter(
                {p: n for p, n in self.request_counts.items() if p.startswith("/data/")}
            )

    @property
    def total_weight_429s(self) -> int:
        """How many 429 answers were sent since start (or the last reset_counts), in every market."""
        return self._weights.total_429s

    @property
    def banned_until(self) -> float | None:
        """When the latest ban of any address in any market ends, while one is on the books.

        Setting it bans every address in spot (or with None lifts spot's bans), as the single-IP fake
        did; ``ban`` bans one address or market.
        """
        with self._lock:
            return self._weights.banned_until()

    @banned_until.setter
    def banned_until(self, until: float | None) -> None:
        self.ban(until)

    def ban(self, until: float | None, market: str = "spot", address: str | None = None) -> None:
        """Answer 418 to ``address`` (every address if None) in ``market`` until ``until``; None lifts it."""
        with self._lock:
            self._weights.ban(until, market, address)

    def spend(self, weight: int, *, market: str = "spot", address: str = "127.0.0.9") -> bool:
        """Another client at ``address`` spends ``weight`` if it fits in this minute's limit (a polite
        client never provokes a 429 itself); returns whether it did."""
        api = self.markets[market]
        with self._lock:
            now = self.clock()
            if self._weights.used(market, address, now) + weight > api.weight_limit:
                return False
            refusal, _ = self._weights.admit(api.rules, api.weight_limit, address, weight, now)
            return refusal is None

    def used_weight(self, market: str = "spot", address: str = "127.0.0.1") -> int:
        """This minute's weight of the pool ``address`` draws on in ``market``."""
        with self._lock:
            return self._weights.used(market, address, self.clock())

    def usage(self, market: str = "spot") -> dict[str, AddressUsage]:
        """What each client address spent in ``market``, since start or the last reset_counts."""
        with self._lock:
            return {a: copy.deepcopy(u) for (m, a), u in self._weights.usage.items() if m == market}

    def reset_counts(self) -> None:
        """Forget request counts, the log, per-address usage and the 429 tally; weight and bans are kept."""
        with self._lock:
            self.request_counts.clear()
            self.log.clear()
            self._weights.forget_usage()

    def rows(self, symbol: str, interval: str, start: int, end: int, market: str = "spot") -> list[list[Any]]:
        """The closed candles ``market`` serves with ``start <= open_time < end``, in wire format."""
        api = self.markets[market]
        if symbol not in api.symbols:
            raise ValueError(f"{symbol} is not a {market} symbol of this fake exchange")
        if interval not in api.rules.intervals:
            raise ValueError(f"{market} has no {interval} klines")
        series = api.series(symbol, interval)
        now = self.now_ms()
        if end <= start:
            return []
        times = series.ascending(start, min(end - 1, now), end - start)
        closed = [t for t in times if series.is_closed(t, now)]
        return cast(list[list[Any]], json.loads(series.page_json(closed, now)))

    def archive_path(self, market: str, symbol: str, interval: str, day_or_month: str) -> str:
        """``archive_path("spot", "BTCUSDT", "1M", "2024-01")``; a ``YYYY-MM-DD`` names a daily file."""
        return self.archive.path(market, symbol, interval, day_or_month)

    def stats(self, *, with_log: bool = False, full_log: bool = False) -> dict[str, Any]:
        """What the fake served: requests per path, answers per status, weight per market and address.

        ``with_log`` adds ``log``: ``[at, path, status]`` each, or with ``full_log`` an object each
        with the client address, market and weight as well.
        """
        now = self.clock()
        with self._lock:
            served = [r for r in self.log if r.path != STATS_PATH]
            counts = {path: n for path, n in self.request_counts.items() if path != STATS_PATH}
            weight: dict[str, dict[str, Any]] = {name: {} for name in MARKETS}
            for (market, address), usage in sorted(self._weights.usage.items()):
                weight[market][address] = usage.as_json(self._weights.used(market, address, now))
            builds = list(self.archive.builds)
        statuses = collections.Counter(str(r.status) for r in served)
        stats: dict[str, Any] = {
            "requests": counts,
            "statuses": dict(statuses),
            "weight": weight,
            "archive": {
                "requests": sum(n for path, n in counts.items() if path.startswith("/data/")),
                "built": len(builds),
                "build_seconds": round(sum(seconds for _, seconds in builds), 6),
                "cached_bytes": self.archive.cached_bytes,
            },
        }
        if with_log:
            stats["log"] = [
                {
                    "at": r.at,
                    "client": r.client,
                    "market": r.market,
                    "path": r.path,
                    "status": r.status,
                    "weight": r.weight,
                }
                if full_log
                else [r.at, r.path, r.status]
                for r in served
            ]
        return stats

    # -- serving ---------------------------------------------------------------------------------

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _log(self, at: float, client: str, served: _Served, path: str, params: dict[str, str]) -> None:
        entry = LoggedRequest(at, client, served.market, path, params, served.reply.status, served.weight)
        with self._lock:
            self.log.append(entry)

    def _answer(self, path: str, params: dict[str, str], client: str) -> _Served:
        """The reply to one GET, whether a truncation fault cuts it, its delay, market and weight."""
        if path == STATS_PATH:
            log = params.get("log", "")
            stats = json.dumps(
                self.stats(with_log=log in ("1", "full"), full_log=log == "full"), separators=(",", ":")
            )
            return _Served(Reply(200, stats.encode()), False, 0.0, "", 0)
        with self._lock:
            self.request_counts[path] += 1
        if path.startswith("/data/"):
            market = next(
                (m.rules.name for m in self.markets.values() if path.startswith(f"/data/{m.rules.archive}/")),
                "",
            )
            return _Served(
                self.archive.answer(path, self.now_ms()), False, self.archive.latency(path), market, 0
            )
        api = self._routes.get(path[: path.find("/", path.find("/", 1) + 1)])
        if api is None:
            return _Served(Reply(404, html_page(404, "Not Found"), [], "text/html"), False, 0.0, "", 0)
        name = api.rules.name
        endpoint = path[len(api.rules.api) :]
        latency = self.round_trip
        truncate = False
        if endpoint == "/klines":
            latency += self.market_faults[name].latency + self.faults.latency
            fault, truncate = self._gateway_fault(name)
            if fault is not None:
                return _Served(fault, False, latency, name, 0)
        weight = api.weight(endpoint, params)
        if self.before_admit is not None:
            self.before_admit(name, client)
        refused, headers = self._admit(api, client, weight)
        if refused is not None:
            return _Served(refused, False, latency, name, 0)
        try:
            if endpoint == "/klines":
                body = self._klines(api, params)
            elif endpoint == "/ping":
                body = b"{}"
            elif endpoint == "/time":
                body = b'{"serverTime":%d}' % self.now_ms()
            elif endpoint == "/exchangeInfo":
                body = api.exchange_info(params, self.now_ms())
            else:
                return _Served(
                    Reply(404, html_page(404, "Not Found"), headers, "text/html"),
                    False,
                    latency,
                    name,
                    weight,
                )
        except RequestError as exc:
            return _Served(binance_error(400, exc.code, exc.msg, headers), False, latency, name, weight)
        return _Served(Reply(200, body, headers), truncate, latency, name, weight)

    def _klines(self, api: MarketApi, params: dict[str, str]) -> bytes:
        now = self.now_ms()
        page, series = api.klines(params, now)
        candidates = [f for f in (self.market_faults[api.rules.name], self.faults) if _has_data_faults(f)]
        if not candidates:
            return page
        rows = json.loads(page)
        newest = series.newest_closed(now)
        with self._lock:
            fault = next(((f, kind) for f in candidates if (kind := take_data_fault(f, rows, newest))), None)
        if fault is None:
            return page
        return json.dumps(spoil_page(fault[1], fault[0], rows, newest), separators=(",", ":")).encode()

    def _gateway_fault(self, market: str) -> tuple[Reply | None, bool]:
        """This klines request's fault: the market's own, then every market's; and whether to cut the JSON."""
        truncate = False
        with self._lock:
            for slot, faults in ((market, self.market_faults[market]), ("*", self.faults)):
                fault, cut = self._draws.gateway(slot, faults)
                if fault is not None:
                    return fault, False
                truncate = truncate or cut
        return None, truncate

    def _admit(self, api: MarketApi, client: str, weight: int) -> tuple[Reply | None, list[tuple[str, str]]]:
        """Charge the request's weight or refuse it with 429/418; returns the weight headers to send."""
        with self._lock:
            refusal, used = self._weights.admit(api.rules, api.weight_limit, client, weight, self.clock())
        headers = [(name, str(used)) for name in api.rules.weight_headers]
        if refusal is None:
            return None, headers
        headers.append(("Retry-After", str(refusal.retry_after)))
        return binance_error(refusal.status, -1003, refusal.msg, headers), []
