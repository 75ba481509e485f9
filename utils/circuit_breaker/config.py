"""Settings: the checks constructor, setters and environment share; the CIRCUIT_BREAKER_* variables.

Every variable exists globally (``CIRCUIT_BREAKER_FAILURE_THRESHOLD``) and per group
(``CIRCUIT_BREAKER_API_FAILURE_THRESHOLD``); a group's value wins for the breakers of that group. An empty
value counts as unset. Durations are seconds, optionally with a unit: ``90``, ``90s``, ``500ms``, ``5m``,
``1h``. ``CIRCUIT_BREAKER_WINDOW`` is a number of calls (``100``) or, with a unit, a time (``60s``).
``CIRCUIT_BREAKER_FAILURE_RATE`` is a fraction (``0.5``) or a percentage (``50%``) and turns on the
failure-rate mode.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from utils.circuit_breaker.errors import CircuitBreakerConfigError

PREFIX = "CIRCUIT_BREAKER_"

ExpectedException = type[BaseException] | tuple[type[BaseException], ...]

# -- values, wherever they come from ------------------------------------------------------------------


def whole(parameter: str, value: object, minimum: int = 1) -> int:
    """A count: an int (not a bool, not 2.0) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CircuitBreakerConfigError(parameter, value, f"must be a whole number of at least {minimum}")
    return value


def seconds(parameter: str, value: object, *, positive: bool = False) -> float:
    """A duration: finite (NaN would keep a breaker open for ever) and not negative."""
    number = _real(value)
    if number is None or not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "above 0" if positive else "not negative"
        raise CircuitBreakerConfigError(parameter, value, f"must be a finite number of seconds, {bound}")
    return number


def fraction(parameter: str, value: object) -> float:
    """A failure rate: above 0 (0 would open on any failure) and at most 1."""
    number = _real(value)
    if number is None or not 0 < number <= 1:
        raise CircuitBreakerConfigError(parameter, value, "must be a fraction above 0 and at most 1")
    return number


def wall_time(parameter: str, value: object) -> float:
    """Epoch seconds: finite, since a time of NaN or infinity compares with nothing."""
    number = _real(value)
    if number is None or not math.isfinite(number):
        raise CircuitBreakerConfigError(parameter, value, "must be finite epoch seconds")
    return number


def exception_classes(parameter: str, value: object) -> ExpectedException:
    """What ``except`` accepts: an exception class or a non-empty tuple of them."""
    classes = value if isinstance(value, tuple) else (value,)
    if not classes or not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise CircuitBreakerConfigError(parameter, value, "must be an exception class or a tuple of them")
    return value  # type: ignore[return-value]


