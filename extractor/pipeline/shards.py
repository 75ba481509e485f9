"""Which shard of N each series belongs to: rendezvous hashing with bounded loads, by expected weight.

Every shard process computes the whole assignment from the same list of series (the configured ones,
or every TRADING symbol of ``-s ALL``), so the shards of a fleet agree without talking to each other.
Each series ranks the shards by a stable hash of (series, shard) and takes the highest-ranked one with
room (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam, 2018). Each market is
divided on its own, as Binance counts its weight apart. Room is first expected request weight per day,
so one shard of 1m series carries as much as another of many 1d ones: no shard exceeds (1 + EPSILON)
times the average, or the average plus one series where series are too heavy for that. Within that
bound a series also keeps to (1 + EPSILON) times its interval's share, so the minute when several
intervals close together is as balanced as the day; with 1/EPSILON or more series of each interval per
shard that holds for every interval. Adding a shard only adds a candidate to every ranking: the series
that move are those that now rank it first, about 1/(N+1) of them, and the few a bound pushes on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from hashlib import blake2b

from extractor.intervals import DAY, MINUTE
from extractor.klines import Series
from extractor.markets import Market

EPSILON = 0.05
"""A shard may carry (1 + EPSILON) times the average: the slack that lets a ranking be followed."""
RUNS_PER_DAY = DAY // MINUTE
"""An extract runs at most once a minute (cron's finest step), so a 1s series asks 1,440 times a day."""


def expected_weight(series: Series) -> int:
    """Request weight a day of keeping ``series`` up to date: one page per closed candle, at most one
    per run, each page costing what the market's weight table says of its page size."""
    market: Market = series.market
    requests_per_day = min(RUNS_PER_DAY, max(1, DAY // series.interval.length_ms))
    return requests_per_day * market.klines_weight(market.page_limit)


def _key(series: Series) -> bytes:
    return f"{series.market.name}\0{series.symbol}\0{series.interval.name}".encode()


def _score(key: bytes, shard: int) -> int:
    """The rank of ``shard`` for one series: stable across processes, machines and Python versions."""
    return int.from_bytes(blake2b(key, digest_size=8, salt=shard.to_bytes(8, "big")).digest(), "big")


def _order(key: bytes) -> int:
    return int.from_bytes(blake2b(key, digest_size=8, person=b"order").digest(), "big")


def assign(series: Sequence[Series], count: int, epsilon: float = EPSILON) -> dict[Series, int]:
    """The shard (1 to ``count``) of every series: each exactly one, within the bounds of the module doc.

    Each market is divided on its own, as Binance counts each market's weight apart. Series go
    heaviest first, then in the order of their own hash, so the outcome depends on the set of series
    and ``count`` alone (not on the order they are listed in).
    """
    if count < 1:
        raise ValueError(f"a fleet has at least one shard, not {count}")
    markets: dict[str, list[Series]] = {}
    for one in series:
        markets.setdefault(one.market.name, []).append(one)
    owner: dict[Series, int] = {}
    for of_market in markets.values():
        owner.update(_assign_market(of_market, count, epsilon))
    return owner


def _assign_market(series: list[Series], count: int, epsilon: float) -> dict[Series, int]:
    keys = {one: _key(one) for one in series}
    weights = {one: expected_weight(one) for one in keys}
    unique = sorted(keys, key=lambda one: (-weights[one], _order(keys[one]), keys[one]))
    weight_cap = (1 + epsilon) * sum(weights.values()) / count
    kinds = Counter(one.interval.name for one in unique)
    kind_cap = {kind: max(-(-n // count), math.floor((1 + epsilon) * n / count)) for kind, n in kinds.items()}
    load = [0] * (count + 1)
    held: Counter[tuple[str, int]] = Counter()
    owner: dict[Series, int] = {}
    for one in unique:
        key, weight, kind = keys[one], weights[one], one.interval.name
        ranked = sorted(range(1, count + 1), key=lambda shard: _score(key, shard), reverse=True)
        fits = [shard for shard in ranked if load[shard] + weight <= weight_cap]
        in_kind = (shard for shard in fits if held[(kind, shard)] < kind_cap[kind])
        chosen = next(in_kind, fits[0] if fits else min(ranked, key=lambda shard: load[shard]))
        owner[one] = chosen
        load[chosen] += weight
        held[(kind, chosen)] += 1
    return owner


def shard_series(series: Sequence[Series], index: int, count: int) -> list[Series]:
    """The series of shard ``index`` (1-based) of ``count``, in the order given."""
    owner = assign(series, count)
    return [one for one in series if owner[one] == index]
