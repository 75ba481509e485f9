"""One Settings object, resolved once: CLI flags > environment > config file > defaults.

Also the parsers for the values users type: WHEN (dates, epoch ms, ``now``, ``90d`` ago) and durations.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from extractor.errors import BadInputError
from extractor.intervals import Interval
from extractor.klines import validate_symbol

DEFAULT_DB_URL = "sqlite:///klines.db"
DEFAULT_BASE_URL = "https://api.binance.com"
DEFAULT_LOOKBACK = "1d"
DEFAULT_CONCURRENCY = 32
MAX_CONCURRENCY = 64
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_DURATION_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_EPOCH_MS = re.compile(r"[0-9]{10,15}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime can show
_CONFIG_KEYS = {
    "database",
    "base_url",
    "symbols",
    "intervals",
    "lookback",
    "concurrency",
    "state_dir",
    "log_format",
    "log_level",
    "timeout",
    "attempts",
    "backoff",
}


def parse_duration(text: str, *, what: str = "duration") -> int:
    """``90d`` / ``12h`` / ``30m`` / ``45s`` / ``2w`` as milliseconds (must be positive)."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise BadInputError(
            f"invalid {what} {text!r}: use a positive number and a unit s, m, h, d or w (e.g. 90d, 12h, 30m)"
        )
    return int(match.group(1)) * _DURATION_MS[match.group(2)]


