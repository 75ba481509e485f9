"""Circuit breakers: stop calling a failing dependency, then let a few trial calls find out when it is back.

``CircuitBreaker`` guards a call (decorator, wrapper, ``with`` block or ``call``). ``failure_threshold``
consecutive counting failures open it; while open every call is refused at once with a fresh
``CircuitBreakerError``; ``recovery_timeout`` seconds after the last failure it turns half-open and admits
at most ``half_open_max_calls`` trial calls at a time; ``success_threshold`` trial successes close it and a
trial failure reopens it with a fresh timeout. A state store (memory or one JSON file) lets separate
processes, such as overlapping cron runs, share what a breaker has learnt.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import inspect
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import CoroutineType, TracebackType
from typing import Any, ParamSpec, TypeVar, cast

__all__ = [
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitBreakerConfigError",
    "CircuitBreakerError",
    "CircuitBreakerListener",
    "CircuitBreakerMetrics",
    "CircuitBreakerStateStore",
    "CircuitState",
    "JsonFileStateStore",
    "MemoryStateStore",
]

P = ParamSpec("P")
R = TypeVar("R")

_log = logging.getLogger(__name__)


def _find_current_span() -> Callable[[], Any] | None:
    """OpenTelemetry is optional: look it up once, so a process without it pays nothing per call."""
    try:
        trace = importlib.import_module("opentelemetry.trace")
    except ImportError:
        return None
    return cast(Callable[[], Any], trace.get_current_span)


_current_span = _find_current_span()


class _StateName(str):
    """A state's value: compares equal to any spelling of it, so ``"closed"`` and ``"CLOSED"`` both match."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.upper() == other.upper()
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.upper() != other.upper()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.upper())


class CircuitState(StrEnum):
    """Where a breaker stands; members and values compare equal to their names in any case."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"

    def __new__(cls, value: str) -> CircuitState:
        member = str.__new__(cls, value)
        member._value_ = _StateName(value)
        return member

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return str.upper(self) == other.upper()
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, str):
            return str.upper(self) != other.upper()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str.upper(self))

    @classmethod
    def _missing_(cls, value: object) -> CircuitState | None:
        if isinstance(value, str):
            return cls.__members__.get(re.sub(r"[\s-]", "_", value.strip().upper()))
        return None


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN


def _utc(epoch_seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_seconds))


class CircuitBreakerError(Exception):
    """Raised instead of calling while a breaker refuses calls; says when the next trial will be let in."""

    def __init__(self, breaker_name: str, retry_after: float, retry_at: float) -> None:
        super().__init__(breaker_name, retry_after, retry_at)

    @property
    def breaker_name(self) -> str:
        return cast(str, self.args[0])

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker lets a trial call in (0 when half-open and its trials are taken)."""
        return cast(float, self.args[1])

    @property
    def retry_at(self) -> float:
        """Wall-clock epoch seconds of the next trial."""
        return cast(float, self.args[2])

    def __str__(self) -> str:
        return (
            f"circuit breaker {self.breaker_name!r} is open: next trial in {self.retry_after:.1f} s "
            f"(at {_utc(self.retry_at)})"
        )


class CircuitBreakerConfigError(ValueError):
    """A breaker setting is unusable; names the variable and the value so the user can fix it."""

    def __init__(self, variable: str, value: str, reason: str) -> None:
        super().__init__(f"{variable}={value!r} {reason}")
        self.variable = variable
        self.value = value


class CircuitBreakerListener:
    """Hears what a breaker does; subclass and override what you need (every method is a no-op here)."""

    def state_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        """The breaker moved from ``old`` to ``new``."""

    def success(self, breaker: CircuitBreaker, duration: float) -> None:
        """A guarded call returned after ``duration`` seconds."""

    def failure(self, breaker: CircuitBreaker, exc: BaseException, duration: float) -> None:
        """A guarded call raised a counting exception after ``duration`` seconds."""

    def rejection(self, breaker: CircuitBreaker) -> None:
        """A call was refused without being made."""


