"""backfill, extract and gaps: what each command asks for, in what order, and what it reports.

Each takes its collaborators (exchange, source, store, stop) as arguments; ``runtime.py`` builds them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from extractor.errors import (
    ArchiveUnavailable,
    BadInputError,
    ExchangeUnavailable,
    Interrupted,
    RequestRejected,
    SeriesRejected,
    SeriesUnavailable,
    format_utc,
)
from extractor.intervals import Interval
from extractor.klines import Series
from extractor.lifecycle import RunStop
from extractor.pipeline.fetch import Engine, Progress
from extractor.pipeline.plan import closed_limit
from extractor.pipeline.series import SeriesPlan, SeriesWindows, plan_series
from extractor.pipeline.write import SeriesReport, Writer
from extractor.sources.base import KlineSource, Window
from extractor.sources.rest import TRADING, Listing, RestSource
from extractor.storage import KlineStore
from utils.circuit_breaker import CircuitState

log = logging.getLogger("extractor.pipeline")

SETTLED_MARGIN_MS = 3_600_000
"""Candles that closed this long before the local clock's now are closed on any sane exchange clock."""


@dataclass
class RunResult:
    """Reports per series, and the total written."""

    reports: list[SeriesReport] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(r.written for r in self.reports)


def isolate_series(window: Window, exc: Exception) -> bool:
    """Failures that belong to one series (a rejected symbol, a source that keeps failing for it),
    not to the exchange or the database as a whole: the other series go on."""
    return isinstance(exc, RequestRejected | ArchiveUnavailable | ExchangeUnavailable)


def raise_failures(
    rejected: dict[str, str], failed: dict[Series, Exception], reports: dict[Series, SeriesReport]
) -> None:
    """End a run whose other series were stored: 2 if the exchange rejected some, else 75."""
    for series, exc in failed.items():
        reports[series].failure = str(exc)
        if isinstance(exc, BadInputError):
            rejected[str(series)] = str(exc)
    if rejected:
        raise SeriesRejected(rejected)
    if failed:
        raise SeriesUnavailable({str(s): str(e) for s, e in failed.items()})


def check_listings(listings: dict[str, Listing], symbols: Sequence[str], market_title: str) -> dict[str, str]:
    """Symbols the exchange does not list, with the reason; non-trading ones are warned about."""
    rejected: dict[str, str] = {}
    for symbol in symbols:
        listing = listings.get(symbol)
        if listing is None:
            rejected[symbol] = f"not a {market_title} symbol"
        elif listing.status != TRADING:
            log.warning(
                "%s is %s on %s: no new candles while it stays so", symbol, listing.status, market_title
            )
    return rejected


LOCK_POLL_SECONDS = 1.0
"""How often a backfill asks again for the series another run is writing."""


@contextlib.contextmanager
def writing(
    store: KlineStore, series: Sequence[Series], *, stop: RunStop, wait: bool
) -> Iterator[list[Series]]:
    """The series this run may write, locked against every other run until it ends.

    ``wait`` (backfill): all of them, once no other run writes any, asking again each second and
    holding none meanwhile (two runs waiting for each other's series never deadlock). Otherwise
    (extract): those no other run is writing now; the rest are skipped and said so.
    """
    told = False
    while True:
        with store.lock_series(series) as locks:
            if not locks.busy or not wait:
                for one in locks.busy:
                    log.info(
                        "%s: another run is writing it; skipped (a later run fetches what it leaves)", one
                    )
                yield locks.held
                return
            busy = ", ".join(map(str, locks.busy))
        if not told:
            log.warning("waiting for another run to finish writing %s", busy)
            told = True
        stop.sleep(LOCK_POLL_SECONDS)


