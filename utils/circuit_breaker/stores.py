"""Where breakers keep their state: the source of truth that breakers of several threads or processes share.

A store holds one versioned ``BreakerSnapshot`` per breaker name. A write is a compare-and-swap: it lands
only if the store still holds the version the writer built on, so a write based on an older state never
replaces a newer one; the loser reloads and decides again. ``stamp()`` is a cheap token that changes with
every write, so a breaker can check before each call whether another process moved it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

from utils.circuit_breaker.errors import CircuitBreakerConfigError
from utils.circuit_breaker.state import BreakerSnapshot, CircuitState, Permit

_log = logging.getLogger("utils.circuit_breaker")


class CircuitBreakerStateStore(ABC):
    """The contract of a store; keyed by breaker name, version 0 meaning "nothing stored"."""

    @abstractmethod
    def stamp(self) -> Hashable:
        """A token that differs from the last one whenever a snapshot may have changed since; cheap."""

    @abstractmethod
    def load(self, name: str) -> BreakerSnapshot | None:
        """The stored snapshot of ``name``, or None when there is none (or none that can be read)."""

    @abstractmethod
    def load_all(self) -> dict[str, BreakerSnapshot]:
        """Every readable snapshot, by breaker name."""

    @abstractmethod
    def compare_and_swap(self, snapshot: BreakerSnapshot, expected_version: int) -> bool:
        """Store ``snapshot`` if the stored version of its breaker is still ``expected_version``; atomic."""


class MemoryStateStore(CircuitBreakerStateStore):
    """Shares state between the breakers of one process; also the default, private store of a breaker."""

    def __init__(self) -> None:
        self._snapshots: dict[str, BreakerSnapshot] = {}
        self._lock = threading.Lock()
        self._writes = 0

    def stamp(self) -> Hashable:
        return self._writes

    def load(self, name: str) -> BreakerSnapshot | None:
        return self._snapshots.get(name)

    def load_all(self) -> dict[str, BreakerSnapshot]:
        with self._lock:
            return dict(self._snapshots)

    def compare_and_swap(self, snapshot: BreakerSnapshot, expected_version: int) -> bool:
        with self._lock:
            current = self._snapshots.get(snapshot.name)
            if (0 if current is None else current.version) != expected_version:
                return False
            self._snapshots[snapshot.name] = snapshot
            self._writes += 1
            return True


class JsonFileStateStore(CircuitBreakerStateStore):
    """Every breaker in one JSON file that separate runs share.

    Readers need no lock: a writer replaces the whole file at once (write a temporary file, rename it).
    Writers take an exclusive ``flock`` on ``<file>.lock`` and compare versions under it. Each write also
    gives the file a modification time above the previous one, so ``(inode, mtime, size)`` never repeats
    and a ``stat`` per call is enough to notice a change. A file that is empty, truncated or unreadable,
    or one that disappears, counts as holding nothing (every breaker CLOSED): that is logged once at
    WARNING, and the next write replaces it. An entry with impossible values is skipped the same way.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._complaint: str | None = None
        self._bad_entries: set[str] = set()
        self._file_seen = False

    def ensure_writable(self, variable: str = "state_dir") -> None:
        """Create the directory and prove a state file can be written there; else CircuitBreakerConfigError.

        A run calls this before its first request: a directory it cannot write is a bad environment, not a
        reason to fall back silently to state no other run can see. ``variable`` names the setting that
        chose the directory in the error.
        """
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".probe")
            os.close(fd)
            os.unlink(probe)
            os.close(os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as exc:
            raise CircuitBreakerConfigError(
                variable, directory, f"is a state directory that cannot be written ({exc.strerror or exc})"
            ) from exc

    def stamp(self) -> Hashable:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return (status.st_ino, status.st_mtime_ns, status.st_size)

    def load(self, name: str) -> BreakerSnapshot | None:
        return self.load_all().get(name)

    def load_all(self) -> dict[str, BreakerSnapshot]:
        return self._decode_all(self._read())

    def compare_and_swap(self, snapshot: BreakerSnapshot, expected_version: int) -> bool:
        with self._exclusive():
            document = self._read()
            current = self._decode_all(document).get(snapshot.name)
            if (0 if current is None else current.version) != expected_version:
                return False
            document[snapshot.name] = _encode(snapshot)
            self._write(document)
            return True

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        """The file's entries, still raw; anything unreadable is an empty document (and one warning)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if self._file_seen:
                self._complain("has disappeared")
            self._file_seen = False
            return {}
        except OSError as exc:
            self._complain(f"cannot be read ({exc.strerror or exc})")
            return {}
        self._file_seen = True
        try:
            document = json.loads(text)
        except ValueError:
            self._complain("is empty" if not text.strip() else "is truncated or not JSON")
            return {}
        if not isinstance(document, dict):
            self._complain("does not hold a JSON object")
            return {}
        self._complaint = None
        return document

    def _decode_all(self, document: dict[str, Any]) -> dict[str, BreakerSnapshot]:
        snapshots: dict[str, BreakerSnapshot] = {}
        for name, entry in document.items():
            try:
                snapshots[name] = _decode(name, entry)
            except (KeyError, TypeError, ValueError) as exc:
                if name not in self._bad_entries:
                    self._bad_entries.add(name)
                    _log.warning(
                        "circuit breaker state file %s: entry %r is unusable (%s); taken as CLOSED",
                        self.path,
                        name,
                        exc,
                    )
            else:
                self._bad_entries.discard(name)
        return snapshots

    def _complain(self, problem: str) -> None:
        if problem != self._complaint:
            self._complaint = problem
            _log.warning(
                "circuit breaker state file %s %s; its breakers are taken as CLOSED until the next write",
                self.path,
                problem,
            )

    def _write(self, document: dict[str, Any]) -> None:
        try:
            previous = os.stat(self.path).st_mtime_ns
        except OSError:
            previous = 0
        fd, temp_path = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as temp:
                json.dump(document, temp, indent=2, sort_keys=True)
            modified = max(time.time_ns(), previous + 1)
            os.utime(temp_path, ns=(modified, modified))
            os.replace(temp_path, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)
            raise
        self._file_seen = True
        self._complaint = None


def _encode(snapshot: BreakerSnapshot) -> dict[str, Any]:
    return {
        "state": snapshot.state.value,
        "version": snapshot.version,
        "episode": snapshot.episode,
        "failure_count": snapshot.failure_count,
        "last_failure_time": snapshot.last_failure_time,
        "opened_at": snapshot.opened_at,
        "open_until": snapshot.open_until,
        "permits": [[permit.number, permit.granted_at] for permit in snapshot.permits],
        "trial_successes": snapshot.trial_successes,
        "failure_threshold": snapshot.failure_threshold,
        "recovery_timeout": snapshot.recovery_timeout,
        "reason": snapshot.reason,
    }


def _decode(name: str, entry: Any) -> BreakerSnapshot:
    """One entry, with its counts validated as on assignment; times are checked later, against a clock."""
    if not isinstance(entry, dict):
        raise TypeError("not a JSON object")
    recovery_timeout = _number(entry.get("recovery_timeout", 60.0), "recovery_timeout")
    if not (math.isfinite(recovery_timeout) and recovery_timeout >= 0):
        raise ValueError(f"recovery_timeout {recovery_timeout!r} is not a finite number of seconds")
    reason = entry.get("reason")
    return BreakerSnapshot(
        name=name,
        state=CircuitState.parse(entry["state"]),
        failure_count=_count(entry["failure_count"], "failure_count", 0),
        last_failure_time=_time(entry.get("last_failure_time"), "last_failure_time"),
        opened_at=_time(entry.get("opened_at"), "opened_at"),
        open_until=_time(entry.get("open_until"), "open_until"),
        permits=tuple(
            Permit(_count(number, "permit", 1), _number(granted_at, "permit time"))
            for number, granted_at in entry.get("permits", ())
        ),
        trial_successes=_count(entry.get("trial_successes", 0), "trial_successes", 0),
        episode=_count(entry.get("episode", 0), "episode", 0),
        version=_count(entry.get("version", 1), "version", 1),
        failure_threshold=_count(entry.get("failure_threshold", 1), "failure_threshold", 1),
        recovery_timeout=recovery_timeout,
        reason=None if reason is None else str(reason),
    )


def _count(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} {value!r} is not a whole number of at least {minimum}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} {value!r} is not a number")
    return float(value)


def _time(value: Any, field: str) -> float | None:
    return None if value is None else _number(value, field)
