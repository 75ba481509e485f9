"""check and breakers: the CI smoke check, and the state of every circuit breaker in the state file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from extractor.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_TEMPFAIL,
    BadInputError,
    ExtractorError,
    TemporaryError,
)
from extractor.sources.rest import TRADING, RestSource
from extractor.storage import KlineStore

SKEW_WARNING_MS = 1_000


@dataclass(frozen=True)
class CheckResult:
    """One line of ``check``: ``ok``, ``warn`` or ``fail``, what was checked, and what was seen."""

    status: str
    name: str
    detail: str
    error: ExtractorError | None = None

    def line(self) -> str:
        return f"{self.status:<4} {self.name:<9} {self.detail}"


def check(
    exchange: RestSource, open_store: Callable[[], KlineStore], symbols: Sequence[str]
) -> list[CheckResult]:
    """The CI smoke check: exchange reachable, clock skew, symbols tradable, database writable.

    The database is probed without creating anything: a SQLite file that does not exist yet is
    only checked to be creatable.
    """
    results: list[CheckResult] = []

    def attempt(name: str, probe: Callable[[], CheckResult]) -> None:
        try:
            results.append(probe())
        except ExtractorError as exc:
            results.append(CheckResult("fail", name, str(exc), exc))

    def ping() -> CheckResult:
        seconds = exchange.ping()
        return CheckResult("ok", "exchange", f"{exchange.base_url} answered ping in {seconds * 1000:.0f} ms")

    def clock() -> CheckResult:
        exchange.server_time()
        skew = exchange.clock_skew_ms()
        if abs(skew) > SKEW_WARNING_MS:
            return CheckResult(
                "warn", "clock", f"local clock is {skew / 1000:+.1f} s off the exchange's; sync it (NTP)"
            )
        return CheckResult("ok", "clock", f"skew {skew:+d} ms")

    def tradable() -> CheckResult:
        if not symbols:
            return CheckResult("ok", "symbols", "none configured (-s / EXTRACTOR_SYMBOLS); skipped")
        listings = exchange.listings(symbols)
        missing = [s for s in symbols if s not in listings]
        if missing:
            raise BadInputError(f"unknown on {exchange.market.title}: {', '.join(missing)}")
        text = ", ".join(f"{s} {listings[s].status}" for s in symbols)
        return CheckResult(
            "ok" if all(listings[s].status == TRADING for s in symbols) else "warn", "symbols", text
        )

    def database() -> CheckResult:
        store = open_store()
        try:
            detail = store.check_writable()
        finally:
            store.close()
        return CheckResult("ok", "database", f"{store.url} {detail}")

    attempt("exchange", ping)
    if results[-1].status != "fail":
        attempt("clock", clock)
        attempt("symbols", tradable)
    attempt("database", database)
    return results


def check_exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing failed; 2 when a failure is bad input; 75 when all are temporary; else 1."""
    failures = [r.error for r in results if r.status == "fail"]
    if not failures:
        return 0
    if any(isinstance(e, BadInputError) for e in failures):
        return EXIT_BAD_INPUT
    if all(isinstance(e, TemporaryError) for e in failures):
        return EXIT_TEMPFAIL
    return EXIT_FAILURE
