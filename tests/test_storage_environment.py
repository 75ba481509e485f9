"""A bad environment is exit 2 with one line naming the culprit and the fix, never a password.

Read-only SQLite files and directories are tried as the user ``nobody`` (root ignores permissions):
the test forks, the child drops to nobody and opens the store, the kernel checks for real.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import bson
import pymongo
import pytest
from bson.decimal128 import Decimal128
from sqlalchemy import event

from extractor.errors import BadInputError, ExtractorError, StorageFull
from extractor.intervals import MINUTE
from extractor.klines import DECIMAL_FIELDS
from extractor.storage import SUPPORTED_SCHEMES, open_store
from extractor.storage.mongo_documents import kline_document, kline_from_document
from tests.services import MongoServer, unique_name
from tests.storage_cases import BTC, EXACT, T0, WIDEST, candle, candles, db_breaker, every_decimal

# ---------------------------------------------------------------------------------------------- SQLite


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside root's private temp tree, so that nobody can reach it."""
    if os.geteuid() != 0:
        pytest.skip("becoming the user nobody needs root")
    folder = Path(tempfile.mkdtemp(prefix="bx-nobody-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody(action: Callable[[], object]) -> str:
    """What ``action`` says (or raises) run as nobody, in a forked child of this process."""
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, only os._exit
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = f"ok: {action()}"
        except ExtractorError as exc:
            result = f"{type(exc).__name__} (exit {exc.exit_code}): {exc}"
        except BaseException as exc:
            result = f"unexpected {type(exc).__name__}: {exc}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        said = answer.read().decode()
    os.waitpid(pid, 0)
    return said


def test_a_read_only_sqlite_file_is_bad_input_naming_it(shared_dir: Path) -> None:
    path = shared_dir / "klines.db"
    open_store(f"sqlite:///{path}").close()  # created by root: nobody may read it, not write it
    shared_dir.chmod(0o777)

    said = as_nobody(lambda: open_store(f"sqlite:///{path}").close())

    assert said == (
        f"BadInputError (exit 2): the SQLite database {path} is read-only: make it writable or choose "
        "another --db / DATABASE_URL"
    )


def test_a_read_only_sqlite_directory_is_bad_input_naming_it(shared_dir: Path) -> None:
    path = shared_dir / "klines.db"
    open_store(f"sqlite:///{path}").close()
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)  # the file is nobody's, its directory is not

    said = as_nobody(lambda: open_store(f"sqlite:///{path}").close())

    assert said.startswith(f"BadInputError (exit 2): the directory {shared_dir} of the SQLite database")
    assert "not writable" in said and "--db / DATABASE_URL" in said


def test_a_writable_sqlite_file_opens_for_nobody(shared_dir: Path) -> None:
    """The other half of the two tests above: the fork, the user and the path are not what fails."""
    shared_dir.chmod(0o777)

    said = as_nobody(lambda: open_store(f"sqlite:///{shared_dir}/klines.db").check_writable())

    assert said == "ok: writable (probe rolled back)"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_a_sqlite_url_that_keeps_nothing_is_refused(url: str) -> None:
    with pytest.raises(BadInputError, match=r"keeps nothing once the command ends: give a file, e\.g\."):
        open_store(url)


def test_a_sqlite_file_in_a_missing_directory_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=f"the directory {tmp_path}/nowhere does not exist"):
        open_store(f"sqlite:///{tmp_path}/nowhere/klines.db")
    assert not (tmp_path / "nowhere").exists()


