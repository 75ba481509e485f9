"""Polite on a shared IP (issue 17 point 2): another client spends 60 % of the limit in bursts between
our requests; the backfill draws at most one 429 per minute of contention, never a 418, exact data.

Time is the fake's manual clock, moved only by the run's own waits, so minutes pass in milliseconds
and every burst lands at the same point of the run whatever the machine's load. The other client is
polite too: it spends only what fits (as a well-behaved client does), so any 429 is the run's own.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from extractor.intervals import DAY
from extractor.lifecycle import RunStop
from extractor.pipeline import commands
from tests.fake_exchange import FakeExchange
from tests.reliability_helpers import SharedClock, open_sqlite, rest_source, series, stored_rows

LIMIT = 100
BURST = 15
BURSTS_PER_MINUTE = 4
"""60 % of the limit a minute, in four bursts."""
START = 1_704_067_200_000  # 2024-01-01
END = START + 50 * DAY  # 72,000 candles: 72 pages, some minutes of contention at 40 weight a minute


class Neighbour:
    """Another client at 127.0.0.9 on the same IP: a burst before every few of our requests."""

    def __init__(self, exchange: FakeExchange, clock: SharedClock) -> None:
        self.exchange = exchange
        self.clock = clock
        self.spent: dict[int, int] = {}
        self._seen = 0

    def __call__(self, market: str, client: str) -> None:
        if client != "127.0.0.1":
            return
        self._seen += 1
        minute = math.floor(self.clock() / 60)
        if self.spent.get(minute, 0) >= BURST * BURSTS_PER_MINUTE or self._seen % 3:
            return
        if self.exchange.spend(BURST, market=market, address="127.0.0.9"):
            self.spent[minute] = self.spent.get(minute, 0) + BURST


def test_a_backfill_beside_a_bursting_client_draws_at_most_one_429_a_minute(tmp_path: Path) -> None:
    clock = SharedClock(time.time() // 60 * 60 + 1)  # a second into a minute: the same schedule every run
    with FakeExchange(clock=clock, weight_limit=LIMIT, shared_ip=True, ban_after_429s=1) as exchange:
        neighbour = Neighbour(exchange, clock)
        exchange.before_admit = neighbour
        source = rest_source(exchange.url, clock=clock, wall_clock=clock, sleep=clock.sleep, concurrency=1)
        began = clock()
        with open_sqlite(tmp_path / "klines.db") as store:
            result = commands.backfill(
                source, source, store, [series()], START, END, stop=RunStop(), concurrency=1
            )
        minutes = math.ceil((clock() - began) / 60)

        assert exchange.banned_until is None, "a 418: the run sent inside a Retry-After"
        refused = [r for r in exchange.log if r.client == "127.0.0.1" and r.status == 429]
        refused_minutes = [math.floor(r.at / 60) for r in refused]
        assert len(refused_minutes) == len(set(refused_minutes)), f"two 429s in one minute: {refused_minutes}"
        assert len(refused) <= minutes
        assert sum(neighbour.spent.values()) >= BURST * BURSTS_PER_MINUTE * (minutes - 1), "it was contended"
        assert result.written == 72_000
        assert stored_rows(f"sqlite:///{tmp_path / 'klines.db'}", series(), START, END) == exchange.rows(
            "BTCUSDT", "1m", START, END
        )
