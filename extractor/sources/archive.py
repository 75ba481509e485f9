"""The archive source: Binance's published monthly and daily kline files, verified, with no request weight.

``auto`` plans whole closed months as monthly files, whole closed days as daily files, and leaves the
rest (today, a partly stored day) to REST; a file that is missing, corrupt, fails its CHECKSUM or holds
a row that fails the same validation as a REST row falls back to REST for its range, with one WARNING.
``archive`` fails the series instead. Nothing of a failed file is written: a file is read and checked
whole on a worker thread (while the writer stores the one before it) and written in one transaction.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from extractor.errors import ArchiveUnavailable, MalformedResponse
from extractor.intervals import DAY, HOUR, Interval
from extractor.klines import Kline, Series, parse_csv
from extractor.lifecycle import RunStop
from extractor.sources.base import (
    ARCHIVE_CHUNKS_AHEAD,
    ARCHIVE_ROWS_PER_CHUNK,
    BYTES_PER_CANDLE,
    Answer,
    Window,
)
from extractor.sources.files import FileClient, Missing
from extractor.sources.rest import RestSource
from utils.circuit_breaker import CircuitBreakerError

log = logging.getLogger("extractor.sources")

DAILY_DELAY_MS = 12 * HOUR
"""A day's file is asked for only this long after the day ends (Binance publishes it hours later)."""
MONTHLY_DELAY_MS = 3 * DAY
"""A month's file is asked for only this long after the month ends (published early the next month)."""
DAILY_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
MONTHLY_MAX_CANDLES = 1_000_000
"""Months holding more candles than this (1s) are read as daily files: smaller transactions and memory."""
ARCHIVE_CAPACITY = 64
ARCHIVE_BLOCK_BYTES = ARCHIVE_ROWS_PER_CHUNK * 160
"""Bytes of CSV read at a time: about a chunk of rows (a 1m row is 130-170 characters)."""


def archive_name(interval: Interval) -> str:
    """The interval as file names write it: ``1M`` is ``1mo``."""
    return "1mo" if interval.name == "1M" else interval.name


@dataclass(frozen=True, slots=True)
class _Period:
    start: int
    end: int
    label: str
    monthly: bool


