"""The writer: stores each window's answer in plan order and decides what its silences mean.

An exchange gap is a fact, not a guess. A range the answer lacks is recorded as absent on the exchange
only when it lies strictly between two candles the exchange did return (or before a listing's first
candle), and only after a second request aimed at exactly that range also returned nothing. If that
request finds candles, the first answer was holed: they are fetched and written with the window. A
range at the end of an answer is never a gap: it is "not yet", and the next run asks again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from extractor.errors import ExchangeUnavailable, format_utc, plural
from extractor.klines import Kline, Series
from extractor.pipeline.plan import Range, holes_between, holes_in
from extractor.sources.base import Answer, Window
from extractor.sources.rest import RestSource
from extractor.storage import KlineStore

log = logging.getLogger("extractor.pipeline")

CONFIRM_ROUNDS = 3
"""Answers that keep disagreeing after this many refetches make the window fail (and be retried later)."""
FELL_BACK_NAMED = 3
"""A summary line names this many files that fell back to REST, then says how many more."""


@dataclass
class SeriesReport:
    """What one run did for one series; printed as its summary line."""

    series: Series
    start: int
    end: int
    planned: int = 0
    already_stored: int = 0
    written: int = 0
    requests: int = 0
    files: int = 0
    from_archive: int = 0
    exchange_gap_candles: int = 0
    fell_back: tuple[str, ...] = ()
    failure: str = ""

    def line(self) -> str:
        if self.end <= self.start and not self.written:
            return f"{self.series}: nothing closed in the range yet"
        span = f"{format_utc(self.start / 1000)}..{format_utc(self.end / 1000)}"
        parts = [f"{plural(self.written, 'candle')} written"]
        if self.from_archive:
            parts.append(f"{self.from_archive:,} from {plural(self.files, 'archive file')}")
        if self.already_stored:
            parts.append(f"{self.already_stored:,} already stored")
        if self.exchange_gap_candles:
            parts.append(f"{self.exchange_gap_candles:,} absent on the exchange")
        parts.append(plural(self.requests, "request"))
        if self.fell_back:
            named, more = self.fell_back[:FELL_BACK_NAMED], len(self.fell_back) - FELL_BACK_NAMED
            parts.append(f"REST instead of {', '.join(named)}" + (f" and {more:,} more" if more > 0 else ""))
        if self.failure:
            parts.append(f"FAILED: {self.failure}")
        return f"{self.series} {span}: " + ", ".join(parts)


@dataclass(frozen=True)
class Prepared:
    """A REST answer ready to write: its candles (refetched ones merged in) and its confirmed gaps."""

    window: Window
    klines: Sequence[Kline]
    gaps: list[Range]


@dataclass
class _Cursor:
    """Where the writer stands in one series: the last candle known to exist before what comes next."""

    previous: int | None = None
    next_start: int | None = None


class Writer:
    """Writes answers strictly in the order given; confirms or refills what they lack."""

    def __init__(
        self,
        store: KlineStore,
        exchange: RestSource,
        reports: dict[Series, SeriesReport],
        now_ms: Callable[[], int],
    ) -> None:
        self.store = store
        self.exchange = exchange
        self.reports = reports
        self._now_ms = now_ms
        self._cursors: dict[Series, _Cursor] = {}
        self._known_starts: dict[Series, set[int]] = {}

    @property
    def stored(self) -> int:
        """Candles stored by this run so far."""
        return sum(report.written for report in self.reports.values())

    def known_before(self, series: Series, start: int) -> None:
        """The plan has a range of ``series`` starting at ``start`` right after stored candles or a
        recorded gap: a silence at its start lies between known candles."""
        self._known_starts.setdefault(series, set()).add(start)

    def write(self, answers: Sequence[Answer]) -> int:
        """Store answers in order, in one transaction; returns the candles written (refetched included)."""
        if len(answers) == 1 and answers[0].window.file:
            return self.write_file(answers[0])
        return self.commit([self.prepare(answer) for answer in answers])

    def prepare(self, answer: Answer) -> Prepared:
        """One REST answer made whole: its holes asked about again, refetched or confirmed as gaps."""
        window = answer.window
        series = window.series
        report = self.reports[series]
        cursor = self._cursor(window)
        report.requests += 1
        batches = list(answer.batches())
        klines: Sequence[Kline] = batches[0] if len(batches) == 1 else [k for b in batches for k in b]
        holes = holes_in(series.interval, cursor.previous, klines) if klines else []
        found, gaps = self._settle(series, holes, report)
        if found:
            klines = sorted([*klines, *found], key=lambda k: k.open_time)
        if klines:
            cursor.previous = klines[-1].open_time
        cursor.next_start = window.end
        return Prepared(window, klines, gaps)

    def commit(self, prepared: Sequence[Prepared]) -> int:
        """Write prepared answers in one transaction, then remember the gaps they confirmed."""
        written = self.store.write_all([p.klines for p in prepared if p.klines])
        for one in prepared:
            report = self.reports[one.window.series]
            report.written += len(one.klines)
            for lo, hi in one.gaps:
                self._record_gap(one.window.series, lo, hi, report)
        return written

    def fell_back(self, window: Window) -> None:
        """``window``'s archive file was unusable and its range comes from REST: the summary names it."""
        report = self.reports[window.series]
        report.fell_back = (*report.fell_back, window.file.rsplit("/", 1)[-1])

    def write_file(self, answer: Answer) -> int:
        """Store one archive file (see :meth:`_write_file`)."""
        window = answer.window
        series = window.series
        report = self.reports[series]
        cursor = self._cursor(window)
        written, last, gaps = self._write_file(answer, cursor.previous)
        report.files += 1
        report.from_archive += written
        report.written += written
        for lo, hi in gaps:
            self._record_gap(series, lo, hi, report)
        if last is not None:
            cursor.previous = last
        cursor.next_start = window.end
        return written

    def _cursor(self, window: Window) -> _Cursor:
        cursor = self._cursors.setdefault(window.series, _Cursor())
        if cursor.next_start != window.start and window.start in self._known_starts.get(window.series, ()):
            cursor.previous = window.series.interval.advance(window.start, -1)
        return cursor

    def _write_file(self, answer: Answer, previous: int | None) -> tuple[int, int | None, list[Range]]:
        """Stream an archive file into one transaction, noting its holes; confirm them afterwards.

        Holes are confirmed after the commit (no network inside a transaction); candles found in them
        are written in a second one, so this window is briefly not a prefix: only backfills read files.
        """
        series = answer.window.series
        holes: list[Range] = []
        last = previous

        def watched() -> Iterator[Sequence[Kline]]:
            nonlocal last
            for batch in answer.batches():
                holes.extend(holes_in(series.interval, last, batch))
                last = batch[-1].open_time
                yield batch

        written = self.store.write_all(watched())
        found, empty = self._settle(series, holes, self.reports[series])
        if found:
            written += self.store.write(sorted(found, key=lambda k: k.open_time))
        return written, last, empty

    def _settle(
        self, series: Series, holes: list[Range], report: SeriesReport
    ) -> tuple[list[Kline], list[Range]]:
        """Ask again for exactly each hole: returns the candles found there and the holes still empty.

        A hole lies between two candles the exchange returned, so the edges of a refetched range are
        known candles too, and holes inside it are settled the same way, a few rounds at most.
        """
        interval = series.interval
        found: list[Kline] = []
        empty: list[Range] = []
        for _ in range(CONFIRM_ROUNDS):
            again: list[Range] = []
            for lo, hi in holes:
                report.requests += 1
                if self.exchange.any_open_time(series, lo, hi) is None:
                    empty.append((lo, hi))
                    continue
                report.requests += 1
                fetched = self.exchange.klines(series, lo, hi)
                found += fetched
                bounds = [*(k.open_time for k in fetched), hi]
                again += holes_between(interval, interval.advance(lo, -1), bounds)
            if found and not again:
                log.info(
                    "%s: the exchange's first answer lacked %s; refetched",
                    series,
                    plural(len(found), "candle"),
                )
            if not again:
                return found, empty
            holes = again
        raise ExchangeUnavailable(f"{series}: the exchange's answers for the same range keep disagreeing")

    def _record_gap(self, series: Series, lo: int, hi: int, report: SeriesReport) -> None:
        self.store.record_exchange_gap(series, lo, hi, confirmations=2, confirmed_at=self._now_ms())
        report.exchange_gap_candles += series.interval.count(lo, hi)
