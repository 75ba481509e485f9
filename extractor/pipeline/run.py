"""The commands wired to a Runtime: the one function each CLI command calls.

Each picks the series the settings name, builds nothing itself (the Runtime does), and hands the
collaborators to the command in ``commands.py``, ``audit.py`` or ``health.py``.
"""

from __future__ import annotations

from extractor.errors import BadInputError
from extractor.intervals import Interval
from extractor.klines import Series
from extractor.markets import Market
from extractor.pipeline import audit, commands, health
from extractor.pipeline.fetch import Progress
from extractor.pipeline.runtime import Runtime
from extractor.settings import SeriesSpec
from extractor.sources.base import KlineSource
from extractor.sources.rest import TRADING
from extractor.storage import KlineStore, open_store


def _check(spec: SeriesSpec) -> None:
    """What can be refused before any request: no symbols, no intervals, an interval the market lacks."""
    if not spec.symbols:
        raise BadInputError("no symbols: give -s/--symbol (or -s ALL) or set EXTRACTOR_SYMBOLS")
    if not spec.intervals:
        raise BadInputError("no intervals: give -i/--interval or set EXTRACTOR_INTERVALS")
    for interval in spec.intervals:
        if not spec.market.supports(interval.name):
            raise BadInputError(
                f"{spec.market.title} has no {interval.name} klines;"
                f" intervals there: {' '.join(spec.market.intervals)}"
            )


def _series(runtime: Runtime, spec: SeriesSpec) -> list[Series]:
    """The series of one spec; ``-s ALL`` asks the market for every TRADING symbol (of ``--quote``)."""
    _check(spec)
    symbols = spec.symbols
    if spec.all_symbols:
        listings = runtime.exchange(spec.market).listings()
        symbols = tuple(
            s
            for s, listing in sorted(listings.items())
            if listing.status == TRADING and (not spec.quotes or listing.quote_asset in spec.quotes)
        )
    return [Series(spec.market, symbol, interval) for symbol in symbols for interval in spec.intervals]


def _one_market(runtime: Runtime) -> SeriesSpec:
    specs = runtime.settings.specs
    if len(specs) != 1:
        raise BadInputError("this command works on one market: give --market (the config file lists several)")
    return specs[0]


def source_for(runtime: Runtime, market: Market) -> KlineSource:
    """The source ``--source`` names: REST, the archive with REST behind it, or the archive alone."""
    kind = runtime.settings.source
    if kind == "rest":
        return runtime.exchange(market)
    return runtime.archive(market, fall_back=kind == "auto")


def backfill(runtime: Runtime, start: int, end: int, progress: Progress | None) -> commands.RunResult:
    spec = _one_market(runtime)
    series = runtime.select(_series(runtime, spec))
    return commands.backfill(
        runtime.exchange(spec.market),
        source_for(runtime, spec.market),
        runtime.store,
        series,
        start,
        end,
        stop=runtime.stop,
        concurrency=runtime.settings.concurrency,
        progress=progress,
    )


def extract(runtime: Runtime) -> commands.RunResult:
    settings = runtime.settings
    wanted = []
    for spec in settings.specs:
        _check(spec)
        wanted.append(
            commands.Wanted(
                runtime.exchange(spec.market), spec.symbols, spec.intervals, spec.quotes, spec.all_symbols
            )
        )
    return commands.extract(
        wanted,
        runtime.store,
        lookback_ms=settings.lookback_ms,
        stop=runtime.stop,
        concurrency=settings.concurrency,
        lock_name=runtime.lock_name("extract"),
        select=runtime.select,
    )


def gaps(
    runtime: Runtime, start: int | None, end: int | None, *, repair: bool, recheck: bool, now_ms: int
) -> list[audit.SeriesGaps]:
    spec = _one_market(runtime)
    exchange = runtime.exchange(spec.market) if repair or recheck else None
    if exchange is not None:
        now_ms = exchange.now_ms()
    return audit.audit(
        exchange,
        runtime.store,
        _series(runtime, spec),
        start,
        end,
        repair=repair,
        recheck=recheck,
        stop=runtime.stop,
        concurrency=runtime.settings.concurrency,
        now_ms=now_ms,
    )


def status(runtime: Runtime) -> list[audit.SeriesStatus]:
    specs = [s for s in runtime.settings.specs if s.symbols or s.intervals]
    if not specs and runtime.settings.shard is not None:
        raise BadInputError("status --shard needs the series of the fleet: give -s/-i or a config file")
    if not runtime.database_exists():
        return []  # nothing stored, and nothing created by asking
    wanted: list[Series] | None = None
    if specs:
        wanted = runtime.select([one for spec in specs for one in _status_series(runtime, spec)])
    return audit.status(runtime.store, wanted)


def _status_series(runtime: Runtime, spec: SeriesSpec) -> list[Series]:
    """-s and -i narrow ``status``: given both, those series; given one, the stored series it names."""
    if spec.symbols and spec.intervals:
        return _series(runtime, spec)
    symbols, intervals = set(spec.symbols), {i.name for i in spec.intervals}
    return [
        Series(spec.market, s.symbol, Interval.parse(s.interval))
        for s in runtime.store.series()
        if s.market == spec.market.name
        and (not symbols or s.symbol in symbols)
        and (not intervals or s.interval in intervals)
    ]


def check(runtime: Runtime) -> list[health.CheckResult]:
    spec = runtime.settings.specs[0] if runtime.settings.specs else None
    market = runtime.settings.market
    symbols = spec.symbols if spec is not None and not spec.all_symbols else ()
    settings = runtime.settings

    def probe() -> KlineStore:
        return open_store(settings.db_url, breaker=runtime.db_breaker, sleep=runtime.stop.sleep, create=False)

    return health.check(runtime.exchange(market), probe, symbols)


def breaker_states(runtime: Runtime) -> list[dict[str, object]]:
    """Every breaker in the state file: its state, counts, timeout and next trial."""
    states = []
    for breaker in runtime.known_breakers():
        info = dict(breaker.get_state_info())
        info["name"] = breaker.name
        info["seconds_until_trial"] = round(breaker.seconds_until_trial(), 1)
        states.append(info)
    return states


def reset_breakers(runtime: Runtime) -> None:
    for breaker in runtime.known_breakers():
        breaker.reset()
