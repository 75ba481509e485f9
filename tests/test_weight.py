"""The weight budget: a minute of the server's clock, the server's own count, and polite 429 handling."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import pytest

from extractor.intervals import MINUTE
from extractor.sources.weight import MIN_SHARE, PROBE_POLL_SECONDS, RECOVERY, Ticket, WeightBudget
from tests.fake_exchange import ManualClock

SERVER_MINUTE = 28_000_000  # a server minute number, about 2023-03-28
SECOND_15 = 15_000


class Sleeper:
    """The budget's sleep: records each wait and moves the manual clock by it."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sleeps: list[float] = []
        self.hook: Callable[[float], None] | None = None

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.hook is not None:
            self.hook(seconds)
        self.clock.advance(seconds)


def budget_at(limit: int, *, into_minute_ms: int = SECOND_15) -> tuple[WeightBudget, ManualClock, Sleeper]:
    """A budget whose server clock stands ``into_minute_ms`` into a server minute (monotonic 0 there)."""
    clock = ManualClock(0.0)
    sleeper = Sleeper(clock)
    offset = SERVER_MINUTE * MINUTE + into_minute_ms
    return WeightBudget(limit, clock=clock, sleep=sleeper, server_offset_ms=lambda: offset), clock, sleeper


def spend(budget: WeightBudget, weight: int, header: str | None = None) -> Ticket:
    ticket = budget.acquire(weight)
    budget.settle(ticket, header)
    return ticket


# -- minutes of the server's clock ----------------------------------------------------------------


def test_the_sixth_request_of_weight_two_waits_for_the_next_server_minute_at_limit_ten() -> None:
    budget, _, sleeper = budget_at(10)

    for n in range(1, 6):
        spend(budget, 2, str(2 * n))
    assert sleeper.sleeps == []
    assert (budget.used, budget.left()) == (10, 0)

    spend(budget, 2)

    assert sleeper.sleeps == [45.0]  # the server clock stood 15 s into its minute
    assert budget.waited_seconds == 45.0
    assert budget.used == 2


def test_the_minute_is_the_servers_not_ours() -> None:
    """With the server 50 s into its minute, a full budget frees up 10 s later whatever our clock says."""
    budget, _, sleeper = budget_at(4, into_minute_ms=50_000)
    spend(budget, 4)
    spend(budget, 4)
    assert sleeper.sleeps == [pytest.approx(10.0)]


def test_a_long_wait_is_told_with_its_reason() -> None:
    budget, _, _ = budget_at(2)
    spend(budget, 2)
    heard: list[tuple[float, str]] = []
    budget.acquire(2, lambda seconds, why: heard.append((seconds, why)))
    assert heard == [(45.0, "the weight budget")]


def test_a_request_heavier_than_the_limit_still_goes_in_an_empty_minute() -> None:
    budget, _, sleeper = budget_at(1)
    spend(budget, 20)
    assert sleeper.sleeps == []
    assert budget.used == 20


def test_requests_in_flight_at_a_new_minute_count_in_it() -> None:
    budget, clock, _ = budget_at(10)
    in_flight = budget.acquire(3)
    spend(budget, 2)
    clock.advance(60)
    assert budget.used == 3
    assert budget.in_flight == 3
    budget.settle(in_flight, "3")  # settled in a later minute: its header says nothing of this one
    assert (budget.used, budget.in_flight) == (3, 0)


# -- the server's count ---------------------------------------------------------------------------


def test_the_servers_count_raises_ours() -> None:
    """Another client on the same IP spent 5,990: we are left 10, not 6,000 - 2."""
    budget, _, sleeper = budget_at(6000)
    spend(budget, 2, "5990")
    assert (budget.used, budget.left()) == (5990, 10)
    spend(budget, 2, "5992")
    spend(budget, 2, "5994")
    spend(budget, 2, "5996")
    spend(budget, 2, "5998")
    spend(budget, 2, "6000")
    assert sleeper.sleeps == []
    spend(budget, 2)
    assert sleeper.sleeps == [45.0]


def test_the_servers_count_never_lowers_ours_and_counts_what_is_still_in_flight() -> None:
    budget, _, _ = budget_at(6000)
    for _ in range(5):
        spend(budget, 2)
    waiting = budget.acquire(5)
    spend(budget, 2, "4")  # the server has not seen all of ours yet
    assert budget.used == 17
    spend(budget, 2, "100")
    assert budget.used == 100 + 5  # the server's count plus what it has not counted yet
    budget.settle(waiting, "not a number")
    assert (budget.used, budget.in_flight) == (105, 0)


# -- settling -------------------------------------------------------------------------------------


def test_a_request_never_sent_gives_its_weight_back() -> None:
    budget, _, _ = budget_at(10)
    spend(budget, 4, "4")
    ticket = budget.acquire(6)
    assert (budget.used, budget.in_flight, budget.left()) == (10, 6, 0)

    budget.settle(ticket, sent=False)

    assert (budget.used, budget.in_flight, budget.left()) == (4, 0, 6)
    assert ticket.settled


def test_a_ticket_is_settled_once() -> None:
    budget, _, _ = budget_at(10)
    ticket = budget.acquire(4)
    budget.settle(ticket, sent=False)
    budget.settle(ticket, sent=False)
    budget.settle(ticket, "9")
    assert (budget.used, budget.in_flight) == (0, 0)


