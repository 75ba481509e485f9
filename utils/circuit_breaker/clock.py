"""Time that cannot lie: wall-clock seconds that advance with the monotonic clock and never step back."""

from __future__ import annotations

from collections.abc import Callable

WALL_SAMPLE_INTERVAL = 1.0
"""Seconds of monotonic time between two looks at the wall clock (each costs as much as a monotonic read)."""


class Timeline:
    """``monotonic() + offset``, where the offset is the largest ``wall() - monotonic()`` seen so far.

    Inside a process every timeout therefore runs on the monotonic clock: a wall clock stepped back (NTP,
    an operator) is ignored, one stepped forward is followed within WALL_SAMPLE_INTERVAL. The values are
    still wall-clock epoch seconds, so other processes can read the times a breaker stores.
    """

    __slots__ = ("_next_sample", "_offset", "_wall", "monotonic")

    def __init__(self, monotonic: Callable[[], float], wall: Callable[[], float]) -> None:
        self.monotonic = monotonic
        self._wall = wall
        mono = monotonic()
        self._offset = wall() - mono
        self._next_sample = mono + WALL_SAMPLE_INTERVAL

    def now(self) -> float:
        """Monotonic seconds shown as epoch seconds; the wall clock is looked at once a second at most."""
        mono = self.monotonic()
        if mono >= self._next_sample:
            offset = self._wall() - mono
            if offset > self._offset:
                self._offset = offset
            self._next_sample = mono + WALL_SAMPLE_INTERVAL
        return mono + self._offset

    def monotonic_at(self, t: float) -> float:
        """The monotonic reading at which this timeline shows ``t`` (if the wall clock does not jump)."""
        return t - self._offset
