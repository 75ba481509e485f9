"""Issue 17's deliverables that no other module proves: no silent hole, a run that ends when it ends,
a byte budget on what waits for the writer, every weight settled when a run is abandoned.

Everything runs in-process against the fake exchange on loopback, with a SQLite store; the clocks the
tests care about are manual. (The shared IP is in test_shared_ip.py; the db breaker's transition rows,
Mongo's ordered batches and the decimal limits per backend in test_storage*.py and test_klines.py.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from extractor.errors import IPBanned
from extractor.intervals import DAY, HOUR, MINUTE, Interval
from extractor.klines import Series, parse_rows
from extractor.lifecycle import RunStop
from extractor.pipeline import audit, commands
from extractor.pipeline.fetch import Engine
from extractor.pipeline.write import SeriesReport, Writer
from extractor.sources.base import BYTES_PER_CANDLE, Rows, Window
from extractor.sources.rest import RestSource
from tests.fake_exchange import FakeExchange, ManualClock, SymbolSpec
from tests.pipeline_helpers import (
    open_sqlite,
    rest_source,
    series,
    sqlite_url,
    stored_gaps,
    stored_rows,
)

START = 1_685_577_600_000  # 2023-06-01
END = START + 4_000 * MINUTE  # 4 pages of 1m


def backfill(source: RestSource, folder: Path, start: int = START, end: int = END) -> commands.RunResult:
    with open_sqlite(folder / "klines.db") as store:
        return commands.backfill(source, source, store, [series()], start, end, stop=RunStop(), concurrency=4)


# ---------------------------------------------------------------------------------- no silent hole


@pytest.mark.parametrize(
    ("fault", "count"),
    [("empty_next", 1), ("empty_next", 4), ("short_next", 1), ("short_next", 4), ("hole_next", 2)],
    ids=["an-empty-page", "every-page-empty", "a-short-page", "every-page-short", "two-holed-pages"],
)
def test_a_spoilt_page_is_never_a_gap_and_the_next_run_has_exactly_the_exchanges_data(
    fake_exchange: FakeExchange, tmp_path: Path, fault: str, count: int
) -> None:
    setattr(fake_exchange.faults, fault, count)
    fake_exchange.faults.short_by = 7
    url = sqlite_url(tmp_path / "klines.db")

    source = rest_source(fake_exchange.url)
    backfill(source, tmp_path)
    source.close()

    assert getattr(fake_exchange.faults, fault) < count, "the first run met the fault"
    assert stored_gaps(url, series(), 0, END) == []
    setattr(fake_exchange.faults, fault, 0)  # the exchange answers whole again
    source = rest_source(fake_exchange.url)
    backfill(source, tmp_path)
    source.close()
    assert stored_gaps(url, series(), 0, END) == []
    assert stored_rows(url, series(), 0, END) == fake_exchange.rows("BTCUSDT", "1m", START, END)


def test_an_outage_between_candles_is_a_gap_confirmed_by_a_second_request(tmp_path: Path) -> None:
    """The counterpart: a real silence between two returned candles is recorded, once confirmed."""
    outage = (START + 1_500 * MINUTE, START + 1_620 * MINUTE)
    spec = SymbolSpec(listed_at=START - DAY, outages=[outage])
    with FakeExchange(symbols={"BTCUSDT": spec}) as exchange:
        source = rest_source(exchange.url)
        backfill(source, tmp_path)
        source.close()
        served = exchange.rows("BTCUSDT", "1m", START, END)
    url = sqlite_url(tmp_path / "klines.db")
    assert stored_rows(url, series(), 0, END) == served
    assert stored_gaps(url, series(), 0, END) == [outage]


def extract(source: RestSource, folder: Path) -> commands.RunResult:
    wanted = commands.Wanted(source, ("BTCUSDT",), (Interval.parse("1m"),))
    with open_sqlite(folder / "klines.db") as store:
        return commands.extract([wanted], store, lookback_ms=2 * HOUR, stop=RunStop(), concurrency=4)


def test_an_extract_answer_missing_its_newest_candle_is_asked_again_by_the_next_run(tmp_path: Path) -> None:
    clock = ManualClock(datetime.fromisoformat("2024-03-05T12:07:30+00:00").timestamp())
    url = sqlite_url(tmp_path / "klines.db")
    with FakeExchange(clock=clock) as exchange:
        exchange.faults.tail_next = 1
        newest = (exchange.now_ms() // MINUTE - 1) * MINUTE
        source = rest_source(exchange.url, clock=clock, wall_clock=clock)
        extract(source, tmp_path)
        assert exchange.faults.tail_next == 0, "the lagging answer was served"
        assert stored_gaps(url, series(), 0, newest + MINUTE) == []
        with open_sqlite(tmp_path / "klines.db") as store:
            assert store.last_open_time(series()) == newest - MINUTE  # "not yet", not "never"

        extract(source, tmp_path)  # the next cron run, at the same minute
        source.close()
        begin = -(-(exchange.now_ms() - 2 * HOUR) // MINUTE) * MINUTE  # the lookback, to the next minute
        expected = exchange.rows("BTCUSDT", "1m", begin, newest + MINUTE)
    assert stored_rows(url, series(), 0, newest + MINUTE) == expected
    assert expected[-1][0] == newest
    assert stored_gaps(url, series(), 0, newest + MINUTE) == []


def test_gaps_recheck_refills_false_gaps_and_keeps_true_ones_confirmed(tmp_path: Path) -> None:
    """A database an older release wrote: two false gaps (the exchange has those candles) and a true one."""
    outage = (START + 3_000 * MINUTE, START + 3_100 * MINUTE)
    false_gaps = [(START + 100 * MINUTE, START + 400 * MINUTE), (START + 3_900 * MINUTE, END)]
    url = sqlite_url(tmp_path / "klines.db")
    with FakeExchange(symbols={"BTCUSDT": SymbolSpec(listed_at=START - DAY, outages=[outage])}) as exchange:
        served = exchange.rows("BTCUSDT", "1m", START, END)
        with open_sqlite(tmp_path / "klines.db") as store:
            kept = [row for row in served if not any(lo <= row[0] < hi for lo, hi in false_gaps)]
            store.write(parse_rows(series(), kept, START, END))
            for lo, hi in [*false_gaps, outage]:
                store.record_exchange_gap(series(), lo, hi, confirmations=0, confirmed_at=0)

        source = rest_source(exchange.url)
        with open_sqlite(tmp_path / "klines.db") as store:
            before = audit.audit(
                None, store, [series()], START, END, stop=RunStop(), concurrency=4, now_ms=exchange.now_ms()
            )
            healed = audit.audit(
                source,
                store,
                [series()],
                START,
                END,
                recheck=True,
                stop=RunStop(),
                concurrency=4,
                now_ms=exchange.now_ms(),
            )
            confirmations = [g.confirmations for g in store.exchange_gaps(series(), 0, END)]
        source.close()

    (was,) = before
    assert [(g.start, g.end, g.kind) for g in was.gaps] == [
        (*false_gaps[0], "exchange"),
        (*outage, "exchange"),
        (*false_gaps[1], "exchange"),
    ]
    (now,) = healed
    assert now.refilled == 300 + 100
    assert [(g.start, g.end, g.kind) for g in now.gaps] == [(*outage, "exchange")]
    assert confirmations == [2]
    assert stored_rows(url, series(), 0, END) == served


# ---------------------------------------------------------------------------------- a run that ends


class BanAt:
    """The fake's other hand: bans every address once ``after`` klines requests have been admitted."""

    def __init__(self, exchange: FakeExchange, clock: ManualClock, after: int) -> None:
        self.exchange = exchange
        self.clock = clock
        self.after = after
        self.seen = 0

    def __call__(self, market: str, client: str) -> None:
        self.seen += 1
        if self.seen == self.after:
            self.exchange.ban(self.clock() + 600)


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fetch")]


