"""gaps and status: what is stored, where it has holes, and which of those the exchange lacks too.

``gaps --repair`` fetches holes never fetched; ``gaps --recheck`` asks the exchange again for every
recorded exchange gap, refills those that now have candles and counts one more confirmation for the
rest, which heals a database holding false gaps from an older release.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from extractor.errors import format_utc
from extractor.intervals import Interval
from extractor.klines import Series
from extractor.lifecycle import RunStop
from extractor.markets import Market
from extractor.pipeline.fetch import Engine
from extractor.pipeline.plan import candles_in, closed_limit, intersect, subtract
from extractor.pipeline.series import SeriesWindows, plan_series
from extractor.pipeline.write import SeriesReport, Writer
from extractor.sources.rest import RestSource
from extractor.storage import KlineStore, SeriesSummary


@dataclass(frozen=True)
class Gap:
    """A hole in the stored candles: ``exchange`` if the exchange has no rows there, else ``missing``."""

    start: int
    end: int
    candles: int
    kind: str
    confirmations: int = 0
    confirmed_at: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "start_utc": format_utc(self.start / 1000),
            "end_utc": format_utc(self.end / 1000),
            "candles": self.candles,
            "kind": self.kind,
            "confirmations": self.confirmations,
            "confirmed_at": self.confirmed_at,
        }


@dataclass
class SeriesGaps:
    """The audit of one series: its gaps, whether anything is stored, and what a repair did."""

    series: Series
    stored: bool
    gaps: list[Gap]
    fetched: int = 0
    refilled: int = 0


def find_gaps(store: KlineStore, series: Series, start: int | None, end: int) -> SeriesGaps:
    """Holes in ``[start, end)``; ``start`` defaults to the first stored candle."""
    interval = series.interval
    first = store.first_open_time(series)
    if first is None:
        return SeriesGaps(series, False, [])
    start = first if start is None else start
    if end <= start:
        return SeriesGaps(series, True, [])
    missing = store.missing_ranges(series, start, end)
    known = store.exchange_gaps(series, start, end)
    spans = [(g.start, g.end) for g in known]
    gaps = [Gap(lo, hi, interval.count(lo, hi), "missing") for lo, hi in subtract(missing, spans)]
    for gap in known:
        for lo, hi in intersect(missing, [(gap.start, gap.end)]):
            gaps.append(Gap(lo, hi, interval.count(lo, hi), "exchange", gap.confirmations, gap.confirmed_at))
    return SeriesGaps(series, True, sorted(gaps, key=lambda g: g.start))


def audit(
    exchange: RestSource | None,
    store: KlineStore,
    series: Sequence[Series],
    start: int | None,
    end: int | None,
    *,
    repair: bool = False,
    recheck: bool = False,
    stop: RunStop,
    concurrency: int,
    now_ms: int,
) -> list[SeriesGaps]:
    """List the gaps of each series; with ``repair`` fetch the holes never fetched, with ``recheck``
    ask again for the recorded exchange gaps; then list what is left."""
    out = []
    for one in series:
        upto = min(end if end is not None else now_ms, closed_limit(one.interval, now_ms))
        found = find_gaps(store, one, start, upto)
        # An explicit --start makes a range with nothing stored one hole, as it does before a first candle.
        never_fetched = repair and not found.stored and start is not None and start < upto
        if exchange is not None and (repair or recheck) and (found.stored or never_fetched):
            reports = {one: SeriesReport(one, start or 0, upto)}
            writer = Writer(store, exchange, reports, exchange.local_time_ms)
            if recheck:
                found.refilled = _recheck(
                    exchange, store, writer, one, [g for g in found.gaps if g.kind == "exchange"]
                )
            holes = [(g.start, g.end) for g in find_gaps(store, one, start, upto).gaps if g.kind == "missing"]
            if never_fetched:
                assert start is not None
                holes = [(start, upto)]
            if repair and holes:
                plans = [plan_series(store, writer, reports[one], lo, hi) for lo, hi in holes]
                with Engine(exchange, writer, concurrency=concurrency, stop=stop) as engine:
                    engine.run(
                        SeriesWindows(
                            exchange, exchange, store, engine.submit, exchange.local_time_ms
                        ).windows(plans)
                    )
            found.fetched = reports[one].written
            after = find_gaps(store, one, start, upto)
            found.stored, found.gaps = after.stored, after.gaps
        out.append(found)
    return out


def _recheck(exchange: RestSource, store: KlineStore, writer: Writer, series: Series, gaps: list[Gap]) -> int:
    """Ask for each recorded gap again: candles found there are written and the gap forgotten."""
    refilled = 0
    for gap in gaps:
        if exchange.any_open_time(series, gap.start, gap.end) is None:
            store.forget_exchange_gaps(series, gap.start, gap.end)
            store.record_exchange_gap(
                series,
                gap.start,
                gap.end,
                confirmations=max(2, gap.confirmations + 1),
                confirmed_at=exchange.local_time_ms(),
            )
            continue
        klines = exchange.klines(series, gap.start, gap.end)
        store.forget_exchange_gaps(series, gap.start, gap.end)
        if klines:
            refilled += store.write(klines)
            writer.reports[series].written += len(klines)
    return refilled


@dataclass(frozen=True)
class SeriesStatus:
    """One line of ``status``."""

    summary: SeriesSummary
    holes: int
    exchange_gap_candles: int

    def as_dict(self) -> dict[str, object]:
        s = self.summary
        return {
            "market": s.market,
            "symbol": s.symbol,
            "interval": s.interval,
            "first_open_time": s.first_open_time,
            "first_utc": format_utc(s.first_open_time / 1000),
            "last_open_time": s.last_open_time,
            "last_utc": format_utc(s.last_open_time / 1000),
            "candles": s.candles,
            "holes": self.holes,
            "exchange_gap_candles": self.exchange_gap_candles,
            "last_write": s.last_write,
            "last_write_utc": None if s.last_write is None else format_utc(s.last_write / 1000),
        }


def status(store: KlineStore, series: Sequence[Series] | None = None) -> list[SeriesStatus]:
    """What is stored, per market × symbol × interval: first and last candle, count, holes, gaps."""
    wanted = None if series is None else {(s.market.name, s.symbol, s.interval.name) for s in series}
    out = []
    for summary in store.series():
        if wanted is not None and (summary.market, summary.symbol, summary.interval) not in wanted:
            continue
        one = Series(Market.parse(summary.market), summary.symbol, Interval.parse(summary.interval))
        end = one.interval.next_open(summary.last_open_time)
        gaps = store.exchange_gaps(one, summary.first_open_time, end)
        gap_candles = candles_in(one.interval, [(g.start, g.end) for g in gaps])
        expected = _expected(one, summary.first_open_time, end)
        out.append(SeriesStatus(summary, max(0, expected - summary.candles - gap_candles), gap_candles))
    return out


def _expected(series: Series, first: int, end: int) -> int:
    interval = series.interval
    if interval.is_anchored:
        return interval.count(first, end)
    return (end - first) // interval.length_ms
