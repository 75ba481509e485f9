"""How klines, exchange gaps and telemetry rows look as MongoDB documents, and back, and how the
documents of the release before ``market`` are brought up to date.

A kline's ``_id`` is its key as text (``spot|BTCUSDT|1m|1700000000000``), so every upsert hits the
primary index on any server; decimals are Decimal128 or, with ``?decimals=string``, exact strings.
"""

from __future__ import annotations

import contextlib
from datetime import UTC
from typing import Any, cast

from bson.decimal128 import Decimal128
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from extractor.klines import DECIMAL_FIELDS, FIELDS, Kline
from extractor.storage.records import ExchangeGap
from extractor.storage.tables import plain
from extractor.storage.telemetry import BreakerEvent, BreakerOperation

MIGRATION_BATCH = 1_000
_DECIMAL_INDEXES = frozenset(i for i, name in enumerate(FIELDS) if name in DECIMAL_FIELDS)


def kline_key(market: str, symbol: str, interval: str, open_time: int) -> str:
    return f"{market}|{symbol}|{interval}|{open_time}"


def kline_document(kline: Kline, *, decimal128: bool = True) -> dict[str, Any]:
    """The stored document of a kline, ``_id`` included; decimals as Decimal128 or exact strings."""
    document: dict[str, Any] = {"_id": kline_key(*kline[:4])}
    for index, (name, value) in enumerate(zip(FIELDS, kline, strict=True)):
        document[name] = Decimal128(cast(str, value)) if decimal128 and index in _DECIMAL_INDEXES else value
    return document


def kline_from_document(document: dict[str, Any]) -> Kline:
    """A Kline from a stored document, whichever way its decimals were stored."""
    return Kline._make(_text(document[name]) if name in DECIMAL_FIELDS else document[name] for name in FIELDS)


def _text(value: Any) -> str:
    if isinstance(value, Decimal128):
        return plain(value.to_decimal())
    return value if isinstance(value, str) else str(value)


def gap_from_document(document: dict[str, Any]) -> ExchangeGap:
    confirmed_at = document.get("confirmed_at")
    return ExchangeGap(
        int(document["start_time"]),
        int(document["end_time"]),
        int(document.get("confirmations", 0)),
        None if confirmed_at is None else int(confirmed_at),
    )


def telemetry_document(row: BreakerEvent | BreakerOperation) -> dict[str, Any]:
    fields = {name: getattr(row, name) for name in row.__dataclass_fields__}
    fields["timestamp"] = row.timestamp.replace(tzinfo=UTC)
    return fields


def migrate_unmarketed(
    collection: Collection[dict[str, Any]], old_index: str, key_field: str, extra: dict[str, Any]
) -> None:
    """Documents of an older release get ``market: "spot"``, ``extra`` and a new ``_id``, a batch at a time.

    An ``_id`` cannot change, so each batch is copied under its new key and then deleted; a run
    killed half-way leaves old documents that the next run migrates, and a second run finds none.
    """
    unmarketed = {"market": {"$exists": False}}
    if collection.find_one(unmarketed, {"_id": 1}) is None:
        return
    with contextlib.suppress(OperationFailure):
        collection.drop_index(old_index)  # its key would collide with the migrated copies
    while batch := list(collection.find(unmarketed).limit(MIGRATION_BATCH)):
        copies = []
        for document in batch:
            copy = {**document, "market": "spot", **extra}
            copy["_id"] = kline_key("spot", document["symbol"], document["interval"], document[key_field])
            copies.append(UpdateOne({"_id": copy["_id"]}, {"$setOnInsert": copy}, upsert=True))
        collection.bulk_write(copies, ordered=True)
        collection.delete_many({"_id": {"$in": [document["_id"] for document in batch]}})
