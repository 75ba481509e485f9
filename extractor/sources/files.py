"""Files from the archive host over HTTP: each zip checked against its CHECKSUM before it is used.

Transfers run under the archive breaker with retries and backoff; a transfer that arrives damaged
(checksum mismatch, cut short) is tried once more. A file the host does not have (404) is ``Missing``
at once: it falls back to REST without touching the breaker, since the host itself is healthy.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import Callable

import requests

from extractor.errors import ArchiveUnavailable, BreakerOpen
from extractor.lifecycle import RunStop
from extractor.sources.http import DEFAULT_RETRY, RetryPolicy, pooled_session, socket_reason
from utils.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState

log = logging.getLogger("extractor.sources")

_CHECKSUM = re.compile(r"([0-9a-fA-F]{64})\s+\*?(\S+)\s*")
TRANSFER_TRIES = 2
"""A damaged transfer is tried once more; a file damaged on the host stays damaged."""


class Missing(Exception):
    """The archive has no such file (404): not published yet, or never."""


class FileClient:
    """GETs of one archive host; safe to share between worker threads."""

    def __init__(
        self,
        base_url: str,
        *,
        breaker: CircuitBreaker,
        stop: RunStop,
        retry: RetryPolicy = DEFAULT_RETRY,
        concurrency: int = 8,
        connect_timeout: float = 3.05,
        read_timeout: float = 30.0,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.breaker = breaker
        self.stop = stop
        self.retry = retry
        self.files_downloaded = 0
        self._timeout = (connect_timeout, read_timeout)
        self._sleep = sleep if sleep is not None else stop.sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._session = pooled_session(concurrency)

    def close(self) -> None:
        self._session.close()

    def verified(self, path: str) -> bytes:
        """The zip at ``path`` after its sha256 matched the CHECKSUM file beside it."""
        damaged = ""
        for _ in range(TRANSFER_TRIES):
            expected = self._checksum(path)
            data = self._get(path)
            actual = hashlib.sha256(data).hexdigest()
            if actual == expected:
                self.files_downloaded += 1
                return data
            damaged = f"checksum mismatch (sha256 {actual[:12]}…, CHECKSUM says {expected[:12]}…)"
            log.info("%s: %s; downloading it once more", path, damaged)
        raise ArchiveUnavailable(f"{path}: {damaged}")

    def _checksum(self, path: str) -> str:
        text = self._get(path + ".CHECKSUM").decode("ascii", errors="replace")
        found = _CHECKSUM.fullmatch(text)
        name = path.rsplit("/", 1)[-1]
        if found is None or found.group(2) != name:
            raise ArchiveUnavailable(f"{path}.CHECKSUM: not a sha256 line for {name}: {text[:80]!r}")
        return found.group(1).lower()

    def _get(self, path: str) -> bytes:
        """One file's bytes, retried with backoff while the host fails; ``Missing`` for a 404."""
        url = f"{self.base_url}/{path}"
        failures = 0
        began = self._clock()
        last_error = ""
        while True:
            self.stop.check()
            try:
                return self.breaker.call(self._attempt, url, path)
            except CircuitBreakerError as exc:
                raise ArchiveUnavailable(
                    str(
                        BreakerOpen(
                            "archive",
                            exc.retry_at,
                            f"the archive at {self.base_url}",
                            last_error or exc.reason,
                        )
                    )
                ) from exc
            except ArchiveUnavailable as exc:
                failures += 1
                last_error = str(exc)
                delay = self.retry.delay(failures, self._rng)
                if self.retry.exhausted(failures, self._clock() - began, delay):
                    raise
                if self.breaker.state is not CircuitState.OPEN:
                    self._sleep(delay)

    def _attempt(self, url: str, path: str) -> bytes:
        try:
            response = self._session.get(url, timeout=self._timeout)
        except requests.Timeout as exc:
            raise ArchiveUnavailable(f"{path}: timed out") from exc
        except requests.ConnectionError as exc:
            raise ArchiveUnavailable(f"{path}: cannot reach {self.base_url} ({socket_reason(exc)})") from exc
        except requests.RequestException as exc:
            raise ArchiveUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            return response.content
        if response.status_code in (403, 404):  # S3 answers 403 for a key it does not have
            raise Missing(f"not in the archive (HTTP {response.status_code})")
        raise ArchiveUnavailable(f"{path}: HTTP {response.status_code}")