class CircuitBreakerMetrics(CircuitBreakerListener):
    """Counts outcomes and keeps the transitions; every breaker carries one as ``breaker.metrics``."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.state_transitions: list[dict[str, Any]] = []
        self.failure_count = 0
        self.success_count = 0
        self.rejection_count = 0
        self._wall_clock = wall_clock

    @property
    def total_requests(self) -> int:
        """Calls that were made (rejections are not requests)."""
        return self.success_count + self.failure_count

    def record_state_transition(self, from_state: CircuitState | str, to_state: CircuitState | str) -> None:
        self.state_transitions.append(
            {
                "from_state": CircuitState(from_state).value,
                "to_state": CircuitState(to_state).value,
                "timestamp": self._wall_clock(),
            }
        )

    def record_failure(self) -> None:
        self.failure_count += 1

    def record_success(self) -> None:
        self.success_count += 1

    def record_rejection(self) -> None:
        self.rejection_count += 1

    def get_success_rate(self) -> float:
        total = self.total_requests
        return self.success_count / total if total else 0.0

    def state_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        self.record_state_transition(old, new)

    def success(self, breaker: CircuitBreaker, duration: float) -> None:
        self.record_success()

    def failure(self, breaker: CircuitBreaker, exc: BaseException, duration: float) -> None:
        self.record_failure()

    def rejection(self, breaker: CircuitBreaker) -> None:
        self.record_rejection()


@dataclass(frozen=True)
class BreakerSnapshot:
    """What a store keeps of one breaker; times are wall-clock epoch seconds, usable by other processes."""

    name: str
    state: CircuitState
    failure_count: int
    last_failure_time: float | None
    opened_at: float | None
    failure_threshold: int
    recovery_timeout: float


class CircuitBreakerStateStore(ABC):
    """Where breakers keep their state so that it outlives a process; keyed by breaker name."""

    @abstractmethod
    def load(self, name: str) -> BreakerSnapshot | None: ...

    @abstractmethod
    def save(self, snapshot: BreakerSnapshot) -> None: ...

    @abstractmethod
    def clear(self, name: str) -> None: ...

    @abstractmethod
    def load_all(self) -> dict[str, BreakerSnapshot]: ...


class MemoryStateStore(CircuitBreakerStateStore):
    """Shares state between breakers of one process (and makes the store contract testable)."""

    def __init__(self) -> None:
        self._snapshots: dict[str, BreakerSnapshot] = {}
        self._lock = threading.Lock()

    def load(self, name: str) -> BreakerSnapshot | None:
        with self._lock:
            return self._snapshots.get(name)

    def save(self, snapshot: BreakerSnapshot) -> None:
        with self._lock:
            self._snapshots[snapshot.name] = snapshot

    def clear(self, name: str) -> None:
        with self._lock:
            self._snapshots.pop(name, None)

    def load_all(self) -> dict[str, BreakerSnapshot]:
        with self._lock:
            return dict(self._snapshots)


class JsonFileStateStore(CircuitBreakerStateStore):
    """Every breaker in one JSON file that separate runs share: replaced atomically, written under flock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def load(self, name: str) -> BreakerSnapshot | None:
        return self._read().get(name)

    def load_all(self) -> dict[str, BreakerSnapshot]:
        return self._read()

    def save(self, snapshot: BreakerSnapshot) -> None:
        with self._exclusive():
            snapshots = self._read()
            snapshots[snapshot.name] = snapshot
            self._write(snapshots)

    def clear(self, name: str) -> None:
        with self._exclusive():
            snapshots = self._read()
            if snapshots.pop(name, None) is not None:
                self._write(snapshots)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, BreakerSnapshot]:
        """Readers need no lock: writers replace the whole file. Anything unreadable counts as empty."""
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                name: BreakerSnapshot(
                    name=name,
                    state=CircuitState(entry["state"]),
                    failure_count=int(entry["failure_count"]),
                    last_failure_time=_optional_float(entry.get("last_failure_time")),
                    opened_at=_optional_float(entry.get("opened_at")),
                    failure_threshold=int(entry["failure_threshold"]),
                    recovery_timeout=float(entry["recovery_timeout"]),
                )
                for name, entry in entries.items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            _log.warning("circuit breaker state file %s is unreadable, taken as empty: %s", self.path, exc)
            return {}

    def _write(self, snapshots: dict[str, BreakerSnapshot]) -> None:
        document = {
            name: {
                "state": snapshot.state.name,
                "failure_count": snapshot.failure_count,
                "last_failure_time": snapshot.last_failure_time,
                "opened_at": snapshot.opened_at,
                "failure_threshold": snapshot.failure_threshold,
                "recovery_timeout": snapshot.recovery_timeout,
            }
            for name, snapshot in sorted(snapshots.items())
        }
        fd, temp_path = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as temp:
                json.dump(document, temp, indent=2)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_path, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)
            raise


