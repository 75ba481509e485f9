"""Settings: flags > environment > config file > defaults, and every bad value refused naming its culprit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extractor.errors import EXIT_BAD_INPUT, BadInputError
from extractor.intervals import Interval
from extractor.markets import COINM, SPOT, USDM
from extractor.settings import (
    DEFAULT_DB_URL,
    MAX_CONCURRENCY,
    SeriesSpec,
    Settings,
    Shard,
    load_settings,
    split_list,
)

HOUR = Interval.parse("1h")
MINUTE = Interval.parse("1m")


@pytest.fixture
def config(tmp_path: Path) -> Any:
    """Writes a config file and returns its path as text."""

    def write(text: str) -> str:
        path = tmp_path / "extractor.toml"
        path.write_text(text)
        return str(path)

    return write


def refused(**kwargs: Any) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(BadInputError) as caught:
        load_settings(**kwargs)
    assert caught.value.exit_code == EXIT_BAD_INPUT
    return str(caught.value)


# -- precedence -----------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    loaded = load_settings(environ={"HOME": str(tmp_path)})
    assert loaded.db_url == DEFAULT_DB_URL == "sqlite:///klines.db"
    assert loaded.base_url is None
    assert loaded.base_url_for(USDM) == "https://fapi.binance.com"
    assert loaded.specs == (SeriesSpec(SPOT, (), ()),)
    assert loaded.market is SPOT
    assert (loaded.concurrency, loaded.attempts, loaded.retry_budget) == (32, 10, 30.0)
    assert (loaded.read_timeout, loaded.backoff, loaded.lookback_ms) == (10.0, 0.5, 86_400_000)
    assert (loaded.source, loaded.log_format, loaded.log_level, loaded.shard) == ("auto", "text", None, None)
    assert loaded.state_dir == tmp_path / ".cache" / "binance-extractor"
    assert loaded.api_key is None and loaded.secrets == ()


def test_flag_beats_env_beats_config_beats_default(config: Any) -> None:
    path = config(
        'database = "sqlite:///from-config.db"\nsymbols = ["BNBUSDT"]\nlookback = "2h"\n'
        'concurrency = 4\nsource = "archive"\nretry_budget = 12\nmarket = "coinm"\n'
    )
    env = {"EXTRACTOR_CONFIG": path, "DATABASE_URL": "sqlite:///from-env.db", "EXTRACTOR_CONCURRENCY": "8"}

    from_config = load_settings(environ={"EXTRACTOR_CONFIG": path})
    assert from_config.db_url == "sqlite:///from-config.db"
    assert from_config.specs == (SeriesSpec(COINM, ("BNBUSDT",), ()),)
    assert (from_config.lookback_ms, from_config.concurrency) == (2 * 3_600_000, 4)
    assert (from_config.source, from_config.retry_budget) == ("archive", 12.0)

    from_env = load_settings(
        environ={
            **env,
            "EXTRACTOR_SOURCE": "auto",
            "EXTRACTOR_RETRY_BUDGET": "45",
            "EXTRACTOR_MARKET": "usdm",
        }
    )
    assert from_env.db_url == "sqlite:///from-env.db"
    assert (from_env.concurrency, from_env.source, from_env.retry_budget) == (8, "auto", 45.0)
    assert from_env.market is USDM

    from_flags = load_settings(
        environ=env, db_url="sqlite:///flag.db", concurrency=16, source="rest", market="spot"
    )
    assert (from_flags.db_url, from_flags.concurrency, from_flags.source) == ("sqlite:///flag.db", 16, "rest")
    assert from_flags.market is SPOT
    assert load_settings(environ={}).db_url == "sqlite:///klines.db"


def test_a_blank_variable_counts_as_unset(config: Any) -> None:
    path = config("concurrency = 4\n")
    loaded = load_settings(environ={"EXTRACTOR_CONFIG": path, "EXTRACTOR_CONCURRENCY": "  "})
    assert loaded.concurrency == 4


def test_the_config_flag_beats_the_config_variable(config: Any, tmp_path: Path) -> None:
    path = config("concurrency = 4\n")
    loaded = load_settings(environ={"EXTRACTOR_CONFIG": str(tmp_path / "missing.toml")}, config_file=path)
    assert loaded.concurrency == 4


@pytest.mark.parametrize(
    ("verbosity", "env", "level"),
    [
        (0, {}, None),
        (1, {}, "INFO"),
        (2, {}, "DEBUG"),
        (3, {}, "DEBUG"),
        (-1, {}, "ERROR"),
        (-2, {}, "ERROR"),
        (0, {"LOG_LEVEL": "warning"}, "WARNING"),
        (1, {"LOG_LEVEL": "ERROR"}, "INFO"),
    ],
)
def test_log_level_from_verbosity_then_log_level(
    verbosity: int, env: dict[str, str], level: str | None
) -> None:
    assert load_settings(environ=env, verbosity=verbosity).log_level == level


def test_urls_lose_a_trailing_slash_and_keep_their_host() -> None:
    loaded = load_settings(
        environ={
            "BINANCE_API_URL": "https://data-api.binance.vision/",
            "BINANCE_ARCHIVE_URL": "http://127.0.0.1:9/",
        }
    )
    assert loaded.base_url == "https://data-api.binance.vision"
    assert loaded.base_url_for(COINM) == "https://data-api.binance.vision"
    assert loaded.archive_url == "http://127.0.0.1:9"
    assert (
        load_settings(environ={}, base_url="http://nonexistent.invalid").base_url
        == "http://nonexistent.invalid"
    )


def test_state_dir_follows_xdg_then_home_then_its_own_variable(tmp_path: Path) -> None:
    assert (
        load_settings(environ={"XDG_CACHE_HOME": str(tmp_path)}).state_dir == tmp_path / "binance-extractor"
    )
    explicit = load_settings(environ={"EXTRACTOR_STATE_DIR": "~/state", "HOME": str(tmp_path)})
    assert explicit.state_dir == Path("~/state").expanduser()


def test_breaker_variables_are_kept_for_the_breakers() -> None:
    env = {"CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "3", "CIRCUIT_BREAKER_ENABLED": "false", "OTHER": "x"}
    assert dict(load_settings(environ=env).breaker_environ) == {
        "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "3",
        "CIRCUIT_BREAKER_ENABLED": "false",
    }


# -- series: markets, symbols, intervals ----------------------------------------------------------


def test_symbols_and_intervals_from_flags_env_and_config(config: Any) -> None:
    path = config('symbols = ["BNBUSDT"]\nintervals = ["1d"]\nquotes = ["USDT"]\n')
    env = {"EXTRACTOR_CONFIG": path}
    assert load_settings(environ=env).specs == (
        SeriesSpec(SPOT, ("BNBUSDT",), (Interval.parse("1d"),), ("USDT",)),
    )
    from_env = load_settings(
        environ={**env, "EXTRACTOR_SYMBOLS": "BTCUSDT,ETHUSDT", "EXTRACTOR_INTERVALS": "1m"}
    )
    assert from_env.specs == (SeriesSpec(SPOT, ("BTCUSDT", "ETHUSDT"), (MINUTE,), ("USDT",)),)
    from_flags = load_settings(environ=env, symbols=("ETHUSDT", "BTCUSDT,ETHUSDT"), intervals=("1h",))
    assert from_flags.specs == (SeriesSpec(SPOT, ("ETHUSDT", "BTCUSDT"), (HOUR,), ("USDT",)),)


def test_market_from_flag_or_environment() -> None:
    assert load_settings(environ={}, market="usdm", symbols=("BTCUSDT",)).market is USDM
    assert load_settings(environ={"EXTRACTOR_MARKET": "COINM"}).market is COINM
    assert load_settings(environ={"EXTRACTOR_MARKET": "coinm"}, market="spot").market is SPOT


SEVERAL_MARKETS = """
[[series]]
market = "spot"
symbols = ["BTCUSDT", "ETHUSDT"]
intervals = ["1m", "1h"]

