"""``open_store(url)``: the one factory of KlineStores, choosing the backend by the URL's scheme.

A backend is imported only when its scheme is asked for, so a SQL run never loads pymongo and ``--help``
loads no driver at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from extractor.errors import BadInputError, StorageUnavailable
from extractor.secrets import check_credentials, mask_url, url_secrets
from extractor.storage.base import KlineStore
from extractor.storage.records import ExchangeGap, SeriesSummary
from utils.circuit_breaker import CircuitBreaker

__all__ = ["SUPPORTED_SCHEMES", "ExchangeGap", "KlineStore", "SeriesSummary", "open_store"]

SUPPORTED_SCHEMES: tuple[str, ...] = (
    "sqlite",
    "mysql+pymysql",
    "mysql",
    "postgresql+psycopg",
    "postgresql",
    "mongodb",
    "mongodb+srv",
)
EXAMPLES = (
    "sqlite:///klines.db, mysql+pymysql://user:pass@host:3306/db, "
    "postgresql+psycopg://user:pass@host:5432/db, mongodb://host:27017/db"
)


def open_store(
    url: str,
    *,
    breaker: CircuitBreaker | None = None,
    sleep: Callable[[float], None] = time.sleep,
    where: str = "--db / DATABASE_URL",
    create: bool = True,
    telemetry_spool: Path | None = None,
) -> KlineStore:
    """Connect to the database named by ``url`` and create (or migrate) its tables or collections.

    ``breaker`` guards every round trip (by default one counting ``StorageUnavailable``); ``sleep``
    waits between tries of a round trip that found the server unavailable; ``where`` names the setting
    the URL came from, for messages; ``create=False`` touches nothing (``check`` only probes);
    ``telemetry_spool`` is the file where breaker telemetry waits while the database cannot take it.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SUPPORTED_SCHEMES:
        raise BadInputError(
            f"unsupported database URL {mask_url(url)!r} ({where}): the scheme must be one of "
            f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)} (e.g. {EXAMPLES})"
        )
    check_credentials(url, f"the database URL ({where})")
    if breaker is None:
        breaker = CircuitBreaker(name="db", expected_exception=StorageUnavailable)
    secrets = url_secrets(url)
    store: KlineStore
    if scheme.startswith("mongodb"):
        from extractor.storage.mongo import MongoKlineStore

        store = MongoKlineStore.connect(url, breaker, secrets)
    else:
        store = _open_sql(url, scheme, breaker, secrets)
    store.sleep = sleep
    store.telemetry().spool = telemetry_spool
    if not create:
        return store
    try:
        store.open()
    except BaseException:
        store.close()
        raise
    return store


def _open_sql(url: str, scheme: str, breaker: CircuitBreaker, secrets: tuple[str, ...]) -> KlineStore:
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    try:
        sa_url = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise BadInputError(f"cannot parse the database URL {mask_url(url)}: {exc}") from exc
    if scheme == "sqlite":
        from extractor.storage.sqlite import SqliteKlineStore

        return SqliteKlineStore.connect(url, sa_url, breaker)
    if scheme.startswith("postgresql"):
        from extractor.storage.postgres import PostgresKlineStore

        return PostgresKlineStore.connect(url, sa_url, breaker, secrets)
    from extractor.storage.mysql import MySqlKlineStore

    return MySqlKlineStore.connect(url, sa_url, breaker, secrets)
