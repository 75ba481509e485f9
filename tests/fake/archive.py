"""The data.binance.vision archive of the fake: monthly and daily kline zips with a CHECKSUM beside each.

``/data/{spot,futures/um,futures/cm}/{monthly,daily}/klines/SYMBOL/INTERVAL/SYMBOL-INTERVAL-DATE.zip``;
``1M`` is written ``1mo``; daily files only for ``1s``…``1d``. A zip holds one CSV named like it, the 12
REST fields in REST order and format, from the same generator as REST. Spot files of periods from
2025-01-01 on write both times in microseconds (close = close_ms·1000 + 999); futures files of periods
from 2022-05-01 on start with a header row. A file is published ``daily_delay`` / ``monthly_delay``
seconds after its period ends (and after its last candle closed); before that, and for periods with no
candle (before a listing, after a delivery), it is a 404. Requests carry no weight.
"""

from __future__ import annotations

import collections
import hashlib
import io
import random
import re
import threading
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime

from tests.fake.api import MarketApi
from tests.fake.faults import ARCHIVE_FAULT_KINDS, ArchiveFaults, matches
from tests.fake.replies import Reply, gateway_error, no_such_key
from tests.fake.series import DAY, MONTH, Series, add_months, to_datetime, to_ms

DAILY_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
SPOT_MICROSECONDS_FROM = 1735689600000  # 2025-01-01
FUTURES_HEADER_FROM = 1651363200000  # 2022-05-01
FUTURES_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore\n"
)
DAILY_DELAY = 6 * 3600.0
"""Binance uploads a day's spot files 4-6 hours after it ends (binance-public-data issue 181)."""
MONTHLY_DELAY = 2 * 86400.0
"""And a month's in its first days: "1-3 days" (issue 38), "before mid of the new month" (issue 328)."""
CACHE_BYTES = 512 * 1024 * 1024
_ALL_CLOSED = 1 << 62

_PATH = re.compile(
    r"/data/(?P<kind>spot|futures/um|futures/cm)/(?P<period>monthly|daily)/klines/"
    r"(?P<symbol>[A-Z0-9\-_.]{1,20})/(?P<interval>[0-9a-z]{2,3})/"
    r"(?P=symbol)-(?P=interval)-(?P<year>\d{4})-(?P<month>\d{2})(?:-(?P<day>\d{2}))?\.zip(?P<checksum>\.CHECKSUM)?"
)


def interval_name(interval: str) -> str:
    """How the archive writes an interval: ``1M`` is ``1mo``."""
    return "1mo" if interval == MONTH else interval


@dataclass(frozen=True)
class ArchiveFile:
    """One zip of the archive (whether or not it exists yet)."""

    path: str
    market: str
    symbol: str
    interval: str
    start: int
    end: int
    daily: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Built:
    zip: bytes
    sha256: str


