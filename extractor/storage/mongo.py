"""MongoDB through pymongo: the same collections and field names as the SQL tables.

Decimals are Decimal128 (exact, what MongoDB recommends for money); ``?decimals=string`` in the URL stores
exact decimal strings instead, for MongoDB-compatible servers without Decimal128. A kline's ``_id`` is
its key as text (``BTCUSDT|1m|1700000000000``) so every upsert hits the primary index on any server;
the unique compound index on (symbol, interval, open_time) still guards the key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from bson.decimal128 import Decimal128
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from extractor.errors import BadInputError, ExtractorError, StorageError, StorageUnavailable
from extractor.intervals import Interval
from extractor.klines import DECIMAL_FIELDS, FIELDS, Kline, plain
from extractor.storage import KlineStore, describe_holder, mask_url
from extractor.storage.telemetry import BreakerEvent, BreakerOperation, TelemetrySink
from utils.circuit_breaker import CircuitBreaker

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("extractor.storage")

DEFAULT_DATABASE = "binance"
DECIMAL_MODES = ("decimal128", "string")
_CLIENT_DEFAULTS = {"serverSelectionTimeoutMS": 3000, "connectTimeoutMS": 3000}
_AUTH_CODES = {13, 18}  # Unauthorized, AuthenticationFailed: the URL is wrong, not the server
_KEY = [("symbol", ASCENDING), ("interval", ASCENDING), ("open_time", ASCENDING)]


def kline_key(symbol: str, interval: str, open_time: int) -> str:
    return f"{symbol}|{interval}|{open_time}"


def kline_document(kline: Kline, *, decimal128: bool = True) -> dict[str, Any]:
    """The stored document of a kline, ``_id`` included; decimals as Decimal128 or exact strings."""
    encode: Callable[[Decimal], Any] = Decimal128 if decimal128 else plain
    document: dict[str, Any] = {"_id": kline_key(kline.symbol, kline.interval, kline.open_time)}
    for name, value in zip(FIELDS, kline, strict=True):
        document[name] = encode(cast(Decimal, value)) if name in DECIMAL_FIELDS else value
    return document


def kline_from_document(document: dict[str, Any]) -> Kline:
    """A Kline from a stored document, whichever way its decimals were stored."""
    return Kline._make(
        _decimal(document[name]) if name in DECIMAL_FIELDS else document[name] for name in FIELDS
    )


def _decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return Decimal(value if isinstance(value, str) else str(value))


def split_url(url: str) -> tuple[str, str, str]:
    """``(client URL without our decimals option, database name, decimals mode)``."""
    parts = urlsplit(url)
    mode = "decimal128"
    options: list[str] = []
    for option in filter(None, parts.query.split("&")):
        name, _, value = option.partition("=")
        if name.lower() == "decimals":
            mode = unquote(value).lower()
        else:
            options.append(option)
    if mode not in DECIMAL_MODES:
        raise BadInputError(
            f"unknown decimals={mode!r} in {mask_url(url)}: use decimals=decimal128 (the default) or "
            "decimals=string"
        )
    database = unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE
    client_url = urlunsplit((parts.scheme, parts.netloc, "/", "&".join(options), parts.fragment))
    return client_url, database, mode


class MongoKlineStore(KlineStore):
    """A KlineStore on MongoDB; a batch is one unordered bulk upsert.

    A failed batch is undone on a best-effort basis only: documents it inserted are deleted again,
    documents it updated keep their new values (the same values a rerun writes). MongoDB has no
    multi-document atomicity without a replica set, which we do not require.
    """

    lease_seconds = 60.0
    renew_every = 20.0

    def __init__(
        self, url: str, breaker: CircuitBreaker, client: MongoClient[dict[str, Any]], database: str, mode: str
    ):
        super().__init__(url, breaker)
        self._client = client
        self._secret = urlsplit(url).password
        db = client[database]
        self._decimal128 = mode == "decimal128"
        self._klines: Collection[dict[str, Any]] = db["klines"]
        self._gaps: Collection[dict[str, Any]] = db["exchange_gaps"]
        self._events: Collection[dict[str, Any]] = db["circuit_breaker_events"]
        self._operations: Collection[dict[str, Any]] = db["circuit_breaker_operations"]
        self._locks: Collection[dict[str, Any]] = db["run_locks"]

    @classmethod
    def connect(cls, url: str, breaker: CircuitBreaker, sleep: Callable[[float], None]) -> MongoKlineStore:
        client_url, database, mode = split_url(url)
        given = {option.partition("=")[0].lower() for option in urlsplit(client_url).query.split("&")}
        defaults: dict[str, Any] = {
            name: value for name, value in _CLIENT_DEFAULTS.items() if name.lower() not in given
        }
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(
                client_url, tz_aware=True, appname="binance-extractor", **defaults
            )
        except PyMongoError as exc:
            raise BadInputError(f"unusable MongoDB URL {mask_url(url)}: {exc}") from exc
        try:
            store = cls(url, breaker, client, database, mode)
            store.sleep = sleep
            store._guard(store._create_indexes)
        except BaseException:
            client.close()
            raise
        return store

    # -- one round trip each --------------------------------------------------------------------------

    def _translated(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
            raise StorageUnavailable(
                f"the database at {self.url} is unavailable: {self._reason(exc)}"
            ) from exc
        except OperationFailure as exc:
            raise self._refused(exc) from exc
        except ConfigurationError as exc:
            raise BadInputError(f"unusable MongoDB settings for {self.url}: {self._reason(exc)}") from exc
        except PyMongoError as exc:
            raise StorageError(
                f"the database at {self.url} refused the operation: {self._reason(exc)}"
            ) from exc

    def _create_indexes(self) -> None:
        self._klines.create_index(_KEY, unique=True, name="symbol_interval_open_time")
        self._gaps.create_index(
            [("symbol", ASCENDING), ("interval", ASCENDING), ("start_time", ASCENDING)],
            unique=True,
            name="symbol_interval_start_time",
        )
        self._events.create_index("timestamp", name="timestamp")
        self._operations.create_index("timestamp", name="timestamp")

    def _write_batch(self, klines: Sequence[Kline]) -> None:
        decimal128 = self._decimal128
        operations = []
        for kline in klines:
            document = kline_document(kline, decimal128=decimal128)
            key = document.pop("_id")
            operations.append(UpdateOne({"_id": key}, {"$set": document}, upsert=True))
        try:
            self._klines.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            inserted = [entry["_id"] for entry in exc.details.get("upserted", [])]
            if inserted:
                with contextlib.suppress(PyMongoError):
                    self._klines.delete_many({"_id": {"$in": inserted}})
            errors = exc.details.get("writeErrors", [])
            first = errors[0].get("errmsg", "") if errors else str(exc)
            raise StorageError(
                f"the database at {self.url} refused {len(errors)} of {len(klines)} klines "
                f"(the batch was undone as far as possible): {first[:300]}"
            ) from exc

    def _series(self, symbol: str, interval: Interval, **open_time: int) -> dict[str, Any]:
        query: dict[str, Any] = {"symbol": symbol, "interval": interval.name}
        if open_time:
            query["open_time"] = {f"${op}": value for op, value in open_time.items()}
        return query

    def _last_open_time_before(self, symbol: str, interval: Interval, before: int | None) -> int | None:
        query = (
            self._series(symbol, interval) if before is None else self._series(symbol, interval, lt=before)
        )
        found = self._klines.find_one(query, {"open_time": 1}, sort=[("open_time", DESCENDING)])
        return None if found is None else int(found["open_time"])

    def _first_open_time_from(self, symbol: str, interval: Interval, start: int) -> int | None:
        query = self._series(symbol, interval, gte=start)
        found = self._klines.find_one(query, {"open_time": 1}, sort=[("open_time", ASCENDING)])
        return None if found is None else int(found["open_time"])

    def _count(self, symbol: str, interval: Interval, start: int, end: int) -> int:
        return self._klines.count_documents(self._series(symbol, interval, gte=start, lt=end))

    def _open_times_page(
        self, symbol: str, interval: Interval, start: int, end: int, limit: int
    ) -> list[int]:
        query = self._series(symbol, interval, gte=start, lt=end)
        cursor = (
            self._klines.find(query, {"open_time": 1, "_id": 0}).sort("open_time", ASCENDING).limit(limit)
        )
        return [int(document["open_time"]) for document in cursor]

    def _read_page(self, symbol: str, interval: Interval, start: int, end: int, limit: int) -> list[Kline]:
        query = self._series(symbol, interval, gte=start, lt=end)
        cursor = self._klines.find(query, {"_id": 0}).sort("open_time", ASCENDING).limit(limit)
        return [kline_from_document(document) for document in cursor]

    def _mark_exchange_gap(self, symbol: str, interval: Interval, start: int, end: int) -> None:
        touching = {
            "symbol": symbol,
            "interval": interval.name,
            "start_time": {"$lte": end},
            "end_time": {"$gte": start},
        }
        known = list(self._gaps.find(touching))
        lo = min([start, *(int(gap["start_time"]) for gap in known)])
        hi = max([end, *(int(gap["end_time"]) for gap in known)])
        key = kline_key(symbol, interval.name, lo)
        merged = {"_id": key, "symbol": symbol, "interval": interval.name, "start_time": lo, "end_time": hi}
        self._gaps.replace_one({"_id": key}, merged, upsert=True)
        absorbed = [gap["_id"] for gap in known if gap["_id"] != key]
        if absorbed:
            self._gaps.delete_many({"_id": {"$in": absorbed}})

    def _exchange_gaps(self, symbol: str, interval: Interval, start: int, end: int) -> list[tuple[int, int]]:
        query = {
            "symbol": symbol,
            "interval": interval.name,
            "start_time": {"$lt": end},
            "end_time": {"$gt": start},
        }
        return [(int(gap["start_time"]), int(gap["end_time"])) for gap in self._gaps.find(query)]

    def _probe(self) -> None:
        probe = f"probe-{uuid.uuid4().hex}"
        self._locks.insert_one({"_id": probe, "host": socket.gethostname(), "pid": os.getpid()})
        self._locks.delete_one({"_id": probe})

    def _telemetry_sink(self) -> TelemetrySink:
        def write(events: list[BreakerEvent], operations: list[BreakerOperation]) -> None:
            def insert() -> None:
                if events:
                    self._events.insert_many([_document(e) for e in events], ordered=False)
                if operations:
                    self._operations.insert_many([_document(o) for o in operations], ordered=False)

            self._translated(insert)

        return write

    def _dispose(self) -> None:
        self._client.close()

    # -- run lock: a lease document --------------------------------------------------------------------

    @contextlib.contextmanager
    def _run_lock(self, name: str) -> Iterator[None]:
        owner = uuid.uuid4().hex
        since = datetime.now(UTC)
        self._guard(self._take_lease, name, owner, since)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._keep_lease, args=(name, owner, since, stop), name=f"lease-{name}", daemon=True
        )
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                self._locks.delete_one({"_id": name, "owner": owner})
            except PyMongoError as exc:
                log.warning(
                    "could not release the %s lock on %s (it expires by itself): %s", name, self.url, exc
                )

    def _lease(self, name: str, owner: str, since: datetime) -> dict[str, Any]:
        return {
            "_id": name,
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": since,
            "expires_at": datetime.now(UTC) + timedelta(seconds=self.lease_seconds),
        }

    def _take_lease(self, name: str, owner: str, since: datetime) -> None:
        """Upsert the lease if it is free or expired; take it over if its holder died on this host."""
        lease = self._lease(name, owner, since)
        taken = self._replace_lease({"_id": name, "expires_at": {"$lt": datetime.now(UTC)}}, lease)
        if taken:
            return
        held = self._locks.find_one({"_id": name})
        if held is None:
            taken = self._replace_lease({"_id": name, "expires_at": {"$lt": datetime.now(UTC)}}, lease)
        elif held.get("host") == socket.gethostname() and not _alive(held.get("pid")):
            log.warning(
                "taking over the %s lock of pid %s on this host, which has exited", name, held.get("pid")
            )
            taken = self._replace_lease({"_id": name, "owner": held.get("owner")}, lease)
        if not taken:
            raise self._locked(name, describe_holder(held))

    def _replace_lease(self, query: dict[str, Any], lease: dict[str, Any]) -> bool:
        try:
            found = self._locks.find_one_and_replace(
                query, lease, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            return False  # held: the upsert tried to insert a second document with this _id
        return found is not None and found.get("owner") == lease["owner"]

    def _keep_lease(self, name: str, owner: str, since: datetime, stop: threading.Event) -> None:
        """Renew the lease until released; runs in a daemon thread, so a killed run's lease expires."""
        while not stop.wait(self.renew_every):
            try:
                renewed = self._locks.replace_one(
                    {"_id": name, "owner": owner}, self._lease(name, owner, since)
                )
            except PyMongoError as exc:
                log.warning("could not renew the %s lock on %s: %s", name, self.url, exc)
                continue
            if not renewed.matched_count:
                log.error("the %s lock on %s was taken by another run while this one held it", name, self.url)
                return

    # -- helpers --------------------------------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        reason = str(exc)
        if self._secret:
            reason = reason.replace(self._secret, "***")
        return reason[:300]

    def _refused(self, exc: OperationFailure) -> ExtractorError:
        if exc.code in _AUTH_CODES:
            return BadInputError(f"the database at {self.url} refused the login: {self._reason(exc)}")
        return StorageError(f"the database at {self.url} refused the operation: {self._reason(exc)}")


def _document(row: BreakerEvent | BreakerOperation) -> dict[str, Any]:
    fields = {name: getattr(row, name) for name in row.__dataclass_fields__}
    fields["timestamp"] = row.timestamp.replace(tzinfo=UTC)
    return fields


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # cannot tell: assume the holder lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