def test_five_hundred_refused_requests_leave_nothing_in_flight() -> None:
    """Issue 17: weight of refused requests was never settled and filled every later minute."""
    budget, clock, _ = budget_at(6000)
    for _ in range(500):
        budget.settle(budget.acquire(2), sent=False)
    assert (budget.in_flight, budget.used) == (0, 0)
    clock.advance(60)
    assert budget.used == 0


# -- 429 ------------------------------------------------------------------------------------------


def test_a_429_pauses_everyone_for_its_retry_after() -> None:
    budget, _, sleeper = budget_at(6000)
    assert budget.throttled(7.5) == 7.5
    assert budget.paused() and budget.throttles == 1
    heard: list[tuple[float, str]] = []

    spend(budget, 2, "2")

    assert sleeper.sleeps == [7.5]
    assert not budget.paused()
    budget.throttled(3)
    budget.acquire(1, lambda seconds, why: heard.append((seconds, why)))
    assert heard == [(3.0, "a 429's Retry-After")]


def test_a_429_without_retry_after_pauses_to_the_next_server_minute() -> None:
    budget, _, sleeper = budget_at(6000)
    assert budget.throttled(None) == pytest.approx(45.0)
    spend(budget, 1)
    assert sleeper.sleeps == [pytest.approx(45.0)]


def test_every_worker_waits_out_the_pause() -> None:
    budget, _, sleeper = budget_at(6000)
    budget.throttled(10)
    stop = threading.Event()
    waits: list[float] = []
    lock = threading.Lock()

    def hook(seconds: float) -> None:
        with lock:
            waits.append(seconds)
        stop.wait(10)
        raise RuntimeError("the run stopped")  # as RunStop.sleep raises Cancelled

    sleeper.hook = hook
    granted: list[Ticket] = []

    def worker() -> None:
        with contextlib.suppress(RuntimeError):
            granted.append(budget.acquire(2))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(2000):
        with lock:
            if len(waits) == 3:
                break
        threading.Event().wait(0.005)
    stop.set()
    for thread in threads:
        thread.join(10)

    assert waits == [10.0, 10.0, 10.0]  # every worker held for the whole Retry-After
    assert granted == [] and budget.in_flight == 0


def test_after_a_429_one_request_goes_alone_until_a_header_says_what_is_left() -> None:
    budget, _, sleeper = budget_at(6000)
    budget.throttled(1)
    probe = budget.acquire(2)
    assert sleeper.sleeps == [1.0]
    polls: list[float] = []

    def answer_the_probe(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            budget.settle(probe, None)  # the probe failed: no header, so the next one is alone again
        if len(polls) == 6:
            budget.settle(second, "40")

    sleeper.hook = answer_the_probe
    second = budget.acquire(2)
    assert polls == [PROBE_POLL_SECONDS] * 3
    third = budget.acquire(2)
    assert polls == [PROBE_POLL_SECONDS] * 6
    fourth = budget.acquire(2)  # the header said 40 of 6,000 is used: no longer alone
    assert polls == [PROBE_POLL_SECONDS] * 6
    assert budget.in_flight == 4 and not third.settled and not fourth.settled


def test_a_second_429_within_a_minute_halves_the_share_never_below_an_eighth() -> None:
    budget, clock, _ = budget_at(6000)
    budget.throttled(1)
    assert budget.allowed == 6000
    clock.advance(30)
    budget.throttled(1)
    assert budget.allowed == 3000
    for expected in (1500, 750, 750, 750):
        clock.advance(5)
        budget.throttled(1)
        assert budget.allowed == expected
    assert 6000 * MIN_SHARE == 750


def test_429s_more_than_a_minute_apart_do_not_halve_the_share() -> None:
    budget, clock, _ = budget_at(6000)
    budget.throttled(1)
    clock.advance(61)
    budget.throttled(1)
    assert budget.allowed == 6000


def test_the_share_recovers_by_a_quarter_per_quiet_minute() -> None:
    budget, clock, _ = budget_at(6000, into_minute_ms=0)
    budget.throttled(1)
    clock.advance(1)
    budget.throttled(1)
    clock.advance(1)
    budget.throttled(1)
    assert budget.allowed == 1500
    clock.advance(60)  # the next minute began 2 s after a 429: not a quiet one yet
    assert budget.left() == 1500
    seen = []
    for _ in range(8):
        clock.advance(60)
        seen.append(budget.left())
    share = 0.25
    expected = []
    for _ in range(8):
        share = min(1.0, share * RECOVERY)
        expected.append(max(1, int(6000 * share)))
    assert seen == expected
    assert seen[-1] == 6000 and seen[0] == 1875


def test_quiet_minutes_with_no_request_count_too() -> None:
    """An idle run (a long Retry-After, a wait on the database) recovers as much as a busy one."""
    budget, clock, _ = budget_at(6000, into_minute_ms=0)
    budget.throttled(1)
    clock.advance(1)
    budget.throttled(1)
    assert budget.allowed == 3000
    clock.advance(60 + 3 * 60)  # three whole quiet minutes pass without a look at the budget
    assert budget.left() == int(6000 * 0.5 * RECOVERY**3)


def test_a_429_in_a_recovering_minute_stops_the_recovery() -> None:
    budget, clock, _ = budget_at(6000, into_minute_ms=0)
    budget.throttled(1)
    clock.advance(1)
    budget.throttled(1)
    clock.advance(120)
    assert budget.left() == 3750
    clock.advance(30)
    budget.throttled(1)  # the first 429 in over a minute: no halving, but no quiet minute either
    clock.advance(30)
    assert budget.left() == 3750
    clock.advance(60)
    assert budget.left() == int(6000 * 0.5 * RECOVERY**2)
