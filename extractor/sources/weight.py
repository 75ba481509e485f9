"""The request weight one run may spend per server minute on one exchange host, shared by its threads.

A request is sent only when its weight fits in the current minute by our own count, raised to what the
server's ``X-MBX-USED-WEIGHT-1M`` says (plus our requests in flight), so other clients on the same IP
are respected too. A 429 stops every worker until its ``Retry-After`` has passed; the next request then
goes alone, and more follow only as the server's count says there is room. A second 429 within a
minute halves the share of the limit this run takes; each quiet minute gives a quarter of it back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from extractor.intervals import MINUTE

MIN_SHARE = 1 / 8
RECOVERY = 1.25
PROBE_POLL_SECONDS = 0.05


@dataclass(slots=True)
class Ticket:
    """The weight one request took from the budget; settled exactly once, whatever became of it."""

    weight: int
    minute: int
    settled: bool = False


class WeightBudget:
    """REQUEST_WEIGHT per server minute for one (exchange host, source address)."""

    def __init__(
        self,
        limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        server_offset_ms: Callable[[], int] = lambda: 0,
    ) -> None:
        self.limit = limit
        self.waited_seconds = 0.0
        self.throttles = 0
        self._clock = clock
        self._sleep = sleep
        self.server_offset_ms = server_offset_ms
        self._lock = threading.Lock()
        self._minute = -1
        self._used = 0
        self._in_flight = 0
        self._paused_until = 0.0
        self._alone = False
        self._share = 1.0
        self._last_throttle: float | None = None
        self._quiet_since_minute = -1

    # -- what others read -----------------------------------------------------------------------------

    @property
    def used(self) -> int:
        """Weight used in the current server minute, as last known."""
        with self._lock:
            self._roll()
            return self._used

    @property
    def in_flight(self) -> int:
        """Weight of requests acquired and not yet settled."""
        with self._lock:
            return self._in_flight

    @property
    def allowed(self) -> int:
        """The weight this run may use in a minute: the limit times its current share."""
        with self._lock:
            return self._allowed()

    def left(self) -> int:
        """Weight that may still be spent in the current server minute."""
        with self._lock:
            self._roll()
            return max(0, self._allowed() - self._used)

    def paused(self) -> bool:
        """True while a 429's Retry-After runs: nothing may be sent."""
        return self._clock() < self._paused_until

    # -- the protocol every request follows -----------------------------------------------------------

    def acquire(self, weight: int, on_wait: Callable[[float, str], None] | None = None) -> Ticket:
        """Wait until ``weight`` fits in the current server minute; ``on_wait(seconds, why)`` hears waits."""
        while True:
            with self._lock:
                now = self._clock()
                if now < self._paused_until:
                    wait, why = self._paused_until - now, "a 429's Retry-After"
                else:
                    minute, server_ms = self._roll()
                    if self._alone and self._in_flight:
                        wait, why = PROBE_POLL_SECONDS, ""
                    elif (self._used == 0 and self._in_flight == 0) or self._used + weight <= self._allowed():
                        self._used += weight
                        self._in_flight += weight
                        return Ticket(weight, minute)
                    else:
                        wait, why = ((minute + 1) * MINUTE - server_ms) / 1000, "the weight budget"
            if on_wait is not None and why:
                on_wait(wait, why)
            self._sleep(wait)
            with self._lock:
                self.waited_seconds += wait

    def settle(self, ticket: Ticket, used_header: str | None = None, *, sent: bool = True) -> None:
        """Book the end of a request: answered (with the server's count), failed, or never sent."""
        with self._lock:
            if ticket.settled:
                return
            ticket.settled = True
            minute, _ = self._roll()
            self._in_flight = max(0, self._in_flight - ticket.weight)
            if ticket.minute != minute:
                return  # sent in a minute that is over; it says nothing about this one
            if not sent:
                self._used = max(self._in_flight, self._used - ticket.weight)
                return
            try:
                server_used = int(used_header) if used_header is not None else None
            except ValueError:
                server_used = None
            if server_used is not None:
                self._used = max(self._used, server_used + self._in_flight)
                self._alone = False

    def throttled(self, retry_after: float | None) -> float:
        """A 429 arrived: pause everyone for ``retry_after`` (or to the next minute); returns the pause."""
        with self._lock:
            now = self._clock()
            minute, server_ms = self._roll()
            pause = retry_after if retry_after is not None else ((minute + 1) * MINUTE - server_ms) / 1000
            self._paused_until = max(self._paused_until, now + pause)
            if self._last_throttle is not None and now - self._last_throttle < 60:
                self._share = max(MIN_SHARE, self._share / 2)
            self._last_throttle = now
            self._quiet_since_minute = minute + 1
            self._alone = True
            self.throttles += 1
            return pause

    # -- under the lock -------------------------------------------------------------------------------

    def _allowed(self) -> int:
        return max(1, int(self.limit * self._share))

    def _roll(self) -> tuple[int, int]:
        server_ms = int(self._clock() * 1000) + self.server_offset_ms()
        minute = server_ms // MINUTE
        if minute != self._minute:
            self._minute = minute
            # Requests still in flight will most likely be counted by the server in the new minute.
            self._used = self._in_flight
            if self._share < 1 and minute > self._quiet_since_minute:
                # Every whole minute since the last 429 was quiet, looked at or not (64 recover any share).
                quiet = min(minute - self._quiet_since_minute, 64)
                self._share = min(1.0, self._share * RECOVERY**quiet)
                self._quiet_since_minute = minute
        return minute, server_ms