class ArchiveSource:
    """Klines of one market from data.binance.vision, falling back to (or failing over) REST."""

    def __init__(self, rest: RestSource, files: FileClient, *, fall_back: bool) -> None:
        self.name = "auto" if fall_back else "archive"
        self.rest = rest
        self.market = rest.market
        self.files = files
        self.fall_back = fall_back
        self._told_open = False

    # -- the KlineSource protocol ---------------------------------------------------------------------

    def plan(self, series: Series, start: int, end: int) -> Iterator[Window]:
        """Monthly files for whole published months, daily files for whole published days, REST between."""
        cursor = start
        for period in self._periods(series, start, end):
            if period.start > cursor:
                yield from self.rest.plan(series, cursor, period.start)
            yield Window(
                series,
                period.start,
                period.end,
                0,
                series.interval.count(period.start, period.end) or 1,
                self._path(series, period),
            )
            cursor = period.end
        if cursor < end:
            yield from self.rest.plan(series, cursor, end)

    def fetch(self, window: Window) -> Answer:
        if not window.file:
            return self.rest.fetch(window)
        try:
            data = self.files.verified(window.file)
        except Missing as exc:
            raise ArchiveUnavailable(f"{window.file}: {exc}") from exc
        return ArchiveFile(window, data, self.files.stop)

    def replan(self, window: Window, reason: ArchiveUnavailable) -> list[Window]:
        """REST for an unusable file's range: one WARNING per file, or one per run while the archive's
        breaker is open (then every file left in the plan falls back, and one line says so)."""
        if not self.fall_back:
            raise reason
        if not isinstance(reason.__cause__, CircuitBreakerError):
            log.warning("archive file unusable, its range comes from REST instead: %s", reason)
        elif not self._told_open:
            self._told_open = True
            log.warning(
                "%s: the archive is unavailable, the rest of the plan comes from REST: %s",
                window.file,
                reason,
            )
        else:
            log.info("%s: from REST, the archive's breaker is open", window.file)
        return list(self.rest.plan(window.series, window.start, window.end))

    def capacity(self) -> int:
        return ARCHIVE_CAPACITY

    # -- planning -------------------------------------------------------------------------------------

    def _periods(self, series: Series, start: int, end: int) -> Iterator[_Period]:
        """The files that lie wholly in ``[start, end)`` and are published by now, in order."""
        now = self.rest.now_ms()
        interval = series.interval
        daily = interval.name in DAILY_INTERVALS
        cursor = start
        while cursor < end:
            month = _month_start(cursor)
            month_end = _next_month(month)
            if (
                month == cursor
                and month_end <= end
                and month_end + MONTHLY_DELAY_MS <= now
                and (not daily or interval.count(month, month_end) <= MONTHLY_MAX_CANDLES)
            ):
                yield _Period(month, month_end, _label(month, monthly=True), True)
                cursor = month_end
            elif daily:
                day = -(-cursor // DAY) * DAY
                if day + DAY > end or day + DAY + DAILY_DELAY_MS > now:
                    return
                yield _Period(day, day + DAY, _label(day, monthly=False), False)
                cursor = day + DAY
            elif month < cursor:
                cursor = month_end  # REST covers the rest of a month begun part-way
            else:
                return  # this month and every later one end past the range or are not published yet

    def _path(self, series: Series, period: _Period) -> str:
        kind = "monthly" if period.monthly else "daily"
        name = archive_name(series.interval)
        return (
            f"data/{self.market.archive_path}/{kind}/klines/{series.symbol}/{name}/"
            f"{series.symbol}-{name}-{period.label}.zip"
        )


class ArchiveFile:
    """A verified zip whose rows are checked a chunk at a time on a thread of their own, a few chunks
    ahead of the writer: memory stays a few chunks, and checking overlaps writing (SQLite and the
    drivers let go of the GIL while they store). A bad row ends the file with ``ArchiveUnavailable``
    inside the transaction that was writing it, which rolls back: nothing of a bad file is kept.
    """

    def __init__(self, window: Window, data: bytes, stop: RunStop) -> None:
        self.window = window
        self._data = data
        self._stop = stop
        self._chunks: queue.Queue[Sequence[Kline] | BaseException | None] = queue.Queue(ARCHIVE_CHUNKS_AHEAD)
        self._abandoned = threading.Event()
        threading.Thread(target=self._produce, name=f"read {window.file}", daemon=True).start()

    @property
    def size(self) -> int:
        return len(self._data) + ARCHIVE_CHUNKS_AHEAD * ARCHIVE_ROWS_PER_CHUNK * BYTES_PER_CANDLE

    def batches(self) -> Iterator[Sequence[Kline]]:
        try:
            while (item := self._chunks.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._abandoned.set()

    def _produce(self) -> None:
        try:
            for chunk in read_chunks(self.window, self._data):
                if not self._put(chunk):
                    return
        except ArchiveUnavailable as exc:
            self._put(exc)
            return
        self._put(None)

    def _put(self, item: Sequence[Kline] | BaseException | None) -> bool:
        """Hand ``item`` to the writer; False once the writer has gone (the run stopped or failed)."""
        while not self._abandoned.is_set() and not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False


def read_chunks(window: Window, data: bytes) -> Iterator[Sequence[Kline]]:
    """The candles of a verified zip, a chunk at a time: one CSV named like the zip, every row through
    the REST row checks (``klines.parse_csv``); a header row (some futures files have one) is skipped.
    The CSV is read in blocks of whole lines and split in C, never a line at a time in Python."""
    expected = window.file.rsplit("/", 1)[-1].removesuffix(".zip") + ".csv"
    start = window.start
    line_no = 1
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.namelist()
            if members != [expected]:
                raise ArchiveUnavailable(f"{window.file}: holds {members}, not {expected}")
            with archive.open(expected) as raw:
                first = True
                for chunk in _line_blocks(raw):
                    if first:
                        first = False
                        if chunk and not chunk[0][:1].isdigit():
                            del chunk[0]  # the header row some futures files carry
                            line_no = 2
                    batch = parse_csv(window.series, chunk, start, window.end)
                    line_no += len(chunk)
                    if batch:
                        start = batch[-1].open_time + 1
                        yield batch
    except MalformedResponse as exc:
        raise ArchiveUnavailable(f"{window.file}: in the rows from line {line_no}: {exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, UnicodeDecodeError) as exc:
        raise ArchiveUnavailable(f"{window.file}: unreadable zip ({exc})") from exc


def _line_blocks(raw: IO[bytes]) -> Iterator[list[str]]:
    """The non-empty lines of ``raw``, about :data:`ARCHIVE_ROWS_PER_CHUNK` at a time (CRs dropped)."""
    rest = b""
    while True:
        block = raw.read(ARCHIVE_BLOCK_BYTES)
        if not block:
            break
        block = rest + block
        cut = block.rfind(b"\n") + 1
        block, rest = block[:cut], block[cut:]
        if block:
            yield _lines(block)
    if rest:
        yield _lines(rest)


def _lines(block: bytes) -> list[str]:
    text = block.decode("ascii")
    if "\r" in text:
        text = text.replace("\r", "")
    lines = text.split("\n")
    if "" in lines:
        lines = [line for line in lines if line]
    return lines


def _month_start(ms: int) -> int:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp() * 1000)


def _next_month(month: int) -> int:
    moment = datetime.fromtimestamp(month / 1000, UTC)
    year, month_number = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return int(datetime(year, month_number, 1, tzinfo=UTC).timestamp() * 1000)


def _label(ms: int, *, monthly: bool) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m" if monthly else "%Y-%m-%d")
