"""Real database services for tests: MariaDB (MYSQL_URL), a MongoDB wire-protocol server, a TCP proxy.

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
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

DEFAULT_MYSQL_URL = "mysql+pymysql://root:@127.0.0.1:3306/test"
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


class MySqlDatabases:
    """Creates uniquely named databases on the MariaDB server of MYSQL_URL and drops them afterwards."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._created: list[str] = []

    def create(self) -> str:
        name = unique_name("bx")
        _mysql_admin(self.server_url, f"CREATE DATABASE `{name}`")
        self._created.append(name)
        return with_database(self.server_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with contextlib.suppress(Exception):
            _mysql_admin(self.server_url, f"DROP DATABASE IF EXISTS `{name}`")
        with contextlib.suppress(ValueError):
            self._created.remove(name)

    def drop_all(self) -> None:
        for name in list(self._created):
            self.drop(with_database(self.server_url, name))


@pytest.fixture(scope="session")
def mysql_databases() -> Iterator[MySqlDatabases]:
    server_url = os.environ.get("MYSQL_URL", DEFAULT_MYSQL_URL)
    try:
        _mysql_admin(server_url, "SELECT 1")
    except Exception as exc:
        unavailable(f"MariaDB/MySQL at {server_url.split('@')[-1]} is not reachable: {exc}")
    databases = MySqlDatabases(server_url)
    yield databases
    databases.drop_all()


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


# ---------------------------------------------------------------------------------------------- proxy


class TcpProxy:
    """A threaded TCP proxy from 127.0.0.1:<port> to a server, to cut or refuse connections at will.

    ``drop_connections()`` resets every live connection (client and server side), as a crashed server
    or a broken network would; ``refuse(True)`` closes the listening socket so new connections are
    refused, ``refuse(False)`` listens again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._listening = threading.Event()
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(64)
        self._listening.set()
        return listener

    def _accept_loop(self) -> None:
        while not self._closed:
            self._listening.wait()
            listener = self._listener
            try:
                client, _ = listener.accept()
            except OSError:
                continue  # the listener was closed by refuse() or close()
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed:
                _reset(client)
                _reset(upstream)
                return
            self._sockets.update((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            self._forget(source, sink)

    def _forget(self, *pair: socket.socket) -> None:
        with self._lock:
            live = [s for s in pair if s in self._sockets]
            self._sockets.difference_update(live)
        for s in live:
            _reset(s)

    @property
    def connections(self) -> int:
        """Live proxied connections."""
        with self._lock:
            return len(self._sockets) // 2

    def drop_connections(self) -> None:
        """Reset every live connection on both sides."""
        with self._lock:
            live = list(self._sockets)
            self._sockets.clear()
        for s in live:
            _reset(s)

    def refuse(self, on: bool) -> None:
        """Refuse new connections (``on``) or accept them again; takes effect before returning."""
        with self._lock:
            if on and self._listening.is_set():
                self._listening.clear()
                _close_listener(self._listener)
            elif not on and not self._listening.is_set():
                self._listener = self._listen(self.port)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.refuse(True)
        self._listening.set()
        self.drop_connections()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_listener(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
    listener.close()


def _reset(s: socket.socket) -> None:
    """Close with an RST, as a crashed peer would, after waking any thread blocked on the socket."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RD)
    s.close()


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
