"""What the breaker raises.

Exception
├── CircuitBreakerError          a call refused while the breaker is open (or its trials are out)
├── SlowCallError                never raised: stands for a call slower than slow_call_seconds
└── ValueError
    └── CircuitBreakerConfigError  a setting or environment variable that cannot be used
"""

from __future__ import annotations

import time
from typing import cast


def utc_text(epoch_seconds: float) -> str:
    """``2023-11-14T22:14:20Z``: what a person compares with their clock."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_seconds))


class CircuitBreakerError(Exception):
    """Raised instead of calling; a fresh object per refusal, saying when the next trial will be let in."""

    def __init__(
        self, breaker_name: str, retry_after: float, retry_at: float, reason: str | None = None
    ) -> None:
        super().__init__(breaker_name, retry_after, retry_at, reason)

    @property
    def breaker_name(self) -> str:
        return cast(str, self.args[0])

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker lets a trial call in (0 when half-open and its trials are out)."""
        return cast(float, self.args[1])

    @property
    def retry_at(self) -> float:
        """Wall-clock epoch seconds of the next trial."""
        return cast(float, self.args[2])

    @property
    def reason(self) -> str | None:
        """The failure that opened the breaker, or the reason given to ``open_until``, when known."""
        return cast("str | None", self.args[3]) if len(self.args) > 3 else None

    def __str__(self) -> str:
        text = (
            f"circuit breaker {self.breaker_name!r} is open: next trial in {self.retry_after:.1f} s "
            f"(at {utc_text(self.retry_at)})"
        )
        return f"{text}; it opened on {self.reason}" if self.reason else text


class CircuitBreakerConfigError(ValueError):
    """A breaker setting is unusable; names the variable (or parameter) and the value a person should fix."""

    def __init__(self, variable: str, value: object, reason: str) -> None:
        super().__init__(f"{variable}={str(value)!r} {reason}")
        self.variable = variable
        self.value = str(value)
        self.reason = reason


class SlowCallError(Exception):
    """Stands for a call that returned but took longer than ``slow_call_seconds``: counted, never raised."""

    def __init__(self, duration: float, limit: float) -> None:
        super().__init__(f"call took {duration:.3f} s, over the slow-call limit of {limit:g} s")
        self.duration = duration
        self.limit = limit
