"""Switchable faults: the gateway's (5xx, resets, hangs…), wrong data in a 200 answer, and the archive's.

Every field may be changed at any time from any thread. One-shot counters (``*_next``, ``fail_first``)
count down as they fire; a data fault fires on the next answer it can change (an empty page fault skips
answers that are empty anyway), at most one data fault per answer, in the order the fields are listed.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.fake.replies import NGINX_502, NO_RESPONSE, Reply, gateway_error


@dataclass
class Faults:
    """Faults on the klines endpoint of one market (``FakeExchange.market_faults``) or of all (``faults``).

    Gateway faults, as the proxy in front of Binance would answer, before the API sees the request (no
    weight used, no weight headers), in this precedence: hang_next, fail_all, fail_first (503, empty
    body), then one seeded draw picks error (500/502/503, HTML or empty), reset (TCP RST), html (nginx
    502) or truncated (200, JSON cut in half). ``latency`` delays every klines answer.

    Data faults: a 200 answer whose rows are wrong, weight charged as usual: ``empty_next`` (``[]``),
    ``short_next`` (the last ``short_by`` rows dropped), ``hole_next`` (the middle row dropped),
    ``tail_next`` (the newest closed candle and any after it dropped: the exchange lags, as a cron
    ``extract`` sees it), ``bad_rows_next`` (row ``bad_row_index`` spoilt as ``bad_row_kind`` says; see
    ``BAD_ROW_KINDS``).
    """

    latency: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    html_rate: float = 0.0
    truncated_rate: float = 0.0
    fail_first: int = 0
    fail_all: int | None = None
    hang_next: int = 0
    seed: int = 0
    empty_next: int = 0
    short_next: int = 0
    short_by: int = 1
    hole_next: int = 0
    tail_next: int = 0
    bad_rows_next: int = 0
    bad_row_kind: str = "high_below_low"
    bad_row_index: int = 0


class GatewayDraws:
    """Gateway faults as drawn for each request: one seeded generator per Faults slot (a market or all),
    started again when its Faults object or seed changes, so a seed always serves the same faults."""

    def __init__(self) -> None:
        self._rngs: dict[str, tuple[Faults, int, random.Random]] = {}

    def gateway(self, slot: str, faults: Faults) -> tuple[Reply | None, bool]:
        """The answer replacing the API's (if any), and whether to cut the API's JSON; under a lock."""
        if faults.hang_next > 0:
            faults.hang_next -= 1
            return Reply(NO_RESPONSE, drop="hang"), False
        if faults.fail_all is not None:
            return gateway_error(faults.fail_all, html=True), False
        if faults.fail_first > 0:
            faults.fail_first -= 1
            return gateway_error(503, html=False), False
        if not (faults.error_rate or faults.reset_rate or faults.html_rate or faults.truncated_rate):
            return None, False  # nothing to draw: a market's own faults are mostly all off
        seeded = self._rngs.get(slot)
        if seeded is None or seeded[0] is not faults or seeded[1] != faults.seed:
            seeded = self._rngs[slot] = (faults, faults.seed, random.Random(faults.seed))
        rng = seeded[2]
        draw = rng.random()
        error_status = rng.choice((500, 502, 503))
        error_html = rng.random() < 0.5
        threshold = faults.error_rate
        if draw < threshold:
            return gateway_error(error_status, error_html), False
        threshold += faults.reset_rate
        if draw < threshold:
            return Reply(NO_RESPONSE, drop="reset"), False
        threshold += faults.html_rate
        if draw < threshold:
            return Reply(502, NGINX_502, [], "text/html"), False
        return None, draw < threshold + faults.truncated_rate


ARCHIVE_FAULT_KINDS = ("missing", "damaged", "truncated", "duplicated", "off_grid")
"""``missing``: 404 for the zip and its CHECKSUM. ``damaged``: bytes of the zip spoilt, its CHECKSUM that
of the good zip. ``truncated``: the CSV cut inside a row, ``duplicated``: one row twice, ``off_grid``: one
row's times 1 ms off the interval's grid; these three in a valid zip whose CHECKSUM matches it."""


@dataclass
class ArchiveFaults:
    """Faults of the archive host (``FakeExchange.archive_faults``).

    ``files`` maps a glob of file paths (``data/spot/monthly/klines/BTCUSDT/1m/*2024-0[1-3].zip``) to
    a kind of ``ARCHIVE_FAULT_KINDS`` for every download of a matching file (the first matching glob
    wins). ``next_files`` is one-shot: each kind in it attaches to the next file asked for (zip or
    CHECKSUM) that has no fault yet, and lasts until that file's zip has been served once (a missing
    file: one answer). ``error_rate`` (seeded), ``fail_all`` and ``fail_first`` answer 5xx to any archive
    request, with an HTML body, an empty one, or (``error_html=None``) a seeded mix. ``latency`` delays
    every archive answer, ``latency_for`` adds to the files matching a glob.
    """

    files: dict[str, str] = field(default_factory=dict)
    next_files: list[str] = field(default_factory=list)
    error_rate: float = 0.0
    fail_all: int | None = None
    fail_first: int = 0
    error_html: bool | None = None
    latency: float = 0.0
    latency_for: dict[str, float] = field(default_factory=dict)
    seed: int = 0


def matches(pattern: str, path: str) -> bool:
    """Globs and paths compare without a leading slash; a CHECKSUM belongs to its zip."""
    return fnmatch.fnmatchcase(path.lstrip("/").removesuffix(".CHECKSUM"), pattern.lstrip("/"))


# -- rows spoilt in a 200 answer -----------------------------------------------------------------------

Row = list[Any]
Page = list[Row]


def _shift(text: str, units: int) -> str:
    """``text`` moved by ``units`` of its last decimal place, written with the same places."""
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return str((value + units * Decimal(1).scaleb(exponent)).quantize(Decimal(1).scaleb(exponent)))


def _set(index: int, value: Callable[[Row], Any]) -> Callable[[Page, int], None]:
    def spoil(page: Page, at: int) -> None:
        page[at][index] = value(page[at])

    return spoil


def _duplicate(page: Page, at: int) -> None:
    page.insert(at + 1, list(page[at]))


def _out_of_order(page: Page, at: int) -> None:
    other = at + 1 if at + 1 < len(page) else at - 1
    if other >= 0:
        page[at], page[other] = page[other], page[at]


def _off_grid(page: Page, at: int) -> None:
    page[at][0] += 1
    page[at][6] += 1


def _too_many_decimals(row: Row) -> str:
    whole, _, fraction = str(row[4]).partition(".")
    return f"{whole}.{fraction.ljust(18, '0')}1"  # 19 places: more than any backend keeps


BAD_ROW_KINDS: dict[str, Callable[[Page, int], None]] = {
    "high_below_low": _set(2, lambda r: _shift(r[3], -1)),
    "low_above_open": _set(1, lambda r: _shift(r[3], -1)),
    "low_above_close": _set(4, lambda r: _shift(r[3], -1)),
    "high_below_open": _set(1, lambda r: _shift(r[2], 1)),
    "high_below_close": _set(4, lambda r: _shift(r[2], 1)),
    "taker_above_volume": _set(9, lambda r: _shift(r[5], 1)),
    "taker_quote_above_quote": _set(10, lambda r: _shift(r[7], 1)),
    "too_many_decimals": _set(4, _too_many_decimals),
    "negative_volume": _set(5, lambda r: "-" + r[5]),
    "negative_price": _set(3, lambda r: "-" + r[3]),
    "negative_trades": _set(8, lambda r: -1),
    "nan": _set(4, lambda r: "NaN"),
    "garbage": _set(4, lambda r: "abc"),
    "exponent": _set(5, lambda r: f"{Decimal(r[5]):E}"),
    "number_not_string": _set(4, lambda r: float(r[4])),
    "open_time_string": _set(0, lambda r: str(r[0])),
    "bad_close_time": _set(6, lambda r: r[6] + 1),
    "short_row": lambda page, at: page[at].pop(),
    "long_row": lambda page, at: page[at].append("0"),
    "off_grid": _off_grid,
    "duplicate": _duplicate,
    "out_of_order": _out_of_order,
}
"""How ``Faults.bad_row_kind`` spoils a row. The price kinds break one invariant each where they can
(``high_below_low`` also puts high below open and close); ``duplicate`` and ``out_of_order`` spoil the
page around the row."""


def take_data_fault(faults: Faults, page: Page, newest_closed: int | None) -> str:
    """The data fault this answer gets (its counter taken), or ``""``: call it under the fake's lock."""
    if not page:
        return ""
    if faults.empty_next > 0:
        faults.empty_next -= 1
        return "empty"
    if faults.tail_next > 0 and newest_closed is not None and any(r[0] == newest_closed for r in page):
        faults.tail_next -= 1
        return "tail"
    if faults.short_next > 0 and len(page) > faults.short_by:
        faults.short_next -= 1
        return "short"
    if faults.hole_next > 0 and len(page) >= 3:
        faults.hole_next -= 1
        return "hole"
    if faults.bad_rows_next > 0 and -len(page) <= faults.bad_row_index < len(page):
        if faults.bad_row_kind not in BAD_ROW_KINDS:
            raise ValueError(f"bad_row_kind {faults.bad_row_kind!r} is not one of {sorted(BAD_ROW_KINDS)}")
        faults.bad_rows_next -= 1
        return "bad_row"
    return ""


def spoil_page(kind: str, faults: Faults, page: Page, newest_closed: int | None) -> Page:
    """The page as the data fault ``kind`` serves it."""
    if kind == "empty":
        return []
    if kind == "tail":
        return [row for row in page if newest_closed is None or row[0] < newest_closed]
    if kind == "short":
        return page[: len(page) - faults.short_by]
    if kind == "hole":
        return page[: len(page) // 2] + page[len(page) // 2 + 1 :]
    spoilt = [list(row) for row in page]
    BAD_ROW_KINDS[faults.bad_row_kind](spoilt, faults.bad_row_index % len(spoilt))
    return spoilt
