"""Bad input (issue 7: R9): malformed, lower-case or injection-like symbols, unknown intervals, unparsable,
reversed, future or out-of-range dates, unknown database schemes, malformed ``CIRCUIT_BREAKER_*`` values, a
missing or broken config file. Each exits 2 with one line naming the culprit, no traceback and no request;
an unreachable database host exits 75 in one line. Any text given as a time gets an answer, never a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extractor.cli import cli
from tests.fake_exchange import FakeExchange
from tests.reliability_helpers import (
    EXTRACT,
    SHORT_BACKFILL,
    SHORT_END_MS,
    backfill_with,
    exchange_env,
    one_line,
    run_cli,
    sqlite_url_in,
    the_error,
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_url_in(tmp_path)


def env_for(tmp_path: Path, exchange: FakeExchange, db_url: str) -> dict[str, str]:
    return exchange_env(tmp_path / "state", exchange, db_url)


def nothing_sent(exchange: FakeExchange) -> bool:
    """No request reached the exchange: neither its REST API nor its archive."""
    return sum(exchange.request_counts.values()) == 0


BAD_INPUT = [
    (["-s", "btcusdt"], {}, "invalid symbol 'btcusdt'"),
    (["-s", "BTC USDT"], {}, "invalid symbol 'BTC USDT'"),
    (["-s", "BTCUSDT'; DROP TABLE klines;--"], {}, 'invalid symbol "BTCUSDT\'; DROP TABLE klines;--"'),
    (["-s", "A" * 21], {}, f"invalid symbol '{'A' * 21}'"),
    (["-i", "1H"], {}, "unknown interval '1H'"),
    (["-i", "2d"], {}, "unknown interval '2d'"),
    (["--start", "yesterday"], {}, "invalid --start 'yesterday'"),
    (["--start", "2024-13-01"], {}, "invalid --start '2024-13-01'"),
    (["--end", "soon"], {}, "invalid --end 'soon'"),
    (
        ["--start", "2024-02-01", "--end", "2024-01-01"],
        {},
        "--start 2024-02-01T00:00:00Z is not before --end 2024-01-01T00:00:00Z",
    ),
    (["--start", "2999-01-01", "--end", "2999-02-01"], {}, "--start 2999-01-01T00:00:00Z is in the future"),
    pytest.param(
        ["--start", "999999999999999"],
        {},
        "--start",
        id="epoch-beyond-9999",
    ),
    pytest.param(
        ["--start", "60000d"],
        {},
        "--start",
        id="duration-before-1970",
    ),
    (["--concurrency", "0"], {}, "invalid concurrency (--concurrency) '0'"),
    ([], {"EXTRACTOR_CONCURRENCY": "65"}, "invalid concurrency (EXTRACTOR_CONCURRENCY) '65'"),
    ([], {"DATABASE_URL": "postgres://x"}, "unsupported database URL 'postgres://x'"),
    ([], {"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "abc"}, "CIRCUIT_BREAKER_FAILURE_THRESHOLD='abc'"),
    ([], {"CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "-1"}, "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD='-1'"),
    ([], {"CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "0"}, "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD='0'"),
    ([], {"CIRCUIT_BREAKER_ENABLED": "maybe"}, "CIRCUIT_BREAKER_ENABLED='maybe'"),
    ([], {"CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT": "soon"}, "CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT='soon'"),
    ([], {"EXTRACTOR_TIMEOUT": "0"}, "EXTRACTOR_TIMEOUT"),
    ([], {"EXTRACTOR_CONFIG": "/nonexistent/extractor.toml"}, "config file /nonexistent/extractor.toml"),
]


@pytest.mark.parametrize(("changes", "environ", "culprit"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_nothing_is_sent(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    sqlite_url: str,
    changes: list[str],
    environ: dict[str, str],
    culprit: str,
) -> None:
    env = {**env_for(tmp_path, fake_exchange, sqlite_url), **environ}

    result = CliRunner().invoke(cli, backfill_with(["--end", str(SHORT_END_MS), *changes]), env=env)

    assert result.exit_code == 2
    line = one_line(result.stderr)
    assert line.startswith("binance-extractor: error: ")
    assert culprit in line
    assert result.stdout == ""
    assert nothing_sent(fake_exchange)


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["extract", "-s", "btcusdt", "-i", "1m"], "invalid symbol 'btcusdt'"),
        (["extract", "-s", "BTCUSDT", "-i", "1H"], "unknown interval '1H'"),
        (["extract", "-s", "BTCUSDT", "-i", "1m", "--lookback", "yesterday"], "'yesterday'"),
        pytest.param(
            ["extract", "-s", "BTCUSDT", "-i", "1d", "--lookback", "60000d"],
            "--lookback",
            id="lookback-before-1970",
        ),
        (["gaps", "-s", "BTCUSDT", "-i", "1m", "--start", "nope"], "invalid --start 'nope'"),
    ],
)
def test_bad_input_to_the_other_commands_is_one_line_exit_2(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, args: list[str], culprit: str
) -> None:
    result = CliRunner().invoke(cli, args, env=env_for(tmp_path, fake_exchange, sqlite_url))

    assert result.exit_code == 2
    assert culprit in one_line(result.stderr)
    assert nothing_sent(fake_exchange)


def test_a_config_file_that_is_not_toml_is_one_line_exit_2(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    config = tmp_path / "extractor.toml"
    config.write_text("symbols = [BTCUSDT\n")

    result = CliRunner().invoke(
        cli, ["--config", str(config), *EXTRACT], env=env_for(tmp_path, fake_exchange, sqlite_url)
    )

    assert result.exit_code == 2
    assert f"config file {config} is not valid TOML" in one_line(result.stderr)
    assert nothing_sent(fake_exchange)


def test_an_unreachable_database_host_is_exit_75_with_one_error_line(
    tmp_path: Path, fake_exchange: FakeExchange
) -> None:
    url = "mysql+pymysql://root:pw@127.0.0.1:1/x"
    env = {**env_for(tmp_path, fake_exchange, url), "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "2"}

    result = CliRunner().invoke(cli, SHORT_BACKFILL, env=env)

    assert result.exit_code == 75
    line = the_error(result.stderr)  # after the WARNING that the db breaker opened
    assert line.startswith("binance-extractor: error: the db circuit breaker is open after repeated failures")
    assert "of the database at mysql+pymysql://root:***@127.0.0.1:1/x (last error: " in line
    assert "Connection refused" in line
    assert ":pw@" not in result.stderr
    assert nothing_sent(fake_exchange)


@pytest.mark.parametrize(
    ("args", "environ", "culprit"),
    [
        (backfill_with(["-s", "btcusdt"]), {}, "invalid symbol 'btcusdt'"),
        (backfill_with(["--start", os.fsdecode(b"\xff\xfe")]), {}, "invalid --start '\\udcff\\udcfe'"),
        (EXTRACT, {"CIRCUIT_BREAKER_ENABLED": "maybe"}, "CIRCUIT_BREAKER_ENABLED='maybe'"),
    ],
)
def test_bad_input_to_the_installed_script_is_one_line_exit_2(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    sqlite_url: str,
    args: list[str],
    environ: dict[str, str],
    culprit: str,
) -> None:
    result = run_cli(args, {**env_for(tmp_path, fake_exchange, sqlite_url), **environ})

    assert result.returncode == 2
    assert culprit in one_line(result.stderr)
    assert nothing_sent(fake_exchange)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.text(max_size=24), end=st.text(max_size=24))
def test_any_text_as_a_time_gets_an_answer_never_a_crash(
    tmp_path: Path, fake_exchange: FakeExchange, start: str, end: str
) -> None:
    env = env_for(tmp_path, fake_exchange, f"sqlite:///{tmp_path / 'fuzz.db'}")

    result = CliRunner().invoke(
        cli, ["gaps", "-s", "BTCUSDT", "-i", "1m", f"--start={start}", f"--end={end}"], env=env
    )

    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert one_line(result.stderr).startswith("binance-extractor: error: ")
    assert nothing_sent(fake_exchange)
