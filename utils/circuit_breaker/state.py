"""The state machine, as one pure function: ``step(snapshot, event, policy, now) -> (snapshot, verdict)``.

Every state change of a breaker is a row of this table and happens here, nowhere else:

=========  ==============================================  =============================================
state      event                                           next
=========  ==============================================  =============================================
CLOSED     admit                                           CLOSED, admitted
CLOSED     success                                         CLOSED, failure_count = 0
CLOSED     failure below the threshold (or the rate)       CLOSED, failure_count + 1
CLOSED     failure reaching it                             OPEN, its timeout runs from this failure
OPEN       admit before the next trial is due              OPEN, refused until then
OPEN       admit once it is due                            HALF_OPEN, admitted with a trial permit
HALF_OPEN  admit while a permit is free                    HALF_OPEN, admitted with a trial permit
HALF_OPEN  admit while every permit is out                 HALF_OPEN, refused (retry at once)
HALF_OPEN  success (the success_threshold-th)              CLOSED, failure_count = 0
HALF_OPEN  failure                                         OPEN, a fresh timeout
any        outcome of a call admitted in another episode   unchanged: it can neither open nor close
any        uncounted exception                             its trial permit (if any) is returned
any        reset                                           CLOSED, everything forgotten
any        open_until(t)                                   OPEN until t (never shortened)
any        assignment of state, failure_count, last time   as assigned
=========  ==============================================  =============================================

An *episode* is the stretch between two transitions; a call carries the episode it was admitted in, so a
late outcome of an earlier episode is recognised and ignored. Every change bumps ``version``; stores only
accept a snapshot built on the version they hold. Times are seconds on the breaker's timeline (wall-clock
epoch seconds that never step back, see ``clock.Timeline``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import NamedTuple, cast


class CircuitState(StrEnum):
    """Where a breaker stands: a plain ``str`` Enum, equal to (and hashing like) its upper-case value."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"

    @classmethod
    def parse(cls, text: str) -> CircuitState:
        """Read a state a person typed: any case, and ``half-open`` or ``half open`` for ``HALF_OPEN``."""
        member = cls.__members__.get(re.sub(r"[\s-]+", "_", str(text).strip().upper()))
        if member is None:
            raise ValueError(f"{text!r} is not a circuit state (CLOSED, OPEN or HALF_OPEN)")
        return member


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

MIN_TRIAL_LEASE = 60.0
"""A trial permit not back within max(recovery_timeout, this) seconds is presumed lost with its process."""


class Permit(NamedTuple):
    """One trial call in flight: ``number`` is the version that granted it, unique within the store."""

    number: int
    granted_at: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What a store keeps of one breaker. Version 0 means "not stored": a fresh, closed breaker."""

    name: str
    state: CircuitState = CLOSED
    failure_count: int = 0
    last_failure_time: float | None = None
    opened_at: float | None = None
    open_until: float | None = None
    permits: tuple[Permit, ...] = ()
    trial_successes: int = 0
    episode: int = 0
    version: int = 0
    failure_threshold: int = 5
    recovery_timeout: float = 60.0
    reason: str | None = None

    @property
    def retry_at(self) -> float | None:
        """When an open breaker lets its next trial in, by the timeout this snapshot was written with."""
        return next_trial_at(self, self.recovery_timeout) if self.state is OPEN else None


def next_trial_at(snapshot: BreakerSnapshot, recovery_timeout: float) -> float:
    """An OPEN breaker's next trial: the server-given end if forced, else a timeout after the last failure."""
    if snapshot.open_until is not None:
        return snapshot.open_until
    if snapshot.last_failure_time is None:
        return -math.inf
    return snapshot.last_failure_time + recovery_timeout


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings the transitions depend on; replaced whole when a setter changes one."""

    failure_threshold: int = 5
    recovery_timeout: float = 60.0
    success_threshold: int = 1
    half_open_max_calls: int = 1
    rate_mode: bool = False


# -- events and verdicts (plain slotted classes: one is built per outcome, so they must be cheap) ------


@dataclass(slots=True)
class Admit:
    """A call asks to run."""


@dataclass(slots=True)
class Succeeded:
    episode: int
    permit: int | None = None


@dataclass(slots=True)
class Failed:
    """A counted failure; ``rate_tripped`` is the failure-rate window's verdict (used in rate mode only)."""

    episode: int
    permit: int | None = None
    rate_tripped: bool = False
    reason: str | None = None


