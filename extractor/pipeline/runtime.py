"""The composition root: settings → state directory → breakers → sources → store, for one command.

Nothing else builds these objects; every command function takes the ones it needs as arguments, so
tests pass their own. Breakers are one per dependency (each exchange host and source address, the
archive host, each database), their state shared through one file in the state directory.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from extractor.errors import (
    ArchiveUnavailable,
    BadInputError,
    ExchangeUnavailable,
    StorageUnavailable,
)
from extractor.klines import Series
from extractor.lifecycle import RunStop
from extractor.markets import Market
from extractor.pipeline.shards import shard_series
from extractor.secrets import mask_url
from extractor.settings import (
    API_FAILURE_THRESHOLD,
    ARCHIVE_FAILURE_THRESHOLD,
    DB_FAILURE_THRESHOLD,
    Settings,
)
from extractor.sources.archive import ArchiveSource
from extractor.sources.base import KlineSource
from extractor.sources.files import FileClient
from extractor.sources.http import BanRecord, RestClient, RetryPolicy
from extractor.sources.rest import RestSource
from extractor.sources.weight import WeightBudget
from extractor.storage import KlineStore, open_store
from utils.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfigError,
    CircuitBreakerListener,
    CircuitState,
    JsonFileStateStore,
    check_environ,
)

log = logging.getLogger("extractor.pipeline")

BREAKER_FILE = "breakers.json"
_BREAKER_GROUPS: dict[str, tuple[type[Exception], int]] = {
    "api": (ExchangeUnavailable, API_FAILURE_THRESHOLD),
    "db": (StorageUnavailable, DB_FAILURE_THRESHOLD),
    "archive": (ArchiveUnavailable, ARCHIVE_FAILURE_THRESHOLD),
}


class TransitionLog(CircuitBreakerListener):
    """Every breaker state change as one line: opening is a WARNING, recovering INFO (cron stays quiet)."""

    def state_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        if new is CircuitState.OPEN:
            log.warning(
                "circuit breaker %s: %s -> OPEN after %d failures; next trial in %.0f s",
                breaker.name,
                old.value,
                breaker.failure_count,
                breaker.seconds_until_trial(),
            )
        else:
            log.info("circuit breaker %s: %s -> %s", breaker.name, old.value, new.value)


def dependency_key(url: str, source_address: str | None = None) -> str:
    """``api.binance.com`` or ``127.0.0.1:8080@127.0.0.2``: what a breaker, a budget and a ban belong to."""
    parts = urlsplit(url)
    key = parts.netloc.rpartition("@")[2] or url
    return f"{key}@{source_address}" if source_address else key


def _file_safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


class Runtime:
    """The collaborators of one command, built on first use and closed together."""

    def __init__(self, settings: Settings, *, stop: RunStop | None = None) -> None:
        self.settings = settings
        self.stop = stop if stop is not None else RunStop()
        self.state_dir = _writable_state_dir(settings.state_dir)
        self.retry = RetryPolicy(settings.attempts, settings.retry_budget, settings.backoff)
        try:
            check_environ(settings.breaker_environ)
        except CircuitBreakerConfigError as exc:
            raise BadInputError(str(exc)) from exc
        self.breaker_store = JsonFileStateStore(self.state_dir / BREAKER_FILE)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._exchanges: dict[str, RestSource] = {}
        self._budgets: dict[str, WeightBudget] = {}
        self._store: KlineStore | None = None
        self._files: FileClient | None = None
        self._lock = threading.Lock()
        self.listeners: list[CircuitBreakerListener] = [TransitionLog()]
        self.on_wait: Callable[[float, str], None] | None = None

    # -- breakers -------------------------------------------------------------------------------------

    def breaker(self, name: str, group: str, counted: type[Exception], threshold: int) -> CircuitBreaker:
        """The breaker of one dependency, shared by every use of it in this run."""
        with self._lock:
            found = self._breakers.get(name)
            if found is None:
                try:
                    found = CircuitBreaker.from_env(
                        name,
                        environ=self.settings.breaker_environ,
                        group=group,
                        failure_threshold=threshold,
                        expected_exception=counted,
                        state_store=self.breaker_store,
                        listeners=tuple(self.listeners),
                    )
                except CircuitBreakerConfigError as exc:
                    raise BadInputError(str(exc)) from exc
                self._breakers[name] = found
            return found

    @property
    def breakers(self) -> list[CircuitBreaker]:
        """The breakers this run has built."""
        return list(self._breakers.values())

    # -- the exchange ---------------------------------------------------------------------------------

    def exchange(self, market: Market) -> RestSource:
        """The REST source of ``market``: its host's breaker, weight budget and remembered ban."""
        settings = self.settings
        base_url = settings.base_url_for(market)
        key = dependency_key(base_url, settings.source_address)
        with self._lock:
            found = self._exchanges.get(market.name)
        if found is not None:
            return found
        counted, threshold = _BREAKER_GROUPS["api"]
        breaker = self.breaker(f"api:{key}", "api", counted, threshold)
        with self._lock:
            budget = self._budgets.setdefault(
                f"{key}{market.api_path}", WeightBudget(market.weight_limit, sleep=self.stop.sleep)
            )
        client = RestClient(
            base_url,
            breaker=breaker,
            budget=budget,
            bans=BanRecord(self.state_dir / f"ban-{_file_safe(key)}.json", wall_clock=time.time),
            stop=self.stop,
            retry=self.retry,
            concurrency=settings.concurrency,
            read_timeout=settings.read_timeout,
            source_address=settings.source_address,
            api_key=settings.api_key,
        )
        client.wait_listener = self.on_wait
        source = RestSource(market, client)
        budget.server_offset_ms = source.server_offset_ms
        with self._lock:
            return self._exchanges.setdefault(market.name, source)

    def archive(self, market: Market, *, fall_back: bool) -> KlineSource:
        """The archive source of ``market``, with the REST source behind it when ``fall_back``."""
        settings = self.settings
        if self._files is None:
            counted, threshold = _BREAKER_GROUPS["archive"]
            breaker = self.breaker(
                f"archive:{dependency_key(settings.archive_url)}", "archive", counted, threshold
            )
            self._files = FileClient(
                settings.archive_url,
                breaker=breaker,
                stop=self.stop,
                retry=self.retry,
                concurrency=settings.concurrency,
            )
        return ArchiveSource(self.exchange(market), self._files, fall_back=fall_back)

    # -- shards and locks -----------------------------------------------------------------------------

    def select(self, series: list[Series]) -> list[Series]:
        """The series of this run's shard (all of them without ``--shard``), by :mod:`shards`."""
        shard = self.settings.shard
        if shard is None:
            return series
        mine = shard_series(series, shard.index, shard.count)
        if not mine:
            log.info("shard %s has none of these %d series: nothing to do", shard, len(series))
        return mine

    def lock_name(self, command: str) -> str:
        """The run lock of ``command`` on this database: one per shard, so shards never block each other."""
        shard = self.settings.shard
        return command if shard is None else f"{command}-shard-{shard.index}-of-{shard.count}"

    def known_breakers(self) -> list[CircuitBreaker]:
        """Every breaker the state file knows, and those this run built."""
        for name in sorted(self.breaker_store.load_all()):
            group, _, _ = name.partition(":")
            counted, threshold = _BREAKER_GROUPS.get(group, (ExchangeUnavailable, API_FAILURE_THRESHOLD))
            self.breaker(name, group, counted, threshold)
        return sorted(self.breakers, key=lambda b: b.name)

    # -- the database ---------------------------------------------------------------------------------

    @property
    def db_breaker(self) -> CircuitBreaker:
        counted, threshold = _BREAKER_GROUPS["db"]
        return self.breaker(f"db:{_database_key(self.settings.db_url)}", "db", counted, threshold)

    @property
    def store(self) -> KlineStore:
        if self._store is None:
            spool = self.state_dir / f"telemetry-{_file_safe(_database_key(self.settings.db_url))}.jsonl"
            store = open_store(
                self.settings.db_url,
                breaker=self.db_breaker,
                sleep=self.stop.sleep,
                create=False,
                telemetry_spool=spool,
            )
            telemetry = store.telemetry()
            self.listeners.append(telemetry)
            for breaker in self.breakers:
                breaker.add_listener(telemetry)
            self._store = store
            store.open()  # listened to, so a recovery met on opening is recorded too
        return self._store

    def database_exists(self) -> bool:
        """Whether the database exists yet, asked without creating it (an SQLite file may not)."""
        if self._store is not None:
            return True
        probe = open_store(self.settings.db_url, breaker=self.db_breaker, create=False)
        try:
            return probe.exists()
        finally:
            probe.close()

    # -- the end of the run ---------------------------------------------------------------------------

    def close(self) -> None:
        self.stop.set("closed")
        for source in self._exchanges.values():
            source.close()
        if self._files is not None:
            self._files.close()
        if self._store is not None:
            self._store.close()


def _database_key(url: str) -> str:
    masked = mask_url(url)
    parts = urlsplit(masked)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"[:90]


def _writable_state_dir(path: Path) -> Path:
    """The state directory, created if missing; one that cannot be written is a bad environment."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise BadInputError(
            f"the state directory {path} is not writable ({exc.strerror or exc}); set EXTRACTOR_STATE_DIR "
            "to a writable directory"
        ) from exc
    if not os.access(path, os.W_OK):
        raise BadInputError(f"the state directory {path} is not writable; set EXTRACTOR_STATE_DIR")
    return path