def test_once_a_run_has_decided_its_exit_no_request_is_sent_and_every_weight_is_settled(
    tmp_path: Path,
) -> None:
    """A 418 ends the run while workers wait for the next minute's weight: they wake, send nothing, and
    leave nothing in flight. The budget's clock stands still, so only the run's stop can wake them."""
    clock = ManualClock(datetime.fromisoformat("2024-03-05T12:00:10+00:00").timestamp())
    for thread in fetch_threads():
        thread.join(30)  # earlier tests' abandoned workers, so the count below is this run's
    with FakeExchange(clock=clock, weight_limit=40) as exchange:
        exchange.before_admit = BanAt(exchange, clock, after=6)  # exchangeInfo, then 5 pages: 30 of 40
        stop = RunStop()
        source = rest_source(exchange.url, clock=clock, wall_clock=clock, stop=stop, concurrency=8)
        with pytest.raises(IPBanned), open_sqlite(tmp_path / "klines.db") as store:
            commands.backfill(
                source, source, store, [series()], START, START + 60 * DAY, stop=stop, concurrency=8
            )
        sent_at_exit = source.client.requests_sent

        for thread in fetch_threads():
            thread.join(30)  # a safety net: the stop wakes them at once
        assert not fetch_threads(), "a worker outlived its run"
        assert stop.is_set()
        assert source.client.requests_sent == sent_at_exit
        # Every request the fake saw was sent by the exit. (Its log at the exit can lag by the requests
        # still on the wire then; with the workers ended, each of those has arrived.)
        assert len(exchange.log) == sent_at_exit
        assert source.client.budget.in_flight == 0
        source.close()
    assert sent_at_exit >= 6  # the run got as far as the ban


