"""Planning one series: what the store lacks in a range, the listing probe, and the windows to fetch.

A range that may precede a listing (nothing stored before it) is probed first: one request finds the
first candle, and the range before it is recorded as absent on the exchange (after a second request
confirms it) and never asked for again. The probe runs beside the first REST windows, which assume the
listing is older; if it is not, the windows that follow start at the listing instead. Archive files
wait for the probe's answer: one published before the listing does not exist.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

from extractor.errors import format_utc
from extractor.lifecycle import wait_done
from extractor.pipeline.fetch import Progress
from extractor.pipeline.plan import Range, candles_in, subtract
from extractor.pipeline.write import SeriesReport, Writer
from extractor.sources.base import KlineSource, Window
from extractor.sources.rest import RestSource
from extractor.storage import KlineStore

log = logging.getLogger("extractor.pipeline")


@dataclass
class SeriesPlan:
    """The ranges of one series to fetch, and whether its first range may precede the listing."""

    report: SeriesReport
    todo: list[Range]
    may_precede_listing: bool


def plan_series(store: KlineStore, writer: Writer, report: SeriesReport, start: int, end: int) -> SeriesPlan:
    """Extend ``report`` to ``end``: the ranges of ``[start, end)`` that the store lacks and the
    exchange has not answered empty, and which of their starts follow known candles."""
    series = report.series
    if end <= start:
        return SeriesPlan(report, [], False)
    report.end = max(report.end, end)
    interval = series.interval
    missing = store.missing_ranges(series, start, end)
    gaps = [(g.start, g.end) for g in store.exchange_gaps(series, start, end)]
    todo = subtract(missing, gaps)
    report.planned += candles_in(interval, todo)
    if interval.is_anchored:
        report.already_stored += max(0, interval.count(start, end) - candles_in(interval, missing))
    # A range that starts where stored candles or a recorded gap end starts after known candles.
    known = {hi for _, hi in subtract([(start, end)], missing)} | {hi for _, hi in gaps}
    stored_before = store.last_open_time(series, before=start) is not None
    for lo, _ in todo:
        if lo in known or (lo == start and stored_before):
            writer.known_before(series, lo)
    may_precede = bool(todo) and todo[0][0] == start and not stored_before
    return SeriesPlan(report, todo, may_precede)


class SeriesWindows:
    """The windows of planned series, one series after another, with listing probes beside them."""

    def __init__(
        self,
        source: KlineSource,
        exchange: RestSource,
        store: KlineStore,
        submit: Callable[[Callable[[], int | None]], Future[int | None]],
        now_ms: Callable[[], int],
        progress: Progress | None = None,
    ) -> None:
        self.source = source
        self.exchange = exchange
        self.store = store
        self._submit = submit
        self._now_ms = now_ms
        self._progress = progress

    def windows(self, plans: list[SeriesPlan]) -> Iterator[Window]:
        for plan in plans:
            probe = self._submit(partial(self._probe, plan)) if plan.may_precede_listing else None
            yield from self._series_windows(plan, probe)

    def _probe(self, plan: SeriesPlan) -> int | None:
        series = plan.report.series
        start, end = plan.todo[0][0], plan.todo[-1][1]
        return self.exchange.first_open_time(series, start, end)

    def _series_windows(self, plan: SeriesPlan, probe: Future[int | None] | None) -> Iterator[Window]:
        series = plan.report.series
        planned = {(lo, hi): list(self.source.plan(series, lo, hi)) for lo, hi in plan.todo}
        if self._progress is not None:
            files = sum(1 for windows in planned.values() for w in windows if w.file)
            self._progress.expect(series, plan.report.planned, files)
        ranges = deque(plan.todo)
        while ranges:
            lo, hi = ranges.popleft()
            windows = planned.get((lo, hi))
            for window in windows if windows is not None else self.source.plan(series, lo, hi):
                # An archive file before the listing would be a 404 and a warning: wait for the probe.
                if probe is not None and (probe.done() or window.file):
                    wait_done(probe)
                    first = self._listed(plan, probe.result())
                    probe = None
                    if first is None:
                        return
                    if first >= window.end:
                        ranges.appendleft((lo, hi))
                        ranges = deque(subtract(list(ranges), [(plan.todo[0][0], first)]))
                        break
                yield window
        if probe is not None:
            wait_done(probe)
            self._listed(plan, probe.result())

    def _listed(self, plan: SeriesPlan, first: int | None) -> int | None:
        """The probe's answer: record the range before the listing once a second request confirms it."""
        report = plan.report
        series = report.series
        start = plan.todo[0][0]
        if first is None:
            end = plan.todo[-1][1]
            listed = self.store.first_open_time(series, start=end)
            if listed is None:
                log.info("%s: no candle from %s on: nothing listed yet", series, format_utc(start / 1000))
                return None
            first = end  # the stored candles after the range are the listing's: all before is absent
        if first > start and self.exchange.any_open_time(series, start, first) is None:
            self.store.record_exchange_gap(series, start, first, confirmations=2, confirmed_at=self._now_ms())
            skipped = series.interval.count(start, first)
            report.exchange_gap_candles += skipped
            report.planned = max(0, report.planned - skipped)
            report.requests += 2  # the probe and the request that confirmed it
            log.info("%s: listed at %s; nothing asked for before it", series, format_utc(first / 1000))
        return first