def backfill(
    exchange: RestSource,
    source: KlineSource,
    store: KlineStore,
    series: Sequence[Series],
    start: int,
    end: int,
    *,
    stop: RunStop,
    concurrency: int,
    progress: Progress | None = None,
) -> RunResult:
    """Fetch every closed candle of ``start <= open_time < end`` that the store does not hold yet.

    exchangeInfo, which carries the exchange's clock, is asked for alongside the first windows: those
    that closed over :data:`SETTLED_MARGIN_MS` before the local clock's now need no exchange clock to
    plan, and none is written before that clock confirms they had closed when they were asked for.
    """
    reports = {s: SeriesReport(s, start, start) for s in series}
    writer = Writer(store, exchange, reports, exchange.local_time_ms)
    symbols = sorted({s.symbol for s in series})
    try:
        with (
            writing(store, series, stop=stop, wait=True),
            Engine(
                source, writer, concurrency=concurrency, stop=stop, isolate=isolate_series, progress=progress
            ) as engine,
        ):
            info = engine.submit(lambda: exchange.listings(symbols))
            settled = exchange.local_time_ms() - SETTLED_MARGIN_MS
            if exchange.client.breaker.state is not CircuitState.CLOSED:
                settled = start  # after an outage exchangeInfo goes alone, as the breaker's single trial
            planner = SeriesWindows(source, exchange, store, engine.submit, exchange.local_time_ms, progress)
            head = [
                plan_series(store, writer, r, start, min(end, closed_limit(r.series.interval, settled)))
                for r in reports.values()
            ]
            asked = exchange.monotonic()
            engine.prefetch(planner.windows(head))
            rejected = check_listings(engine.result(info), symbols, exchange.market.title)
            if rejected:
                names = ", ".join(rejected)
                raise BadInputError(
                    f"unknown symbol{'s' if len(rejected) > 1 else ''} {names} on {exchange.market.title}"
                )
            now = exchange.now_ms()
            if start >= now:
                raise BadInputError(
                    f"--start {format_utc(start / 1000)} is in the future "
                    f"(exchange time {format_utc(now / 1000)})"
                )
            # A window answered before ``settled`` on the exchange could hold a candle still forming then:
            # keep the prefetch only if the exchange had passed ``settled`` before the first of it was asked.
            if exchange.exchange_time_at(asked) < settled:  # this machine's clock runs over the margin ahead
                engine.discard()
                reports = {s: SeriesReport(s, start, start) for s in series}
                writer = engine.writer = Writer(store, exchange, reports, exchange.local_time_ms)
                planner = SeriesWindows(
                    source, exchange, store, engine.submit, exchange.local_time_ms, progress
                )
            tail = [
                plan_series(store, writer, r, r.end, min(end, closed_limit(r.series.interval, now)))
                for r in reports.values()
            ]
            engine.run(planner.windows([plan for plan in tail if plan.todo]))
    except Interrupted as exc:
        exc.stored = writer.stored
        raise
    result = RunResult(list(reports.values()))
    raise_failures({}, engine.failed, reports)
    return result


@dataclass(frozen=True)
class Wanted:
    """What ``extract`` keeps up to date on one market: symbols (or every TRADING one) × intervals."""

    exchange: RestSource
    symbols: tuple[str, ...]
    intervals: tuple[Interval, ...]
    quotes: tuple[str, ...] = ()
    all_symbols: bool = False


def extract(
    wanted: Sequence[Wanted],
    store: KlineStore,
    *,
    lookback_ms: int,
    stop: RunStop,
    concurrency: int,
    lock_name: str = "extract",
    select: Callable[[list[Series]], list[Series]] = lambda series: series,
) -> RunResult:
    """The cron run: for each series, every closed candle after the last stored one (or the lookback).

    One exchangeInfo request per market checks the symbols; those it rejects are skipped and named at
    the end (exit 2) while every other series is stored. A series asks only when its interval has closed
    a candle since its last stored one, so a 1h series sends nothing at 12:07.
    """
    result = RunResult()
    rejected: dict[str, str] = {}
    failed: dict[Series, Exception] = {}
    all_reports: dict[Series, SeriesReport] = {}
    stored = 0
    with store.run_lock(lock_name):
        for group in wanted:
            exchange = group.exchange
            listings = exchange.listings(() if group.all_symbols else group.symbols)
            if group.all_symbols:
                symbols = tuple(
                    s
                    for s, listing in sorted(listings.items())
                    if listing.status == TRADING and (not group.quotes or listing.quote_asset in group.quotes)
                )
            else:
                bad = check_listings(listings, group.symbols, exchange.market.title)
                rejected.update({f"{exchange.market.name} {symbol}": why for symbol, why in bad.items()})
                symbols = tuple(s for s in group.symbols if s not in bad and listings[s].status == TRADING)
            # Shards divide the configured series (as status and backfill do), then skip what does not trade.
            configured = symbols if group.all_symbols else group.symbols
            fleet = select([Series(exchange.market, s, i) for s in configured for i in group.intervals])
            chosen = [one for one in fleet if one.symbol in symbols]
            with writing(store, chosen, stop=stop, wait=False) as chosen:
                now = exchange.now_ms()
                reports: dict[Series, SeriesReport] = {}
                writer = Writer(store, exchange, reports, exchange.local_time_ms)
                plans: list[SeriesPlan] = []
                for series in chosen:
                    interval = series.interval
                    last = store.last_open_time(series)
                    begin = interval.next_open(last) if last is not None else interval.ceil(now - lookback_ms)
                    report = reports[series] = SeriesReport(series, begin, begin)
                    plan = plan_series(store, writer, report, begin, closed_limit(interval, now))
                    if plan.todo:
                        plans.append(plan)
                try:
                    with Engine(
                        exchange, writer, concurrency=concurrency, stop=stop, isolate=isolate_series
                    ) as engine:
                        engine.run(
                            SeriesWindows(
                                exchange, exchange, store, engine.submit, exchange.local_time_ms
                            ).windows(plans)
                        )
                except Interrupted as exc:
                    exc.stored = stored + writer.stored
                    raise
            stored += writer.stored
            failed.update(engine.failed)
            all_reports.update(reports)
            result.reports += reports.values()
    raise_failures(rejected, failed, all_reports)
    return result
