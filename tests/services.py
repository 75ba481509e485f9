"""Real database services for tests: MariaDB (MYSQL_URL), PostgreSQL (POSTGRES_URL), a MongoDB
wire-protocol server, and a TCP proxy.

A service that cannot be reached skips its tests with the reason, unless REQUIRE_SERVICES=1 (CI), where
it fails them. Each test gets its own database, so ``pytest -n 2`` workers never see each other's rows.
Outages are simulated with ``TcpProxy`` in front of a server, never by stopping the server.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from extractor.storage import KlineStore

DEFAULT_MYSQL_URL = "mysql+pymysql://root:@127.0.0.1:3306/test"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MONGO_START_SECONDS = 20.0

_names = itertools.count()


def unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (REQUIRE_SERVICES=1, as in CI) a test whose service is missing."""
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    """A database name no other worker or test uses: ``<prefix>_<worker>_<pid>_<n>``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{prefix}_{worker}_{os.getpid()}_{next(_names)}"


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def through(url: str, proxy: TcpProxy) -> str:
    """``url`` with its host and port replaced by the proxy's, credentials kept."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(
        (parts.scheme, f"{userinfo}{at}{proxy.address}", parts.path, parts.query, parts.fragment)
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------------------------- MySQL


def _mysql_admin(url: str, statement: str) -> None:
    import pymysql

    parts = urlsplit(url.replace("mysql+pymysql://", "mysql://", 1))
    connection = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        connect_timeout=3,
        autocommit=True,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


class ServerDatabases:
    """Creates uniquely named databases on one server and drops them afterwards."""

    create_sql = ""
    drop_sql = ""
    """Statements with ``{name}`` for the database; subclasses give them and ``admin``."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._created: list[str] = []

    @staticmethod
    def admin(url: str, statement: str) -> None:
        raise NotImplementedError

    def create(self) -> str:
        name = unique_name("bx")
        self.admin(self.server_url, self.create_sql.format(name=name))
        self._created.append(name)
        return with_database(self.server_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with contextlib.suppress(Exception):
            self.admin(self.server_url, self.drop_sql.format(name=name))
        with contextlib.suppress(ValueError):
            self._created.remove(name)

    def drop_all(self) -> None:
        for name in list(self._created):
            self.drop(with_database(self.server_url, name))


D = TypeVar("D", bound=ServerDatabases)


def _session_databases(cls: type[D], variable: str, default: str, server: str) -> Iterator[D]:
    """The databases of a test session on the server of ``variable``, or the skip that says why not."""
    server_url = os.environ.get(variable, default)
    try:
        cls.admin(server_url, "SELECT 1")
    except Exception as exc:
        unavailable(f"{server} at {server_url.split('@')[-1]} is not reachable: {exc}")
    databases = cls(server_url)
    yield databases
    databases.drop_all()


class MySqlDatabases(ServerDatabases):
    """Databases on the MariaDB server of MYSQL_URL."""

    create_sql = "CREATE DATABASE `{name}`"
    drop_sql = "DROP DATABASE IF EXISTS `{name}`"
    admin = staticmethod(_mysql_admin)


@pytest.fixture(scope="session")
def mysql_databases() -> Iterator[MySqlDatabases]:
    yield from _session_databases(MySqlDatabases, "MYSQL_URL", DEFAULT_MYSQL_URL, "MariaDB/MySQL")


@pytest.fixture(scope="session")
def mysql_url(mysql_databases: MySqlDatabases) -> str:
    """A database of this test session (one per xdist worker), dropped at the end."""
    return mysql_databases.create()


@pytest.fixture
def fresh_mysql_url(mysql_databases: MySqlDatabases) -> Iterator[str]:
    """A database of this test alone."""
    url = mysql_databases.create()
    yield url
    mysql_databases.drop(url)


# ---------------------------------------------------------------------------------------------- PostgreSQL


def _postgres_admin(url: str, statement: str) -> None:
    import psycopg

    parts = urlsplit(url)
    with psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or "",
        dbname=parts.path.lstrip("/") or "postgres",
        connect_timeout=3,
        autocommit=True,
    ) as connection:
        connection.execute(statement)


class PostgresDatabases(ServerDatabases):
    """Databases on the PostgreSQL server of POSTGRES_URL."""

    create_sql = 'CREATE DATABASE "{name}"'
    drop_sql = 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    admin = staticmethod(_postgres_admin)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    yield from _session_databases(PostgresDatabases, "POSTGRES_URL", DEFAULT_POSTGRES_URL, "PostgreSQL")


@pytest.fixture(scope="session")
def postgres_url(postgres_databases: PostgresDatabases) -> str:
    """A database of this test session (one per xdist worker), dropped at the end."""
    return postgres_databases.create()


@pytest.fixture
def fresh_postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A database of this test alone."""
    url = postgres_databases.create()
    yield url
    postgres_databases.drop(url)


