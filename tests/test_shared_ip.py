"""Polite on a shared IP (issue 17 point 2): another client spends 60 % of the limit in bursts between
our requests; the backfill draws at most one 429 per minute of contention, never a 418, exact data.

Time is a manual clock shared by the fake and the client, moved only by the run's own waits, so minutes
pass in milliseconds and every burst lands at the same point of the run whatever the machine's load.
The other client is polite too: it spends only what fits (as a well-behaved client does), so any 429
is the run's own. The fake bans at the first request inside a Retry-After, so one such request fails.
``make bench`` B12 runs the same scenario at the issue's 400 a minute (``run_beside_a_bursting_client``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from extractor.errors import IPBanned
from extractor.intervals import DAY
from extractor.lifecycle import RunStop
from extractor.pipeline import commands
from tests.fake_exchange import FakeExchange
from tests.pipeline_helpers import SharedClock, open_sqlite, rest_source, series, sqlite_url, stored_rows

OTHER_SHARE = 0.6
BURSTS_PER_MINUTE = 4
START = 1_704_067_200_000  # 2024-01-01
NEIGHBOUR = "127.0.0.9"


class Neighbour:
    """Another client at 127.0.0.9 on the same IP: a burst before every third of our requests, until it
    has spent its share of the minute."""

    def __init__(self, exchange: FakeExchange, clock: SharedClock, burst: int, per_minute: int) -> None:
        self.exchange = exchange
        self.clock = clock
        self.burst = burst
        self.per_minute = per_minute
        self.spent: dict[int, int] = {}
        self._seen = 0

    def __call__(self, market: str, client: str) -> None:
        if client == NEIGHBOUR:
            return
        self._seen += 1
        minute = math.floor(self.clock() / 60)
        if self.spent.get(minute, 0) + self.burst > self.per_minute or self._seen % 3:
            return
        if self.exchange.spend(self.burst, market=market, address=NEIGHBOUR):
            self.spent[minute] = self.spent.get(minute, 0) + self.burst


@dataclass(frozen=True)
class SharedIpRun:
    """What one backfill beside the bursting client drew, by the fake's log."""

    limit: int
    candles: int
    minutes: int
    """Exchange minutes in which the run sent requests."""
    contended_minutes: int
    """Minutes in which the other client spent its whole share of the IP's limit."""
    refusals_by_minute: dict[int, int]
    """429 answers to the run, per minute since its start."""
    bans: int
    written: int
    exact: bool
    banned: str = ""

    @property
    def refusals(self) -> int:
        return sum(self.refusals_by_minute.values())

    @property
    def most_refusals_in_a_minute(self) -> int:
        return max(self.refusals_by_minute.values(), default=0)


def run_beside_a_bursting_client(
    folder: Path, *, limit: int = 100, days: int = 50, concurrency: int = 1
) -> SharedIpRun:
    """Backfill ``days`` of 1m candles on an IP whose ``limit`` another client spends 60 % of in bursts,
    with at most ``concurrency`` requests in flight."""
    clock = SharedClock(time.time() // 60 * 60 + 1)  # a second into a minute: the same schedule every run
    end = START + days * DAY
    per_minute = int(limit * OTHER_SHARE)
    banned = ""
    with FakeExchange(clock=clock, weight_limit=limit, shared_ip=True, ban_after_429s=1) as exchange:
        neighbour = Neighbour(exchange, clock, per_minute // BURSTS_PER_MINUTE, per_minute)
        exchange.before_admit = neighbour
        source = rest_source(
            exchange.url, clock=clock, wall_clock=clock, sleep=clock.sleep, concurrency=concurrency
        )
        began = clock()
        written = 0
        try:
            with open_sqlite(folder / "klines.db") as store:
                written = commands.backfill(
                    source, source, store, [series()], START, end, stop=RunStop(), concurrency=concurrency
                ).written
        except IPBanned as exc:
            banned = str(exc)
        finally:
            source.close()
        first = math.floor(began / 60)
        ours = [r for r in exchange.log if r.client != NEIGHBOUR]
        refused = Counter(math.floor(r.at / 60) - first for r in ours if r.status == 429)
        exact = stored_rows(sqlite_url(folder / "klines.db"), series(), START, end) == exchange.rows(
            "BTCUSDT", "1m", START, end
        )
        return SharedIpRun(
            limit=limit,
            candles=days * DAY // 60_000,
            minutes=len({math.floor(r.at / 60) for r in ours}),
            contended_minutes=sum(1 for spent in neighbour.spent.values() if spent >= per_minute),
            refusals_by_minute=dict(refused),
            bans=sum(1 for r in ours if r.status == 418),
            written=written,
            exact=exact,
            banned=banned,
        )


@pytest.mark.parametrize(
    ("limit", "days", "concurrency"),
    [
        pytest.param(100, 50, 1, id="100/min, one request at a time"),
        pytest.param(400, 120, 32, id="400/min, the default concurrency"),
    ],
)
def test_a_backfill_beside_a_bursting_client_draws_at_most_one_429_a_minute(
    tmp_path: Path, limit: int, days: int, concurrency: int
) -> None:
    run = run_beside_a_bursting_client(tmp_path, limit=limit, days=days, concurrency=concurrency)

    assert run.bans == 0 and not run.banned, f"a 418: the run sent inside a Retry-After ({run.banned})"
    assert run.most_refusals_in_a_minute <= 1, f"429s per minute: {run.refusals_by_minute}"
    assert run.minutes >= 3 and run.contended_minutes >= run.minutes - 1, "it was contended throughout"
    assert run.written == run.candles == days * 1_440
    assert run.exact
