"""The fetch engine: how many windows it keeps in flight, and what a backfill asks for before exchangeInfo.

The in-flight limit is fed measured waits directly, its capacity read from a REST source's weight
budget; the backfill runs in-process against the fake exchange with a source that records the order
of its calls, so the overlap is asserted, not timed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from extractor.errors import BadInputError, ExchangeUnavailable
from extractor.pipeline import commands
from extractor.pipeline.fetch import START_IN_FLIGHT, InFlightLimit
from extractor.sources.base import Rows, Window
from extractor.sources.rest import Listing, RestSource
from tests.fake_exchange import FakeExchange, ManualClock
from tests.pipeline_helpers import open_sqlite, rest_source, series, sqlite_url, stored_rows
from utils.circuit_breaker import CircuitBreaker, CircuitState

DAY_MS = 86_400_000
START, END = 1_685_577_600_000, 1_685_836_800_000  # 2023-06-01 .. 2023-06-04: 4,320 candles of 1m, 5 windows
UNUSED_URL = "http://127.0.0.1:9"  # the capacity tests send nothing


def pages_left(limit: int = 6000, used: int = 0) -> RestSource:
    """A spot REST source whose weight budget has ``limit`` a minute, ``used`` of it spent."""
    clock = ManualClock(1_000.0)
    source = rest_source(UNUSED_URL, clock=clock, wall_clock=clock, sleep=clock.advance)
    source.client.budget.limit = limit
    if used:
        source.client.budget.acquire(used)
    return source


# ---------------------------------------------------------------------------------------------- limit


def test_the_limit_stays_put_while_waits_are_short_or_busy() -> None:
    limit = InFlightLimit(32, pages_left().capacity)
    limit.waited(0.001, 0.0)  # too short to say anything
    limit.waited(0.1, 0.08)  # the process was parsing: more requests would only crowd it
    assert limit.value == 8


def test_an_idle_wait_grows_the_limit_by_the_windows_the_writer_could_have_written() -> None:
    limit = InFlightLimit(64, pages_left().capacity)
    for _ in range(20):
        limit.wrote(0.005)
    limit.waited(0.1, 0.0)
    assert limit.value == 8 + 20


def test_the_limit_never_passes_the_ceiling_nor_the_weight_left_in_the_minute() -> None:
    capped = InFlightLimit(16, pages_left().capacity)
    capped.waited(1.0, 0.0)
    assert capped.value == 16

    short_of_weight = InFlightLimit(64, pages_left(limit=100, used=60).capacity)
    short_of_weight.waited(1.0, 0.0)
    assert short_of_weight.value == 20  # 40 weight left, 2 per window


def test_the_limit_starts_no_higher_than_the_ceiling() -> None:
    assert InFlightLimit(1, pages_left().capacity).value == 1


# ---------------------------------------------------------------------------------------------- backfill


class RecordingSource(RestSource):
    """Records calls in order. If told to, exchangeInfo is sent only once a window has been answered, and
    ``late_by`` seconds of the manual clock pass before it is: an answer slower than the windows'."""

    def __init__(
        self,
        *args: Any,
        hold_exchange_info: bool = False,
        late_by: tuple[ManualClock, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.window_answered = threading.Event()
        self.hold_exchange_info = hold_exchange_info or late_by is not None
        self.late_by = late_by

    def listings(self, symbols: Sequence[str] = ()) -> dict[str, Listing]:
        self.calls.append("exchangeInfo")
        if self.hold_exchange_info:
            assert self.window_answered.wait(10), "no window was answered while exchangeInfo was on its way"
        if self.late_by is not None:
            clock, seconds = self.late_by
            clock.advance(seconds)
        listed = super().listings(symbols)
        self.calls.append("exchangeInfo answered")
        return listed

    def fetch(self, window: Window) -> Rows:
        self.calls.append(f"klines {window.start}")
        try:
            return super().fetch(window)
        finally:
            self.window_answered.set()


def recording_source(exchange: FakeExchange, **options: Any) -> RecordingSource:
    source = rest_source(exchange.url, source_class=RecordingSource, **options)
    assert isinstance(source, RecordingSource)
    return source


def backfill(
    source: RestSource, folder: Path, start: int, end: int, symbol: str = "BTCUSDT"
) -> commands.RunResult:
    try:
        with open_sqlite(folder / "klines.db") as store:
            return commands.backfill(
                source, source, store, [series(symbol)], start, end, stop=source.client.stop, concurrency=8
            )
    finally:
        source.client.stop.set("done")
        source.close()


def stored_open_times(folder: Path, start: int, end: int) -> list[int]:
    return [row[0] for row in stored_rows(sqlite_url(folder / "klines.db"), series(), start, end)]


def klines_limits(exchange: FakeExchange) -> list[str]:
    return sorted(r.params["limit"] for r in exchange.log if r.path == "/api/v3/klines")


def test_a_backfill_asks_for_its_first_windows_while_exchange_info_is_on_its_way(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    source = recording_source(fake_exchange, hold_exchange_info=True)
    result = backfill(source, tmp_path, START, END)

    assert result.written == 4_320
    windows = [f"klines {START + n * 1_000 * 60_000}" for n in range(5)]
    assert sorted(source.calls) == sorted(["exchangeInfo", "exchangeInfo answered", *windows])
    assert stored_open_times(tmp_path, START, END) == list(range(START, END, 60_000))
    assert fake_exchange.request_counts == {"/api/v3/exchangeInfo": 1, "/api/v3/klines": 6}
    assert klines_limits(fake_exchange) == ["1", *["1000"] * 5]  # the listing probe, then the 5 windows


def test_no_window_is_asked_for_once_exchange_info_has_failed(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    fake_exchange.round_trip = 0.05  # an idle wait for exchangeInfo, which would grow the in-flight limit
    source = recording_source(fake_exchange, hold_exchange_info=True)
    with pytest.raises(BadInputError, match="unknown symbol NOPEUSDT"):
        backfill(source, tmp_path, START, START + 60 * DAY_MS, symbol="NOPEUSDT")

    # What went out alongside it, no more: the first windows the engine keeps in flight, and the probe.
    limits = klines_limits(fake_exchange)
    assert limits.count("1000") <= START_IN_FLIGHT and limits.count("1") <= 1
    assert len(limits) == fake_exchange.request_counts["/api/v3/klines"]


def test_after_an_outage_exchange_info_goes_alone_as_the_breakers_trial(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    breaker = CircuitBreaker(10, 60, ExchangeUnavailable, name="api")
    breaker.state = CircuitState.OPEN
    breaker.last_failure_time = 0.0  # long ago: the next call is the trial
    source = recording_source(fake_exchange, breaker=breaker)
    result = backfill(source, tmp_path, START, END)

    assert result.written == 4_320
    assert source.calls[:2] == ["exchangeInfo", "exchangeInfo answered"]
    assert fake_exchange.log[0].path == "/api/v3/exchangeInfo"
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    ("exchange_at", "ahead", "late_by", "closed"),
    [
        ("12:00:30", 1_800, 0.0, 180),
        ("12:00:30", 30 * 86_400, 0.0, 180),
        ("12:00:59.950", 3_600.1, 0.2, 181),
    ],
    ids=["half-an-hour", "a-month", "an-hour-and-100-ms-with-exchangeInfo-200-ms-late"],
)
def test_a_machine_clock_ahead_of_the_exchange_never_gets_a_forming_candle_stored(
    tmp_path: Path, exchange_at: str, ahead: float, late_by: float, closed: int
) -> None:
    # This machine's clock runs ``ahead`` of the exchange's, so windows asked for before exchangeInfo told
    # the time can reach past the exchange's now. In the last case the window holding 12:00 is answered at
    # 12:00:59.950, while that candle is forming, and exchangeInfo 200 ms later, once it has closed.
    now = datetime.fromisoformat(f"2024-01-10T{exchange_at}+00:00").timestamp()
    clock = ManualClock(now)
    start = 1_704_877_200_000  # 09:00
    with FakeExchange(clock=clock) as exchange:
        source = recording_source(
            exchange, clock=clock, wall_clock=lambda: clock() + ahead, late_by=(clock, late_by)
        )
        result = backfill(source, tmp_path, start, start + DAY_MS)
        closed_rows = exchange.rows("BTCUSDT", "1m", start, start + DAY_MS)

    assert result.written == closed == len(closed_rows)
    assert stored_rows(sqlite_url(tmp_path / "klines.db"), series(), 0, start + DAY_MS) == closed_rows


def test_a_backfill_up_to_now_gets_every_closed_candle_across_the_early_and_late_windows(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    # 3 hours before the exchange's now: the first 2 are planned before exchangeInfo, the last once it came.
    now = fake_exchange.now_ms()
    start = (now - 3 * 3_600_000) // 60_000 * 60_000
    source = recording_source(fake_exchange)
    result = backfill(source, tmp_path, start, now + DAY_MS)
    forming = source.now_ms() // 60_000 * 60_000

    (report,) = result.reports
    stored = stored_open_times(tmp_path, 0, now + DAY_MS)
    assert stored == list(range(start, stored[-1] + 60_000, 60_000))
    assert stored[-1] < forming and stored[-1] >= now // 60_000 * 60_000 - 60_000
    assert report.written == len(stored) and report.planned == len(stored)