# ---------------------------------------------------------------------------------------------- MongoDB


def _nx_command() -> str | None:
    beside = Path(sys.executable).with_name("nx-27017")
    return str(beside) if beside.exists() else shutil.which("nx-27017")


class MongoServer:
    """An nx-27017 MongoDB wire-protocol server on a free loopback port, with its data in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = _nx_command()
        if command is None:
            unavailable("the MongoDB wire-protocol server nx-27017 is not installed (pip install nx-27017)")
        self.process = subprocess.Popen(
            [
                command,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.folder / "data"),
                "--log-file",
                str(self.folder / "nx.log"),
                "--pid-file",
                str(self.folder / "nx.pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        import pymongo

        assert self.process is not None
        deadline = time.monotonic() + MONGO_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                unavailable(f"nx-27017 exited with status {self.process.returncode}: {self._log_tail()}")
            client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
                f"mongodb://{self.address}/", serverSelectionTimeoutMS=250, connectTimeoutMS=250
            )
            try:
                client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError:
                continue
            finally:
                client.close()
        self.stop()
        unavailable(f"nx-27017 did not answer a ping on {self.address} within {MONGO_START_SECONDS:.0f} s")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.folder / "nx.log").read_text(errors="replace")[-500:]
        return "no log"

    def url(self, database: str) -> str:
        return f"mongodb://{self.address}/{database}?decimals=string"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    server = MongoServer(tmp_path_factory.mktemp("nx-27017"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_url(mongo_server: MongoServer) -> str:
    """``mongodb://127.0.0.1:<port>/<unique db>?decimals=string`` on a server of this session."""
    return mongo_server.url(unique_name("bx"))


@pytest.fixture
def fresh_mongo_url(mongo_server: MongoServer) -> str:
    """A database of this test alone on the session's server."""
    return mongo_server.url(unique_name("bx"))


# ---------------------------------------------------------------------------------------------- every backend

BACKENDS = [
    "sqlite",
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mongo", marks=pytest.mark.mongo),
]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each backend in turn: a SQLite file, MariaDB, PostgreSQL, nx-27017."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/klines.db"
    return str(request.getfixturevalue(f"fresh_{request.param}_url"))


@pytest.fixture
def kline_store(backend_url: str) -> Iterator[KlineStore]:
    """An opened store on ``backend_url``, its db breaker opening after three lost tries."""
    from extractor.storage import open_store
    from tests.storage_cases import db_breaker

    with open_store(backend_url, breaker=db_breaker()) as opened:
        yield opened


@pytest.fixture
def second_kline_store(backend_url: str, kline_store: KlineStore) -> Iterator[KlineStore]:
    """Another run on the database of ``kline_store``, with its own connections."""
    from extractor.storage import open_store
    from tests.storage_cases import db_breaker

    with open_store(backend_url, breaker=db_breaker()) as opened:
        yield opened


# ---------------------------------------------------------------------------------------------- proxy
# TcpProxy lives in tests/tcp_proxy.py; it is imported here for the fixture and for older imports.


@pytest.fixture
def tcp_proxy_factory() -> Iterator[type[TcpProxy]]:
    """Build proxies with ``tcp_proxy_factory(host, port)``; all are closed after the test."""
    proxies: list[TcpProxy] = []

    class _Tracked(TcpProxy):
        def __init__(self, target_host: str, target_port: int) -> None:
            super().__init__(target_host, target_port)
            proxies.append(self)

    yield _Tracked
    for proxy in proxies:
        proxy.close()
