"""Run locks on MongoDB: a lease document renewed while held, taken over when its holder is gone.

MongoDB has no session locks, so a lock is a document with an expiry that a daemon thread renews; a
killed run's lease simply expires, and one left by a process that exited on this host is taken at once.
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
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from extractor.errors import RunLocked
from extractor.storage.records import describe_holder

log = logging.getLogger("extractor.storage")

LEASE_SECONDS = 60.0
RENEW_EVERY = 20.0


class LeaseLock:
    """Named leases in one collection; ``hold(name, guard)`` is the run lock of a MongoKlineStore."""

    def __init__(
        self, collection: Collection[dict[str, Any]], where: str, locked: Callable[[str, str], RunLocked]
    ) -> None:
        self._locks = collection
        self._where = where
        self._locked = locked
        self.lease_seconds = LEASE_SECONDS
        self.renew_every = RENEW_EVERY

    @contextlib.contextmanager
    def hold(self, name: str, guard: Callable[..., Any]) -> Iterator[None]:
        owner = uuid.uuid4().hex
        since = datetime.now(UTC)
        guard(self._take, name, owner, since)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._keep, args=(name, owner, since, stop), name=f"lease-{name}", daemon=True
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
                    "could not release the %s lock on %s (it expires by itself): %s", name, self._where, exc
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

    def _take(self, name: str, owner: str, since: datetime) -> None:
        """Upsert the lease if it is free or expired; take it over if its holder died on this host."""
        lease = self._lease(name, owner, since)
        expired = {"_id": name, "expires_at": {"$lt": datetime.now(UTC)}}
        if self._replace(expired, lease):
            return
        held = self._locks.find_one({"_id": name})
        taken = False
        if held is None:
            taken = self._replace(expired, lease)
        elif held.get("host") == socket.gethostname() and not _alive(held.get("pid")):
            log.warning(
                "taking over the %s lock of pid %s on this host, which has exited", name, held.get("pid")
            )
            taken = self._replace({"_id": name, "owner": held.get("owner")}, lease)
        if not taken:
            raise self._locked(name, describe_holder(held))

    def _replace(self, query: dict[str, Any], lease: dict[str, Any]) -> bool:
        try:
            found = self._locks.find_one_and_replace(
                query, lease, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            return False  # held: the upsert tried to insert a second document with this _id
        return found is not None and found.get("owner") == lease["owner"]

    def _keep(self, name: str, owner: str, since: datetime, stop: threading.Event) -> None:
        """Renew the lease until released; a daemon thread, so a killed run's lease expires."""
        while not stop.wait(self.renew_every):
            try:
                renewed = self._locks.replace_one(
                    {"_id": name, "owner": owner}, self._lease(name, owner, since)
                )
            except PyMongoError as exc:
                log.warning("could not renew the %s lock on %s: %s", name, self._where, exc)
                continue
            if not renewed.matched_count:
                log.error(
                    "the %s lock on %s was taken by another run while this one held it", name, self._where
                )
                return


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


@contextlib.contextmanager
def hold_many(
    collection: Collection[dict[str, Any]], names: Sequence[str], lease_seconds: float = LEASE_SECONDS
) -> Iterator[tuple[list[str], list[str]]]:
    """Leases on many names at once, one bulk write: yields (held, busy); renewed together while held.

    A lease is taken where none is, where one has expired, or where its run exited on this host; the
    unique ``_id`` refuses the rest.
    """
    owner = uuid.uuid4().hex

    def lease() -> dict[str, Any]:
        return {
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires_at": datetime.now(UTC) + timedelta(seconds=lease_seconds),
        }

    busy: set[int] = set()
    if names:
        here = socket.gethostname()
        left = [
            d["_id"]
            for d in collection.find({"_id": {"$in": list(names)}, "host": here}, {"pid": 1})
            if not _alive(d.get("pid"))
        ]
        if left:
            collection.delete_many({"_id": {"$in": left}, "host": here})  # leases of runs that exited here
        now = datetime.now(UTC)
        operations = [
            UpdateOne({"_id": name, "expires_at": {"$lt": now}}, {"$set": lease()}, upsert=True)
            for name in names
        ]
        try:
            collection.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            busy = {
                error["index"] for error in exc.details.get("writeErrors", []) if error.get("code") == 11000
            }
            if len(busy) != len(exc.details.get("writeErrors", [])):
                raise
    held = [name for index, name in enumerate(names) if index not in busy]
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(lease_seconds / 3):
            with contextlib.suppress(PyMongoError):
                collection.update_many({"owner": owner}, {"$set": {"expires_at": lease()["expires_at"]}})

    renewer = threading.Thread(target=keep, name="series-leases", daemon=True)
    renewer.start()
    try:
        yield held, [name for index, name in enumerate(names) if index in busy]
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(PyMongoError):
            collection.delete_many({"owner": owner})