@dataclass(slots=True)
class Released:
    """An uncounted exception, a closed generator or a dropped coroutine: only the permit comes back."""

    episode: int
    permit: int


@dataclass(slots=True)
class Reset:
    """Forget everything: CLOSED, in a new episode, as a newer version."""


@dataclass(slots=True)
class ForceOpen:
    until: float
    reason: str | None = None


@dataclass(slots=True)
class Assign:
    """An assignment to ``state`` or ``failure_count``; a ``None`` field stays as it is."""

    state: CircuitState | None = None
    failure_count: int | None = None


@dataclass(slots=True)
class Stamp:
    """An assignment to ``last_failure_time``; a time ahead of now is taken as now."""

    last_failure_time: float | None


Event = Admit | Succeeded | Failed | Released | Reset | ForceOpen | Assign | Stamp


@dataclass(slots=True)
class Admitted:
    episode: int
    permit: int | None


@dataclass(slots=True)
class Refused:
    retry_at: float


Verdict = Admitted | Refused | None
Outcome = tuple[BreakerSnapshot, Verdict]
Transition = tuple[CircuitState, CircuitState]


# -- the transition function: one small rule per event -------------------------------------------------


def step(s: BreakerSnapshot, event: Event, p: Policy, now: float) -> Outcome:
    """The one place a breaker's state changes; returns ``s`` itself when nothing changes."""
    rule = cast(Callable[[BreakerSnapshot, Event, Policy, float], Outcome], _RULES[type(event)])
    return rule(s, event, p, now)


def _admit(s: BreakerSnapshot, event: Admit, p: Policy, now: float) -> Outcome:
    if s.state is CLOSED:
        return s, Admitted(s.episode, None)
    moving = s.state is OPEN
    if moving:
        due = next_trial_at(s, p.recovery_timeout)
        if now < due:
            return s, Refused(due)
    lease = max(p.recovery_timeout, MIN_TRIAL_LEASE)
    held = () if moving else tuple(k for k in s.permits if now - k.granted_at < lease)
    if len(held) >= p.half_open_max_calls:
        return (s if held == s.permits else _write(s, p, permits=held)), Refused(now)
    permit = Permit(s.version + 1, now)
    granted = _move(s, p, HALF_OPEN, permits=(permit,)) if moving else _write(s, p, permits=(*held, permit))
    return granted, Admitted(granted.episode, permit.number)


def _succeeded(s: BreakerSnapshot, event: Succeeded, p: Policy, now: float) -> Outcome:
    if event.episode != s.episode:
        return s, None
    if s.state is not HALF_OPEN:
        return (_write(s, p, failure_count=0) if s.failure_count else s), None
    if s.trial_successes + 1 >= p.success_threshold:
        return _move(s, p, CLOSED, failure_count=0), None
    permits = _without(s.permits, event.permit)
    return _write(s, p, failure_count=0, permits=permits, trial_successes=s.trial_successes + 1), None


def _failed(s: BreakerSnapshot, event: Failed, p: Policy, now: float) -> Outcome:
    if event.episode != s.episode:
        return s, None
    count = s.failure_count + 1
    trips = event.rate_tripped if p.rate_mode else count >= p.failure_threshold
    if s.state is HALF_OPEN or (s.state is CLOSED and trips):
        fields = {"last_failure_time": now, "opened_at": now, "reason": event.reason}
        return _move(s, p, OPEN, failure_count=count, **fields), None
    return _write(s, p, failure_count=count, last_failure_time=now), None


def _released(s: BreakerSnapshot, event: Released, p: Policy, now: float) -> Outcome:
    if event.episode != s.episode or all(k.number != event.permit for k in s.permits):
        return s, None
    return _write(s, p, permits=_without(s.permits, event.permit)), None


