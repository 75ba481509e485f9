"""The Binance spot REST client: one session, a shared weight budget, retries, and the API breaker.

Every HTTP attempt is one breaker call, so a dead exchange opens the breaker after exactly
``failure_threshold`` requests; only transient failures count on it (design §6).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import requests
from requests.adapters import HTTPAdapter

from extractor import __version__
from extractor.errors import (
    BadInputError,
    BreakerOpen,
    ExchangeUnavailable,
    IPBanned,
    MalformedResponse,
    RateLimited,
    RequestRejected,
)
from extractor.intervals import MINUTE, PAGE_LIMIT, Interval
from extractor.klines import Kline, parse_rows, validate_symbol
from utils.circuit_breaker import CircuitBreaker, CircuitBreakerConfigError, CircuitBreakerError, CircuitState

DEFAULT_BASE_URL = "https://api.binance.com"
USER_AGENT = f"binance-extractor/{__version__}"
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
KLINES_WEIGHT = 2
EXCHANGE_INFO_WEIGHT = 20
LIGHT_WEIGHT = 1
MAX_CONSECUTIVE_429 = 10
DEFAULT_BAN_SECONDS = 120  # Binance's shortest ban, used when a 418 carries no Retry-After
SYMBOL_CODES = (-1121, -1100)

log = logging.getLogger(__name__)

T = TypeVar("T")


class WeightBudget:
    """Request weight per server minute, shared by every thread of one client.

    A request is sent only when its weight fits in the current minute by our own count, which is
    raised to the server's ``X-MBX-USED-WEIGHT-1M`` (plus our requests still in flight) so other
    users of the same IP are respected too.
    """

    def __init__(
        self,
        limit: int = 6000,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        server_offset_ms: Callable[[], int],
    ) -> None:
        self.limit = limit
        self.waited_seconds = 0.0
        self._clock = clock
        self._sleep = sleep
        self._server_offset_ms = server_offset_ms
        self._lock = threading.Lock()
        self._minute = -1
        self._used = 0
        self._in_flight = 0
        self._paused_until = 0.0
        self._acquired = threading.local()

    def _current_minute(self) -> tuple[int, int]:
        server_ms = int(self._clock() * 1000) + self._server_offset_ms()
        minute = server_ms // MINUTE
        if minute != self._minute:
            self._minute = minute
            # Requests still in flight will most likely be counted by the server in the new minute.
            self._used = self._in_flight
        return minute, server_ms

    @property
    def used(self) -> int:
        """Weight used in the current server minute, as last known."""
        with self._lock:
            self._current_minute()
            return self._used

    def acquire(self, weight: int) -> None:
        """Wait until ``weight`` fits in the current server minute and no 429 pause is running."""
        while True:
            with self._lock:
                now = self._clock()
                if now < self._paused_until:
                    wait = self._paused_until - now
                else:
                    minute, server_ms = self._current_minute()
                    if self._used == 0 or self._used + weight <= self.limit:
                        self._used += weight
                        self._in_flight += weight
                        self._acquired.minute = minute
                        return
                    wait = ((minute + 1) * MINUTE - server_ms) / 1000
            self._sleep(wait)
            with self._lock:
                self.waited_seconds += wait

    def settle(self, weight: int, used_header: str | None) -> None:
        """Take the server's count for this minute once the request of ``weight`` has an answer."""
        with self._lock:
            minute, _ = self._current_minute()
            self._in_flight = max(0, self._in_flight - weight)
            if getattr(self._acquired, "minute", None) != minute:
                return  # sent in a minute that is over; its header says nothing about this one
            if used_header is None:
                return
            try:
                server_used = int(used_header)
            except ValueError:
                return
            self._used = max(self._used, server_used + self._in_flight)

    def pause_until(self, monotonic_deadline: float) -> None:
        """Hold every worker back until ``monotonic_deadline`` (after a 429)."""
        with self._lock:
            self._paused_until = max(self._paused_until, monotonic_deadline)


