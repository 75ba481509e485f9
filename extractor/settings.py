"""One Settings object, resolved once: CLI flags > environment > config file > defaults.

Every default lives here, next to its field; the environment is read here and nowhere else; every
value is checked for its type and range, and a bad one is exit 2 naming the flag, variable or key.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from extractor.errors import BadInputError
from extractor.intervals import Interval
from extractor.klines import validate_symbol
from extractor.markets import MARKET_NAMES, SPOT, Market
from extractor.secrets import Redactor, check_credentials, url_secrets
from extractor.when import parse_duration

DEFAULT_DB_URL = "sqlite:///klines.db"
DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
DEFAULT_LOOKBACK = "1d"
MAX_CONCURRENCY = 64
SOURCES = ("auto", "rest", "archive")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ALL_SYMBOLS = "ALL"
API_FAILURE_THRESHOLD = 10
"""A flapping exchange (a third of answers failing) must not open the api breaker by chance."""
DB_FAILURE_THRESHOLD = 5
ARCHIVE_FAILURE_THRESHOLD = 5

_CONFIG_KEYS = {
    "database",
    "base_url",
    "archive_url",
    "market",
    "symbols",
    "quotes",
    "intervals",
    "series",
    "lookback",
    "concurrency",
    "state_dir",
    "log_format",
    "log_level",
    "timeout",
    "attempts",
    "backoff",
    "retry_budget",
    "source",
}
_SERIES_KEYS = {"market", "symbols", "quotes", "intervals"}
_URL = re.compile(r"^https?://[^/\s]+")
T = TypeVar("T")


@dataclass(frozen=True)
class SeriesSpec:
    """Which series a command works on: one market, its symbols (or every TRADING one), intervals."""

    market: Market
    symbols: tuple[str, ...]
    intervals: tuple[Interval, ...]
    quotes: tuple[str, ...] = ()

    @property
    def all_symbols(self) -> bool:
        return self.symbols == (ALL_SYMBOLS,)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, already validated."""

    db_url: str = DEFAULT_DB_URL
    base_url: str | None = None
    """The exchange's REST base URL; None means the market's own host."""
    archive_url: str = DEFAULT_ARCHIVE_URL
    specs: tuple[SeriesSpec, ...] = ()
    lookback_ms: int = 86_400_000
    concurrency: int = 32
    state_dir: Path = field(default_factory=lambda: default_state_dir(os.environ))
    log_format: str = "text"
    log_level: str | None = None
    """None: INFO on a terminal, WARNING otherwise (cron stays quiet)."""
    api_key: str | None = None
    read_timeout: float = 10.0
    attempts: int = 10
    backoff: float = 0.5
    retry_budget: float = 30.0
    source: str = "auto"
    shard: Shard | None = None
    source_address: str | None = None
    breaker_environ: Mapping[str, str] = field(default_factory=dict)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line or an error message."""
        return secret_values(self.db_url, self.api_key)

    @property
    def redact(self) -> Redactor:
        return Redactor(self.secrets)

    @property
    def market(self) -> Market:
        """The market of a command that works on one (the first configured)."""
        return self.specs[0].market if self.specs else SPOT

    def base_url_for(self, market: Market) -> str:
        return self.base_url or market.base_url


def secret_values(db_url: str | None, api_key: str | None) -> tuple[str, ...]:
    """The secrets of a database URL and an API key: the one place that knows what a secret is."""
    return (*url_secrets(db_url), *((api_key,) if api_key else ()))


def default_state_dir(environ: Mapping[str, str]) -> Path:
    cache = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(cache) / "binance-extractor"


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
    symbols = split_list(values)
    if ALL_SYMBOLS in symbols:
        if len(symbols) > 1:
            raise BadInputError("-s ALL takes every TRADING symbol: give it alone, not beside other symbols")
        return (ALL_SYMBOLS,)
    return tuple(validate_symbol(s) for s in symbols)


def parse_intervals(values: Any) -> tuple[Interval, ...]:
    return tuple(Interval.parse(i) for i in split_list(values))


def parse_shard(text: str, where: str) -> Shard:
    found = re.fullmatch(r"\s*([0-9]{1,4})\s*/\s*([0-9]{1,4})\s*", text)
    if found is None or not 1 <= int(found.group(1)) <= int(found.group(2)):
        raise BadInputError(f"invalid shard {text!r} ({where}): use K/N with 1 <= K <= N, e.g. 2/4")
    return Shard(int(found.group(1)), int(found.group(2)))


class _Sources:
    """Where each value comes from, in precedence order, and how to name it in a message."""

    def __init__(
        self, environ: Mapping[str, str], config: Mapping[str, Any], config_path: str | None
    ) -> None:
        self.environ = environ
        self.config = config
        self.config_path = config_path

    def pick(self, flag: Any, flag_name: str | None, env: str | None, key: str | None) -> tuple[Any, str]:
        """The value and its name: the flag if given, else the variable, else the config key."""
        if flag is not None and flag != ():
            return flag, flag_name or "flag"
        if env is not None and self.environ.get(env, "").strip():
            return self.environ[env].strip(), env
        if key is not None and key in self.config:
            return self.config[key], f"{key} in {self.config_path}"
        return None, ""


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


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"invalid {name}: expected text, got {type(value).__name__} {value!r}")
    return value


def _integer(given: Any, name: str, low: int, high: int) -> int:
    """A whole number, from an integer or its digits; 2.9 and ``true`` are refused, not rounded."""
    value = given
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise BadInputError(f"invalid {name} {given!r}: expected a whole number from {low} to {high}")
    return value


def _seconds(given: Any, name: str, low: float, high: float) -> float:
    value = given
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadInputError(f"invalid {name} {given!r}: expected a number of seconds") from None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise BadInputError(f"invalid {name} {given!r}: expected a number of seconds")
    if not low <= value <= high:
        raise BadInputError(f"invalid {name} {given!r}: expected {low:g} to {high:g} seconds")
    return float(value)


def _choice(value: Any, name: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    word = _text(value, name).strip()
    word = word.upper() if upper else word.lower()
    if word not in choices:
        raise BadInputError(f"invalid {name} {value!r}: use one of {', '.join(choices)}")
    return word


def _url(value: Any, name: str) -> str:
    url = _text(value, name).strip().rstrip("/")
    if not _URL.match(url):
        raise BadInputError(f"invalid exchange URL {url!r} ({name}): expected http(s)://host")
    return url


def _list(value: Any, name: str) -> Any:
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise BadInputError(f"invalid {name}: expected a list of text, got {value!r}")
    if value is not None and not isinstance(value, str | list | tuple):
        raise BadInputError(f"invalid {name}: expected a list of text, got {type(value).__name__} {value!r}")
    return value


def _named(name: str, parse: Callable[[Any], T], value: Any) -> T:
    """``parse(value)``; its refusal names where the value came from (a flag the user just typed aside)."""
    try:
        return parse(value)
    except BadInputError as exc:
        if name.startswith("-") or name in str(exc):
            raise
        raise BadInputError(f"{exc} ({name})") from None


def _market(value: Any, name: str) -> Market:
    return _named(name, lambda given: Market.parse(_text(given, name)), value)


def _symbols(value: Any, name: str) -> tuple[str, ...]:
    return _named(name, lambda given: parse_symbols(_list(given, name)), value)


def _intervals(value: Any, name: str) -> tuple[Interval, ...]:
    return _named(name, lambda given: parse_intervals(_list(given, name)), value)


def _specs(
    picked: _Sources, market_flag: str | None, symbols: Any, intervals: Any, quotes: Any
) -> tuple[SeriesSpec, ...]:
    """The series to work on: flags or variables make one spec; else the config's ``[[series]]``
    tables (those of the market a flag or variable chose), else the config's top level."""
    given_market, given_name = picked.pick(market_flag, "--market", "EXTRACTOR_MARKET", None)
    top_market, top_name = picked.pick(None, None, None, "market")
    default_market = SPOT if top_market is None else _market(top_market, top_name)
    market = default_market if given_market is None else _market(given_market, given_name)
    chosen_symbols, symbols_name = picked.pick(symbols, "-s/--symbol", "EXTRACTOR_SYMBOLS", None)
    chosen_intervals, intervals_name = picked.pick(intervals, "-i/--interval", "EXTRACTOR_INTERVALS", None)
    chosen_quotes, quotes_name = picked.pick(quotes, "--quote", "EXTRACTOR_QUOTES", None)
    tables = picked.config.get("series", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise BadInputError(f"invalid series in {picked.config_path}: expected [[series]] tables")
    if chosen_symbols is None and chosen_intervals is None and tables:
        where = picked.config_path
        out = []
        for number, table in enumerate(tables, 1):
            unknown = sorted(set(table) - _SERIES_KEYS)
            if unknown:
                raise BadInputError(f"[[series]] {number} in {where}: unknown key {unknown[0]!r}")
            name = f"[[series]] {number} in {where}"
            out.append(
                SeriesSpec(
                    _market(table["market"], f"market of {name}") if "market" in table else default_market,
                    _symbols(table.get("symbols"), f"symbols of {name}"),
                    _intervals(table.get("intervals"), f"intervals of {name}"),
                    tuple(split_list(_list(table.get("quotes"), f"quotes of {name}"))),
                )
            )
        chosen = [spec for spec in out if given_market is None or spec.market is market]
        if chosen:
            return tuple(chosen)
    if chosen_symbols is None:
        chosen_symbols, symbols_name = picked.pick(None, None, None, "symbols")
    if chosen_intervals is None:
        chosen_intervals, intervals_name = picked.pick(None, None, None, "intervals")
    if chosen_quotes is None:
        chosen_quotes, quotes_name = picked.pick(None, None, None, "quotes")
    return (
        SeriesSpec(
            market,
            _symbols(chosen_symbols, symbols_name),
            _intervals(chosen_intervals, intervals_name),
            tuple(split_list(_list(chosen_quotes, quotes_name))),
        ),
    )


def load_settings(
    *,
    environ: Mapping[str, str],
    db_url: str | None = None,
    base_url: str | None = None,
    config_file: str | None = None,
    log_format: str | None = None,
    verbosity: int = 0,
    market: str | None = None,
    symbols: Any = None,
    intervals: Any = None,
    quotes: Any = None,
    lookback: str | None = None,
    concurrency: int | None = None,
    source: str | None = None,
    archive_url: str | None = None,
    shard: str | None = None,
) -> Settings:
    """Resolve every setting once, from flags, then ``environ``, then the config file, then defaults."""
    config_path = config_file or environ.get("EXTRACTOR_CONFIG", "").strip() or None
    picked = _Sources(environ, _read_config(config_path) if config_path else {}, config_path)
    defaults = Settings()

    def get(
        flag: Any, flag_name: str | None, env: str | None, key: str | None, default: Any
    ) -> tuple[Any, str]:
        value, name = picked.pick(flag, flag_name, env, key)
        return (default, "default") if value is None or value == "" else (value, name)

    fmt, fmt_name = get(log_format, "--log-format", "LOG_FORMAT", "log_format", defaults.log_format)
    level: str | None = None
    if verbosity:
        level = {-1: "ERROR", 1: "INFO"}.get(verbosity, "DEBUG" if verbosity > 1 else "ERROR")
    else:
        chosen, level_name = get(None, None, "LOG_LEVEL", "log_level", None)
        level = None if chosen is None else _choice(chosen, level_name, LOG_LEVELS, upper=True)
    db, db_name = get(db_url, "--db", "DATABASE_URL", "database", defaults.db_url)
    db = _text(db, db_name)
    check_credentials(db, f"the database URL ({db_name})")
    base, base_name = get(base_url, "--base-url", "BINANCE_API_URL", "base_url", None)
    archive, archive_name = get(
        archive_url, "--archive-url", "BINANCE_ARCHIVE_URL", "archive_url", defaults.archive_url
    )
    lookback_text, lookback_name = get(
        lookback, "--lookback", "EXTRACTOR_LOOKBACK", "lookback", DEFAULT_LOOKBACK
    )
    state_dir, state_dir_name = get(None, None, "EXTRACTOR_STATE_DIR", "state_dir", None)
    chosen_source, source_name = get(source, "--source", "EXTRACTOR_SOURCE", "source", defaults.source)
    shard_value, shard_name = get(shard, "--shard", "EXTRACTOR_SHARD", None, None)
    if shard_value is None and environ.get("JOB_COMPLETION_INDEX", "").strip():
        index = _integer(environ["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX", 0, 9999)
        count = _integer(
            environ.get("EXTRACTOR_SHARDS", ""), "EXTRACTOR_SHARDS (with JOB_COMPLETION_INDEX)", 1, 9999
        )
        shard_value, shard_name = f"{index + 1}/{count}", "JOB_COMPLETION_INDEX and EXTRACTOR_SHARDS"

    def number(flag: Any, flag_name: str | None, env: str, key: str, default: Any) -> tuple[Any, str]:
        value, name = get(flag, flag_name, env, key, default)
        return value, f"{key} ({name})" if name != "default" else key

    concurrency_value, concurrency_name = number(
        concurrency, "--concurrency", "EXTRACTOR_CONCURRENCY", "concurrency", defaults.concurrency
    )
    timeout_value, timeout_name = number(None, None, "EXTRACTOR_TIMEOUT", "timeout", defaults.read_timeout)
    attempts_value, attempts_name = number(None, None, "EXTRACTOR_ATTEMPTS", "attempts", defaults.attempts)
    backoff_value, backoff_name = number(None, None, "EXTRACTOR_BACKOFF", "backoff", defaults.backoff)
    budget_value, budget_name = number(
        None, None, "EXTRACTOR_RETRY_BUDGET", "retry_budget", defaults.retry_budget
    )
    address = environ.get("EXTRACTOR_SOURCE_ADDRESS", "").strip() or None
    return Settings(
        db_url=db,
        base_url=None if base is None else _url(base, base_name),
        archive_url=_url(archive, archive_name),
        specs=_specs(picked, market, symbols, intervals, quotes),
        lookback_ms=parse_duration(_text(lookback_text, lookback_name), what=f"lookback ({lookback_name})"),
        concurrency=_integer(concurrency_value, concurrency_name, 1, MAX_CONCURRENCY),
        state_dir=Path(_text(state_dir, state_dir_name)).expanduser()
        if state_dir
        else default_state_dir(environ),
        log_format=_choice(fmt, fmt_name, LOG_FORMATS),
        log_level=level,
        api_key=environ.get("BINANCE_API_KEY") or None,
        read_timeout=_seconds(timeout_value, timeout_name, 0.05, 300),
        attempts=_integer(attempts_value, attempts_name, 1, 50),
        backoff=_seconds(backoff_value, backoff_name, 0, 60),
        retry_budget=_seconds(budget_value, budget_name, 0, 3600),
        source=_choice(chosen_source, source_name, SOURCES),
        shard=None if shard_value is None else parse_shard(_text(shard_value, shard_name), shard_name),
        source_address=address,
        breaker_environ={k: v for k, v in environ.items() if k.startswith("CIRCUIT_BREAKER_")},
    )


__all__ = ["MARKET_NAMES", "SOURCES", "SeriesSpec", "Settings", "Shard", "load_settings", "secret_values"]
