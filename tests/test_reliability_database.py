"""Reliability around the database (issue 7: R6, R7, R10): an outage mid-run opens the db breaker and leaves
no window in part; overlapping runs take turns by the run lock; no secret reaches the output.
Outages are cut by a TCP proxy of the test's own in front of the real server, never a stopped server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from extractor.secrets import mask_url
from extractor.storage import open_store
from tests.fake_exchange import FakeExchange, Faults
from tests.reliability_helpers import (
    BREAKER_OPEN,
    EXTRACT,
    RUN_TIMEOUT,
    SHORT_BACKFILL,
    START_MS,
    Gate,
    assert_exact,
    backfill_with,
    breaker_states,
    counting_stored,
    exchange_env,
    one_line,
    pages_asked,
    run_cli,
    sqlite_url_in,
    start_cli,
    the_error,
    via_proxy,
    wait_until,
    window_fill,
)
from tests.tcp_proxy import TcpProxy

OUTAGE_END_MS = START_MS + 10 * 86_400_000
OUTAGE_BACKFILL = backfill_with(["--end", str(OUTAGE_END_MS), "--concurrency", "2"])
OUTAGE_WINDOWS = 15
"""Pages of the outage backfill: 14,400 candles, two in flight."""
CUT_AFTER = 7
"""The database is cut once this many pages were asked for and some were written; the rest are held
until then, so some windows are written and some are not."""


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_url_in(tmp_path)


# ---------------------------------------------------------------------------------------- R6 database outage


def proxied_database(
    request: pytest.FixtureRequest, tcp_proxy_factory: type[TcpProxy], backend: str
) -> tuple[str, str, TcpProxy]:
    """(direct URL, URL through a proxy of the test's own, the proxy) for a fresh database."""
    direct: str = request.getfixturevalue(f"fresh_{backend}_url")
    server = urlsplit(direct)
    proxy = tcp_proxy_factory(server.hostname or "127.0.0.1", server.port or 0)
    url = via_proxy(direct, proxy.address)
    if backend == "mongo":
        url += "&serverSelectionTimeoutMS=500"  # a lost server is given up on in 0.5 s, not 30 s
    return direct, url, proxy


def cut_database_mid_run(
    exchange: FakeExchange,
    proxy: TcpProxy,
    direct_url: str,
    env: dict[str, str],
    args: list[str] = OUTAGE_BACKFILL,
) -> tuple[int, str]:
    """Start ``args``; once it has written some windows and asked for CUT_AFTER pages (the next held),
    refuse and reset every database connection, then let the exchange answer again; (exit, stderr)."""
    with counting_stored(direct_url) as stored, Gate(exchange, after=CUT_AFTER) as gate:
        process = start_cli(args, env)
        wait_until(lambda: gate.held > 0 and stored() > 0, process, f"{CUT_AFTER} pages and a write")
        proxy.refuse(True)
        proxy.drop_connections()
    _, stderr = process.communicate(timeout=RUN_TIMEOUT)
    return process.returncode, stderr


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mongo", marks=pytest.mark.mongo),
    ],
)
def test_a_database_outage_mid_run_opens_the_db_breaker_and_leaves_no_partial_batch(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    tcp_proxy_factory: type[TcpProxy],
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    direct, url, proxy = proxied_database(request, tcp_proxy_factory, backend)
    env = exchange_env(tmp_path / "state", fake_exchange, url, CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD="1")

    exit_code, stderr = cut_database_mid_run(fake_exchange, proxy, direct, env)

    assert exit_code == 75
    error = the_error(stderr)
    assert BREAKER_OPEN.match(error) and f"the database at {mask_url(url)}" in error
    assert breaker_states(env)["db"] == "OPEN"
    fill = window_fill(direct, fake_exchange, "BTCUSDT", "1m", START_MS, OUTAGE_END_MS)
    assert all(stored in (0, served) for stored, served in fill), "a window was stored in part"
    written = sum(1 for stored, _ in fill if stored)
    assert 0 < written < OUTAGE_WINDOWS

    proxy.refuse(False)
    still_open = run_cli(OUTAGE_BACKFILL, env)
    assert still_open.returncode == 75
    assert BREAKER_OPEN.match(the_error(still_open.stderr))
    assert run_cli(["breakers", "reset"], env).returncode == 0
    fake_exchange.reset_counts()
    rerun = run_cli(OUTAGE_BACKFILL, env)

    assert rerun.returncode == 0, rerun.stderr
    asked = pages_asked(fake_exchange)
    assert len(set(asked)) == OUTAGE_WINDOWS - written, "the rerun asked only for the windows not stored"
    assert_exact(direct, fake_exchange, START_MS, OUTAGE_END_MS)


@pytest.mark.mysql
def test_a_database_that_stays_away_is_retried_until_the_db_breaker_opens(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    tcp_proxy_factory: type[TcpProxy],
    request: pytest.FixtureRequest,
) -> None:
    direct, url, proxy = proxied_database(request, tcp_proxy_factory, "mysql")
    env = exchange_env(
        tmp_path / "state",
        fake_exchange,
        url,
        CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD="3",
        EXTRACTOR_BACKOFF="0.01",
    )

    exit_code, stderr = cut_database_mid_run(fake_exchange, proxy, direct, env)

    assert exit_code == 75
    assert BREAKER_OPEN.match(the_error(stderr))
    assert breaker_states(env)["db"] == "OPEN"


# ------------------------------------------------------------------------------------------------ R7 overlap


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_a_second_extract_while_one_holds_the_lock_exits_75_without_a_request(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue(f"fresh_{backend}_url")
    env = exchange_env(tmp_path / "state", fake_exchange, url)

    with open_store(url) as store, store.run_lock("extract"):
        second = run_cli(EXTRACT, env)

    assert second.returncode == 75
    line = one_line(second.stderr)
    assert line.startswith(
        f"binance-extractor: error: another binance-extractor run holds the extract lock on {store.url} ("
    )
    assert line.endswith("); try again when it finishes")
    if backend == "sqlite":
        assert f"pid {os.getpid()} on " in line
    assert sum(fake_exchange.request_counts.values()) == 0


def test_overlapping_extract_processes_and_a_killed_holder(
    tmp_path: Path, fake_exchange: FakeExchange, sqlite_url: str
) -> None:
    # The first run holds the lock while the exchange holds its requests, until it is killed. The second
    # sends from an address of its own, so that whatever it sent would be told apart from the first's.
    env = exchange_env(tmp_path / "state", fake_exchange, sqlite_url)
    with Gate(fake_exchange, after=0) as gate:
        first = start_cli(EXTRACT, env)
        wait_until(lambda: gate.held > 0, first, "its first klines request")

        second = run_cli(EXTRACT, {**env, "EXTRACTOR_SOURCE_ADDRESS": "127.0.0.2"})

        assert second.returncode == 75
        assert f"holds the extract lock on {sqlite_url} (pid {first.pid} on " in one_line(second.stderr)
        assert "127.0.0.2" not in gate.clients

        first.kill()
        first.communicate()
    third = run_cli(EXTRACT, env)

    assert third.returncode == 0, third.stderr


# ----------------------------------------------------------------------------------------------- R10 secrets


PASSWORD = "s3cr3t-pw"
API_KEY = "k3y-abcdef"


@pytest.fixture
def secret_mysql_url(fresh_mysql_url: str) -> Iterator[str]:
    """``fresh_mysql_url`` reached as a MariaDB user of its own whose password is PASSWORD."""
    import pymysql

    database = urlsplit(fresh_mysql_url).path.lstrip("/")
    user = f"u{database[-24:]}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'")
            cursor.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'127.0.0.1'")
        yield f"mysql+pymysql://{user}:{PASSWORD}@127.0.0.1:3306/{database}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        admin.close()


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        assert PASSWORD not in output
        assert API_KEY not in output


@pytest.mark.mysql
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_never_appear_in_the_output_of_a_successful_run(
    tmp_path: Path, fake_exchange: FakeExchange, secret_mysql_url: str, log_format: str
) -> None:
    fake_exchange.faults = Faults(fail_first=2)  # retries, so there are log lines to inspect
    env = exchange_env(
        tmp_path / "state",
        fake_exchange,
        secret_mysql_url,
        BINANCE_API_KEY=API_KEY,
        LOG_FORMAT=log_format,
        EXTRACTOR_BACKOFF="0.01",
    )

    runs = [run_cli(["-vv", *args], env) for args in (SHORT_BACKFILL, EXTRACT, ["check"], ["breakers"])]

    assert [run.returncode for run in runs] == [0, 0, 0, 0], [run.stderr for run in runs]
    assert "retry 1" in runs[0].stderr, "the retries were logged"
    assert f"{mask_url(secret_mysql_url)} writable" in runs[2].stdout
    assert_no_secret(*(run.stdout + run.stderr for run in runs))


@pytest.mark.mysql
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_never_appear_in_the_output_of_a_failed_run(
    tmp_path: Path,
    fake_exchange: FakeExchange,
    secret_mysql_url: str,
    tcp_proxy_factory: type[TcpProxy],
    log_format: str,
) -> None:
    extra = {
        "BINANCE_API_KEY": API_KEY,
        "LOG_FORMAT": log_format,
        "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "1",
    }
    state = tmp_path / "state"
    unreachable = secret_mysql_url.replace("127.0.0.1:3306", "127.0.0.1:1")
    wrong_password = secret_mysql_url.replace(f":{PASSWORD}@", f":{PASSWORD}-wrong@")
    proxy = tcp_proxy_factory("127.0.0.1", 3306)
    through_proxy = via_proxy(secret_mysql_url, proxy.address)

    unreachable_run = run_cli(
        ["-vv", *SHORT_BACKFILL], exchange_env(state, fake_exchange, unreachable, **extra)
    )
    refused_run = run_cli(
        ["-vv", *SHORT_BACKFILL], exchange_env(state, fake_exchange, wrong_password, **extra)
    )
    outage_exit, outage_stderr = cut_database_mid_run(
        fake_exchange,
        proxy,
        secret_mysql_url,
        exchange_env(state, fake_exchange, through_proxy, **extra),
        ["-vv", *OUTAGE_BACKFILL],
    )

    assert (unreachable_run.returncode, refused_run.returncode, outage_exit) == (75, 2, 75)
    assert "refused the login" in refused_run.stderr
    assert_no_secret(
        unreachable_run.stdout, unreachable_run.stderr, refused_run.stdout, refused_run.stderr, outage_stderr
    )
