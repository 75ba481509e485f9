"""backfill, extract, gaps and check: which windows to fetch, fetching them concurrently, writing in order.

Windows are fetched by a bounded pool and written strictly in the order they were planned, so a run that
is killed leaves a stored prefix of every series: a rerun asks the store what is missing and fetches only
that. Ranges the exchange answered with no rows (before a listing, outages) are remembered in the store,
so reruns do not ask again and ``gaps`` can tell them apart from holes never fetched.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from extractor.binance import KLINES_WEIGHT, BinanceClient, WeightBudget
from extractor.errors import (
    BadInputError,
    ExchangeUnavailable,
    ExtractorError,
    StorageUnavailable,
    TemporaryError,
    format_utc,
)
from extractor.intervals import Interval
from extractor.klines import Kline
from extractor.settings import Settings
from extractor.storage import KlineStore, mask_url, open_store
from utils.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfigError,
    CircuitBreakerListener,
    CircuitState,
    JsonFileStateStore,
)

log = logging.getLogger("extractor.pipeline")

Range = tuple[int, int]
T = TypeVar("T")
ProgressCallback = Callable[[int, int], None]
"""Called with (candles done, candles planned) as windows are written."""


# ---------------------------------------------------------------------------------------------- runtime


API_FAILURE_THRESHOLD = 10
DB_FAILURE_THRESHOLD = 5
"""Defaults when no CIRCUIT_BREAKER_[API_|DB_]FAILURE_THRESHOLD is set."""


class _TransitionLog(CircuitBreakerListener):
    """Every breaker state change as one WARNING line: operators grep for these."""

    def state_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        seconds = breaker.seconds_until_trial()
        detail = f"after {breaker.failure_count} failures; next trial in {seconds:.0f} s"
        log.warning(
            "circuit breaker %s: %s -> %s%s",
            breaker.name,
            old.value,
            new.value,
            f" {detail}" if new is CircuitState.OPEN else "",
        )


class Runtime:
    """The breakers, exchange client and store of one command, built on first use and closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            settings.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(
                f"state directory {settings.state_dir} cannot be created ({exc.strerror}); "
                "set EXTRACTOR_STATE_DIR to a writable directory"
            ) from exc
        # A flapping exchange (a third of answers failing) must not open the api breaker by chance runs
        # of failures across concurrent requests; a dead one still opens it within a second or two.
        self.api_breaker = self._breaker(
            "api", ExchangeUnavailable, self.api_state_file, API_FAILURE_THRESHOLD
        )
        self.db_breaker = self._breaker("db", StorageUnavailable, self.db_state_file, DB_FAILURE_THRESHOLD)
        self._client: BinanceClient | None = None
        self._store: KlineStore | None = None

    @property
    def api_state_file(self) -> Path:
        return self.settings.state_dir / "api-breaker.json"

    @property
    def db_state_file(self) -> Path:
        """One file per database, so an outage of one database does not hold back another."""
        digest = hashlib.sha256(mask_url(self.settings.db_url).encode()).hexdigest()[:12]
        return self.settings.state_dir / f"db-breaker-{digest}.json"

    @property
    def ban_file(self) -> Path:
        return self.settings.state_dir / "ip-ban.json"

    def _breaker(self, name: str, counted: type[Exception], path: Path, threshold: int) -> CircuitBreaker:
        try:
            return CircuitBreaker.from_env(
                name,
                environ=self.settings.breaker_environ,
                failure_threshold=threshold,
                expected_exception=counted,
                state_store=JsonFileStateStore(path),
                listeners=(_TransitionLog(),),
            )
        except CircuitBreakerConfigError as exc:
            raise BadInputError(str(exc)) from exc

    @property
    def client(self) -> BinanceClient:
        if self._client is None:
            self._client = BinanceClient(
                self.settings.base_url,
                breaker=self.api_breaker,
                concurrency=self.settings.concurrency,
                ban_file=self.ban_file,
                api_key=self.settings.api_key,
                read_timeout=self.settings.read_timeout,
                max_attempts=self.settings.max_attempts,
                backoff_base=self.settings.backoff_base,
            )
        return self._client

    @property
    def store(self) -> KlineStore:
        if self._store is None:
            self._store = open_store(self.settings.db_url, breaker=self.db_breaker)
            telemetry: CircuitBreakerListener = self._store.telemetry()
            self.api_breaker.add_listener(telemetry)
            self.db_breaker.add_listener(telemetry)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._client is not None:
            self._client.close()