class _Throttled(Exception):
    """A 429 inside a breaker call: not a failure of the exchange, so it must pass the breaker uncounted."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("HTTP 429 too many requests")
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _loads(response: requests.Response, what: str) -> Any:
    content = response.content
    if content.lstrip()[:1] == b"<":
        raise MalformedResponse(f"{what}: an HTML page instead of JSON (HTTP {response.status_code})")
    try:
        return json.loads(content)
    except ValueError as exc:
        raise MalformedResponse(f"{what}: truncated or invalid JSON ({exc})") from exc


class BinanceClient:
    """Binance spot market data over one pooled session; safe to share between worker threads."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        breaker: CircuitBreaker | None = None,
        concurrency: int = 8,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ban_file: Path | None = None,
        rng: random.Random | None = None,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if breaker is None:
            try:
                breaker = CircuitBreaker.from_env("api", expected_exception=ExchangeUnavailable)
            except CircuitBreakerConfigError as exc:
                raise BadInputError(str(exc)) from exc
        self.breaker = breaker
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.requests_sent = 0
        self._timeout = (connect_timeout, read_timeout)
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._ban_file = ban_file
        self._ban_file_stamp: int | None = None
        self._banned_until_ms = 0
        self._lock = threading.Lock()
        self._synced = False
        self._sync_lock = threading.Lock()
        self._offset_ms = int((wall_clock() - clock()) * 1000)  # exchange ms minus monotonic ms
        self._skew_ms = 0
        self.weight_budget = WeightBudget(clock=clock, sleep=sleep, server_offset_ms=self._server_offset)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, concurrency), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(
            {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip", "Accept": "application/json"}
        )
        if api_key:
            self._session.headers["X-MBX-APIKEY"] = api_key

    def __enter__(self) -> BinanceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def _server_offset(self) -> int:
        return self._offset_ms

    # --- time -----------------------------------------------------------------------------------

    def server_time(self) -> int:
        """The exchange's time in ms; also resynchronises :meth:`now_ms` and the weight minute."""
        server_ms, received_mono, received_wall = self._get("/api/v3/time", None, LIGHT_WEIGHT, self._stamp)
        self._adopt_server_time(server_ms, received_mono, received_wall)
        return server_ms

    def _adopt_server_time(self, server_ms: int, received_mono: float, received_wall: float) -> None:
        with self._lock:
            # Stamping at receipt puts our idea of exchange time slightly behind it: a candle we call
            # closed is closed.
            self._offset_ms = server_ms - int(received_mono * 1000)
            self._skew_ms = server_ms - int(received_wall * 1000)
            self._synced = True

    def _stamp(self, body: Any) -> tuple[int, float, float]:
        received = (self._clock(), self._wall_clock())
        server_ms = body.get("serverTime") if isinstance(body, dict) else None
        if type(server_ms) is not int:
            raise MalformedResponse(f"/api/v3/time: expected {{'serverTime': ms}}, got {body!r:.80}")
        return server_ms, *received

    def _ensure_synced(self) -> None:
        if not self._synced:
            with self._sync_lock:  # the first workers to need the time wait for one sync, not one each
                if not self._synced:
                    self.server_time()

    def now_ms(self) -> int:
        """Exchange time in ms: the server time of the first sync carried forward by the monotonic clock."""
        self._ensure_synced()
        return self.exchange_time_at(self._clock())

    def monotonic(self) -> float:
        """The client's monotonic clock in seconds, for :meth:`exchange_time_at`."""
        return self._clock()

    def exchange_time_at(self, monotonic: float) -> int:
        """Exchange time in ms at an earlier :meth:`monotonic` reading, by the last sync's measure."""
        self._ensure_synced()
        return int(monotonic * 1000) + self._offset_ms

    def local_time_ms(self) -> int:
        """This machine's wall clock in ms: what the exchange's time is taken to be before any sync."""
        return int(self._wall_clock() * 1000)

    def clock_skew_ms(self) -> int:
        """Server minus local wall clock in ms, as measured by the last sync."""
        self._ensure_synced()
        return self._skew_ms

    def ping(self) -> float:
        """Round trip of ``/api/v3/ping`` in seconds."""
        started = self._clock()
        self._get("/api/v3/ping", None, LIGHT_WEIGHT, _expect_object)
        return self._clock() - started

    # --- market data ----------------------------------------------------------------------------

    def exchange_info(self, symbols: Sequence[str]) -> dict[str, str]:
        """``{symbol: status}`` for ``symbols`` in one request; also adopts the exchange's weight limit."""
        if not symbols:
            return {}
        for symbol in symbols:
            validate_symbol(symbol)
        params = {"symbols": json.dumps(list(symbols), separators=(",", ":"))}
        try:
            statuses, weight_limit, server_ms = self._get(
                "/api/v3/exchangeInfo", params, EXCHANGE_INFO_WEIGHT, _parse_exchange_info
            )
        except RequestRejected as exc:
            if exc.code not in SYMBOL_CODES:
                raise
            unknown = self._unknown_symbols(symbols) if len(symbols) > 1 else list(symbols)
            raise BadInputError(
                f"unknown symbol{'s' if len(unknown) > 1 else ''} {', '.join(unknown or symbols)}: "
                f"Binance says {exc.msg} (code {exc.code})"
            ) from exc
        if server_ms is not None:  # the answer carries the exchange's clock: no /time round trip needed
            self._adopt_server_time(server_ms, self._clock(), self._wall_clock())
        if weight_limit is not None:
            self.weight_budget.limit = weight_limit
        missing = [symbol for symbol in symbols if symbol not in statuses]
        if missing:
            raise BadInputError(f"unknown symbol{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        return {symbol: statuses[symbol] for symbol in symbols}

    def _unknown_symbols(self, symbols: Sequence[str]) -> list[str]:
        """Ask symbol by symbol: Binance rejects a list with one bad symbol without naming it."""
        unknown = []
        for symbol in symbols:
            try:
                self._get("/api/v3/exchangeInfo", {"symbol": symbol}, EXCHANGE_INFO_WEIGHT, _expect_object)
            except RequestRejected as exc:
                if exc.code not in SYMBOL_CODES:
                    raise
                unknown.append(symbol)
        return unknown

    def klines(
        self,
        symbol: str,
        interval: Interval,
        start: int,
        end: int,
        limit: int = PAGE_LIMIT,
        *,
        closed_by: int | None = None,
    ) -> list[Kline]:
        """Every closed candle with ``start <= open_time < end``, paging by open time.

        Closed means closed by ``closed_by`` (exchange ms) if given, else by the exchange's time now.
        """
        validate_symbol(symbol)
        if not 1 <= limit <= PAGE_LIMIT:
            raise BadInputError(f"limit must be between 1 and {PAGE_LIMIT}, not {limit}")
        # taken before any page is asked for, so every kept candle was closed
        now = self.now_ms() if closed_by is None else closed_by
        out: list[Kline] = []
        page_start = start
        while page_start < end:
            params: dict[str, str | int] = {
                "symbol": symbol,
                "interval": interval.name,
                "startTime": page_start,
                "endTime": end - 1,
                "limit": limit,
            }
            parse = partial(parse_rows, symbol, interval, start=page_start, end=end)
            try:
                page = self._get("/api/v3/klines", params, KLINES_WEIGHT, parse)
            except RequestRejected as exc:
                if exc.code == -1121 or (exc.code == -1100 and "'symbol'" in exc.msg):
                    raise RequestRejected(exc.code, f"{exc.msg.rstrip('.')}: {symbol}", exc.status) from exc
                if exc.code == -1120:
                    raise RequestRejected(
                        exc.code, f"{exc.msg.rstrip('.')}: {interval.name}", exc.status
                    ) from exc
                raise
            out += page
            if len(page) < limit:
                break
            page_start = interval.next_open(page[-1].open_time)
        while out and out[-1].close_time >= now:
            out.pop()
        return out

    # --- one request, with retries --------------------------------------------------------------

    def _get(
        self, path: str, params: Mapping[str, str | int] | None, weight: int, parse: Callable[[Any], T]
    ) -> T:
        """GET ``path`` under the design §6 policy; ``parse`` runs inside the breaker call."""
        url = self.base_url + path
        failures = 0
        throttled = 0
        last_error: str | None = None
        while True:
            self.weight_budget.acquire(weight)
            self._refuse_if_banned()
            try:
                return self.breaker.call(self._attempt, url, path, params, weight, parse)
            except CircuitBreakerError as exc:
                subject = f"the exchange at {self.base_url}"
                raise BreakerOpen("api", exc.retry_at, subject, last_error) from exc
            except _Throttled as exc:
                throttled += 1
                if throttled >= MAX_CONSECUTIVE_429:
                    raise RateLimited(
                        f"Binance kept answering 429 (too many requests) after {throttled} waits; "
                        "another client may share this IP — retry in a few minutes",
                        exc.retry_after if exc.retry_after is not None else 60.0,
                    ) from exc
                pause = exc.retry_after if exc.retry_after is not None else self._seconds_to_next_minute()
                log.warning("429 from %s: every worker pauses %.1f s", path, pause)
                self.weight_budget.pause_until(self._clock() + pause)
            except ExchangeUnavailable as exc:
                throttled = 0
                failures += 1
                last_error = str(exc)
                if failures >= self.max_attempts:
                    raise ExchangeUnavailable(
                        f"exchange unavailable after {failures} attempts: {exc}; retry in a few minutes"
                    ) from exc
                if self.breaker.state is CircuitState.OPEN:
                    continue  # the next call is refused at once; no point waiting for it
                delay = self._rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1)))
                log.info("%s failed (%s); retry %d in %.2f s", path, exc, failures, delay)
                self._sleep(delay)

    def _attempt(
        self,
        url: str,
        path: str,
        params: Mapping[str, str | int] | None,
        weight: int,
        parse: Callable[[Any], T],
    ) -> T:
        with self._lock:
            self.requests_sent += 1
        used_header: str | None = None
        try:
            response = self._session.get(url, params=params, timeout=self._timeout)
            used_header = response.headers.get(USED_WEIGHT_HEADER)
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ) as exc:
            raise BadInputError(f"bad exchange URL {self.base_url!r}: {exc}") from exc
        except requests.Timeout as exc:
            raise ExchangeUnavailable(f"{path}: timed out ({type(exc).__name__})") from exc
        except requests.ConnectionError as exc:
            raise ExchangeUnavailable(
                f"{path}: cannot reach {self.base_url} ({_socket_reason(exc)})"
            ) from exc
        except requests.RequestException as exc:
            raise ExchangeUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.weight_budget.settle(weight, used_header)
        status = response.status_code
        if status == 200:
            return parse(_loads(response, path))
        if status == 429:
            raise _Throttled(_retry_after(response.headers))
        if status == 418:
            self._record_ban(_retry_after(response.headers))
        if 400 <= status < 500:
            raise self._rejection(response, path)
        raise ExchangeUnavailable(f"{path}: HTTP {status}")

    def _rejection(self, response: requests.Response, path: str) -> Exception:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if isinstance(body, dict) and type(body.get("code")) is int and isinstance(body.get("msg"), str):
            return RequestRejected(body["code"], body["msg"], response.status_code)
        if response.status_code == 404:
            return BadInputError(
                f"{self.base_url}{path} does not exist (HTTP 404): is the exchange URL right?"
            )
        return ExchangeUnavailable(f"{path}: HTTP {response.status_code} without a Binance error code")

    def _seconds_to_next_minute(self) -> float:
        server_ms = int(self._clock() * 1000) + self._offset_ms
        return (MINUTE - server_ms % MINUTE) / 1000

    # --- 418 bans, remembered across runs -------------------------------------------------------

    def _record_ban(self, retry_after: float | None) -> NoReturn:
        seconds = retry_after if retry_after is not None else DEFAULT_BAN_SECONDS
        until_ms = int((self._wall_clock() + seconds) * 1000)
        with self._lock:
            self._banned_until_ms = max(self._banned_until_ms, until_ms)
        if self._ban_file is not None:
            _write_atomically(self._ban_file, json.dumps({"banned_until_ms": until_ms}))
        raise IPBanned(until_ms)

    def _refuse_if_banned(self) -> None:
        until_ms = max(self._banned_until_ms, self._ban_file_until_ms())
        if until_ms > self._wall_clock() * 1000:
            raise IPBanned(until_ms)

    def _ban_file_until_ms(self) -> int:
        """The ban end in the ban file, re-read only when the file changes (another run may write it)."""
        if self._ban_file is None:
            return 0
        try:
            stamp = os.stat(self._ban_file).st_mtime_ns
        except FileNotFoundError:
            return 0
        if stamp != self._ban_file_stamp:
            try:
                until = json.loads(self._ban_file.read_text()).get("banned_until_ms")
            except (OSError, ValueError, AttributeError):
                until = None
            with self._lock:
                self._ban_file_stamp = stamp
                if type(until) is int:
                    self._banned_until_ms = max(self._banned_until_ms, until)
        return self._banned_until_ms


def _socket_reason(exc: requests.ConnectionError) -> str:
    """The operating system's words for a failed connection ("Connection refused"), not urllib3's wrapping."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if found:
        return found.group(1).strip()
    if "RemoteDisconnected" in str(exc) or "Connection aborted" in str(exc):
        return "connection closed without an answer"
    return type(exc).__name__


def _expect_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(body).__name__}")
    return body


def _parse_exchange_info(body: Any) -> tuple[dict[str, str], int | None, int | None]:
    """Symbol statuses, the REQUEST_WEIGHT per minute limit and the serverTime of an exchangeInfo answer."""
    listed = _expect_object(body).get("symbols")
    if not isinstance(listed, list):
        raise MalformedResponse("/api/v3/exchangeInfo: no symbols list")
    statuses = {
        entry["symbol"]: entry["status"]
        for entry in listed
        if isinstance(entry, dict)
        and isinstance(entry.get("symbol"), str)
        and isinstance(entry.get("status"), str)
    }
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
    return statuses, weight_limit, server_ms if type(server_ms) is int else None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
