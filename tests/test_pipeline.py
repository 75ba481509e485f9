"""The fetch engine: how many windows it keeps in flight, and what a backfill asks for before exchangeInfo.

The in-flight limit is fed measured waits directly; the backfill runs in-process against the fake
exchange with a client that records the order of its calls, so the overlap is asserted, not timed.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from extractor import pipeline
from extractor.binance import BinanceClient, WeightBudget
from extractor.errors import BadInputError
from extractor.intervals import Interval
from extractor.klines import to_row
from extractor.settings import load_settings
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange, ManualClock
from tests.reliability_helpers import RuntimeWithClient
from utils.circuit_breaker import CircuitState

DAY_MS = 86_400_000
START, END = 1_685_577_600_000, 1_685_836_800_000  # 2023-06-01 .. 2023-06-04: 4,320 candles of 1m, 5 windows
ONE_MINUTE = Interval.parse("1m")


def budget(limit: int = 6000, used: int = 0) -> WeightBudget:
    weights = WeightBudget(limit, clock=lambda: 0.0, sleep=lambda _: None, server_offset_ms=lambda: 0)
    if used:
        weights.acquire(used)
    return weights


# ---------------------------------------------------------------------------------------------- limit


def test_the_limit_stays_put_while_waits_are_short_or_busy() -> None:
    limit = pipeline.InFlightLimit(32, budget())
    limit.waited(0.001, 0.0)  # too short to say anything
    limit.waited(0.1, 0.08)  # the process was parsing: more requests would only crowd it
    assert limit.value == 8


def test_an_idle_wait_grows_the_limit_by_the_windows_the_writer_could_have_written() -> None:
    limit = pipeline.InFlightLimit(64, budget())
    for _ in range(20):
        limit.wrote(0.005)
    limit.waited(0.1, 0.0)
    assert limit.value == 8 + 20


def test_the_limit_never_passes_the_ceiling_nor_the_weight_left_in_the_minute() -> None:
    capped = pipeline.InFlightLimit(16, budget())
    capped.waited(1.0, 0.0)
    assert capped.value == 16

    short_of_weight = pipeline.InFlightLimit(64, budget(limit=100, used=60))
    short_of_weight.waited(1.0, 0.0)
    assert short_of_weight.value == 20  # 40 weight left, 2 per window


def test_the_limit_starts_no_higher_than_the_ceiling() -> None:
    assert pipeline.InFlightLimit(1, budget()).value == 1


# ---------------------------------------------------------------------------------------------- backfill


class RecordingClient(BinanceClient):
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

    def exchange_info(self, symbols: Any) -> dict[str, str]:
        self.calls.append("exchangeInfo")
        if self.hold_exchange_info:
            assert self.window_answered.wait(10), "no window was answered while exchangeInfo was on its way"
        if self.late_by is not None:
            clock, seconds = self.late_by
            clock.advance(seconds)
        statuses = super().exchange_info(symbols)
        self.calls.append("exchangeInfo answered")
        return statuses

    def klines(self, symbol: str, interval: Interval, start: int, end: int, *args: Any, **kw: Any) -> Any:
        self.calls.append(f"klines {start}")
        try:
            return super().klines(symbol, interval, start, end, *args, **kw)
        finally:
            self.window_answered.set()


def runtime_for(exchange: FakeExchange, folder: Path, **client_options: Any) -> RuntimeWithClient:
    environ = {
        "EXTRACTOR_STATE_DIR": str(folder / "state"),
        "DATABASE_URL": f"sqlite:///{folder / 'klines.db'}",
        "BINANCE_API_URL": exchange.url,
    }
    return RuntimeWithClient(load_settings(environ=environ), RecordingClient, **client_options)


def backfill(runtime: RuntimeWithClient, start: int, end: int) -> pipeline.RunResult:
    try:
        return pipeline.backfill(runtime, ["BTCUSDT"], [ONE_MINUTE], start, end)
    finally:
        runtime.close()


def calls(runtime: RuntimeWithClient) -> list[str]:
    client = runtime.client
    assert isinstance(client, RecordingClient)
    return client.calls


def stored_open_times(folder: Path, start: int, end: int) -> list[int]:
    with open_store(f"sqlite:///{folder / 'klines.db'}") as store:
        return [k.open_time for k in store.read("BTCUSDT", ONE_MINUTE, start, end)]


def test_a_backfill_asks_for_its_first_windows_while_exchange_info_is_on_its_way(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    runtime = runtime_for(fake_exchange, tmp_path, hold_exchange_info=True)
    result = backfill(runtime, START, END)

    assert result.written == 4_320
    windows = [f"klines {START + n * 1_000 * 60_000}" for n in range(5)]
    assert sorted(calls(runtime)) == sorted(["exchangeInfo", "exchangeInfo answered", *windows])
    assert stored_open_times(tmp_path, START, END) == list(range(START, END, 60_000))
    assert fake_exchange.request_counts == {"/api/v3/exchangeInfo": 1, "/api/v3/klines": 5}


def test_no_window_is_asked_for_once_exchange_info_has_failed(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    fake_exchange.round_trip = 0.05  # an idle wait for exchangeInfo, which would grow the in-flight limit
    runtime = runtime_for(fake_exchange, tmp_path, hold_exchange_info=True)
    with pytest.raises(BadInputError, match="unknown symbol NOPEUSDT"):
        pipeline.backfill(runtime, ["NOPEUSDT"], [ONE_MINUTE], START, START + 60 * DAY_MS)
    runtime.close()

    assert fake_exchange.request_counts["/api/v3/klines"] <= 8  # what went out alongside it, no more


def test_after_an_outage_exchange_info_goes_alone_as_the_breakers_trial(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    runtime = runtime_for(fake_exchange, tmp_path)
    runtime.api_breaker.state = CircuitState.OPEN
    runtime.api_breaker.last_failure_time = 0.0  # long ago: the next call is the trial
    result = backfill(runtime, START, END)

    assert result.written == 4_320
    assert calls(runtime)[:2] == ["exchangeInfo", "exchangeInfo answered"]
    assert runtime.api_breaker.state is CircuitState.CLOSED


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
        runtime = runtime_for(
            exchange, tmp_path, clock=clock, wall_clock=lambda: clock() + ahead, late_by=(clock, late_by)
        )
        result = backfill(runtime, start, start + DAY_MS)
        closed_rows = exchange.rows("BTCUSDT", "1m", start, start + DAY_MS)

    assert result.written == closed == len(closed_rows)
    with open_store(f"sqlite:///{tmp_path / 'klines.db'}") as store:
        stored = [to_row(k) for k in store.read("BTCUSDT", ONE_MINUTE, 0, start + DAY_MS)]
    assert stored == closed_rows


def test_a_backfill_up_to_now_gets_every_closed_candle_across_the_early_and_late_windows(
    fake_exchange: FakeExchange, tmp_path: Path
) -> None:
    # 3 hours before the exchange's now: the first 2 are planned before exchangeInfo, the last once it came.
    now = fake_exchange.now_ms()
    start = (now - 3 * 3_600_000) // 60_000 * 60_000
    runtime = runtime_for(fake_exchange, tmp_path)
    result = backfill(runtime, start, now + DAY_MS)
    forming = runtime.client.now_ms() // 60_000 * 60_000

    (report,) = result.reports
    stored = stored_open_times(tmp_path, 0, now + DAY_MS)
    assert stored == list(range(start, stored[-1] + 60_000, 60_000))
    assert stored[-1] < forming and stored[-1] >= now // 60_000 * 60_000 - 60_000
    assert report.written == len(stored) and report.planned == len(stored)