# ---------------------------------------------------------------------------------------------- ranges


def closed_limit(interval: Interval, now_ms: int) -> int:
    """The smallest open time whose candle is not closed at ``now_ms`` (the forming candle's open)."""
    if interval.is_anchored:
        return interval.align(now_ms)
    return now_ms - interval.length_ms + 1


def subtract(ranges: Sequence[Range], remove: Sequence[Range]) -> list[Range]:
    """``ranges`` minus ``remove``; both sorted, non-overlapping, half-open."""
    out: list[Range] = []
    j = 0
    for lo, hi in ranges:
        cursor = lo
        while j < len(remove) and remove[j][1] <= cursor:
            j += 1
        k = j
        while k < len(remove) and remove[k][0] < hi:
            r_lo, r_hi = remove[k]
            if r_lo > cursor:
                out.append((cursor, r_lo))
            cursor = max(cursor, r_hi)
            k += 1
        if cursor < hi:
            out.append((cursor, hi))
    return out


def _empty_ranges(interval: Interval, lo: int, hi: int, open_times: Sequence[int]) -> list[Range]:
    """Sub-ranges of ``[lo, hi)`` that should hold a candle but the exchange returned none for."""
    step = interval.length_ms
    if interval.is_anchored:

        def has_candle(a: int, b: int) -> bool:
            return interval.ceil(a) < b

    elif open_times:
        phase = open_times[0] % step

        def has_candle(a: int, b: int) -> bool:
            return a + (phase - a) % step < b

    else:

        def has_candle(a: int, b: int) -> bool:
            return b - a >= step

    gaps: list[Range] = []
    cursor = lo
    for t in open_times:
        if t > cursor and has_candle(cursor, t):
            gaps.append((cursor, t))
        cursor = interval.next_open(t)
    if cursor < hi and has_candle(cursor, hi):
        gaps.append((cursor, hi))
    return gaps


# ---------------------------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class Window:
    """One request's worth of one series: ``start <= open_time < end``, at most 1,000 candles.

    ``closed_by`` is an exchange time by which every candle of the window has closed, when the window is
    asked for before the exchange's clock is known; ``None`` keeps the client's own check against it.
    """

    report: SeriesReport
    start: int
    end: int
    closed_by: int | None = None


@dataclass
class SeriesReport:
    """What one run did for one symbol × interval; printed as its summary line."""

    symbol: str
    interval: Interval
    start: int
    end: int
    planned: int = 0
    already_stored: int = 0
    written: int = 0
    windows: int = 0
    exchange_gap_candles: int = 0

    def line(self) -> str:
        span = f"{format_utc(self.start / 1000)}..{format_utc(self.end / 1000)}"
        if self.end <= self.start:
            return f"{self.symbol} {self.interval}: nothing closed in the range yet"
        parts = [f"{self.written:,} candles written"]
        if self.already_stored:
            parts.append(f"{self.already_stored:,} already stored")
        if self.exchange_gap_candles:
            parts.append(f"{self.exchange_gap_candles:,} absent on the exchange")
        parts.append(f"{self.windows:,} requests")
        return f"{self.symbol} {self.interval} {span}: " + ", ".join(parts)


@dataclass
class RunResult:
    """Reports per series, and the total written."""

    reports: list[SeriesReport] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(r.written for r in self.reports)


def _plan_windows(
    interval: Interval, todo: Iterable[Range], report: SeriesReport, closed_by: int | None = None
) -> Iterator[Window]:
    for lo, hi in todo:
        for start, end in interval.windows(lo, hi):
            yield Window(report, start, end, closed_by)


IDLE_WAIT_SECONDS = 0.002
FIRST_WRITE_SECONDS = 0.01
"""The writer's time per window until one has been measured: about what 1,000 candles cost to store."""


