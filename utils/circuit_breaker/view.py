"""A breaker's view of its store: the snapshot it acts on, kept current and changed only through ``step``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from utils.circuit_breaker.state import BreakerSnapshot, Event, Policy, Transition, Verdict, step, trusted
from utils.circuit_breaker.stores import CircuitBreakerStateStore

_log = logging.getLogger("utils.circuit_breaker")


class StoreView:
    """The snapshot of one breaker that its store held when last read or written.

    ``stale()`` compares the store's stamp (one ``stat`` for a file) with the one last read, so a breaker
    can reload before a call whenever another breaker or process has written since. ``apply()`` steps the
    snapshot and writes the result by compare-and-swap; when another writer got there first it reloads and
    steps again, so every decision is made on the newest state. Stored times that cannot be true are
    corrected on load, in the store too. The caller holds its lock around ``reload`` and ``apply``, and
    hears of every new snapshot through ``adopt``.
    """

    def __init__(
        self,
        name: str,
        store: CircuitBreakerStateStore,
        now: Callable[[], float],
        adopt: Callable[[BreakerSnapshot], None],
    ) -> None:
        self.name = name
        self._store = store
        self._stamp = store.stamp
        self._now = now
        self._adopt = adopt
        self._seen: Hashable = None
        self._unsaved = False
        self._distrusted = False

    def stale(self) -> bool:
        """True when the store may hold something newer than the snapshot last read."""
        return self._stamp() != self._seen

    def reload(self) -> BreakerSnapshot:
        """Adopt what the store holds now (nothing stored: a fresh, closed breaker)."""
        while True:
            stamp = self._stamp()
            stored = self._store.load(self.name) or BreakerSnapshot(self.name)
            sound = trusted(stored, self._now())
            if sound is stored or self._save(sound, stored.version):
                break
        if sound is not stored and not self._distrusted:
            self._distrusted = True
            _log.warning(
                "circuit breaker %r: stored times were not finite or lay ahead of now; taken as now",
                self.name,
            )
        self._seen = stamp
        self._adopt(sound)
        return sound

    def apply(
        self, base: BreakerSnapshot, event: Event, policy: Policy, now: float
    ) -> tuple[Verdict, Transition | None]:
        """Step ``base`` (the snapshot last adopted) and write the result; returns the verdict and the
        transition it made, if any."""
        while True:
            new, verdict = step(base, event, policy, now)
            if new is base:
                return verdict, None
            if self._save(new, base.version):
                self._adopt(new)
                return verdict, (None if new.state is base.state else (base.state, new.state))
            base = self.reload()

    def _save(self, snapshot: BreakerSnapshot, expected_version: int) -> bool:
        """Compare-and-swap into the store; if it cannot be written, this process keeps its own view."""
        try:
            saved = self._store.compare_and_swap(snapshot, expected_version)
        except OSError as exc:
            if not self._unsaved:
                _log.warning("circuit breaker %r cannot save its state: %s", self.name, exc)
            self._unsaved = True
            return True
        self._unsaved = False
        return saved
