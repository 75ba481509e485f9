"""The one exception tree of binance-extractor; each class maps to one exit code.

::

    ExtractorError                    1  unexpected failure
    ├── BadInputError                 2  a flag, variable, date, symbol, URL or file is wrong
    │   ├── RequestRejected           2  Binance refused the request (code and message kept)
    │   └── SeriesRejected            2  the exchange refused some series; the others were stored
    ├── StorageError                  1  the database refused data (integrity, programming)
    ├── TemporaryError               75  nothing is wrong with the input: try again later
    │   ├── ExchangeUnavailable      75  timeouts, resets, 5xx, HTML error pages
    │   │   └── MalformedResponse    75  truncated JSON or a row that fails validation
    │   ├── ArchiveUnavailable       75  an archive file is missing, corrupt or fails its checksum
    │   ├── RateLimited              75  429 that did not clear (carries retry_after seconds)
    │   ├── IPBanned                 75  418: banned until a known time (carries until_ms)
    │   ├── StorageUnavailable       75  the database cannot be reached or went away
    │   ├── StorageFull              75  the database's disk is full: free space, then rerun
    │   ├── BreakerOpen              75  a circuit breaker refuses calls until retry_at
    │   ├── RunLocked                75  another run holds the lock for the same database or series
    │   └── SeriesUnavailable        75  some series could not be fetched; the others were stored
    └── Interrupted                 130  SIGINT or SIGTERM (143): the run stopped between writes

Foreign exceptions (requests, SQLAlchemy, PyMySQL, psycopg, pymongo, the breaker library) are translated
where they are caught, always ``raise Ours(...) from exc``; the CLI turns classes into exit codes with
``exc.exit_code``.
"""

from __future__ import annotations

from datetime import UTC, datetime

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_TEMPFAIL = 75
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def format_utc(epoch_seconds: float) -> str:
    """An instant as ISO 8601 UTC to the second, as every message shows times."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ExtractorError(Exception):
    """Base of every error the extractor raises on purpose."""

    exit_code = EXIT_FAILURE


class BadInputError(ExtractorError):
    """The user gave something we can reject before touching the network."""

    exit_code = EXIT_BAD_INPUT


class RequestRejected(BadInputError):
    """A 4xx answer carrying a Binance error code: retrying cannot help."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"Binance rejected the request: {msg} (code {code})")
        self.code = code
        self.msg = msg
        self.status = status


class SeriesRejected(BadInputError):
    """The exchange refused some of the series of an ``extract``; every other series was stored."""

    def __init__(self, rejected: dict[str, str]) -> None:
        names = ", ".join(f"{series} ({reason})" for series, reason in rejected.items())
        super().__init__(
            f"{len(rejected)} series rejected by the exchange, the others stored: {names}; "
            "fix or remove them in the configuration"
        )
        self.rejected = rejected


class StorageError(ExtractorError):
    """The database refused the data itself: a bug or bad data, not an outage."""


class TemporaryError(ExtractorError):
    """Retryable later: the exchange or the database is unhealthy, or another run is busy."""

    exit_code = EXIT_TEMPFAIL


class ExchangeUnavailable(TemporaryError):
    """The exchange did not give a usable answer; the outcome is unknown, so retry."""


class MalformedResponse(ExchangeUnavailable):
    """The exchange answered with something that is not the documented shape."""


class ArchiveUnavailable(TemporaryError):
    """An archive file cannot be used: missing, corrupt, failing its checksum or holding a bad row."""


class RateLimited(TemporaryError):
    """HTTP 429 kept coming back after honouring Retry-After."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IPBanned(TemporaryError):
    """HTTP 418: the IP is banned until ``until_ms`` (epoch milliseconds)."""

    def __init__(self, until_ms: int) -> None:
        super().__init__(
            f"Binance has banned this IP until {format_utc(until_ms / 1000)}; "
            "no request is sent before then — retry after that time"
        )
        self.until_ms = until_ms


class StorageUnavailable(TemporaryError):
    """The database cannot be reached or dropped the connection."""


class StorageFull(TemporaryError):
    """The database's disk is full: nothing of the write in progress was kept; free space, then rerun.
    Not an outage: retrying at once cannot help, so it is neither retried nor counted by the db breaker."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"the disk of the database at {url} is full ({reason}): free space, then run the same command "
            "again (every candle stored so far is kept)"
        )


class BreakerOpen(TemporaryError):
    """A circuit breaker is open and refuses calls until ``retry_at`` (epoch seconds)."""

    def __init__(self, breaker: str, retry_at: float, subject: str, cause: str | None = None) -> None:
        because = f" (last error: {cause})" if cause else ""
        super().__init__(
            f"the {breaker} circuit breaker is open after repeated failures of {subject}{because}; "
            f"next trial at {format_utc(retry_at)} — retry after that, or run "
            "`binance-extractor breakers reset` once the cause is fixed"
        )
        self.breaker = breaker
        self.retry_at = retry_at


class RunLocked(TemporaryError):
    """Another run holds the lock for this database (or this shard, or this series)."""


class SeriesUnavailable(TemporaryError):
    """Some series of a run could not be fetched (their source failed); every other series was stored."""

    def __init__(self, failed: dict[str, str]) -> None:
        names = "; ".join(f"{series}: {reason}" for series, reason in failed.items())
        super().__init__(
            f"{len(failed)} series not fetched, the others stored: {names} — the next run retries them"
        )
        self.failed = failed


class Interrupted(ExtractorError):
    """SIGINT or SIGTERM: no request was sent after it and the write in progress committed or rolled back."""

    exit_code = EXIT_SIGINT

    def __init__(self, signal_name: str, exit_code: int, stored: int = 0) -> None:
        super().__init__(signal_name, exit_code, stored)
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.stored = stored

    def __str__(self) -> str:
        return (
            f"interrupted by {self.signal_name}: {plural(self.stored, 'candle')} stored in this run; "
            "run the same command to resume"
        )


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 candle``, ``2 candles``, ``1,000 requests``: counts as people write them."""
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"