class InFlightLimit:
    """How many windows to have requested but not yet written: enough to hide the exchange's latency.

    It grows when the writer has waited for a window with the process mostly idle (the answers are slow
    to come, not slow to parse or write): by as many windows as the writer could have written in that
    wait, never past ``ceiling`` nor the weight left in the budget's minute. On a fast link it stays where
    it starts, so the fetch threads neither crowd the writer off the GIL nor park parsed windows (about
    1 MB each) in memory.
    """

    def __init__(self, ceiling: int, budget: WeightBudget, start: int = 8) -> None:
        self.ceiling = max(1, ceiling)
        self.value = min(start, self.ceiling)
        self._budget = budget
        self._write_seconds = FIRST_WRITE_SECONDS

    def wrote(self, seconds: float) -> None:
        """The writer spent ``seconds`` on one window (a moving average smooths the odd slow write)."""
        self._write_seconds += (seconds - self._write_seconds) / 4

    def waited(self, seconds: float, cpu_seconds: float) -> None:
        """The writer waited ``seconds`` for a window while the whole process used ``cpu_seconds``."""
        if seconds < IDLE_WAIT_SECONDS or cpu_seconds > seconds / 2:
            return
        more = math.ceil(seconds / max(self._write_seconds, IDLE_WAIT_SECONDS))
        affordable = (self._budget.limit - self._budget.used) // KLINES_WEIGHT
        self.value = max(self.value, min(self.ceiling, affordable, self.value + more))


class WindowFetcher:
    """Windows asked for by a bounded pool and written strictly in the order they were asked for.

    Used as a context manager: on the way out it waits for the pool, or, when an error is on its way out,
    cancels what has not started.
    """

    def __init__(self, client: BinanceClient, concurrency: int) -> None:
        self._client = client
        self._limit = InFlightLimit(concurrency, client.weight_budget)
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="fetch")
        self._pending: deque[tuple[Window, Future[list[Kline]]]] = deque()
        self._windows: Iterator[Window] = iter(())

    def __enter__(self) -> WindowFetcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._pool.shutdown(wait=True)
            return
        self.discard()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Run ``call`` on the pool, alongside the windows; :meth:`result` waits for it."""
        return self._pool.submit(call)

    def result(self, future: Future[T]) -> T:
        """What ``future`` returns; an idle wait for it tells the in-flight limit the link is slow."""
        if not future.done():
            began, cpu_began = time.monotonic(), time.process_time()
            wait((future,))
            self._limit.waited(time.monotonic() - began, time.process_time() - cpu_began)
        return future.result()

    def prefetch(self, windows: Iterator[Window]) -> None:
        """Ask for the first of ``windows`` now; :meth:`write_all` writes them, and the rest, first."""
        self._windows = itertools.chain(self._windows, windows)
        self._refill()

    def discard(self) -> None:
        """Forget every window asked for and not yet written."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._windows = iter(())

    def _refill(self) -> None:
        while len(self._pending) < self._limit.value:
            window = next(self._windows, None)
            if window is None:
                return
            report = window.report
            future = self._pool.submit(
                self._client.klines,
                report.symbol,
                report.interval,
                window.start,
                window.end,
                closed_by=window.closed_by,
            )
            self._pending.append((window, future))

    def write_all(
        self,
        store: KlineStore,
        windows: Iterable[Window],
        *,
        progress: ProgressCallback | None = None,
        planned: int = 0,
    ) -> None:
        """Fetch the prefetched windows, then ``windows``; write each, in that order, as it arrives."""
        self._windows = itertools.chain(self._windows, windows)
        pending, limit = self._pending, self._limit
        done = 0
        self._refill()
        while pending:
            window, future = pending.popleft()
            klines = self.result(future)
            self._refill()
            began = time.monotonic()
            report = window.report
            if klines:
                store.write(klines)
            report.written += len(klines)
            report.windows += 1
            gaps = _empty_ranges(report.interval, window.start, window.end, [k.open_time for k in klines])
            gap_candles = 0
            for lo, hi in gaps:
                store.mark_exchange_gap(report.symbol, report.interval, lo, hi)
                gap_candles += report.interval.count(lo, hi)
            report.exchange_gap_candles += gap_candles
            done += len(klines) + gap_candles
            limit.wrote(time.monotonic() - began)
            if progress is not None:
                progress(done, planned)


# ---------------------------------------------------------------------------------------------- commands


SETTLED_MARGIN_MS = 3_600_000
"""Candles that closed this long before the local clock's now are closed on any sane exchange clock."""


def _plan_series(store: KlineStore, report: SeriesReport, start: int, end: int) -> list[Range]:
    """Extend ``report`` to ``end``: the ranges of ``[start, end)`` to fetch, which the store lacks and
    the exchange has not already answered empty."""
    if end <= start:
        return []
    report.end = end
    interval = report.interval
    missing = store.missing_ranges(report.symbol, interval, start, end)
    todo = subtract(missing, store.exchange_gaps(report.symbol, interval, start, end))
    report.planned += sum(interval.count(lo, hi) for lo, hi in todo)
    known_missing = sum(interval.count(lo, hi) for lo, hi in missing)
    if interval.is_anchored:
        report.already_stored += max(0, interval.count(start, end) - known_missing)
    return todo