def _reset(s: BreakerSnapshot, event: Reset, p: Policy, now: float) -> Outcome:
    return _move(s, p, CLOSED, failure_count=0, last_failure_time=None), None


def _force_open(s: BreakerSnapshot, event: ForceOpen, p: Policy, now: float) -> Outcome:
    if s.state is OPEN:
        if event.until <= next_trial_at(s, p.recovery_timeout):
            return s, None
        return _write(s, p, open_until=event.until, reason=event.reason), None
    if event.until <= now:
        return s, None
    return _move(s, p, OPEN, opened_at=now, open_until=event.until, reason=event.reason), None


def _assign(s: BreakerSnapshot, event: Assign, p: Policy, now: float) -> Outcome:
    fields: dict[str, object] = {}
    if event.failure_count is not None and event.failure_count != s.failure_count:
        fields["failure_count"] = event.failure_count
    if event.state is not None and event.state is not s.state:
        if event.state is OPEN:
            fields.update(last_failure_time=now, opened_at=now)
        return _move(s, p, event.state, **fields), None
    return (_write(s, p, **fields) if fields else s), None


def _stamp(s: BreakerSnapshot, event: Stamp, p: Policy, now: float) -> Outcome:
    stamped = (
        event.last_failure_time if event.last_failure_time is None else min(event.last_failure_time, now)
    )
    return (s if stamped == s.last_failure_time else _write(s, p, last_failure_time=stamped)), None


_RULES = {
    Admit: _admit,
    Succeeded: _succeeded,
    Failed: _failed,
    Released: _released,
    Reset: _reset,
    ForceOpen: _force_open,
    Assign: _assign,
    Stamp: _stamp,
}


def _move(s: BreakerSnapshot, p: Policy, state: CircuitState, **fields: object) -> BreakerSnapshot:
    """A transition: a new episode, in which no trial is out and no trial has succeeded yet."""
    defaults: dict[str, object] = {"permits": (), "trial_successes": 0, "open_until": None}
    if state is CLOSED:
        defaults.update(reason=None, opened_at=None)
    return _write(s, p, **{**defaults, **fields, "state": state, "episode": s.version + 1})


def _write(s: BreakerSnapshot, p: Policy, **fields: object) -> BreakerSnapshot:
    """The next version of ``s``; it carries the writer's thresholds so a listing can show them."""
    return replace(
        s,
        version=s.version + 1,
        failure_threshold=p.failure_threshold,
        recovery_timeout=p.recovery_timeout,
        **fields,  # type: ignore[arg-type]
    )


def _without(permits: tuple[Permit, ...], number: int | None) -> tuple[Permit, ...]:
    return tuple(k for k in permits if k.number != number)


def trusted(s: BreakerSnapshot, now: float) -> BreakerSnapshot:
    """``s`` with every past time that is not finite or lies ahead of ``now`` taken as now.

    A forced opening keeps no more than the length it was given, so a clock that stepped back after it was
    written cannot stretch it. Returns ``s`` itself when every time was sound, else its next version.
    """

    def past(t: float | None) -> float | None:
        return now if t is not None and not (math.isfinite(t) and t <= now) else t

    last_failure = past(s.last_failure_time)
    if s.state is OPEN and last_failure is None and s.open_until is None:
        last_failure = now
    opened_at = past(s.opened_at)
    open_until = s.open_until
    if open_until is not None:
        given = open_until - s.opened_at if s.opened_at is not None else math.inf
        if not math.isfinite(open_until):
            open_until = now
        elif open_until - now > given:
            open_until = now + max(0.0, given)
    permits = tuple(Permit(k.number, now) if past(k.granted_at) != k.granted_at else k for k in s.permits)
    unchanged = (
        last_failure == s.last_failure_time
        and opened_at == s.opened_at
        and open_until == s.open_until
        and permits == s.permits
    )
    if unchanged:
        return s
    return replace(
        s,
        last_failure_time=last_failure,
        opened_at=opened_at,
        open_until=open_until,
        permits=permits,
        version=s.version + 1,
    )