def test_a_full_disk_is_temporary_naming_the_database_and_keeps_what_was_stored(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL, provoked by capping the file's pages: exit 75 saying to free space,
    not exit 1, and the batch that did not fit is not stored in part."""
    url = f"sqlite:///{tmp_path / 'klines.db'}"
    store = open_store(url, breaker=db_breaker(threshold=100), sleep=lambda _: None)
    try:
        store.write(candles(T0, 10))
        engine = store._engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        event.listen(engine, "connect", lambda conn, _: conn.execute(f"PRAGMA max_page_count = {pages + 2}"))
        engine.dispose()  # new connections take the cap
        with pytest.raises(StorageFull) as full:
            store.write(candles(T0 + 10 * MINUTE, 5_000))
        assert full.value.exit_code == 75
        assert str(full.value).startswith(f"the disk of the database at {url} is full (")
        assert "free space, then run the same command again" in str(full.value)
        assert store.count(BTC, T0, T0 + 6_000 * MINUTE) == 10
    finally:
        store.close()


def test_an_unknown_scheme_is_bad_input_listing_the_supported_ones() -> None:
    with pytest.raises(BadInputError) as refused:
        open_store("postgres://u:s3cr3t@h/db")

    message = str(refused.value)
    assert "postgres://u:***@h/db" in message and "s3cr3t" not in message
    assert all(f"{scheme}://" in message for scheme in SUPPORTED_SCHEMES)
    assert "postgresql+psycopg://" in message


# ---------------------------------------------------------------------------------------------- Decimal128


@pytest.mark.parametrize("text", EXACT + WIDEST)
def test_decimal128_documents_are_exact_for_every_field(text: str) -> None:
    kline = every_decimal(candle(T0), text)

    decoded = bson.decode(bson.encode(kline_document(kline)))

    assert all(isinstance(decoded[name], Decimal128) for name in DECIMAL_FIELDS)
    assert kline_from_document(decoded) == kline  # the same text back, trailing zeros and all


@pytest.mark.mongo
@pytest.mark.parametrize("create", [True, False], ids=["open", "check"])
def test_a_server_without_decimal128_is_bad_input_with_the_hint(
    mongo_server: MongoServer, create: bool
) -> None:
    url = f"mongodb://{mongo_server.address}/{unique_name('bx')}"  # no ?decimals=string

    with pytest.raises(BadInputError) as refused:
        store = open_store(url, breaker=db_breaker(), create=create)
        store.check_writable()

    message = str(refused.value)
    assert message.startswith(f"the database at {url} does not store Decimal128 (")
    assert message.endswith("add ?decimals=string to the URL to keep exact decimal strings instead")
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(url)
    assert client.get_default_database().list_collection_names() == []  # nothing written, nothing left
    client.close()


# ---------------------------------------------------------------------------------------------- passwords


@pytest.mark.postgres
def test_postgres_refusing_the_login_or_the_database_is_bad_input_naming_it(postgres_url: str) -> None:
    server = postgres_url.rsplit("@", 1)[1].rsplit("/", 1)[0]
    for url, database in [
        (f"postgresql+psycopg://nobody_here:s3cr%40t@{server}/test", "test"),
        (f"postgresql://postgres:s3cr%40t@{server}/no_such_database", "no_such_database"),
    ]:
        with pytest.raises(BadInputError) as refused:
            open_store(url, breaker=db_breaker())

        message = str(refused.value)
        assert message.startswith(f"the database '{database}' at {url.replace('s3cr%40t', '***')} refused")
        assert "s3cr" not in message and "does not exist" in message


@pytest.mark.mysql
def test_mysql_refusing_the_login_or_the_database_is_bad_input_without_the_password(mysql_url: str) -> None:
    server = mysql_url.rsplit("@", 1)[1].rsplit("/", 1)[0]
    for url in (
        f"mysql+pymysql://root:s3cr%40t@{server}/test",
        f"mysql+pymysql://root:@{server}/no_such_database_here",
    ):
        with pytest.raises(BadInputError, match="refused the login or the database name") as refused:
            open_store(url, breaker=db_breaker())
        assert "s3cr" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cr3t@127.0.0.1:1/test?sslmode=bogus",
        "postgresql://u:s3cr3t@127.0.0.1:1/test?bogus=1",
        "postgresql://u:s3cr3t@127.0.0.1:1/test?timescale=maybe",
        "mongodb://u:s3cr3t@127.0.0.1:1/test?decimals=float",
    ],
)
def test_a_bad_option_in_the_url_is_bad_input_without_the_password(url: str) -> None:
    with pytest.raises(BadInputError) as refused:
        open_store(url, breaker=db_breaker())

    assert "u:***@127.0.0.1:1" in str(refused.value) and "s3cr3t" not in str(refused.value)


# ---------------------------------------------------------------------------------------------- imports


@pytest.mark.parametrize(
    ("scheme", "absent"),
    [("sqlite", ("pymysql", "psycopg", "pymongo", "bson")), ("postgresql", ("pymysql", "pymongo", "bson"))],
)
def test_a_backend_loads_no_other_backends_driver(
    tmp_path: Path, scheme: str, absent: tuple[str, ...]
) -> None:
    url = f"sqlite:///{tmp_path}/k.db" if scheme == "sqlite" else "postgresql://u@127.0.0.1:1/test"
    script = (
        "import sys\n"
        "from extractor.storage import open_store\n"
        f"open_store({url!r}, create=False).close()\n"
        f"print(sorted(m for m in {absent!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