def parse_when(text: str, *, now_ms: int, what: str = "time") -> int:
    """A user's WHEN as UTC epoch ms: ISO date/time (no zone means UTC), epoch ms, ``now``, or ``90d`` ago."""
    if not isinstance(text, str) or not text.strip():
        raise BadInputError(f"invalid {what} {text!r}: empty")
    value = text.strip()
    if value == "now":
        return now_ms
    if _EPOCH_MS.fullmatch(value):
        return _in_range(int(value), text, what)
    if _DURATION.fullmatch(value):
        return _in_range(now_ms - parse_duration(value, what=what), text, what)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise BadInputError(
            f"invalid {what} {text!r}: use 2024-01-01, 2024-01-01T12:30, ISO 8601 with an offset, "
            "epoch milliseconds, now, or a duration ago such as 90d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _in_range((moment - _EPOCH) // timedelta(milliseconds=1), text, what)


def _in_range(epoch_ms: int, text: str, what: str) -> int:
    if epoch_ms < 0:
        raise BadInputError(f"invalid {what} {text!r}: before 1970-01-01")
    if epoch_ms > _LAST_MS:
        raise BadInputError(f"invalid {what} {text!r}: after 9999-12-31")
    return epoch_ms


def split_list(values: Any) -> list[str]:
    """Repeated and comma-separated values as one flat list, blanks dropped, order kept, no repeats."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def parse_symbols(values: Any) -> tuple[str, ...]:
    return tuple(validate_symbol(s) for s in split_list(values))


def parse_intervals(values: Any) -> tuple[Interval, ...]:
    return tuple(Interval.parse(i) for i in split_list(values))


def default_state_dir(environ: Mapping[str, str]) -> Path:
    cache = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(cache) / "binance-extractor"


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, already validated."""

    db_url: str = DEFAULT_DB_URL
    base_url: str = DEFAULT_BASE_URL
    symbols: tuple[str, ...] = ()
    intervals: tuple[Interval, ...] = ()
    lookback_ms: int = 86_400_000
    concurrency: int = DEFAULT_CONCURRENCY
    state_dir: Path = field(default_factory=lambda: default_state_dir(os.environ))
    log_format: str = "text"
    log_level: str = "WARNING"
    api_key: str | None = None
    read_timeout: float = 10.0
    max_attempts: int = 10
    backoff_base: float = 0.5
    breaker_environ: Mapping[str, str] = field(default_factory=dict)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line or an error message."""
        found = [self.api_key] if self.api_key else []
        match = re.match(r"^[a-z0-9+]+://[^:/@]*:([^@]+)@", self.db_url)
        if match:
            found.append(match.group(1))
        return tuple(s for s in found if s)


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise BadInputError(f"config file {path} does not exist (--config / EXTRACTOR_CONFIG)") from None
    except OSError as exc:
        raise BadInputError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        raise BadInputError(
            f"config file {path}: unknown key {unknown[0]!r}; "
            f"known keys are {', '.join(sorted(_CONFIG_KEYS))}"
        )
    return data


def _default(value: Any, default: Any) -> Any:
    """``default`` only when nothing was given: 0 is a value to validate, not a missing one."""
    return default if value is None or value == "" else value


def _pick(flag: Any, env_name: str, environ: Mapping[str, str], config: Mapping[str, Any], key: str) -> Any:
    if flag is not None and flag != ():
        return flag
    if environ.get(env_name, "").strip():
        return environ[env_name].strip()
    return config.get(key)


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadInputError(f"invalid {name} {value!r}: expected a whole number") from None
    if not 1 <= number <= MAX_CONCURRENCY:
        raise BadInputError(f"invalid {name} {value!r}: expected 1 to {MAX_CONCURRENCY}")
    return number


def _seconds(value: Any, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"invalid {name} {value!r}: expected a number of seconds") from None
    if not low <= number <= high:
        raise BadInputError(f"invalid {name} {value!r}: expected {low:g} to {high:g} seconds")
    return number


def load_settings(
    *,
    environ: Mapping[str, str],
    db_url: str | None = None,
    base_url: str | None = None,
    config_file: str | None = None,
    log_format: str | None = None,
    verbosity: int = 0,
    symbols: Any = None,
    intervals: Any = None,
    lookback: str | None = None,
    concurrency: int | None = None,
) -> Settings:
    """Resolve every setting once, from flags, then ``environ``, then the config file, then defaults."""
    config_path = config_file or environ.get("EXTRACTOR_CONFIG", "").strip() or None
    config = _read_config(config_path) if config_path else {}

    def get(flag: Any, env_name: str, key: str) -> Any:
        return _pick(flag, env_name, environ, config, key)

    fmt = str(get(log_format, "LOG_FORMAT", "log_format") or "text").lower()
    if fmt not in LOG_FORMATS:
        raise BadInputError(f"invalid log format {fmt!r} (--log-format / LOG_FORMAT): use text or json")
    if verbosity:
        level = {-1: "ERROR", 1: "INFO"}.get(verbosity, "DEBUG" if verbosity > 1 else "ERROR")
    else:
        level = str(get(None, "LOG_LEVEL", "log_level") or "WARNING").upper()
        if level not in LOG_LEVELS:
            raise BadInputError(f"invalid LOG_LEVEL {level!r}: use one of {', '.join(LOG_LEVELS)}")
    lookback_text = _default(get(lookback, "EXTRACTOR_LOOKBACK", "lookback"), DEFAULT_LOOKBACK)
    state_dir = get(None, "EXTRACTOR_STATE_DIR", "state_dir")
    breaker_environ = {k: v for k, v in environ.items() if k.startswith("CIRCUIT_BREAKER_")}
    db = str(get(db_url, "DATABASE_URL", "database") or DEFAULT_DB_URL)
    base = str(get(base_url, "BINANCE_API_URL", "base_url") or DEFAULT_BASE_URL).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", base):
        raise BadInputError(
            f"invalid exchange URL {base!r} (--base-url / BINANCE_API_URL): expected http(s)://host"
        )
    return Settings(
        db_url=db,
        base_url=base,
        symbols=parse_symbols(get(symbols, "EXTRACTOR_SYMBOLS", "symbols")),
        intervals=parse_intervals(get(intervals, "EXTRACTOR_INTERVALS", "intervals")),
        lookback_ms=parse_duration(str(lookback_text), what="--lookback/EXTRACTOR_LOOKBACK"),
        concurrency=_positive_int(
            _default(get(concurrency, "EXTRACTOR_CONCURRENCY", "concurrency"), DEFAULT_CONCURRENCY),
            "concurrency (--concurrency / EXTRACTOR_CONCURRENCY)",
        ),
        state_dir=Path(state_dir).expanduser() if state_dir else default_state_dir(environ),
        log_format=fmt,
        log_level=level,
        api_key=environ.get("BINANCE_API_KEY") or None,
        read_timeout=_seconds(
            _default(get(None, "EXTRACTOR_TIMEOUT", "timeout"), 10.0),
            "read timeout (EXTRACTOR_TIMEOUT)",
            0.05,
            300,
        ),
        max_attempts=int(
            _seconds(
                _default(get(None, "EXTRACTOR_ATTEMPTS", "attempts"), 10),
                "attempts (EXTRACTOR_ATTEMPTS)",
                1,
                50,
            )
        ),
        backoff_base=_seconds(
            _default(get(None, "EXTRACTOR_BACKOFF", "backoff"), 0.5), "backoff (EXTRACTOR_BACKOFF)", 0, 60
        ),
        breaker_environ=breaker_environ,
    )
