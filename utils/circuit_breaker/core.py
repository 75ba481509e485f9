"""``CircuitBreaker``: the public face of a breaker, its attributes and the forms a guarded call takes.

Every form (decorator, wrapper, ``call``, ``with``, async, generators) goes through ``call`` or the
``with`` protocol, and both through the two steps of ``gate.Gate``: admit, then settle exactly once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from utils.circuit_breaker import config
from utils.circuit_breaker.errors import CircuitBreakerConfigError
from utils.circuit_breaker.gate import Gate, PolicySetting, short
from utils.circuit_breaker.guards import ITERATED, Entry, OpenBlocks, decorate, guard_iteration
from utils.circuit_breaker.listeners import CircuitBreakerListener
from utils.circuit_breaker.state import (
    HALF_OPEN,
    OPEN,
    Assign,
    CircuitState,
    ForceOpen,
    Reset,
    Stamp,
    next_trial_at,
)
from utils.circuit_breaker.stores import CircuitBreakerStateStore
from utils.circuit_breaker.window import make_window

P = ParamSpec("P")
R = TypeVar("R")


class CircuitBreaker(Gate):
    """Guards calls to one dependency; thread-safe, and its lock is never held while a call runs.

    Three clocks can be injected: ``clock`` (monotonic) runs the timeouts, ``wall_clock`` dates what the
    store keeps (see ``clock.Timeline``), ``timer`` measures how long each call took (for listeners and
    ``slow_call_seconds``).
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 60,
        expected_exception: config.ExpectedException = Exception,
        *,
        name: str = "default",
        success_threshold: int = 1,
        half_open_max_calls: int = 1,
        enabled: bool = True,
        listeners: Iterable[CircuitBreakerListener] = (),
        state_store: CircuitBreakerStateStore | None = None,
        failure_rate_threshold: float | None = None,
        minimum_calls: int = 10,
        window_size: int = 100,
        window_seconds: float | None = None,
        slow_call_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__(
            name,
            expected_exception=config.exception_classes("expected_exception", expected_exception),
            rate_mode=failure_rate_threshold is not None,
            window=make_window(failure_rate_threshold, minimum_calls, window_size, window_seconds),
            slow_call_seconds=None
            if slow_call_seconds is None
            else config.seconds("slow_call_seconds", slow_call_seconds, positive=True),
            enabled=bool(enabled),
            listeners=listeners,
            state_store=state_store,
            clock=clock,
            wall_clock=wall_clock,
            timer=timer,
        )
        self.failure_threshold = failure_threshold  # each checked by its setter, as any later assignment
        self.recovery_timeout = recovery_timeout
        self.success_threshold = success_threshold
        self.half_open_max_calls = half_open_max_calls
        self._blocks = OpenBlocks(name)

    @classmethod
    def from_env(
        cls,
        name: str,
        *,
        environ: Mapping[str, str] | None = None,
        group: str | None = None,
        **defaults: Any,
    ) -> CircuitBreaker:
        """Build from CIRCUIT_BREAKER_* variables; CIRCUIT_BREAKER_<GROUP>_* ones (group: ``name``) win.

        ``name`` is the breaker's identity in its store. ``defaults`` are constructor arguments used where
        no variable is set. A bad value raises CircuitBreakerConfigError naming the variable and value.
        """
        env = os.environ if environ is None else environ
        arguments, sources = config.settings_from_env(env, name if group is None else group)
        try:
            return cls(name=name, **{**defaults, **arguments})
        except CircuitBreakerConfigError as exc:
            variable = sources.get(exc.variable)
            if variable is None:
                raise
            raise CircuitBreakerConfigError(variable, env[variable], exc.reason) from exc

    # -- the attributes of design §8 ------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The state a caller would meet now: OPEN reads as HALF_OPEN once its trial is due."""
        view = self._fresh()
        return HALF_OPEN if self._due(view) else view.state

    @state.setter
    def state(self, value: CircuitState | str) -> None:
        self._change(Assign(state=CircuitState(value)))

    @property
    def failure_count(self) -> int:
        """Consecutive counting failures (in every mode), as the store holds them."""
        return self._fresh().failure_count

    @failure_count.setter
    def failure_count(self, value: int) -> None:
        self._change(Assign(failure_count=config.whole("failure_count", value, minimum=0)))

    @property
    def last_failure_time(self) -> float | None:
        """Wall-clock seconds (as ``time.time()`` gives) of the last counting failure."""
        return self._fresh().last_failure_time

    @last_failure_time.setter
    def last_failure_time(self, value: float | None) -> None:
        self._change(Stamp(None if value is None else config.wall_time("last_failure_time", value)))

    failure_threshold = PolicySetting(config.whole, "Consecutive counting failures that open the breaker.")
    recovery_timeout = PolicySetting(
        config.seconds, "Seconds after the last failure before an open breaker lets a trial call in."
    )
    success_threshold = PolicySetting(config.whole, "Trial successes needed to close a half-open breaker.")
    half_open_max_calls = PolicySetting(
        config.whole, "Trial calls in flight at most, across every process sharing the store."
    )

    @property
    def expected_exception(self) -> config.ExpectedException:
        """What counts as a failure; any other exception passes through and counts for nothing."""
        return self._expected

    @expected_exception.setter
    def expected_exception(self, value: config.ExpectedException) -> None:
        self._expected = config.exception_classes("expected_exception", value)

    @property
    def enabled(self) -> bool:
        """A disabled breaker calls straight through and only keeps metrics."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        with self._lock:
            self._enabled = bool(value)
            self._set_view(self._view)

    # -- the internal hooks of design §8 --------------------------------------------------------------

    def _on_failure(self) -> None:
        """Count one failure: stamps the time, opens at the threshold, and at once from half-open."""
        self._settle(Entry(self._fresh().episode, None, None), None, failed=True)

    def _on_success(self) -> None:
        """Count one success: resets the failure count, closes from half-open."""
        self._settle(Entry(self._fresh().episode, None, None), None, failed=False)

    def _should_attempt_reset(self) -> bool:
        """True when the stored state is OPEN and recovery_timeout has passed since the last failure."""
        return self._due(self._fresh())

    # -- using it -------------------------------------------------------------------------------------

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function of any kind (plain, async, generator); the wrapper keeps its name and kind."""
        return cast(Callable[P, R], decorate(func, self.call))

    def call(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``func`` under the breaker; a coroutine or generator it returns is guarded until it ends.

        Every form of guarded call (decorator, wrapper, async, generators) comes through here.
        """
        entry = self._admit()
        if entry is None:
            raise self._refusal()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle(entry, exc)
            raise
        if result.__class__ in ITERATED:
            return cast(R, guard_iteration(result, entry, self._settle, self._lapse))
        self._settle(entry, None)
        return result

    def __enter__(self) -> CircuitBreaker:
        """Refuses entry with CircuitBreakerError while the breaker refuses calls."""
        entry = self._admit()
        if entry is None:
            raise self._refusal()
        self._blocks.enter(entry)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._settle(self._blocks.leave(), exc)

    def add_listener(self, listener: CircuitBreakerListener) -> None:
        """Hear every later call and transition (calls are timed from now on, for its durations)."""
        with self._lock:
            self._listeners = (*self._listeners, listener)
            self._timed = True
            self._set_view(self._view)

    def reset(self) -> None:
        """Close the breaker and forget its failures, as a newer version in the store."""
        self._change(Reset())

    def open_until(self, wall_time: float, reason: str | None = None) -> None:
        """Refuse calls until ``wall_time`` (epoch seconds a server gave: a ban's end, a Retry-After)."""
        self._change(ForceOpen(config.wall_time("wall_time", wall_time), short(reason)))

    def get_state_info(self) -> dict[str, Any]:
        """The design's five keys, as plain values (the state as its string), for logs and JSON."""
        view = self._fresh()
        return {
            "state": self.state.value,
            "failure_count": view.failure_count,
            "last_failure_time": view.last_failure_time,
            "failure_threshold": self.failure_threshold,
            "recovery_timeout": self.recovery_timeout,
        }

    def seconds_until_trial(self) -> float:
        """How long calls will still be refused; 0 when not open."""
        view = self._fresh()
        if view.state is not OPEN or not self._enabled:
            return 0.0
        return max(0.0, next_trial_at(view, self._policy.recovery_timeout) - self._now())

    def __repr__(self) -> str:
        view = self._view
        return (
            f"<CircuitBreaker {self.name!r} {view.state.value} "
            f"failures={view.failure_count}/{self._policy.failure_threshold}>"
        )