def backfill(
    runtime: Runtime,
    symbols: Sequence[str],
    intervals: Sequence[Interval],
    start: int,
    end: int,
    *,
    progress: ProgressCallback | None = None,
) -> RunResult:
    """Fetch every closed candle of ``start <= open_time < end`` that the store does not hold yet.

    exchangeInfo, which carries the exchange's clock, is asked for alongside the first windows: those
    that closed over :data:`SETTLED_MARGIN_MS` before the local clock's now need no exchange clock to
    plan, and none is written before that clock confirms they are closed.
    """
    client, store = runtime.client, runtime.store

    def unplanned() -> RunResult:
        return RunResult([SeriesReport(s, i, start, start) for s in symbols for i in intervals])

    result = unplanned()
    with WindowFetcher(client, runtime.settings.concurrency) as fetcher:
        info = fetcher.submit(partial(client.exchange_info, symbols))
        settled = client.local_time_ms() - SETTLED_MARGIN_MS
        if client.breaker.state is not CircuitState.CLOSED:
            settled = start  # after an outage exchangeInfo goes alone, as the breaker's single trial
        head = [
            (r, _plan_series(store, r, start, min(end, closed_limit(r.interval, settled))))
            for r in result.reports
        ]
        asked = client.monotonic()
        fetcher.prefetch(w for r, todo in head for w in _plan_windows(r.interval, todo, r, settled))
        for symbol, status in fetcher.result(info).items():
            if status != "TRADING":
                log.warning("%s is %s on the exchange: no new candles while it stays so", symbol, status)
        now = client.now_ms()
        if start >= now:
            raise BadInputError(
                f"--start {format_utc(start / 1000)} is in the future "
                f"(exchange time {format_utc(now / 1000)})"
            )
        # A window answered before ``settled`` on the exchange could hold a candle still forming then:
        # keep the prefetch only if the exchange had passed ``settled`` before the first of it was asked.
        if client.exchange_time_at(asked) < settled:  # this machine's clock runs over the margin ahead
            fetcher.discard()
            result = unplanned()
        tail = [
            (r, _plan_series(store, r, r.end, min(end, closed_limit(r.interval, now))))
            for r in result.reports
        ]
        fetcher.write_all(
            store,
            (w for r, todo in tail for w in _plan_windows(r.interval, todo, r)),
            progress=progress,
            planned=sum(r.planned for r in result.reports),
        )
    return result


def extract(
    runtime: Runtime,
    symbols: Sequence[str],
    intervals: Sequence[Interval],
    lookback_ms: int,
) -> RunResult:
    """The cron run: for each series, every closed candle after the last stored one (or the lookback)."""
    store = runtime.store
    with store.run_lock("extract"):
        client = runtime.client
        now = client.now_ms()
        result = RunResult()
        windows: list[Iterator[Window]] = []
        for symbol in symbols:
            for interval in intervals:
                last = store.last_open_time(symbol, interval)
                start = interval.next_open(last) if last is not None else interval.ceil(now - lookback_ms)
                closed_end = closed_limit(interval, now)
                report = SeriesReport(symbol, interval, start, max(start, closed_end))
                result.reports.append(report)
                if start < closed_end:
                    todo = subtract(
                        [(start, closed_end)], store.exchange_gaps(symbol, interval, start, closed_end)
                    )
                    report.planned = sum(interval.count(lo, hi) for lo, hi in todo)
                    windows.append(_plan_windows(interval, todo, report))
        with WindowFetcher(client, runtime.settings.concurrency) as fetcher:
            fetcher.write_all(store, (w for series in windows for w in series))
    return result


@dataclass(frozen=True)
class Gap:
    """A hole in the stored candles: ``exchange`` if the exchange has no rows there, else ``missing``."""

    start: int
    end: int
    candles: int
    kind: str

    def as_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "start_utc": format_utc(self.start / 1000),
            "end_utc": format_utc(self.end / 1000),
            "candles": self.candles,
            "kind": self.kind,
        }


