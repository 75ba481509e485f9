"""``breakers`` and ``check``, and how every failure reaches the user: exit code, one line, no secret.

The harness is ``tests/cli_harness.py``. Exit codes are those of the README's table and of
``extractor/errors.py``; every ``ExtractorError`` class goes through the CLI's one outer handler here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from extractor import errors
from extractor.cli import ExtractorGroup
from tests.cli_harness import Extractor
from tests.services import free_port
from tests.test_errors import _every_subclass

README = Path(__file__).resolve().parent.parent / "README.md"

# ---------------------------------------------------------------------------------------------- breakers


def test_breakers_status_shows_each_breaker_with_thresholds_from_the_environment(run: Extractor) -> None:
    env = {
        "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "7",
        "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "3",
        "CIRCUIT_BREAKER_RECOVERY_TIMEOUT": "90",
        "BINANCE_API_URL": f"http://127.0.0.1:{free_port()}",
    }
    db_port = free_port()
    db = f"mysql+pymysql://bot:s3cret@127.0.0.1:{db_port}/market"
    assert run("breakers", **env).stdout == "no breaker has recorded anything yet\n"
    failed = run("check", DATABASE_URL=db, **env)
    assert failed.exit_code == 75
    assert "s3cret" not in failed.output

    for command in ("breakers", "breakers status"):
        result = run(command, **env)
        assert result.exit_code == 0, result.output
        api, db_line = result.stdout.splitlines()
        assert re.fullmatch(
            r"api:127\.0\.0\.1:\d+ +CLOSED    failures 1/7  recovery 90\.0s  "
            r"last failure \d{4}-\d\d-\d\dT[\d:]{8}Z",
            api,
        ), api
        assert re.fullmatch(
            rf"db:mysql\+pymysql://127\.0\.0\.1:{db_port}/market +OPEN      failures 3/3  recovery 90\.0s  "
            r"last failure \d{4}-\d\d-\d\dT[\d:]{8}Z  next trial in \d+\.\ds",
            db_line,
        ), db_line

    as_json = run("breakers --json", **env)
    assert as_json.exit_code == 0, as_json.output
    states = {info["name"].partition(":")[0]: info for info in json.loads(as_json.stdout)}
    assert (states["api"]["state"], states["api"]["failure_count"]) == ("CLOSED", 1)
    assert states["api"]["failure_threshold"] == 7
    assert (states["db"]["state"], states["db"]["failure_threshold"]) == ("OPEN", 3)
    assert states["db"]["recovery_timeout"] == 90
    assert 0 < states["db"]["seconds_until_trial"] <= 90
    assert isinstance(states["db"]["last_failure_time"], float)


def test_breakers_reset_closes_a_breaker_that_a_failed_run_opened(run: Extractor) -> None:
    env = {"CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "1", "BINANCE_API_URL": f"http://127.0.0.1:{free_port()}"}
    assert run("check", **env).exit_code == 75

    opened = run("breakers", **env)
    assert opened.exit_code == 0, opened.output
    api_line = opened.stdout.splitlines()[0]
    assert re.match(
        r"api:127\.0\.0\.1:\d+ +OPEN      failures 1/1  recovery 60\.0s  last failure 20", api_line
    )
    assert re.search(r"  next trial in \d+\.\ds$", api_line)
    as_json = json.loads(run("breakers --json", **env).stdout)
    assert as_json[0]["state"] == "OPEN"
    assert as_json[0]["seconds_until_trial"] > 0

    refused = run("check", **env)
    assert refused.exit_code == 75
    assert "the api circuit breaker is open after repeated failures" in refused.stdout

    reset = run("breakers reset", **env)
    assert reset.exit_code == 0, reset.output
    assert re.fullmatch(
        r"api:127\.0\.0\.1:\d+ +CLOSED    failures 0/1  recovery 60\.0s  last failure never",
        reset.stdout.strip(),
    )
    assert run("breakers", **env).stdout == reset.stdout


def test_breakers_unknown_action_is_a_usage_error(run: Extractor) -> None:
    result = run("breakers bogus")
    assert result.exit_code == 2
    assert "Error: Invalid value for '[status|reset]': 'bogus' is not one of 'status', 'reset'." in (
        result.stderr
    )


# ---------------------------------------------------------------------------------------------- check


def test_check_all_ok_prints_four_lines_and_exits_0_creating_nothing(run: Extractor) -> None:
    result = run("check", EXTRACTOR_SYMBOLS="BTCUSDT,ETHUSDT")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"ok   exchange  {run.exchange.url} answered ping in ")
    assert lines[1].startswith("ok   clock     skew ")
    assert lines[2] == "ok   symbols   BTCUSDT TRADING, ETHUSDT TRADING"
    assert lines[3] == (
        f"ok   database  {run.db_url} does not exist yet; its directory is writable (nothing created)"
    )
    assert result.stderr == ""
    assert list(run.db_path.parent.glob("klines.db*")) == []


def test_check_of_an_existing_database_writes_a_probe_and_rolls_it_back(run: Extractor) -> None:
    assert run("backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02").exit_code == 0
    result = run("check -s ETHUSDT")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[3] == f"ok   database  {run.db_url} writable (probe rolled back)"


def test_check_takes_symbols_from_its_flag(run: Extractor) -> None:
    result = run("check -s BTCUSDT -s ETHUSDT")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2] == "ok   symbols   BTCUSDT TRADING, ETHUSDT TRADING"
    assert not run.db_path.exists()


def test_check_without_symbols_skips_that_check(run: Extractor) -> None:
    result = run("check")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2] == "ok   symbols   none configured (-s / EXTRACTOR_SYMBOLS); skipped"


def test_check_warns_about_a_symbol_not_trading_but_passes(run: Extractor) -> None:
    result = run("check", EXTRACTOR_SYMBOLS="LUNAUSDT,BTCUSDT")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2] == "warn symbols   LUNAUSDT BREAK, BTCUSDT TRADING"


def test_check_with_the_exchange_down_exits_75_and_still_checks_the_database(run: Extractor) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = run("check", BINANCE_API_URL=down, CIRCUIT_BREAKER_API_FAILURE_THRESHOLD="50")
    assert result.exit_code == 75
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        f"fail exchange  {down} unavailable after 1 attempt in 0 s: /api/v3/ping: cannot reach {down} "
        "(Connection refused); retry in a few minutes"
    )
    assert lines[1].startswith(f"ok   database  {run.db_url} does not exist yet")


def test_check_with_an_unknown_symbol_exits_2_naming_it(run: Extractor) -> None:
    result = run("check", EXTRACTOR_SYMBOLS="BTCUSDT,NOPEUSDT")
    assert result.exit_code == 2
    assert result.stdout.splitlines()[2] == "fail symbols   unknown on spot: NOPEUSDT"


# ---------------------------------------------------------------------------------------------- exit codes


def _readme_exit_codes() -> dict[int, str]:
    table = re.search(r"^## Exit codes\n(.*?)^## ", README.read_text(), flags=re.S | re.M)
    assert table, "the README has an exit code table"
    return {
        int(code): meaning
        for code, meaning in re.findall(r"^\| (\d+(?:\s*/\s*\d+)?) \| ([^|]+) \|", table.group(1), flags=re.M)
        for code in re.split(r"\s*/\s*", code)
    }


def test_the_readme_documents_every_exit_code_and_nothing_else() -> None:
    documented = _readme_exit_codes()
    assert set(documented) == {0, 1, 2, 75, 130, 143}, documented
    codes = {cls.exit_code for cls in _every_subclass()} | {errors.EXIT_OK, errors.EXIT_SIGTERM}
    assert codes == set(documented)


def _instance(cls: type[errors.ExtractorError]) -> errors.ExtractorError:
    """One of each class, made as the code that raises it makes it."""
    made: dict[type[errors.ExtractorError], errors.ExtractorError] = {
        errors.RequestRejected: errors.RequestRejected(-1121, "Invalid symbol."),
        errors.SeriesRejected: errors.SeriesRejected({"spot FOOUSDT": "not a spot symbol"}),
        errors.RateLimited: errors.RateLimited("429 did not clear", retry_after=30),
        errors.IPBanned: errors.IPBanned(until_ms=1_700_000_000_000),
        errors.BreakerOpen: errors.BreakerOpen("api", 1_700_000_000, "the exchange at api.binance.com"),
        errors.SeriesUnavailable: errors.SeriesUnavailable({"spot BTCUSDT 1m": "archive unreachable"}),
        errors.StorageFull: errors.StorageFull("sqlite:///klines.db", "database or disk is full"),
        errors.Interrupted: errors.Interrupted("SIGTERM", errors.EXIT_SIGTERM, stored=1),
    }
    return made.get(cls) or cls(f"{cls.__name__} as a user reads it")


@pytest.mark.parametrize("cls", _every_subclass(), ids=lambda cls: cls.__qualname__)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_error_class_ends_the_cli_with_its_exit_code_and_one_line(
    cls: type[errors.ExtractorError], log_format: str
) -> None:
    error = _instance(cls)

    @click.group(cls=ExtractorGroup)
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        raise error

    result = CliRunner().invoke(
        group, ["fail"], obj={"log_format": log_format}, prog_name="binance-extractor"
    )
    assert result.exit_code == error.exit_code
    assert result.exit_code in _readme_exit_codes()
    assert result.exit_code != errors.EXIT_FAILURE or cls in (errors.ExtractorError, errors.StorageError)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    prefix = "binance-extractor: " if isinstance(error, errors.Interrupted) else "binance-extractor: error: "
    if log_format == "json":
        entry = json.loads(line)
        assert entry["level"] == "ERROR"
        assert entry["exit_code"] == error.exit_code
        line = entry["message"]
    assert line == prefix + str(error)
    assert "Traceback" not in result.stderr


def test_a_bug_is_exit_1_with_one_line_and_the_way_to_the_traceback() -> None:
    @click.group(cls=ExtractorGroup)
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        raise KeyError("open_time")

    result = CliRunner().invoke(group, ["fail"], prog_name="binance-extractor")
    assert result.exit_code == 1
    assert result.stderr == (
        "binance-extractor: error: unexpected failure: KeyError: 'open_time' "
        "(run with -vv for the traceback)\n"
    )


def test_the_final_error_line_follows_log_format_json(run: Extractor) -> None:
    for command in ("--log-format json extract -s ETHUSDT -i 1h --lookback 0h", "extract --lookback 0h"):
        result = run(command, LOG_FORMAT="json", EXTRACTOR_SYMBOLS="ETHUSDT", EXTRACTOR_INTERVALS="1h")
        assert result.exit_code == 2
        [line] = result.stderr.splitlines()
        entry = json.loads(line)
        assert (entry["level"], entry["exit_code"]) == ("ERROR", 2)
        assert entry["message"].startswith("binance-extractor: error: invalid lookback (--lookback) '0h': ")
        assert entry["ts"].endswith("Z")


# ---------------------------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("CIRCUIT_BREAKER_FAILURE_TRESHOLD", "CIRCUIT_BREAKER_FAILURE_THRESHOLD"),
        ("CIRCUIT_BREAKER_API_RECOVERY_TIMOUT", "CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT"),
        ("CIRCUIT_BREAKER_DB_FAILURE_THRESHHOLD", "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD"),
    ],
)
@pytest.mark.parametrize("command", ["extract -s BTCUSDT -i 1h", "check", "breakers"])
def test_a_misspelt_breaker_variable_is_exit_2_with_did_you_mean(
    run: Extractor, variable: str, suggestion: str, command: str
) -> None:
    result = run(command, **{variable: "3"})
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: {variable}='3' is not a known setting; did you mean {suggestion}?\n"
    )
    assert run.requests() == 0


@pytest.mark.parametrize("value", ["2.5", "true", "-1"])
def test_a_breaker_threshold_that_is_not_a_whole_number_is_exit_2_naming_it(
    run: Extractor, value: str
) -> None:
    result = run("check", CIRCUIT_BREAKER_API_FAILURE_THRESHOLD=value)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"binance-extractor: error: CIRCUIT_BREAKER_API_FAILURE_THRESHOLD='{value}' "
    )
    assert result.stderr.count("\n") == 1
    assert run.requests() == 0


PASSWORD = "Zq9@Xk7:Wv/p"


@pytest.mark.parametrize("where", ["--db", "DATABASE_URL", "config"])
@pytest.mark.parametrize(
    "command", ["extract -s BTCUSDT -i 1h", "check", "status", "-v -v gaps -s BTCUSDT -i 1m"]
)
def test_a_password_with_an_unencoded_at_sign_is_exit_2_saying_to_url_encode_it_and_never_shown(
    run: Extractor, tmp_path: Path, where: str, command: str
) -> None:
    url = f"mysql+pymysql://bot:{PASSWORD}@127.0.0.1:{free_port()}/market"
    config = tmp_path / "extractor.toml"
    config.write_text(f'database = "{url}"\n')
    if where == "--db":
        result = run(f"--db {url} {command}")
    elif where == "DATABASE_URL":
        result = run(command, DATABASE_URL=url)
    else:
        result = run(command, DATABASE_URL=None, EXTRACTOR_CONFIG=str(config))
    assert result.exit_code == 2
    culprit = f"database in {config}" if where == "config" else where
    assert result.stderr.startswith(
        f"binance-extractor: error: the password in the database URL ({culprit}) holds a character that "
        "must be URL-encoded (one of @ : / ? # [ ] or a bare %): write @ as %40"
    )
    assert result.stderr.count("\n") == 1
    for piece in (PASSWORD[i : i + 3] for i in range(len(PASSWORD) - 2)):
        assert piece not in result.output, piece
    assert run.requests() == 0


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
@pytest.mark.parametrize(
    "command",
    [
        "backfill -s ETHUSDT -i 1h --start 2023-06-01 --end 2023-06-02",
        "extract -s ETHUSDT -i 1h",
        "gaps -s ETHUSDT -i 1h --start 2023-06-01 --repair",
    ],
)
def test_a_sqlite_url_that_keeps_nothing_is_refused_for_commands_that_store(
    run: Extractor, url: str, command: str
) -> None:
    result = run(f"--db {url} {command}")
    assert result.exit_code == 2
    assert result.stderr == (
        f"binance-extractor: error: {url} keeps nothing once the command ends: give a file, e.g. "
        "sqlite:///klines.db\n"
    )
    assert run.klines_requests() == 0