def _real(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# -- the environment ----------------------------------------------------------------------------------

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _env_whole(variable: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise CircuitBreakerConfigError(variable, raw, "is not a whole number") from None
    if value < 1:
        raise CircuitBreakerConfigError(variable, raw, "is negative" if value < 0 else "must be at least 1")
    return value


def _env_duration(variable: str, raw: str, *, positive: bool = False) -> float:
    unit = _DURATION.fullmatch(raw)
    try:
        value = float(unit.group(1)) * _UNIT_SECONDS[unit.group(2).lower()] if unit else float(raw.strip())
    except ValueError:
        raise CircuitBreakerConfigError(variable, raw, "is not a duration (90, 90s, 500ms, 5m, 1h)") from None
    if not math.isfinite(value):
        raise CircuitBreakerConfigError(variable, raw, "is not a finite number of seconds")
    if value < 0 or (positive and value == 0):
        raise CircuitBreakerConfigError(variable, raw, "is negative" if value < 0 else "must be above 0")
    return value


def _env_bool(variable: str, raw: str) -> dict[str, Any]:
    word = raw.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return {"enabled": True}
    if word in ("false", "0", "no", "off"):
        return {"enabled": False}
    raise CircuitBreakerConfigError(variable, raw, "is not a boolean (true/false, 1/0, yes/no, on/off)")


def _env_rate(variable: str, raw: str) -> dict[str, Any]:
    text = raw.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise CircuitBreakerConfigError(variable, raw, "is not a failure rate (0.5 or 50%)") from None
    if not 0 < value <= 1:
        raise CircuitBreakerConfigError(variable, raw, "must be a rate above 0 and at most 1 (100%)")
    return {"failure_rate_threshold": value}


def _env_window(variable: str, raw: str) -> dict[str, Any]:
    if raw.strip().isdigit():
        return {"window_size": _env_whole(variable, raw), "window_seconds": None}
    if not _DURATION.fullmatch(raw):
        raise CircuitBreakerConfigError(variable, raw, "is neither a number of calls (100) nor a time (60s)")
    return {"window_seconds": _env_duration(variable, raw, positive=True)}


def _one(parameter: str, parse: Callable[[str, str], Any]) -> Callable[[str, str], dict[str, Any]]:
    return lambda variable, raw: {parameter: parse(variable, raw)}


SETTINGS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "ENABLED": _env_bool,
    "FAILURE_THRESHOLD": _one("failure_threshold", _env_whole),
    "RECOVERY_TIMEOUT": _one("recovery_timeout", _env_duration),
    "SUCCESS_THRESHOLD": _one("success_threshold", _env_whole),
    "HALF_OPEN_MAX_CALLS": _one("half_open_max_calls", _env_whole),
    "FAILURE_RATE": _env_rate,
    "MINIMUM_CALLS": _one("minimum_calls", _env_whole),
    "WINDOW": _env_window,
    "SLOW_CALL_SECONDS": _one("slow_call_seconds", lambda v, raw: _env_duration(v, raw, positive=True)),
}
"""Variable suffix -> the constructor arguments its value gives."""


def group_prefix(group: str) -> str:
    """``"api"`` -> ``"CIRCUIT_BREAKER_API_"``; anything not a letter or digit becomes ``_``."""
    return PREFIX + re.sub(r"[^A-Z0-9]+", "_", group.upper()).strip("_") + "_"


def settings_from_env(environ: Mapping[str, str], group: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Constructor arguments from the global variables, overridden by the group's.

    Returns the arguments and, for each, the variable it came from (to name it in a later error).
    """
    arguments: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for suffix, parse in SETTINGS.items():
        for variable in (group_prefix(group) + suffix, PREFIX + suffix):
            raw = environ.get(variable, "")
            if raw.strip():
                given = parse(variable, raw)
                arguments.update(given)
                sources.update(dict.fromkeys(given, variable))
                break
    return arguments, sources


def check_environ(environ: Mapping[str, str], groups: Iterable[str] = ("API", "DB", "ARCHIVE")) -> None:
    """Raise CircuitBreakerConfigError for any CIRCUIT_BREAKER_* variable that is unknown or unusable.

    Known are the global settings and those of ``groups``; an unknown name gets the closest known one as a
    suggestion. Each value is checked, and every group's settings are built as a breaker would build them.
    """
    from utils.circuit_breaker.core import CircuitBreaker  # the breaker imports this module

    groups = tuple(groups)
    known = {group_prefix(group)[len(PREFIX) :] + suffix: suffix for group in groups for suffix in SETTINGS}
    known.update({suffix: suffix for suffix in SETTINGS})
    for variable in sorted(name for name in environ if name.startswith(PREFIX)):
        raw, setting = environ[variable], variable[len(PREFIX) :]
        if setting not in known:
            close = difflib.get_close_matches(setting.upper(), known, n=1)
            hint = f"did you mean {PREFIX}{close[0]}?" if close else f"known settings: {', '.join(SETTINGS)}"
            raise CircuitBreakerConfigError(variable, raw, f"is not a known setting; {hint}")
        if raw.strip():
            SETTINGS[known[setting]](variable, raw)
    for group in groups:
        CircuitBreaker.from_env(f"check:{group}", environ=environ, group=group)
