"""The mechanism under ``CircuitBreaker``: admission and settlement, the two steps of every call.

Both read the breaker's view of its store, which a ``stamp()`` per call keeps current; both change it only
through ``state.step``, written back with a compare-and-swap (``view.StoreView``). The lock guards the view
and the metrics, never the guarded call. A closed breaker admits without the lock or a step, and a plain
success with nothing to reset books without a step: in both cases the table's row changes nothing.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Generic, TypeVar, cast, overload

from utils.circuit_breaker.clock import Timeline
from utils.circuit_breaker.config import ExpectedException
from utils.circuit_breaker.errors import CircuitBreakerError, SlowCallError
from utils.circuit_breaker.guards import Entry
from utils.circuit_breaker.listeners import CircuitBreakerListener, CircuitBreakerMetrics, tell
from utils.circuit_breaker.state import (
    CLOSED,
    OPEN,
    Admit,
    Admitted,
    BreakerSnapshot,
    Event,
    Failed,
    Policy,
    Refused,
    Released,
    Succeeded,
    Transition,
    Verdict,
    next_trial_at,
)
from utils.circuit_breaker.stores import CircuitBreakerStateStore, MemoryStateStore
from utils.circuit_breaker.view import StoreView
from utils.circuit_breaker.window import FailureRateWindow

T = TypeVar("T")

_ADMIT = Admit()
_NOT_REFUSED = (-math.inf, -math.inf)
REASON_LENGTH = 200
"""Characters of a failure (or of an ``open_until`` reason) kept in the store to explain an opening."""
_new_exception = BaseException.__new__  # fills .args without running __init__: a third of a refusal's cost


class PolicySetting(Generic[T]):
    """A breaker setting kept in its Policy. The constructor sets it like any later assignment, so the
    setter rejects exactly what the constructor rejects."""

    def __init__(self, check: Callable[[str, Any], T], doc: str) -> None:
        self._check = check
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, breaker: None, owner: type) -> PolicySetting[T]: ...

    @overload
    def __get__(self, breaker: Gate, owner: type) -> T: ...

    def __get__(self, breaker: Gate | None, owner: type) -> T | PolicySetting[T]:
        return self if breaker is None else cast(T, getattr(breaker._policy, self._name))

    def __set__(self, breaker: Gate, value: T) -> None:
        breaker._retune(**{self._name: self._check(self._name, value)})


class Gate:
    """Admits calls and books their outcomes for one breaker; ``CircuitBreaker`` is its public face."""

    def __init__(
        self,
        name: str,
        *,
        expected_exception: ExpectedException,
        rate_mode: bool,
        window: FailureRateWindow | None,
        slow_call_seconds: float | None,
        enabled: bool,
        listeners: Iterable[CircuitBreakerListener],
        state_store: CircuitBreakerStateStore | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        timer: Callable[[], float],
    ) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._policy = Policy(rate_mode=rate_mode)
        self._expected = expected_exception
        self._window = window
        self._slow = slow_call_seconds
        self._enabled = enabled
        self._timeline = Timeline(clock, wall_clock)
        self._now = self._timeline.now
        self._monotonic = clock
        self._timer = timer
        self.metrics = CircuitBreakerMetrics(self._now, lock=self._lock)
        self._listeners = tuple(listeners)
        self._timed = bool(self._listeners) or slow_call_seconds is not None
        store = MemoryStateStore() if state_store is None else state_store
        self._store_view = StoreView(name, store, self._now, self._set_view)
        self._watch = None if state_store is None else self._store_view.stale  # a private store: no one else
        self._lapsed: deque[Entry] = deque()
        self._set_view(BreakerSnapshot(name))
        with self._lock:
            self._store_view.reload()

    # -- admission and settlement: the two steps of every call --------------------------------------------

    def _admit(self) -> Entry | None:
        """Let a call in: its entry, or None when refused (the caller raises ``self._refusal()``)."""
        if self._watch is not None and self._watch():
            self._refresh()
        entry = self._free_entry
        if entry is not None:
            return entry
        if self._monotonic() < self._refused[0]:  # never while closed or disabled: see _set_view
            return None
        view = self._view
        if view.state is CLOSED or not self._enabled:
            return Entry(view.episode, None, self._timer())
        with self._lock:
            if self._lapsed:
                self._drain_lapsed()
            entry, moved = self._decide_admission()
        if moved is not None:
            self._announce(moved)
        return entry

    def _decide_admission(self) -> tuple[Entry | None, Transition | None]:
        """Step an admission: the entry of an admitted call, or None when refused.

        A refusal is remembered until its retry time: step is pure, and for the same view and policy it
        would give the same answer until then (a new view or policy forgets it, see _set_view).
        """
        now = self._now()
        verdict, moved = self._apply(_ADMIT, now)
        if isinstance(verdict, Admitted):
            started = self._timer() if self._timed else None
            return Entry(verdict.episode, verdict.permit, started), moved
        assert isinstance(verdict, Refused)
        self._refused = (self._timeline.monotonic_at(verdict.retry_at), verdict.retry_at)
        return None, moved

    def _refusal(self) -> CircuitBreakerError:
        """Count a refusal and give its error: a fresh one each time, raised by the caller, not here, as
        every frame a traceback passes through is most of a refusal's cost."""
        monotonic = self._monotonic()
        until, retry_at = self._refused
        lock = self._lock
        lock.acquire()  # not `with`: this is the refusal path, and `with` costs twice as much
        try:
            self.metrics.rejection_count += 1
        finally:
            lock.release()
        for listener in self._listeners:
            tell(listener.rejection, self)
        retry_after = until - monotonic
        if retry_after < 0:  # the retry time passed, or the view changed, since the decision
            retry_after, retry_at = 0.0, self._now()
        reason = self._view.reason
        return _new_exception(CircuitBreakerError, self.name, retry_after, retry_at, reason)  # type: ignore[no-any-return]

    def _settle(self, entry: Entry, exc: BaseException | None, failed: bool | None = None) -> None:
        """Book how an admitted call ended: a success, a counted failure, or (any other exception) nothing.

        Listeners hear of the outcome first, then of the transition it made. Only the ``_on_*`` hooks pass
        ``failed``: they count an outcome without a call, so without an exception or a duration.
        """
        started = entry.started
        duration = None if started is None else self._timer() - started
        if failed is None:
            if exc is None:
                slow = self._slow
                if slow is not None and duration is not None and duration > slow:
                    exc = SlowCallError(duration, slow)
                failed = exc is not None
            elif isinstance(exc, self._expected):
                failed = True
            else:
                if entry.permit is not None:
                    with self._lock:
                        self._apply(Released(entry.episode, entry.permit), self._now())
                return
        moved = None
        lock = self._lock
        lock.acquire()  # not `with`: this is every call's path, and `with` costs twice as much
        try:
            if failed:
                self.metrics.failure_count += 1
            else:
                self.metrics.success_count += 1
            # a plain success while closed with no failures to forget: its row of the table changes nothing
            if self._enabled and (failed or entry.permit is not None or not self._quiet):
                moved = self._outcome_locked(entry, self._view, failed, exc)
        finally:
            lock.release()
        if duration is not None:
            for listener in self._listeners:
                if exc is None:
                    tell(listener.success, self, duration)
                else:
                    tell(listener.failure, self, exc, duration)
        if moved is not None:
            self._announce(moved)

    def _outcome_locked(
        self, entry: Entry, view: BreakerSnapshot, failed: bool, failure: BaseException | None
    ) -> Transition | None:
        now = self._now()
        tripped = False
        window = self._window
        if window is not None and view.state is CLOSED and entry.episode == view.episode:
            if window.episode != view.episode:
                window.restart(view.episode)
            tripped = window.record(failed, now)
        event: Event
        if not failed:
            event = Succeeded(entry.episode, entry.permit)
        else:
            reason = None if failure is None else short(f"{type(failure).__name__}: {failure}")
            event = Failed(entry.episode, entry.permit, tripped, reason)
        return self._apply(event, now)[1]

    def _lapse(self, entry: Entry) -> None:
        """A coroutine or generator dropped unfinished: its permit comes back now, or at the next call.

        Called from a finaliser, which may run while this thread holds the lock: never wait for it.
        """
        if entry.permit is None:
            return
        self._lapsed.append(entry)
        if self._lock.acquire(blocking=False):
            try:
                self._drain_lapsed()
            finally:
                self._lock.release()

    def _drain_lapsed(self) -> None:
        while self._lapsed:
            entry = self._lapsed.popleft()
            assert entry.permit is not None
            self._apply(Released(entry.episode, entry.permit), self._now())

    # -- the view of the store, under the lock ----------------------------------------------------------

    def _apply(self, event: Event, now: float) -> tuple[Verdict, Transition | None]:
        verdict, moved = self._store_view.apply(self._view, event, self._policy, now)
        if moved is not None:
            self.metrics.count_transition(*moved)
        return verdict, moved

    def _fresh(self) -> BreakerSnapshot:
        if self._watch is not None and self._watch():
            self._refresh()
        return self._view

    def _refresh(self) -> None:
        with self._lock:
            self._store_view.reload()

    def _set_view(self, view: BreakerSnapshot) -> None:
        """Take ``view`` as what the store holds, with what the hot paths read precomputed from it.

        ``_free_entry``: the entry of every call admitted without the lock or a step (closed or disabled,
        untimed); ``_quiet``: a plain success changes nothing; ``_refused``: see _decide_admission.
        """
        self._view = view
        self._refused = _NOT_REFUSED
        free = (view.state is CLOSED or not self._enabled) and not self._timed
        self._free_entry = Entry(view.episode, None, None) if free else None
        self._quiet = view.state is CLOSED and not view.failure_count and self._window is None

    def _change(self, event: Event) -> None:
        """An operation on the breaker itself (assignment, reset, open_until), based on the latest state."""
        self._fresh()
        with self._lock:
            moved = self._apply(event, self._now())[1]
        if moved is not None:
            self._announce(moved)

    def _retune(self, **settings: Any) -> None:
        with self._lock:
            self._policy = replace(self._policy, **settings)
            self._refused = _NOT_REFUSED

    # -- small readers --------------------------------------------------------------------------------

    def _due(self, view: BreakerSnapshot) -> bool:
        due = next_trial_at(view, self._policy.recovery_timeout)
        return view.state is OPEN and self._now() >= due

    def _announce(self, moved: Transition) -> None:
        for listener in self._listeners:
            tell(listener.state_change, self, *moved)


def short(text: str | None) -> str | None:
    """A reason cut to fit the store: enough to name the failure, never a whole response body."""
    return None if text is None else text[:REASON_LENGTH]