class ArchiveHost:
    """Builds, caches and serves the archive's files; thread-safe."""

    def __init__(
        self,
        markets: dict[str, MarketApi],
        *,
        daily_delay: float = DAILY_DELAY,
        monthly_delay: float = MONTHLY_DELAY,
        cache_bytes: int = CACHE_BYTES,
        futures_header_from: int = FUTURES_HEADER_FROM,
        compress_level: int = 1,
    ) -> None:
        self.markets = {market.rules.archive: market for market in markets.values()}
        self.daily_delay = daily_delay
        self.monthly_delay = monthly_delay
        self.cache_bytes = cache_bytes
        self.futures_header_from = futures_header_from
        self.compress_level = compress_level
        self.faults = ArchiveFaults()
        self.builds: list[tuple[str, float]] = []
        """(path, seconds) of every zip built, in order: what a cold file costs."""
        self._cache: collections.OrderedDict[tuple[str, str], Built] = collections.OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str], threading.Lock] = {}
        self._bound: dict[str, str] = {}
        self._rng = random.Random(0)
        self._rng_for: tuple[ArchiveFaults, int] | None = None

    # -- naming ----------------------------------------------------------------------------------

    def path(self, market: str, symbol: str, interval: str, day_or_month: str) -> str:
        """The path of a file: ``path("spot", "BTCUSDT", "1M", "2024-01")``; a ``YYYY-MM-DD`` is daily."""
        kind = next(m.rules.archive for m in self.markets.values() if m.rules.name == market)
        period = "daily" if len(day_or_month) == 10 else "monthly"
        name = interval_name(interval)
        return f"/data/{kind}/{period}/klines/{symbol}/{name}/{symbol}-{name}-{day_or_month}.zip"

    def parse(self, path: str) -> ArchiveFile | None:
        """The file ``path`` names, or None if no file could ever be there."""
        found = _PATH.fullmatch(path)
        if found is None:
            return None
        market = self.markets[found["kind"]]
        interval = "1M" if found["interval"] == "1mo" else found["interval"]
        daily = found["period"] == "daily"
        if interval == MONTH and found["interval"] != "1mo":
            return None
        if interval not in market.rules.intervals or (daily and interval not in DAILY_INTERVALS):
            return None
        if daily != (found["day"] is not None) or found["symbol"] not in market.symbols:
            return None
        try:
            moment = datetime(int(found["year"]), int(found["month"]), int(found["day"] or 1), tzinfo=UTC)
        except ValueError:
            return None
        start = to_ms(moment)
        end = start + DAY if daily else add_months(start, 1)
        return ArchiveFile(
            path.removesuffix(".CHECKSUM"), market.rules.name, found["symbol"], interval, start, end, daily
        )

    def _series(self, file: ArchiveFile) -> Series:
        market = next(m for m in self.markets.values() if m.rules.name == file.market)
        return market.series(file.symbol, file.interval)

    def published_at(self, file: ArchiveFile) -> int | None:
        """When the file appears (ms), or None if it never will: its period holds no candle."""
        series = self._series(file)
        last = series.descending(file.end - 1, 1, file.start)
        if not last:
            return None
        delay = self.daily_delay if file.daily else self.monthly_delay
        return max(file.end, series.next_open(last[0])) + int(delay * 1000)

    # -- content ---------------------------------------------------------------------------------

    def csv(self, file: ArchiveFile) -> bytes:
        """The file's CSV: every candle opening in its period, as REST serves it once closed."""
        series = self._series(file)
        times = series.ascending(file.start, file.end - 1, 1 << 62)
        micro = file.market == "spot" and file.start >= SPOT_MICROSECONDS_FROM
        template = series.csv_row_us if micro else series.csv_row
        header = file.market != "spot" and file.start >= self.futures_header_from
        rows = series.render(times, _ALL_CLOSED, template)  # published only once its last candle closed
        return ((FUTURES_HEADER if header else "") + "\n".join(rows) + ("\n" if rows else "")).encode()

    def _zip(self, file: ArchiveFile, csv: bytes) -> bytes:
        buffer = io.BytesIO()
        stamp = to_datetime(file.end)
        info = zipfile.ZipInfo(file.name.removesuffix(".zip") + ".csv", date_time=stamp.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(info, csv, compresslevel=self.compress_level)
        return buffer.getvalue()

    def built(self, file: ArchiveFile, variant: str = "") -> Built:
        """The zip of ``file`` (spoilt as ``variant`` says, if any) and its sha256, from the cache."""
        key = (file.path, variant)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one thread builds a file; the others wait for it
            with self._lock:
                hit = self._cache.get(key)
            if hit is None:
                hit = self._build(file, variant)
            with self._lock:
                self._building.pop(key, None)
        return hit

    def _build(self, file: ArchiveFile, variant: str) -> Built:
        began = time.perf_counter()
        if variant == "damaged":
            good = self.built(file).zip
            middle = len(good) // 2
            data = good[:middle] + bytes(b ^ 0xFF for b in good[middle : middle + 16]) + good[middle + 16 :]
        else:
            data = self._zip(file, _spoil_csv(self.csv(file), variant, file.market == "spot"))
        built = Built(data, hashlib.sha256(data).hexdigest())
        with self._lock:
            self.builds.append((file.path, time.perf_counter() - began))
            key = (file.path, variant)
            if key not in self._cache and len(data) <= self.cache_bytes:
                self._cache[key] = built
                self._cached_bytes += len(data)
                while self._cached_bytes > self.cache_bytes:
                    _, dropped = self._cache.popitem(last=False)
                    self._cached_bytes -= len(dropped.zip)
        return built

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    # -- serving ---------------------------------------------------------------------------------

    def answer(self, path: str, now_ms: int) -> Reply:
        """The answer to a GET of ``path`` at ``now_ms``: a zip, a CHECKSUM, a 404 or a host fault."""
        failed = self._host_fault()
        if failed is not None:
            return failed
        file = self.parse(path)
        published = None if file is None else self.published_at(file)
        if file is None or published is None or now_ms < published:
            return no_such_key(path.lstrip("/"))
        fault = self.fault_of(path)
        if fault == "missing":
            return no_such_key(path.lstrip("/"))
        if path.endswith(".CHECKSUM"):
            built = self.built(file, "" if fault == "damaged" else fault)
            return Reply(200, f"{built.sha256}  {file.name}\n".encode(), [], "binary/octet-stream")
        return Reply(200, self.built(file, fault).zip, [], "application/zip")

    def _host_fault(self) -> Reply | None:
        faults = self.faults
        with self._lock:
            if faults.fail_all is not None:
                return gateway_error(faults.fail_all, faults.error_html is not False)
            if faults.fail_first > 0:
                faults.fail_first -= 1
                return gateway_error(503, faults.error_html is True)
            if faults.error_rate <= 0:
                return None
            if self._rng_for is None or self._rng_for[0] is not faults or self._rng_for[1] != faults.seed:
                self._rng = random.Random(faults.seed)
                self._rng_for = (faults, faults.seed)
            draw = self._rng.random()
            status = self._rng.choice((500, 502, 503))
            html = self._rng.random() < 0.5 if faults.error_html is None else faults.error_html
        return gateway_error(status, html) if draw < faults.error_rate else None

    # -- faults ----------------------------------------------------------------------------------

    def fault_of(self, path: str) -> str:
        """The file fault that applies to this request of ``path`` (zip or CHECKSUM), taking one-shots."""
        faults = self.faults
        zip_path = path.removesuffix(".CHECKSUM")
        with self._lock:
            for pattern, kind in faults.files.items():
                if matches(pattern, zip_path):
                    return _known(kind)
            bound = self._bound.get(zip_path)
            if bound is None and faults.next_files:
                bound = self._bound[zip_path] = _known(faults.next_files.pop(0))
            if bound is not None and (bound == "missing" or not path.endswith(".CHECKSUM")):
                del self._bound[zip_path]
            return bound or ""

    def latency(self, path: str) -> float:
        faults = self.faults
        extra = sum(seconds for pattern, seconds in faults.latency_for.items() if matches(pattern, path))
        return faults.latency + extra


def _known(kind: str) -> str:
    if kind not in ARCHIVE_FAULT_KINDS:
        raise ValueError(f"archive fault {kind!r} is not one of {ARCHIVE_FAULT_KINDS}")
    return kind


def _spoil_csv(csv: bytes, variant: str, micro_possible: bool) -> bytes:
    """The CSV as a bad upload would have it: cut inside a row, one row twice, one row off the grid."""
    if not variant:
        return csv
    lines = csv.decode().split("\n")[:-1]
    first = 1 if lines and not lines[0][:1].isdigit() else 0
    middle = first + (len(lines) - first) // 2
    if variant == "truncated":
        kept = "\n".join(lines[:middle])
        cut = lines[middle][: max(1, len(lines[middle]) // 2)]
        return (kept + ("\n" if kept else "") + cut).encode()
    if variant == "duplicated":
        lines.insert(middle, lines[middle])
    elif variant == "off_grid":
        fields = lines[middle].split(",")
        step = 1000 if micro_possible and len(fields[0]) > 13 else 1  # one millisecond, in the file's unit
        fields[0], fields[6] = str(int(fields[0]) + step), str(int(fields[6]) + step)
        lines[middle] = ",".join(fields)
    return ("\n".join(lines) + "\n").encode()