[[series]]
market = "usdm"
symbols = ["BTCUSDT"]
intervals = ["1h"]

[[series]]
market = "coinm"
symbols = "BTCUSD_PERP"
intervals = "1d"
"""


def test_series_tables_configure_several_markets(config: Any) -> None:
    loaded = load_settings(environ={"EXTRACTOR_CONFIG": config(SEVERAL_MARKETS)})
    assert loaded.specs == (
        SeriesSpec(SPOT, ("BTCUSDT", "ETHUSDT"), (MINUTE, HOUR)),
        SeriesSpec(USDM, ("BTCUSDT",), (HOUR,)),
        SeriesSpec(COINM, ("BTCUSD_PERP",), (Interval.parse("1d"),)),
    )
    assert loaded.market is SPOT


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_chosen_market_narrows_the_series_tables_to_it(config: Any, how: str) -> None:
    env = {"EXTRACTOR_CONFIG": config(SEVERAL_MARKETS)}
    if how == "flag":
        loaded = load_settings(environ=env, market="usdm")
    else:
        loaded = load_settings(environ={**env, "EXTRACTOR_MARKET": "usdm"})
    assert loaded.specs == (SeriesSpec(USDM, ("BTCUSDT",), (HOUR,)),)


def test_a_market_no_table_names_falls_back_to_the_top_level_series(config: Any) -> None:
    path = config(
        'symbols = ["BNBUSDT"]\nintervals = ["1h"]\n' + SEVERAL_MARKETS.replace('"coinm"', '"usdm"')
    )
    loaded = load_settings(environ={"EXTRACTOR_CONFIG": path}, market="coinm")
    assert loaded.specs == (SeriesSpec(COINM, ("BNBUSDT",), (HOUR,)),)


def test_a_table_without_a_market_takes_the_top_level_one(config: Any) -> None:
    path = config('market = "usdm"\n[[series]]\nsymbols = ["BTCUSDT"]\nintervals = ["1h"]\n')
    assert load_settings(environ={"EXTRACTOR_CONFIG": path}).specs == (
        SeriesSpec(USDM, ("BTCUSDT",), (HOUR,)),
    )


def test_symbol_or_interval_flags_replace_the_series_tables(config: Any) -> None:
    env = {"EXTRACTOR_CONFIG": config(SEVERAL_MARKETS)}
    loaded = load_settings(environ=env, symbols=("BNBUSDT",), intervals=("1m",))
    assert loaded.specs == (SeriesSpec(SPOT, ("BNBUSDT",), (MINUTE,)),)


def test_all_symbols_stands_alone() -> None:
    loaded = load_settings(environ={"EXTRACTOR_SYMBOLS": "ALL"}, market="usdm")
    assert loaded.specs[0].all_symbols and loaded.specs[0].symbols == ("ALL",)
    assert not load_settings(environ={}, symbols=("BTCUSDT",)).specs[0].all_symbols
    for symbols in (("ALL", "BTCUSDT"), ("BTCUSDT,ALL",)):
        assert "-s ALL takes every TRADING symbol: give it alone" in refused(symbols=symbols)


def test_lists_flatten_repeats_and_commas() -> None:
    assert split_list(("BTCUSDT,ETHUSDT", " BNBUSDT ", "BTCUSDT", "")) == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    assert split_list(None) == []
    assert split_list("a, b,,a") == ["a", "b"]


# -- shards ---------------------------------------------------------------------------------------


def test_shard_from_flag_or_variable() -> None:
    assert load_settings(environ={}, shard="2/4").shard == Shard(2, 4)
    assert str(load_settings(environ={"EXTRACTOR_SHARD": " 3 / 8 "}).shard) == "3/8"
    assert load_settings(environ={"EXTRACTOR_SHARD": "3/8"}, shard="1/2").shard == Shard(1, 2)


@pytest.mark.parametrize(("index", "count", "shard"), [("0", "4", Shard(1, 4)), ("3", "4", Shard(4, 4))])
def test_an_indexed_job_counts_from_zero_and_shards_from_one(index: str, count: str, shard: Shard) -> None:
    env = {"JOB_COMPLETION_INDEX": index, "EXTRACTOR_SHARDS": count}
    assert load_settings(environ=env).shard == shard
    assert load_settings(environ=env, shard="2/2").shard == Shard(2, 2)


@pytest.mark.parametrize(
    ("env", "culprit"),
    [
        ({"EXTRACTOR_SHARD": "0/4"}, "invalid shard '0/4' (EXTRACTOR_SHARD): use K/N with 1 <= K <= N"),
        ({"EXTRACTOR_SHARD": "5/4"}, "invalid shard '5/4' (EXTRACTOR_SHARD)"),
        ({"EXTRACTOR_SHARD": "a/b"}, "invalid shard 'a/b' (EXTRACTOR_SHARD)"),
        ({"JOB_COMPLETION_INDEX": "0"}, "invalid EXTRACTOR_SHARDS (with JOB_COMPLETION_INDEX) ''"),
        ({"JOB_COMPLETION_INDEX": "x", "EXTRACTOR_SHARDS": "4"}, "invalid JOB_COMPLETION_INDEX 'x'"),
        (
            {"JOB_COMPLETION_INDEX": "4", "EXTRACTOR_SHARDS": "4"},
            "invalid shard '5/4' (JOB_COMPLETION_INDEX and EXTRACTOR_SHARDS)",
        ),
    ],
)
def test_bad_shards_name_their_culprit(env: dict[str, str], culprit: str) -> None:
    assert culprit in refused(environ=env)


def test_a_bad_shard_flag_is_named() -> None:
    assert "invalid shard '1-4' (--shard)" in refused(shard="1-4")


# -- wrong values and wrong types -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "culprits"),
    [
        (
            {"EXTRACTOR_CONCURRENCY": "0"},
            ["concurrency (EXTRACTOR_CONCURRENCY)", "'0'", f"1 to {MAX_CONCURRENCY}"],
        ),
        ({"EXTRACTOR_CONCURRENCY": "65"}, ["EXTRACTOR_CONCURRENCY", "'65'"]),
        ({"EXTRACTOR_CONCURRENCY": "many"}, ["EXTRACTOR_CONCURRENCY", "'many'"]),
        ({"EXTRACTOR_CONCURRENCY": "2.9"}, ["EXTRACTOR_CONCURRENCY", "'2.9'", "whole number"]),
        ({"EXTRACTOR_ATTEMPTS": "0"}, ["attempts (EXTRACTOR_ATTEMPTS)"]),
        ({"EXTRACTOR_TIMEOUT": "0"}, ["timeout (EXTRACTOR_TIMEOUT)", "0.05 to 300 seconds"]),
        ({"EXTRACTOR_TIMEOUT": "nan"}, ["timeout (EXTRACTOR_TIMEOUT)", "number of seconds"]),
        ({"EXTRACTOR_BACKOFF": "-1"}, ["backoff (EXTRACTOR_BACKOFF)"]),
        ({"EXTRACTOR_RETRY_BUDGET": "-1"}, ["retry_budget (EXTRACTOR_RETRY_BUDGET)", "'-1'"]),
        ({"EXTRACTOR_RETRY_BUDGET": "soon"}, ["retry_budget (EXTRACTOR_RETRY_BUDGET)", "'soon'"]),
        ({"EXTRACTOR_RETRY_BUDGET": "inf"}, ["retry_budget (EXTRACTOR_RETRY_BUDGET)"]),
        ({"EXTRACTOR_SOURCE": "ftp"}, ["EXTRACTOR_SOURCE", "'ftp'", "auto, rest, archive"]),
        ({"EXTRACTOR_MARKET": "futures"}, ["EXTRACTOR_MARKET", "'futures'", "spot, usdm"]),
        ({"EXTRACTOR_LOOKBACK": "1M"}, ["lookback (EXTRACTOR_LOOKBACK)", "'1M'"]),
        ({"LOG_FORMAT": "xml"}, ["LOG_FORMAT", "'xml'", "text, json"]),
        ({"LOG_LEVEL": "LOUD"}, ["LOG_LEVEL", "'LOUD'"]),
        ({"EXTRACTOR_SYMBOLS": "btcusdt"}, ["EXTRACTOR_SYMBOLS", "'btcusdt'"]),
        ({"EXTRACTOR_INTERVALS": "1H"}, ["EXTRACTOR_INTERVALS", "'1H'"]),
        ({"BINANCE_API_URL": "ftp://x"}, ["BINANCE_API_URL", "'ftp://x'"]),
        ({"BINANCE_ARCHIVE_URL": "data.binance.vision"}, ["BINANCE_ARCHIVE_URL"]),
        ({"DATABASE_URL": "mysql+pymysql://bot:p@ss@db/x"}, ["DATABASE_URL", "URL-encoded"]),
    ],
)
def test_bad_environment_values_name_the_culprit(env: dict[str, str], culprits: list[str]) -> None:
    message = refused(environ=env)
    for culprit in culprits:
        assert culprit in message, message


@pytest.mark.parametrize(
    ("flags", "culprits"),
    [
        ({"concurrency": 0}, ["concurrency (--concurrency)"]),
        ({"market": "spott"}, ["unknown market 'spott'"]),
        ({"source": "s3"}, ["--source", "'s3'"]),
        ({"lookback": "forever"}, ["lookback (--lookback)"]),
        ({"log_format": "yaml"}, ["--log-format"]),
        ({"base_url": "api.binance.com"}, ["--base-url", "expected http(s)://host"]),
        ({"db_url": "mysql+pymysql://bot:a/b@db/x"}, ["--db", "URL-encoded"]),
        ({"symbols": ("BTC/USDT",)}, ["'BTC/USDT'"]),
        ({"intervals": ("1y",)}, ["'1y'"]),
    ],
)
def test_bad_flags_name_the_culprit(flags: dict[str, Any], culprits: list[str]) -> None:
    message = refused(**flags)
    for culprit in culprits:
        assert culprit in message, message


@pytest.mark.parametrize(
    ("line", "culprits"),
    [
        ("concurrency = 2.9", ["concurrency", "2.9", "whole number"]),
        ("concurrency = true", ["concurrency", "True", "whole number"]),
        ('concurrency = "2.9"', ["concurrency", "'2.9'"]),
        ("attempts = 2.5", ["attempts", "2.5"]),
        ("timeout = true", ["timeout", "True"]),
        ('retry_budget = "soon"', ["retry_budget", "'soon'"]),
        ("backoff = [1]", ["backoff", "[1]"]),
        ("symbols = 5", ["symbols", "expected a list of text", "5"]),
        ("symbols = [5]", ["symbols", "expected a list of text"]),
        ("intervals = 60", ["intervals", "expected a list of text"]),
        ("quotes = {usdt = 1}", ["quotes", "expected a list of text"]),
        ("market = 5", ["market", "expected text"]),
        ('market = "futures"', ["market", "'futures'"]),
        ("database = 5", ["database", "expected text"]),
        ("lookback = 90", ["lookback", "expected text"]),
        ("log_format = 1", ["log_format", "expected text"]),
        ('log_level = "LOUD"', ["log_level", "'LOUD'"]),
        ("source = true", ["source", "expected text"]),
        ("base_url = 1", ["base_url", "expected text"]),
        ("state_dir = 5", ["state_dir", "expected text"]),
        ('symbols = ["btc"]', ["symbols", "'btc'"]),
        ('intervals = ["1H"]', ["intervals", "'1H'"]),
        ("series = 5", ["series", "[[series]] tables"]),
        ("series = [1, 2]", ["series", "[[series]] tables"]),
    ],
)
def test_wrong_types_in_the_config_file_are_exit_2_naming_the_key(
    config: Any, line: str, culprits: list[str]
) -> None:
    path = config(line + "\n")
    message = refused(environ={"EXTRACTOR_CONFIG": path})
    assert path in message, message
    for culprit in culprits:
        assert culprit in message, message


@pytest.mark.parametrize(
    ("table", "culprits"),
    [
        ('market = "futures"\nsymbols = ["BTCUSDT"]', ["[[series]] 2", "'futures'"]),
        ("market = 1", ["market of [[series]] 2", "expected text"]),
        ("symbols = 5", ["symbols of [[series]] 2", "expected a list of text"]),
        ('symbols = ["BTCUSDT"]\nintervals = [60]', ["intervals of [[series]] 2"]),
        ('symbols = ["btc"]', ["[[series]] 2", "'btc'"]),
        ('symbol = ["BTCUSDT"]', ["[[series]] 2", "unknown key 'symbol'"]),
    ],
)
def test_a_bad_series_table_is_named_by_its_number(config: Any, table: str, culprits: list[str]) -> None:
    path = config(f'[[series]]\nsymbols = ["BTCUSDT"]\n\n[[series]]\n{table}\n')
    message = refused(environ={"EXTRACTOR_CONFIG": path})
    assert path in message
    for culprit in culprits:
        assert culprit in message, message


def test_config_file_problems_are_bad_input(config: Any, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    assert f"config file {missing} does not exist" in refused(environ={"EXTRACTOR_CONFIG": missing})
    assert "not valid TOML" in refused(config_file=config("symbols = [\n"))
    message = refused(config_file=config('databse = "x"\n'))
    assert "unknown key 'databse'" in message and "database" in message
    assert "cannot be read" in refused(config_file=str(tmp_path))


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_are_the_url_password_and_api_key() -> None:
    loaded = load_settings(
        environ={"DATABASE_URL": "mysql+pymysql://root:s3cr%40t@db:3306/x", "BINANCE_API_KEY": "k3y"}
    )
    assert set(loaded.secrets) == {"s3cr%40t", "s3cr@t", "k3y"}
    assert loaded.redact("login s3cr@t with k3y at mysql+pymysql://root:s3cr%40t@db:3306/x") == (
        "login *** with *** at mysql+pymysql://root:***@db:3306/x"
    )


def test_a_password_that_must_be_encoded_is_refused_without_a_trace_of_it(config: Any) -> None:
    password = "Zq9@Xk7:Wv"
    message = refused(
        environ={"EXTRACTOR_CONFIG": config(f'database = "mysql+pymysql://bot:{password}@db/x"\n')}
    )
    assert "password in the database URL (database in" in message
    assert not any(password[i : i + 3] in message for i in range(len(password) - 2))


def test_settings_are_plain_values() -> None:
    assert Settings().db_url == DEFAULT_DB_URL
    with pytest.raises(AttributeError):
        Settings().db_url = "x"  # type: ignore[misc]