def find_gaps(store: KlineStore, symbol: str, interval: Interval, start: int | None, end: int) -> list[Gap]:
    """Holes in ``[start, end)``; ``start`` defaults to the first stored candle."""
    if start is None:
        start = store.first_open_time(symbol, interval)
        if start is None:
            return []
    if end <= start:
        return []
    missing = store.missing_ranges(symbol, interval, start, end)
    known = store.exchange_gaps(symbol, interval, start, end)
    gaps = [Gap(lo, hi, interval.count(lo, hi), "missing") for lo, hi in subtract(missing, known)]
    gaps += [
        Gap(lo, hi, interval.count(lo, hi), "exchange")
        for lo, hi in subtract(missing, subtract(missing, known))
    ]
    return sorted(gaps, key=lambda g: g.start)


def gaps(
    runtime: Runtime, symbol: str, interval: Interval, start: int | None, end: int | None, *, repair: bool
) -> list[Gap]:
    """List holes; with ``repair``, fetch the ones never fetched, then list what is left."""
    store = runtime.store
    now = runtime.client.now_ms() if repair else int(time.time() * 1000)
    end = min(end if end is not None else now, closed_limit(interval, now))
    found = find_gaps(store, symbol, interval, start, end)
    holes = [(g.start, g.end) for g in found if g.kind == "missing"]
    if repair and holes:
        report = SeriesReport(symbol, interval, holes[0][0], end)
        with WindowFetcher(runtime.client, runtime.settings.concurrency) as fetcher:
            fetcher.write_all(store, _plan_windows(interval, holes, report))
        found = find_gaps(store, symbol, interval, start, end)
    return found


# ---------------------------------------------------------------------------------------------- check


@dataclass(frozen=True)
class CheckResult:
    """One line of ``check``: ``ok``, ``warn`` or ``fail``, what was checked, and what was seen."""

    status: str
    name: str
    detail: str
    error: ExtractorError | None = None

    def line(self) -> str:
        return f"{self.status:<4} {self.name:<9} {self.detail}"


def check(runtime: Runtime, symbols: Sequence[str]) -> list[CheckResult]:
    """The CI smoke check: exchange reachable, clock skew, symbols tradable, database writable."""
    results: list[CheckResult] = []

    def attempt(name: str, probe: Callable[[], CheckResult]) -> None:
        try:
            results.append(probe())
        except ExtractorError as exc:
            results.append(CheckResult("fail", name, str(exc), exc))

    client = runtime.client

    def ping() -> CheckResult:
        seconds = client.ping()
        return CheckResult(
            "ok", "exchange", f"{runtime.settings.base_url} answered ping in {seconds * 1000:.0f} ms"
        )

    def clock() -> CheckResult:
        client.server_time()
        skew = client.clock_skew_ms()
        if abs(skew) > 1000:
            return CheckResult(
                "warn", "clock", f"local clock is {skew / 1000:+.1f} s off the exchange's; sync it (NTP)"
            )
        return CheckResult("ok", "clock", f"skew {skew:+d} ms")

    def tradable() -> CheckResult:
        if not symbols:
            return CheckResult("ok", "symbols", "none configured (-s / EXTRACTOR_SYMBOLS); skipped")
        statuses = client.exchange_info(symbols)
        text = ", ".join(f"{s} {st}" for s, st in statuses.items())
        return CheckResult(
            "ok" if all(st == "TRADING" for st in statuses.values()) else "warn", "symbols", text
        )

    def database() -> CheckResult:
        store = runtime.store
        store.check_writable()
        return CheckResult("ok", "database", f"{store.url} writable (probe rolled back)")

    attempt("exchange", ping)
    if results[-1].status != "fail":
        attempt("clock", clock)
        attempt("symbols", tradable)
    attempt("database", database)
    return results


def check_exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing failed; 2 when a failure is bad input; else 75."""
    failures = [r.error for r in results if r.status == "fail"]
    if not failures:
        return 0
    if any(isinstance(e, BadInputError) for e in failures):
        return 2
    if all(isinstance(e, TemporaryError) for e in failures):
        return 75
    return 1


# ---------------------------------------------------------------------------------------------- breakers


def breaker_states(runtime: Runtime) -> list[dict[str, object]]:
    """State of the api and db breakers as their state files hold it, for ``breakers status``."""
    states = []
    for breaker in (runtime.api_breaker, runtime.db_breaker):
        info = dict(breaker.get_state_info())
        info["name"] = breaker.name
        info["state"] = str(breaker.state.value)
        info["seconds_until_trial"] = round(breaker.seconds_until_trial(), 1)
        states.append(info)
    return states


def reset_breakers(runtime: Runtime) -> None:
    runtime.api_breaker.reset()
    runtime.db_breaker.reset()
