"""MongoDB through pymongo: the same collections and field names as the SQL tables.

Decimals are Decimal128 (exact, what MongoDB recommends for money); ``?decimals=string`` in the URL stores
exact decimal strings instead, for MongoDB-compatible servers without Decimal128 (``mongo_documents.py``
maps both). The unique compound index on (market, symbol, interval, open_time) guards the key. Only
standard commands are used (ordered bulk upserts, unique compound indexes, ``$concat`` groups), so a
real MongoDB behaves as the nx-27017 server of the tests does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from bson.decimal128 import Decimal128
from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from extractor.errors import BadInputError, ExtractorError, StorageError, StorageUnavailable
from extractor.klines import Kline, Series
from extractor.secrets import mask_url
from extractor.storage.base import KlineStore
from extractor.storage.mongo_documents import (
    gap_from_document,
    kline_document,
    kline_from_document,
    kline_key,
    migrate_unmarketed,
    telemetry_document,
)
from extractor.storage.mongo_lease import LeaseLock, hold_many
from extractor.storage.records import ExchangeGap, SeriesLocks, SeriesSummary
from extractor.storage.telemetry import BreakerEvent, BreakerOperation, TelemetrySink
from utils.circuit_breaker import CircuitBreaker

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("extractor.storage")

DEFAULT_DATABASE = "binance"
DECIMAL_MODES = ("decimal128", "string")
PROBE_COLLECTION = "binance_extractor_probe"
"""Probes write here and drop it again, so a check leaves nothing behind."""
_CLIENT_DEFAULTS = {"serverSelectionTimeoutMS": 3000, "connectTimeoutMS": 3000}
_AUTH_CODES = {13, 18}  # Unauthorized, AuthenticationFailed: the URL is wrong, not the server
_KEY = [("market", ASCENDING), ("symbol", ASCENDING), ("interval", ASCENDING), ("open_time", ASCENDING)]
_GAP_KEY = [("market", ASCENDING), ("symbol", ASCENDING), ("interval", ASCENDING), ("start_time", ASCENDING)]


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
    """A KlineStore on MongoDB; a batch is one ordered bulk upsert, undone if it fails part-way.

    Ordered, so a batch cut short by a lost server leaves a prefix of its window (``extract`` resumes
    after the last stored candle). A batch the server refuses is undone: the documents it inserted are
    deleted again; those it updated keep their new values, the same values a rerun writes.
    """

    def __init__(
        self,
        url: str,
        breaker: CircuitBreaker,
        client: MongoClient[dict[str, Any]],
        database: str,
        mode: str,
        secrets: tuple[str, ...],
    ) -> None:
        self._secrets = secrets
        self._client = client
        self._db = db = client[database]
        self._decimal128 = mode == "decimal128"
        self._klines: Collection[dict[str, Any]] = db["klines"]
        self._gaps: Collection[dict[str, Any]] = db["exchange_gaps"]
        self._series_writes: Collection[dict[str, Any]] = db["kline_series"]
        self._events: Collection[dict[str, Any]] = db["circuit_breaker_events"]
        self._operations: Collection[dict[str, Any]] = db["circuit_breaker_operations"]
        super().__init__(url, breaker)
        self._leases = LeaseLock(db["run_locks"], self.url, self._locked)
        self._series_leases: Collection[dict[str, Any]] = db["series_leases"]

    @classmethod
    def connect(cls, url: str, breaker: CircuitBreaker, secrets: tuple[str, ...]) -> MongoKlineStore:
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
        return cls(url, breaker, client, database, mode, secrets)

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

    def _create_schema(self) -> None:
        if self._decimal128:
            self._probe()  # a server without Decimal128 is found before anything is written
        self._migrate_unmarketed()
        self._klines.create_index(_KEY, unique=True, name="market_symbol_interval_open_time")
        self._gaps.create_index(_GAP_KEY, unique=True, name="market_symbol_interval_start_time")
        self._events.create_index("timestamp", name="timestamp")
        self._operations.create_index("timestamp", name="timestamp")

    def _migrate_unmarketed(self) -> None:
        migrate_unmarketed(self._klines, "symbol_interval_open_time", "open_time", {})
        migrate_unmarketed(
            self._gaps, "symbol_interval_start_time", "start_time", {"confirmations": 0, "confirmed_at": None}
        )

    def _write_batches(self, batches: Iterable[Sequence[Kline]]) -> None:
        inserted: list[Any] = []
        last: dict[tuple[str, str, str], Kline] = {}
        try:
            for batch in batches:
                operations = []
                for kline in batch:
                    document = kline_document(kline, decimal128=self._decimal128)
                    operations.append(
                        UpdateOne({"_id": document.pop("_id")}, {"$set": document}, upsert=True)
                    )
                result = self._klines.bulk_write(operations, ordered=True)
                inserted += (result.upserted_ids or {}).values()
                last[batch[0][:3]] = batch[-1]
        except BulkWriteError as exc:
            inserted += [entry["_id"] for entry in exc.details.get("upserted", [])]
            self._undo(inserted)
            errors = exc.details.get("writeErrors", [])
            first = errors[0].get("errmsg", "") if errors else str(exc)
            if self._decimal128 and "decimal" in first.lower():
                raise self._no_decimal128(first) from exc
            reason = self._reason_text(first)
            raise StorageError(
                f"the database at {self.url} refused a kline (the batch was undone): {reason}"
            ) from exc
        except ConnectionFailure:
            raise  # a prefix is stored; nothing can be undone without the server
        except BaseException:
            self._undo(inserted)  # the batches' source failed (an archive file with a bad row)
            raise
        for kline in last.values():
            self._series_writes.update_one(
                {"_id": kline_key(*kline[:3], 0)},
                {
                    "$set": {
                        "market": kline.market,
                        "symbol": kline.symbol,
                        "interval": kline.interval,
                        "last_write_time": self._now_ms(),
                    }
                },
                upsert=True,
            )

    def _undo(self, inserted: list[Any]) -> None:
        if inserted:
            with contextlib.suppress(PyMongoError):
                self._klines.delete_many({"_id": {"$in": inserted}})

    def _series(self, series: Series, **open_time: int) -> dict[str, Any]:
        query: dict[str, Any] = {
            "market": series.market.name,
            "symbol": series.symbol,
            "interval": series.interval.name,
        }
        if open_time:
            query["open_time"] = {f"${op}": value for op, value in open_time.items()}
        return query

    def _last_open_time_before(self, series: Series, before: int | None) -> int | None:
        query = self._series(series) if before is None else self._series(series, lt=before)
        found = self._klines.find_one(query, {"open_time": 1}, sort=[("open_time", DESCENDING)])
        return None if found is None else int(found["open_time"])

    def _first_open_time_from(self, series: Series, start: int) -> int | None:
        found = self._klines.find_one(
            self._series(series, gte=start), {"open_time": 1}, sort=[("open_time", ASCENDING)]
        )
        return None if found is None else int(found["open_time"])

    def _count(self, series: Series, start: int, end: int) -> int:
        return self._klines.count_documents(self._series(series, gte=start, lt=end))

    def _open_times_page(self, series: Series, start: int, end: int, limit: int) -> list[int]:
        query = self._series(series, gte=start, lt=end)
        cursor = (
            self._klines.find(query, {"open_time": 1, "_id": 0}).sort("open_time", ASCENDING).limit(limit)
        )
        return [int(document["open_time"]) for document in cursor]

    def _read_page(self, series: Series, start: int, end: int, limit: int) -> list[Kline]:
        query = self._series(series, gte=start, lt=end)
        cursor = self._klines.find(query, {"_id": 0}).sort("open_time", ASCENDING).limit(limit)
        return [kline_from_document(document) for document in cursor]

    def _gap_query(self, series: Series, start: int, end: int, *, touching: bool) -> dict[str, Any]:
        query = {"market": series.market.name, "symbol": series.symbol, "interval": series.interval.name}
        if touching:
            return {**query, "start_time": {"$lte": end}, "end_time": {"$gte": start}}
        return {**query, "start_time": {"$lt": end}, "end_time": {"$gt": start}}

    def _insert_gap(self, series: Series, gap: ExchangeGap) -> None:
        key = kline_key(series.market.name, series.symbol, series.interval.name, gap.start)
        self._gaps.replace_one(
            {"_id": key},
            {
                "_id": key,
                "market": series.market.name,
                "symbol": series.symbol,
                "interval": series.interval.name,
                "start_time": gap.start,
                "end_time": gap.end,
                "confirmations": gap.confirmations,
                "confirmed_at": gap.confirmed_at,
            },
            upsert=True,
        )

    def _record_exchange_gap(self, series: Series, gap: ExchangeGap) -> None:
        known = [
            gap_from_document(document)
            for document in self._gaps.find(self._gap_query(series, gap.start, gap.end, touching=True))
        ]
        merged = ExchangeGap(
            min([gap.start, *(k.start for k in known)]),
            max([gap.end, *(k.end for k in known)]),
            min([gap.confirmations, *(k.confirmations for k in known)]),
            gap.confirmed_at,
        )
        self._insert_gap(series, merged)
        absorbed = [
            kline_key(series.market.name, series.symbol, series.interval.name, k.start)
            for k in known
            if k.start != merged.start
        ]
        if absorbed:
            self._gaps.delete_many({"_id": {"$in": absorbed}})

    def _exchange_gaps(self, series: Series, start: int, end: int) -> list[ExchangeGap]:
        return [
            gap_from_document(document)
            for document in self._gaps.find(self._gap_query(series, start, end, touching=False))
        ]

    def _forget_exchange_gaps(self, series: Series, start: int, end: int) -> None:
        known = [
            gap_from_document(d) for d in self._gaps.find(self._gap_query(series, start, end, touching=False))
        ]
        self._gaps.delete_many(
            {
                "_id": {
                    "$in": [
                        kline_key(series.market.name, series.symbol, series.interval.name, k.start)
                        for k in known
                    ]
                }
            }
        )
        for k in known:
            if k.start < start:
                self._insert_gap(series, ExchangeGap(k.start, start, k.confirmations, k.confirmed_at))
            if k.end > end:
                self._insert_gap(series, ExchangeGap(end, k.end, k.confirmations, k.confirmed_at))

    def _series_summaries(self, market: str | None) -> list[SeriesSummary]:
        match: list[dict[str, Any]] = [] if market is None else [{"$match": {"market": market}}]
        pipeline: list[dict[str, Any]] = [
            *match,
            {
                "$group": {
                    # one string key: $concat is standard, and servers like nx-27017 group by no document
                    "_id": {"$concat": ["$market", "|", "$symbol", "|", "$interval"]},
                    "first": {"$min": "$open_time"},
                    "last": {"$max": "$open_time"},
                    "count": {"$sum": 1},
                }
            },
        ]
        writes = {
            (d["market"], d["symbol"], d["interval"]): int(d["last_write_time"])
            for d in self._series_writes.find({} if market is None else {"market": market})
        }
        out = []
        for group in self._klines.aggregate(pipeline):
            market_name, symbol, interval = str(group["_id"]).split("|")
            series = (market_name, symbol, interval)
            out.append(
                SeriesSummary(
                    *series, int(group["first"]), int(group["last"]), int(group["count"]), writes.get(series)
                )
            )
        return out

    def _probe(self) -> str:
        """Write a document (with a Decimal128 unless ``?decimals=string``), read it back, drop the lot."""
        probes = self._db[PROBE_COLLECTION]
        probe = {"_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        probes.insert_one(probe)
        try:
            if self._decimal128:
                tiny = Decimal128("0.00000001")
                try:
                    probes.update_one({"_id": probe["_id"]}, {"$set": {"decimal": tiny}})
                except OperationFailure as exc:
                    raise self._no_decimal128(str(exc)) from exc
                found = probes.find_one({"_id": probe["_id"]}) or {}
                if found.get("decimal") != tiny:
                    raise self._no_decimal128(f"a Decimal128 came back as {found.get('decimal')!r}")
        finally:
            probes.drop()
        return "writable (probe written and dropped)"

    def _run_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self._leases.hold(name, self._guard)

    @contextlib.contextmanager
    def _lock_series(self, series: list[Series]) -> Iterator[SeriesLocks]:
        keys = {kline_key(s.market.name, s.symbol, s.interval.name, 0): s for s in series}
        with hold_many(self._series_leases, list(keys)) as (held, busy):
            yield SeriesLocks([keys[k] for k in held], [keys[k] for k in busy])

    def _telemetry_sink(self) -> TelemetrySink:
        def write(events: list[BreakerEvent], operations: list[BreakerOperation]) -> None:
            def insert() -> None:
                if events:
                    self._events.insert_many([telemetry_document(e) for e in events], ordered=False)
                if operations:
                    self._operations.insert_many([telemetry_document(o) for o in operations], ordered=False)

            self._translated(insert)

        return write

    def _dispose(self) -> None:
        self._client.close()

    # -- helpers --------------------------------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        return self._reason_text(str(exc))

    def _reason_text(self, reason: str) -> str:
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        return reason[:300]

    def _refused(self, exc: OperationFailure) -> ExtractorError:
        if exc.code in _AUTH_CODES:
            return BadInputError(f"the database at {self.url} refused the login: {self._reason(exc)}")
        if self._decimal128 and "decimal" in str(exc).lower():
            return self._no_decimal128(str(exc))
        return StorageError(f"the database at {self.url} refused the operation: {self._reason(exc)}")

    def _no_decimal128(self, reason: str) -> BadInputError:
        return BadInputError(
            f"the database at {self.url} does not store Decimal128 ({self._reason_text(reason)}): add "
            "?decimals=string to the URL to keep exact decimal strings instead"
        )
