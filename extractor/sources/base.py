"""The KlineSource protocol: what the fetch engine knows of any source of klines, and nothing more.

A source cuts a range of a series into windows (REST pages, or archive files that cost no request
weight), fetches one window into an ``Answer`` on a worker thread, and, when an answer turns out to be
unusable, says what to ask for instead. The engine fetches windows concurrently and writes their answers
strictly in plan order, so a killed run leaves a stored prefix of every series.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from extractor.errors import ArchiveUnavailable
from extractor.klines import Kline, Series

BYTES_PER_CANDLE = 1_000
"""What a parsed candle waiting for the writer costs in memory (a 14-field tuple of small strings)."""
ZIPPED_BYTES_PER_CANDLE = 80
"""What a candle costs in an archive zip waiting to be read (a month of 1m zips to about 3.4 MB)."""
ARCHIVE_ROWS_PER_CHUNK = 5_000
ARCHIVE_CHUNKS_AHEAD = 2
"""An archive file is checked this many chunks ahead of the writer, no more."""


@dataclass(frozen=True, slots=True)
class Window:
    """One request's (or one file's) worth of one series: ``start <= open_time < end``."""

    series: Series
    start: int
    end: int
    weight: int
    """Request weight of asking for it: a REST page's, or 0 for an archive file."""
    candles: int
    """The most candles it can hold."""
    file: str = ""
    """The archive file it is read from; empty for REST."""

    @property
    def expected_bytes(self) -> int:
        """Memory its answer may take while it waits for the writer."""
        if self.file:
            return (
                self.candles * ZIPPED_BYTES_PER_CANDLE
                + ARCHIVE_CHUNKS_AHEAD * ARCHIVE_ROWS_PER_CHUNK * BYTES_PER_CANDLE
            )
        return self.candles * BYTES_PER_CANDLE


class Answer(Protocol):
    """A fetched window: its candles in batches, read by the writer inside one transaction.

    ``batches`` may raise ``ArchiveUnavailable`` (a bad row of an archive file): then nothing of the
    window is kept and the source's ``replan`` says what to fetch instead.
    """

    @property
    def window(self) -> Window: ...

    @property
    def size(self) -> int:
        """Bytes this answer holds while it waits for the writer."""
        ...

    def batches(self) -> Iterator[Sequence[Kline]]: ...


@dataclass(slots=True)
class Rows:
    """An answer already parsed on the worker thread: one REST page."""

    window: Window
    klines: Sequence[Kline]

    @property
    def size(self) -> int:
        return len(self.klines) * BYTES_PER_CANDLE

    def batches(self) -> Iterator[Sequence[Kline]]:
        if self.klines:
            yield self.klines


class KlineSource(Protocol):
    """What the engine asks of a source."""

    name: str

    def plan(self, series: Series, start: int, end: int) -> Iterator[Window]:
        """Windows covering ``[start, end)`` of ``series``, in order, touching, none overlapping."""
        ...

    def fetch(self, window: Window) -> Answer:
        """Fetch one window (on a worker thread); may raise ``ArchiveUnavailable`` to be replanned."""
        ...

    def replan(self, window: Window, reason: ArchiveUnavailable) -> list[Window]:
        """What to fetch instead of an unusable window, or raise to fail its series."""
        ...

    def capacity(self) -> int:
        """How many windows may be in flight at once without waiting on the weight budget."""
        ...
