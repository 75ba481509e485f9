"""One exchange host over HTTP: a pooled session, the weight budget, retries, the api breaker and bans.

Every HTTP attempt is one breaker call, so a dead exchange opens the breaker after exactly
``failure_threshold`` requests; only transient failures count on it (design §6). Retries stop after
``attempts`` tries or ``retry_budget`` seconds, whichever comes first; nothing is sent once the run
has stopped, and every weight taken from the budget is settled on every path.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
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
    format_utc,
)
from extractor.lifecycle import RunStop
from extractor.sources.weight import Ticket, WeightBudget
from utils.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState

USER_AGENT = f"binance-extractor/{__version__}"
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
MAX_CONSECUTIVE_429 = 10
DEFAULT_BAN_SECONDS = 120  # Binance's shortest ban, used when a 418 carries no Retry-After
LONG_WAIT_SECONDS = 2.0
"""Waits longer than this are logged, so a person sees why the run is quiet."""
_UNRESOLVED = ("Name or service not known", "Temporary failure in name resolution", "nodename nor servname")

log = logging.getLogger("extractor.sources")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are tried again: at most ``attempts`` tries within ``budget`` seconds."""

    attempts: int = 10
    budget: float = 30.0
    backoff: float = 0.5
    backoff_cap: float = 30.0

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after the ``failures``-th failure: exponential from ``backoff``, capped, full jitter."""
        return rng.uniform(0, min(self.backoff_cap, self.backoff * 2 ** (failures - 1)))

    def exhausted(self, failures: int, spent: float, delay: float) -> bool:
        """No try is left: ``attempts`` were made, or waiting ``delay`` more would pass ``budget``."""
        return failures >= self.attempts or spent + delay > self.budget


DEFAULT_RETRY = RetryPolicy()


def pooled_session(
    concurrency: int, source_address: str | None = None, headers: Mapping[str, str] | None = None
) -> requests.Session:
    """A session keeping up to ``concurrency`` connections to its host, bound to ``source_address`` when
    given; it never retries by itself (the caller's RetryPolicy does)."""
    session = requests.Session()
    adapter = _SourceAddressAdapter(source_address, pool_maxsize=max(1, concurrency))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers.update(headers or {})
    return session


class _Throttled(Exception):
    """A 429 inside a breaker call: not a failure of the exchange, so it passes the breaker uncounted."""

    def __init__(self, retry_after: float | None, pause: float) -> None:
        super().__init__("HTTP 429 too many requests")
        self.retry_after = retry_after
        self.pause = pause


class _HeldBack(Exception):
    """A 429 arrived after this request was granted weight and before it left: it waits its turn again."""


class BanRecord:
    """The end of a 418 ban of one host, kept in a file so every run before it sends nothing."""

    def __init__(self, path: Path | None, wall_clock: Callable[[], float]) -> None:
        self.path = path
        self._wall_clock = wall_clock
        self._until_ms = 0
        self._stamp: int | None = None
        self._lock = threading.Lock()

    def until_ms(self) -> int:
        """The ban end in ms, re-read from the file only when it changes (another run may write it)."""
        if self.path is not None:
            try:
                stamp = os.stat(self.path).st_mtime_ns
            except FileNotFoundError:
                stamp = None
            if stamp is not None and stamp != self._stamp:
                try:
                    until = json.loads(self.path.read_text()).get("banned_until_ms")
                except (OSError, ValueError, AttributeError):
                    until = None
                with self._lock:
                    self._stamp = stamp
                    if type(until) is int:
                        self._until_ms = max(self._until_ms, until)
        return self._until_ms

    def record(self, seconds: float) -> int:
        """Remember a ban of ``seconds`` from now; returns its end, or a later one already known."""
        until_ms = max(self.until_ms(), int((self._wall_clock() + seconds) * 1000))
        with self._lock:
            self._until_ms = max(self._until_ms, until_ms)
        if self.path is not None:
            write_atomically(self.path, json.dumps({"banned_until_ms": until_ms}))
        return until_ms

    def refuse_if_banned(self) -> None:
        until_ms = self.until_ms()
        if until_ms > self._wall_clock() * 1000:
            raise IPBanned(until_ms)


class RestClient:
    """GET requests to one exchange host under the failure policy; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        *,
        breaker: CircuitBreaker,
        budget: WeightBudget,
        bans: BanRecord,
        stop: RunStop,
        retry: RetryPolicy = DEFAULT_RETRY,
        concurrency: int = 8,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        source_address: str | None = None,
        api_key: str | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.breaker = breaker
        self.budget = budget
        self.bans = bans
        self.stop = stop
        self.retry = retry
        self.requests_sent = 0
        self._timeout = (connect_timeout, read_timeout)
        self._sleep = sleep if sleep is not None else stop.sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._retried = False
        self._told_unresolved = False
        self.wait_listener: Callable[[float, str], None] | None = None
        """Hears every wait for the weight budget or a 429 (a progress display shows them)."""
        self._session = pooled_session(
            concurrency, source_address, {"Accept-Encoding": "gzip", "Accept": "application/json"}
        )
        if api_key:
            self._session.headers["X-MBX-APIKEY"] = api_key

    def close(self) -> None:
        self._session.close()

    def get(
        self, path: str, params: Mapping[str, str | int] | None, weight: int, parse: Callable[[Any], T]
    ) -> T:
        """GET ``path`` under the design §6 policy; ``parse`` runs inside the breaker call."""
        url = self.base_url + path
        failures = 0
        throttled = 0
        began = self._clock()
        waited = 0.0  # for the weight budget or a 429: not time spent retrying
        last_error: str | None = None
        while True:
            self.stop.check()
            asked = self._clock()
            ticket = self.budget.acquire(weight, self._waiting)
            waited += self._clock() - asked
            try:
                self.bans.refuse_if_banned()
                self.stop.check()
                return self.breaker.call(self._attempt, url, path, params, ticket, parse)
            except CircuitBreakerError as exc:
                cause = last_error or exc.reason
                raise BreakerOpen("api", exc.retry_at, f"the exchange at {self.base_url}", cause) from exc
            except _HeldBack:
                continue
            except _Throttled as exc:
                throttled += 1
                if throttled >= MAX_CONSECUTIVE_429:
                    raise RateLimited(
                        f"Binance kept answering 429 (too many requests) after {throttled} waits; "
                        "another client may share this IP — retry in a few minutes",
                        exc.retry_after if exc.retry_after is not None else 60.0,
                    ) from exc
                log.warning(
                    "429 from %s%s: no request is sent for %.1f s (until %s); "
                    "another client may share this IP",
                    self.base_url,
                    path,
                    exc.pause,
                    format_utc(time.time() + exc.pause),
                )
            except ExchangeUnavailable as exc:
                throttled = 0
                failures += 1
                last_error = str(exc)
                spent = self._clock() - began - waited
                delay = self.retry.delay(failures, self._rng)
                if self.retry.exhausted(failures, spent, delay):
                    raise ExchangeUnavailable(
                        f"{self.base_url} unavailable after {failures} attempt{'s' if failures > 1 else ''} "
                        f"in {spent:.0f} s: {exc}; retry in a few minutes"
                    ) from exc
                if self.breaker.state is CircuitState.OPEN:
                    continue  # the next call is refused at once; no point waiting for it
                self._log_retry(path, exc, failures, delay)
                self._sleep(delay)
            finally:
                self.budget.settle(ticket, sent=False)  # a no-op once the attempt has settled it

    def _attempt(
        self,
        url: str,
        path: str,
        params: Mapping[str, str | int] | None,
        ticket: Ticket,
        parse: Callable[[Any], T],
    ) -> T:
        if self.budget.paused():
            raise _HeldBack
        with self._lock:
            self.requests_sent += 1
        used_header: str | None = None
        try:
            response = self._session.get(url, params=params, timeout=self._timeout)
            if response.status_code == 429:
                # Paused before its weight is settled, so no other worker is granted weight in between;
                # and its header must not end the lone-request mode the pause begins.
                retry_after = _retry_after(response.headers)
                raise _Throttled(retry_after, self.budget.throttled(retry_after))
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
            raise ExchangeUnavailable(f"{path}: cannot reach {self.base_url} ({socket_reason(exc)})") from exc
        except requests.RequestException as exc:
            raise ExchangeUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.budget.settle(ticket, used_header)
        status = response.status_code
        if status == 200:
            return parse(_loads(response, path))
        if status == 418:
            self._banned(_retry_after(response.headers))
        if 400 <= status < 500:
            raise self._rejection(response, path)
        raise ExchangeUnavailable(f"{path}: HTTP {status}")

    def _banned(self, retry_after: float | None) -> NoReturn:
        raise IPBanned(self.bans.record(retry_after if retry_after is not None else DEFAULT_BAN_SECONDS))

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

    def _waiting(self, seconds: float, why: str) -> None:
        if self.wait_listener is not None:
            self.wait_listener(seconds, why)
        if seconds > LONG_WAIT_SECONDS:
            log.info(
                "waiting %.0f s for %s of %s (until %s)",
                seconds,
                why,
                self.base_url,
                format_utc(time.time() + seconds),
            )

    def _log_retry(self, path: str, exc: ExchangeUnavailable, failures: int, delay: float) -> None:
        """The first retry of a run and every long backoff are told (INFO: a terminal shows it, cron
        does not); a host name that does not resolve is told at once (WARNING), it rarely heals."""
        first, self._retried = not self._retried, True
        if any(words in str(exc) for words in _UNRESOLVED):
            if not self._told_unresolved:
                self._told_unresolved = True
                log.warning(
                    "cannot resolve the host name of %s (%s): no DNS or no route to it? "
                    "retrying for up to %.0f s",
                    self.base_url,
                    exc,
                    self.retry.budget,
                )
            return
        level = logging.INFO if first or delay > LONG_WAIT_SECONDS else logging.DEBUG
        log.log(level, "%s failed (%s); retry %d in %.2f s", path, exc, failures, delay)


class _SourceAddressAdapter(HTTPAdapter):
    """Connections bound to one local address (a host with several IPs), or the default one."""

    def __init__(self, source_address: str | None, pool_maxsize: int) -> None:
        self._source_address = source_address
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._source_address is not None:
            kwargs["source_address"] = (self._source_address, 0)
        super().init_poolmanager(*args, **kwargs)


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


def socket_reason(exc: requests.ConnectionError) -> str:
    """The operating system's words for a failed connection ("Connection refused"), not urllib3's wrapping."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if found:
        return found.group(1).strip()
    if "RemoteDisconnected" in str(exc) or "Connection aborted" in str(exc):
        return "connection closed without an answer"
    return type(exc).__name__


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
