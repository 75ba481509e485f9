"""Circuit breakers: stop calling a failing dependency, then let a few trial calls find out when it is back.

``CircuitBreaker`` guards a call (decorator, wrapper, ``with`` block, ``call``; plain, async or generator).
By default ``failure_threshold`` consecutive counting failures open it; in failure-rate mode it opens when
``failure_rate_threshold`` of the recent calls failed. While open every call is refused at once with a
fresh ``CircuitBreakerError``; ``recovery_timeout`` seconds after the last failure it turns half-open and
admits at most ``half_open_max_calls`` trial calls at a time; ``success_threshold`` trial successes close
it and a trial failure reopens it. A state store (memory, or one JSON file) is the source of truth that
breakers of several processes share, so cron runs that overlap behave as one breaker.

Modules: ``state`` (the enum, snapshots and the transition function), ``core`` (the breaker), ``guards``
(the forms of a call), ``stores``, ``listeners`` (listeners and metrics), ``config`` (checks and the
CIRCUIT_BREAKER_* environment), ``window`` (failure-rate mode), ``clock``, ``errors``.
"""

from utils.circuit_breaker.config import check_environ
from utils.circuit_breaker.core import CircuitBreaker
from utils.circuit_breaker.errors import CircuitBreakerConfigError, CircuitBreakerError, SlowCallError
from utils.circuit_breaker.listeners import (
    CircuitBreakerListener,
    CircuitBreakerMetrics,
    OpenTelemetryListener,
)
from utils.circuit_breaker.state import BreakerSnapshot, CircuitState
from utils.circuit_breaker.stores import CircuitBreakerStateStore, JsonFileStateStore, MemoryStateStore

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
    "OpenTelemetryListener",
    "SlowCallError",
    "check_environ",
]
