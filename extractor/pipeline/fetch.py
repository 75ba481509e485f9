"""The fetch engine: windows asked for by a bounded pool, answers written strictly in plan order.

How many windows are in flight follows the latency (``InFlightLimit``) and never passes a byte budget
for what waits for the writer, so memory does not depend on the exchange's pace. The engine knows a
source only through the KlineSource protocol; an unusable answer is replaced by what the source replans,
written in its place. A series whose source fails is set aside when the caller allows it, so the others
are still written. When the run's outcome is decided, nothing more is submitted or sent.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar

from extractor.errors import ArchiveUnavailable
from extractor.klines import Series
from extractor.lifecycle import RunStop, wait_done
from extractor.pipeline.write import Writer
from extractor.sources.base import Answer, KlineSource, Window

T = TypeVar("T")

IDLE_WAIT_SECONDS = 0.002
FIRST_WRITE_SECONDS = 0.01
"""The writer's time per window until one has been measured: about what 1,000 candles cost to store."""
START_IN_FLIGHT = 8
WINDOWS_PER_TRANSACTION = 10
MEMORY_BUDGET = 32 * 1024 * 1024
"""Bytes of fetched answers that may wait for the writer."""


class Progress(Protocol):
    """What the engine and the planner tell a progress display."""

    def expect(self, series: Series, candles: int, files: int) -> None:
        """``series`` starts: ``candles`` planned, ``files`` archive files among its windows."""

    def advance(self, series: Series, candles: int, files: int) -> None:
        """A window of ``series`` was written."""


class InFlightLimit:
    """How many windows to have requested but not yet written: enough to hide the exchange's latency.

    It grows when the writer has waited for a window with the process mostly idle (the answers are slow
    to come, not slow to parse or write): by as many windows as the writer could have written in that
    wait, never past ``ceiling`` nor what the source can take now. On a fast link it stays where it
    starts, so the fetch threads do not crowd the writer off the GIL.
    """

    def __init__(self, ceiling: int, capacity: Callable[[], int], start: int = START_IN_FLIGHT) -> None:
        self.ceiling = max(1, ceiling)
        self.value = min(start, self.ceiling)
        self._capacity = capacity
        self._write_seconds = FIRST_WRITE_SECONDS

    def wrote(self, seconds: float) -> None:
        """The writer spent ``seconds`` on one window (a moving average smooths the odd slow write)."""
        self._write_seconds += (seconds - self._write_seconds) / 4

    def waited(self, seconds: float, cpu_seconds: float) -> None:
        """The writer waited ``seconds`` for a window while the whole process used ``cpu_seconds``."""
        if seconds < IDLE_WAIT_SECONDS or cpu_seconds > seconds / 2:
            return
        more = math.ceil(seconds / max(self._write_seconds, IDLE_WAIT_SECONDS))
        self.value = max(self.value, min(self.ceiling, self._capacity(), self.value + more))


@dataclass
class _Pending:
    window: Window
    future: Future[Answer]
    reserved: int