# ---------------------------------------------------------------------------------- memory by bytes


class CountingSource:
    """A KlineSource of synthetic 1,000-candle windows that records how many were fetched, unwritten."""

    name = "counting"

    def __init__(self, one: Series) -> None:
        self.series = one
        self.fetched = 0
        self.written = 0
        self.most_waiting = 0
        self._lock = threading.Lock()

    def plan(self, one: Series, start: int, end: int) -> Iterator[Window]:
        for lo in range(start, end, 1_000 * MINUTE):
            yield Window(one, lo, min(end, lo + 1_000 * MINUTE), 2, 1_000)

    def fetch(self, window: Window) -> Rows:
        with self._lock:
            self.fetched += 1
            self.most_waiting = max(self.most_waiting, self.fetched - self.written)
        return Rows(window, [])

    def replan(self, window: Window, reason: Exception) -> list[Window]:
        raise reason

    def capacity(self) -> int:
        return 1_000


class CountingWriter(Writer):
    """A writer that stores nothing and tells the source each window it took."""

    def __init__(self, source: CountingSource, exchange: RestSource, folder: Path) -> None:
        self.counting = source
        reports = {source.series: SeriesReport(source.series, START, START)}
        super().__init__(open_sqlite(folder / "klines.db"), exchange, reports, lambda: 0)

    def commit(self, prepared: object) -> int:
        n = len(prepared)  # type: ignore[arg-type]
        with self.counting._lock:
            self.counting.written += n
        return 0


@pytest.mark.parametrize("budget_windows", [1, 3, 5])
def test_what_waits_for_the_writer_never_passes_the_byte_budget(tmp_path: Path, budget_windows: int) -> None:
    """However many windows the in-flight limit allows (64 here), the fetched and unwritten ones (those
    the writer holds included) never take more than the byte budget, plus the one window always allowed
    on its way so that the run goes on. Before the writer's were counted, 5 windows' budget held 9."""
    one = series()
    source = CountingSource(one)
    exchange = rest_source("http://127.0.0.1:9")
    writer = CountingWriter(source, exchange, tmp_path)
    window_bytes = 1_000 * BYTES_PER_CANDLE
    with Engine(
        source,  # type: ignore[arg-type]
        writer,
        concurrency=64,
        stop=RunStop(),
        memory_budget=budget_windows * window_bytes,
    ) as engine:
        engine._limit.value = 64  # as if the link were slow: only the byte budget holds the windows back
        engine.run(source.plan(one, START, START + 200 * 1_000 * MINUTE))
    writer.store.close()
    exchange.close()

    assert source.fetched == source.written == 200
    assert source.most_waiting <= budget_windows + 1