def _optional_float(value: object) -> float | None:
    return None if value is None else float(cast(float, value))


# A call admitted outside half-open carries this token; a trial carries the breaker's generation.
_NOT_TRIAL = -1

_Transitions = list[tuple[CircuitState, CircuitState]]


class CircuitBreaker:
    """Guards calls to one dependency; thread-safe, and its lock is never held while the call runs."""

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 60,
        expected_exception: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        *,
        name: str = "default",
        success_threshold: int = 1,
        half_open_max_calls: int = 1,
        enabled: bool = True,
        listeners: Iterable[CircuitBreakerListener] = (),
        state_store: CircuitBreakerStateStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        _require_count("failure_threshold", failure_threshold)
        _require_count("success_threshold", success_threshold)
        _require_count("half_open_max_calls", half_open_max_calls)
        if not (math.isfinite(recovery_timeout) and recovery_timeout >= 0):
            raise CircuitBreakerConfigError(
                "recovery_timeout", str(recovery_timeout), "must be a finite number of seconds, not negative"
            )
        self.name = name
        self.failure_threshold = failure_threshold
        self._recovery_timeout = float(recovery_timeout)
        self.expected_exception = expected_exception
        self.success_threshold = success_threshold
        self.half_open_max_calls = half_open_max_calls
        self.metrics = CircuitBreakerMetrics(wall_clock)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._listeners = tuple(listeners)
        self._store = state_store
        self._enabled = enabled
        self._state = _CLOSED
        self._failure_count = 0
        self._last_failure_wall: float | None = None
        self._last_failure_mono: float | None = None
        self._opened_at: float | None = None
        self._generation = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._entries: ContextVar[tuple[tuple[int, float | None], ...]] = ContextVar(
            f"circuit_breaker_{name}", default=()
        )
        self._fast = True
        self._refuse_until = -math.inf
        if state_store is not None:
            snapshot = state_store.load(name)
            if snapshot is not None:
                self._state = snapshot.state
                self._adopt_locked(snapshot)
        self._refresh_paths()

    # -- the attributes of design §8 ------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The state a caller would meet now: OPEN reads as HALF_OPEN once the timeout has passed."""
        if self._state is _OPEN and self._store is not None:
            transitions: _Transitions = []
            with self._lock:
                self._reload_locked(transitions)
            self._announce(transitions)
        if self._state is _OPEN and self._timeout_elapsed():
            return _HALF_OPEN
        return self._state

    @state.setter
    def state(self, value: CircuitState | str) -> None:
        transitions: _Transitions = []
        with self._lock:
            self._move_locked(CircuitState(value), transitions)
            self._save_locked()
        self._announce(transitions)

    @property
    def failure_count(self) -> int:
        return self._failure_count

    @failure_count.setter
    def failure_count(self, value: int) -> None:
        with self._lock:
            self._failure_count = value
            self._save_locked()

    @property
    def last_failure_time(self) -> float | None:
        """Wall-clock seconds (as ``time.time()``) of the last counting failure."""
        return self._last_failure_wall

    @last_failure_time.setter
    def last_failure_time(self, value: float | None) -> None:
        with self._lock:
            self._stamp_failure_locked(value)
            self._save_locked()

    @property
    def recovery_timeout(self) -> float:
        """Seconds after the last failure before an open breaker lets a trial call in."""
        return self._recovery_timeout

    @recovery_timeout.setter
    def recovery_timeout(self, value: float) -> None:
        with self._lock:
            self._recovery_timeout = float(value)
            self._refresh_paths()

    @property
    def enabled(self) -> bool:
        """A disabled breaker calls straight through and only keeps metrics."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        with self._lock:
            self._enabled = value
            self._refresh_paths()

    # -- the internal hooks of design §8 --------------------------------------------------------------

    def _on_failure(self) -> None:
        """Count one failure: stamps the time, opens at the threshold, and at once from half-open."""
        transitions: _Transitions = []
        with self._lock:
            self._count_failure_locked(transitions)
        self._announce(transitions)

    def _on_success(self) -> None:
        """Count one success: resets the failure count, closes from half-open."""
        transitions: _Transitions = []
        with self._lock:
            self._count_success_locked(transitions)
        self._announce(transitions)

    def _should_attempt_reset(self) -> bool:
        """True when the stored state is OPEN and recovery_timeout has passed since the last failure."""
        return self._state is _OPEN and self._timeout_elapsed()

    # -- using it ------------------------------------------------------------------------------------

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate a plain or ``async def`` function; the wrapper keeps its name and docstring."""
        breaker = self
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def guarded_coroutine(*args: Any, **kwargs: Any) -> Any:
                return await breaker._call_async(func, args, kwargs)

            return cast(Callable[P, R], guarded_coroutine)

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            if breaker._fast:
                try:
                    result = func(*args, **kwargs)
                except BaseException as exc:
                    breaker._settle_exception(_NOT_TRIAL, exc, None)
                    raise
                if breaker._failure_count:
                    breaker._succeeded(_NOT_TRIAL, None)
                else:
                    breaker.metrics.success_count += 1
                return result
            wait = breaker._refuse_until - breaker._clock()
            if wait > 0:
                raise breaker._refusal(wait)
            return breaker._call_slow(func, args, kwargs)

        return guarded

    def call(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``func`` under the breaker; an ``async def`` function gives a coroutine to await."""
        if self._fast:
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                self._settle_exception(_NOT_TRIAL, exc, None)
                raise
            if result.__class__ is CoroutineType:
                return cast(R, self._settle_later(_NOT_TRIAL, cast(Awaitable[Any], result), None))
            if self._failure_count:
                self._succeeded(_NOT_TRIAL, None)
            else:
                self.metrics.success_count += 1
            return result
        wait = self._refuse_until - self._clock()
        if wait > 0:
            raise self._refusal(wait)
        return self._call_slow(func, args, kwargs)

    def __enter__(self) -> CircuitBreaker:
        """Refuses entry with CircuitBreakerError while the breaker refuses calls."""
        token = self._admit()
        started = time.perf_counter() if self._listeners else None
        self._entries.set((*self._entries.get(), (token, started)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        entries = self._entries.get()
        token, started = entries[-1]
        self._entries.set(entries[:-1])
        if exc is None:
            self._succeeded(token, started)
        else:
            self._settle_exception(token, exc, started)

    def add_listener(self, listener: CircuitBreakerListener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)
            self._refresh_paths()

    def reset(self) -> None:
        """Close the breaker, forget its failures, and clear its entry in the state store."""
        transitions: _Transitions = []
        with self._lock:
            self._failure_count = 0
            self._stamp_failure_locked(None)
            self._move_locked(_CLOSED, transitions)
            if self._store is not None:
                self._store.clear(self.name)
        self._announce(transitions)

    def get_state_info(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "failure_count": self._failure_count,
            "last_failure_time": self._last_failure_wall,
            "failure_threshold": self.failure_threshold,
            "recovery_timeout": self.recovery_timeout,
        }

    def seconds_until_trial(self) -> float:
        """How long calls will still be refused; 0 when not open."""
        if self._state is not _OPEN or not self._enabled:
            return 0.0
        return self._remaining_timeout()

    @classmethod
    def from_env(
        cls, name: str, *, environ: Mapping[str, str] | None = None, **defaults: Any
    ) -> CircuitBreaker:
        """Build from CIRCUIT_BREAKER_* variables; CIRCUIT_BREAKER_<NAME>_* ones win for this breaker.

        ``defaults`` are constructor arguments used where no variable is set; an empty variable counts as
        unset; a bad value raises CircuitBreakerConfigError naming the variable and the value.
        """
        env = os.environ if environ is None else environ
        own_prefix = "CIRCUIT_BREAKER_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_"
        settings = dict(defaults)
        for suffix, parameter, parse in _ENV_SETTINGS:
            for variable in ("CIRCUIT_BREAKER_" + suffix, own_prefix + suffix):
                raw = env.get(variable, "")
                if raw.strip():
                    settings[parameter] = parse(variable, raw)
        return cls(name=name, **settings)

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.name!r} {self._state.name} "
            f"failures={self._failure_count}/{self.failure_threshold}>"
        )

    # -- the guarded call, off the fast path ----------------------------------------------------------

    def _call_slow(self, func: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        token = self._admit()
        started = time.perf_counter() if self._listeners else None
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle_exception(token, exc, started)
            raise
        if result.__class__ is CoroutineType:
            return cast(R, self._settle_later(token, cast(Awaitable[Any], result), started))
        self._succeeded(token, started)
        return result

    async def _call_async(
        self, func: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        token = self._admit()
        started = time.perf_counter() if self._listeners else None
        return await self._settle_later(token, func(*args, **kwargs), started)

    async def _settle_later(self, token: int, awaitable: Awaitable[R], started: float | None) -> R:
        try:
            result = await awaitable
        except BaseException as exc:
            self._settle_exception(token, exc, started)
            raise
        self._succeeded(token, started)
        return result

    def _admit(self) -> int:
        """Let a call in, or raise CircuitBreakerError; a half-open trial gets the generation as its token."""
        if not self._enabled or self._state is _CLOSED:
            return _NOT_TRIAL
        token = _NOT_TRIAL
        refused_for: float | None = None
        transitions: _Transitions = []
        with self._lock:
            if self._state is _OPEN and self._store is not None:
                self._reload_locked(transitions)
            if self._state is _OPEN and self._timeout_elapsed():
                self._move_locked(_HALF_OPEN, transitions)
                self._save_locked()
            if self._state is _HALF_OPEN and self._trials_in_flight < self.half_open_max_calls:
                self._trials_in_flight += 1
                token = self._generation
            elif self._state is not _CLOSED:
                refused_for = self._remaining_timeout() if self._state is _OPEN else 0.0
        self._announce(transitions)
        if refused_for is not None:
            raise self._refusal(refused_for)
        return token

    def _refusal(self, retry_after: float) -> CircuitBreakerError:
        """Count and announce one refused call; the error is new each time so no traceback accumulates."""
        self.metrics.rejection_count += 1
        for listener in self._listeners:
            _tell(listener.rejection, self)
        if _current_span is not None:
            self._trace(False, "CircuitBreakerError")
        # BaseException.__new__ fills .args without running __init__: a third of the cost of a refusal.
        return _new_exception(CircuitBreakerError, self.name, retry_after, self._wall_clock() + retry_after)

    def _succeeded(self, token: int, started: float | None) -> None:
        """Book a success; listeners hear of it before any state change it causes."""
        duration = 0.0 if started is None else time.perf_counter() - started
        transitions: _Transitions = []
        if token == _NOT_TRIAL and self._state is _CLOSED and not self._failure_count:
            self.metrics.success_count += 1
        else:
            with self._lock:
                self._end_trial_locked(token)
                self._count_success_locked(transitions)
        for listener in self._listeners:
            _tell(listener.success, self, duration)
        self._announce(transitions)
        if _current_span is not None:
            self._trace(True, None)

    def _settle_exception(self, token: int, exc: BaseException, started: float | None) -> None:
        """A counting exception is a failure; any other passes through without touching the count."""
        duration = 0.0 if started is None else time.perf_counter() - started
        counts = isinstance(exc, self.expected_exception)
        transitions: _Transitions = []
        if counts or token != _NOT_TRIAL:
            with self._lock:
                self._end_trial_locked(token)
                if counts:
                    self._count_failure_locked(transitions)
        if counts:
            for listener in self._listeners:
                _tell(listener.failure, self, exc, duration)
        self._announce(transitions)
        if _current_span is not None:
            self._trace(False, f"{type(exc).__name__}: {exc}")

    # -- bookkeeping, always under self._lock ---------------------------------------------------------

    def _count_failure_locked(self, transitions: _Transitions) -> None:
        self.metrics.failure_count += 1
        if not self._enabled:
            return
        self._failure_count += 1
        self._stamp_failure_locked(self._wall_clock())
        if self._state is _HALF_OPEN or (
            self._state is _CLOSED and self._failure_count >= self.failure_threshold
        ):
            self._move_locked(_OPEN, transitions)
        self._save_locked()

    def _count_success_locked(self, transitions: _Transitions) -> None:
        self.metrics.success_count += 1
        if not self._enabled:
            return
        if self._state is _OPEN and self._timeout_elapsed():
            self._move_locked(_HALF_OPEN, transitions)
        if self._state is _HALF_OPEN:
            self._trial_successes += 1
            if self._trial_successes >= self.success_threshold:
                self._move_locked(_CLOSED, transitions)
        elif not self._failure_count:
            return
        self._failure_count = 0
        self._save_locked()

    def _end_trial_locked(self, token: int) -> None:
        if token == self._generation and self._state is _HALF_OPEN:
            self._trials_in_flight -= 1

    def _move_locked(self, new: CircuitState, transitions: _Transitions) -> None:
        old = self._state
        if new is old:
            return
        self._state = new
        self._generation += 1
        self._trials_in_flight = 0
        self._trial_successes = 0
        if new is _OPEN:
            self._opened_at = self._wall_clock()
            if self._last_failure_mono is None:
                self._stamp_failure_locked(self._opened_at)
        self._refresh_paths()
        self.metrics.record_state_transition(old, new)
        transitions.append((old, new))

    def _stamp_failure_locked(self, wall_time: float | None) -> None:
        """Keep the wall time for people and stores, and its place on the monotonic clock for timeouts."""
        self._last_failure_wall = wall_time
        if wall_time is None:
            self._last_failure_mono = None
        else:
            self._last_failure_mono = self._clock() - (self._wall_clock() - wall_time)
        self._refresh_paths()

    def _reload_locked(self, transitions: _Transitions) -> None:
        """While open, take what the store says: another process may have reset or reopened the breaker."""
        assert self._store is not None
        snapshot = self._store.load(self.name)
        if snapshot is None:
            self._failure_count = 0
            self._stamp_failure_locked(None)
            self._move_locked(_CLOSED, transitions)
        else:
            self._move_locked(snapshot.state, transitions)
            self._adopt_locked(snapshot)

    def _adopt_locked(self, snapshot: BreakerSnapshot) -> None:
        self._failure_count = snapshot.failure_count
        self._stamp_failure_locked(snapshot.last_failure_time)
        self._opened_at = snapshot.opened_at

    def _save_locked(self) -> None:
        if self._store is None:
            return
        snapshot = BreakerSnapshot(
            name=self.name,
            state=self._state,
            failure_count=self._failure_count,
            last_failure_time=self._last_failure_wall,
            opened_at=self._opened_at,
            failure_threshold=self.failure_threshold,
            recovery_timeout=self.recovery_timeout,
        )
        try:
            self._store.save(snapshot)
        except OSError as exc:
            _log.warning("circuit breaker %r: cannot save its state: %s", self.name, exc)

    def _refresh_paths(self) -> None:
        """Precompute what the wrappers check without the lock: the closed fast path and a plain refusal."""
        self._fast = (
            (self._state is _CLOSED or not self._enabled) and not self._listeners and _current_span is None
        )
        plain_open = self._enabled and self._state is _OPEN and self._store is None
        if plain_open and self._last_failure_mono is not None:
            self._refuse_until = self._last_failure_mono + self._recovery_timeout
        else:
            self._refuse_until = -math.inf

    # -- small readers --------------------------------------------------------------------------------

    def _timeout_elapsed(self) -> bool:
        last_failure = self._last_failure_mono
        return last_failure is not None and self._clock() - last_failure >= self.recovery_timeout

    def _remaining_timeout(self) -> float:
        last_failure = self._last_failure_mono
        if last_failure is None:
            return self.recovery_timeout
        return max(0.0, last_failure + self.recovery_timeout - self._clock())

    def _announce(self, transitions: _Transitions) -> None:
        for old, new in transitions:
            for listener in self._listeners:
                _tell(listener.state_change, self, old, new)

    def _trace(self, success: bool, error: str | None) -> None:
        assert _current_span is not None
        span = _current_span()
        if not span.is_recording():
            return
        span.set_attribute("circuit_breaker.name", self.name)
        span.set_attribute("circuit_breaker.state", self._state.name)
        span.set_attribute("circuit_breaker.failure_count", self._failure_count)
        span.set_attribute("circuit_breaker.success", success)
        if error is not None:
            span.set_attribute("circuit_breaker.error", error)


_new_exception = BaseException.__new__


def _tell(event: Callable[..., None], *args: Any) -> None:
    """A listener's bug must not change the outcome of the guarded call."""
    try:
        event(*args)
    except Exception:
        _log.exception("circuit breaker listener %r failed", event)


def _require_count(parameter: str, value: int) -> None:
    if value < 1:
        raise CircuitBreakerConfigError(parameter, str(value), "must be at least 1")


def _env_bool(variable: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise CircuitBreakerConfigError(variable, raw, "is not a boolean (true/false, 1/0, yes/no, on/off)")


def _env_count(variable: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise CircuitBreakerConfigError(variable, raw, "is not a whole number") from None
    if value < 0:
        raise CircuitBreakerConfigError(variable, raw, "is negative")
    if value == 0:
        raise CircuitBreakerConfigError(variable, raw, "must be at least 1")
    return value


def _env_seconds(variable: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise CircuitBreakerConfigError(variable, raw, "is not a number of seconds") from None
    if not math.isfinite(value):
        raise CircuitBreakerConfigError(variable, raw, "is not a finite number of seconds")
    if value < 0:
        raise CircuitBreakerConfigError(variable, raw, "is negative")
    return value


_ENV_SETTINGS: tuple[tuple[str, str, Callable[[str, str], Any]], ...] = (
    ("ENABLED", "enabled", _env_bool),
    ("FAILURE_THRESHOLD", "failure_threshold", _env_count),
    ("RECOVERY_TIMEOUT", "recovery_timeout", _env_seconds),
    ("SUCCESS_THRESHOLD", "success_threshold", _env_count),
    ("HALF_OPEN_MAX_CALLS", "half_open_max_calls", _env_count),
)
