"""The progress display of a backfill on a terminal: a bar per series, and what the run waits for.

Each bar shows the percentage, candles (and archive files) done of planned, candles/s, elapsed time
and ETA; while the weight budget or a 429 holds the run back it says until when. Log lines print above
the bars. tqdm is imported only when a display is shown, never for ``--help`` or a cron run.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from extractor import logs
from extractor.errors import format_utc
from extractor.klines import Series

BAR_FORMAT = (
    "{desc} {percentage:3.0f}%|{bar:16}| {n_fmt}/{total_fmt} candles "
    "[{elapsed}<{remaining}, {rate_fmt}]{postfix}"
)


class _Writer:
    """Log lines written above the bars instead of through them."""

    def __init__(self, tqdm: Any, stream: IO[str]) -> None:
        self._tqdm = tqdm
        self._stream = stream

    def write(self, text: str) -> int:
        if text.strip():
            self._tqdm.write(text.rstrip("\n"), file=self._stream)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


class ProgressDisplay:
    """Bars on ``stream``, one per series as it starts; a finished bar stays with its final figures."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = stream if stream is not None else sys.stderr
        self._bars: dict[Series, Any] = {}
        self._files: dict[Series, list[int]] = {}
        self._lock = threading.Lock()
        self._waiting_until = 0.0
        logs.redirect(_Writer(tqdm, self._stream))

    def expect(self, series: Series, candles: int, files: int) -> None:
        """``series`` starts: ``candles`` planned, ``files`` of them from the archive."""
        with self._lock:
            bar = self._bars.get(series)
            if bar is not None:  # planned again (the range after the settled head): same bar, new total
                self._files[series][1] += files
                bar.total = max(candles, 1)
                bar.refresh()
                return
            for bar in self._bars.values():
                bar.refresh()
            self._files[series] = [0, files]
            self._bars[series] = self._tqdm(
                total=max(candles, 1),
                desc=str(series),
                unit=" candles",
                unit_scale=True,
                file=self._stream,
                bar_format=BAR_FORMAT,
                dynamic_ncols=True,
                mininterval=0.25,
            )

    def advance(self, series: Series, candles: int, files: int) -> None:
        with self._lock:
            bar = self._bars.get(series)
            if bar is None:
                return
            done = self._files.setdefault(series, [0, 0])
            done[0] += files
            postfix = f" files {done[0]}/{done[1]}" if done[1] else ""
            if time.monotonic() < self._waiting_until:
                postfix += bar.postfix or ""
            bar.postfix = postfix
            bar.update(candles)

    def waiting(self, seconds: float, why: str) -> None:
        """The run waits ``seconds`` for ``why`` (the weight budget, a 429's Retry-After)."""
        if seconds < 1:
            return
        with self._lock:
            self._waiting_until = time.monotonic() + seconds
            for bar in self._bars.values():
                if bar.n < bar.total:
                    bar.postfix = f" waiting for {why} until {format_utc(time.time() + seconds)[11:19]}"
                    bar.refresh()

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
        logs.redirect(None)