class Engine:
    """Fetch windows concurrently, write their answers in order. A context manager for its pool."""

    def __init__(
        self,
        source: KlineSource,
        writer: Writer,
        *,
        concurrency: int,
        stop: RunStop,
        isolate: Callable[[Window, Exception], bool] = lambda window, exc: False,
        progress: Progress | None = None,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        self.source = source
        self.writer = writer
        self.stop = stop
        self.failed: dict[Series, Exception] = {}
        self._isolate = isolate
        self._progress = progress
        self._memory_budget = memory_budget
        self._reserved = 0
        self._writing = 0
        """Bytes of the answers the writer holds now: still counted in ``_reserved`` until written."""
        self._limit = InFlightLimit(concurrency, source.capacity)
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="fetch")
        self._pending: deque[_Pending] = deque()
        self._windows: Iterator[Window] = iter(())
        self._held: Window | None = None
        """The next window, held back while the memory budget is spent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.stop.set(f"{exc_type.__name__}: {exc}")
            self.discard()
        # Threads still waiting on the network are abandoned, not waited for: they find the run stopped.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Run ``call`` on the pool, alongside the windows; :meth:`result` waits for it."""
        return self._pool.submit(call)

    def result(self, future: Future[T]) -> T:
        """What ``future`` returns; an idle wait for it tells the in-flight limit the link is slow."""
        if not future.done():
            began, cpu_began = time.monotonic(), time.process_time()
            wait_done(future)
            self._limit.waited(time.monotonic() - began, time.process_time() - cpu_began)
        return future.result()

    def prefetch(self, windows: Iterator[Window]) -> None:
        """Ask for the first of ``windows`` now; :meth:`run` writes them, and the rest, first."""
        self._windows = itertools.chain(self._windows, windows)
        self._refill()

    def discard(self) -> None:
        """Forget every window asked for and not yet written."""
        for pending in self._pending:
            pending.future.cancel()
        self._pending.clear()
        self._reserved = self._writing = 0
        self._windows = iter(())
        self._held = None

    def run(self, windows: Iterable[Window]) -> None:
        """Fetch the prefetched windows, then ``windows``; write each answer, in that order.

        REST answers already fetched when their turn comes are written together, in one transaction
        (at most :data:`WINDOWS_PER_TRANSACTION`): fewer commits, and the writer queues less for the GIL.
        """
        self._windows = itertools.chain(self._windows, windows)
        self._refill()
        while self._pending:
            answers = self._next_answers()
            if not answers:
                continue
            self._refill()  # what the writer holds still counts, so the budget covers it too
            try:
                began = time.monotonic()
                if answers[0].window.file:
                    try:
                        self.writer.write_file(answers[0])
                    except ArchiveUnavailable as reason:
                        self._replace(answers[0].window, reason)
                        continue
                else:
                    prepared = []
                    for answer in answers:
                        try:
                            prepared.append(self.writer.prepare(answer))
                        except Exception as exc:
                            self._set_aside(answer.window, exc)
                    self.writer.commit([p for p in prepared if p.window.series not in self.failed])
                self._limit.wrote((time.monotonic() - began) / len(answers))
                if self._progress is not None:
                    for answer in answers:
                        window = answer.window
                        self._progress.advance(window.series, window.candles, 1 if window.file else 0)
            finally:
                self._reserved -= self._writing
                self._writing = 0

    def _next_answers(self) -> list[Answer]:
        """The next answer to write, waiting for it, and the REST answers ready right behind it."""
        pending = self._pending.popleft()
        if pending.window.series in self.failed:
            self._reserved -= pending.reserved
            return []
        try:
            answers = [self.result(pending.future)]
        except ArchiveUnavailable as reason:
            self._reserved -= pending.reserved
            self._replace(pending.window, reason)
            return []
        except Exception as exc:
            self._reserved -= pending.reserved
            self._set_aside(pending.window, exc)
            return []
        self._writing += pending.reserved
        if pending.window.file:
            return answers
        while len(answers) < WINDOWS_PER_TRANSACTION and self._pending:
            ready = self._pending[0]
            if ready.window.file or not ready.future.done() or ready.future.exception() is not None:
                break
            if ready.window.series in self.failed:
                break
            self._pending.popleft()
            self._writing += ready.reserved
            answers.append(ready.future.result())
        return answers

    def _set_aside(self, window: Window, exc: Exception) -> None:
        """A failure of one series: set it aside if the caller allows, else end the run."""
        if not self._isolate(window, exc):
            raise exc
        self.failed[window.series] = exc

    def _replace(self, window: Window, reason: ArchiveUnavailable) -> None:
        """Put what the source replans for an unusable window where that window stood."""
        try:
            replacements = self.source.replan(window, reason)
        except Exception as exc:
            self._set_aside(window, exc)
            return
        self.writer.fell_back(window)
        ahead = [self._submit(replacement) for replacement in replacements]
        self._pending.extendleft(reversed(ahead))

    def _submit(self, window: Window) -> _Pending:
        reserved = window.expected_bytes
        self._reserved += reserved
        return _Pending(window, self._pool.submit(self.source.fetch, window), reserved)

    def _refill(self) -> None:
        while len(self._pending) < self._limit.value and not self.stop.is_set():
            window, self._held = self._held or next(self._windows, None), None
            if window is None:
                return
            if window.series in self.failed:
                continue
            if self._pending and self._reserved + window.expected_bytes > self._memory_budget:
                self._held = window
                return
            self._pending.append(self._submit(window))
