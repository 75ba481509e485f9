"""Request weight as Binance counts it: per IP and per market, per UTC minute, with 429 then 418 bans.

Each (client address, market) has its own pool, as each egress IP has at Binance; with ``shared_ip``
every address draws on one pool per market, as clients behind one NAT do. Whatever the pools, what
each address spent is recorded per minute, so a test can check every address stayed within its limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tests.fake.markets import MarketRules

SHARED = "*"


@dataclass
class Pool:
    """One IP's weight in one market: this minute's use, the 429 it was told to wait out, its ban."""

    minute: int = -1
    used: int = 0
    retry_until: float | None = None
    strikes: int = 0
    banned_until: float | None = None


@dataclass
class AddressUsage:
    """What one client address sent to one market (``FakeExchange.usage``)."""

    requests: int = 0
    weight: int = 0
    by_minute: dict[int, int] = field(default_factory=dict)
    """Weight charged per UTC minute (``floor(epoch seconds / 60)``)."""
    refused: dict[int, int] = field(default_factory=dict)
    """429 and 418 answers by status."""

    @property
    def peak(self) -> int:
        """The most weight charged in any one minute."""
        return max(self.by_minute.values(), default=0)

    def as_json(self, used_now: int) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "weight": self.weight,
            "used": used_now,
            "peak": self.peak,
            "by_minute": {str(minute): used for minute, used in sorted(self.by_minute.items())},
            "refused": {str(status): n for status, n in sorted(self.refused.items())},
        }


@dataclass(frozen=True)
class Refusal:
    status: int  # 429 or 418
    msg: str
    retry_after: int
    used: int


class WeightBook:
    """Every pool and every address's usage; not thread-safe: the fake calls it under its lock."""

    def __init__(
        self,
        *,
        shared_ip: bool,
        ban_after_429s: int,
        ban_seconds: float,
        retry_after: int | None,
    ) -> None:
        self.shared_ip = shared_ip
        self.ban_after_429s = ban_after_429s
        self.ban_seconds = ban_seconds
        self.retry_after = retry_after
        self.pools: dict[tuple[str, str], Pool] = {}
        self.usage: dict[tuple[str, str], AddressUsage] = {}
        self.market_bans: dict[str, float] = {}
        """Bans of every address of a market, set by a test (``FakeExchange.ban``)."""
        self.total_429s = 0

    def pool(self, market: str, address: str) -> Pool:
        key = (SHARED if self.shared_ip else address, market)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool()
        return pool

    def used(self, market: str, address: str, now: float) -> int:
        """Weight used this minute by the pool ``address`` draws on."""
        pool = self.pool(market, address)
        return pool.used if pool.minute == math.floor(now / 60) else 0

    def admit(
        self, rules: MarketRules, limit: int, address: str, weight: int, now: float
    ) -> tuple[Refusal | None, int]:
        """Charge ``weight`` or refuse; returns the refusal (if any) and the pool's weight used."""
        usage = self.usage.get((rules.name, address))
        if usage is None:
            usage = self.usage[(rules.name, address)] = AddressUsage()
        usage.requests += 1
        refusal = self._charge(rules, limit, self.pool(rules.name, address), address, weight, now)
        if refusal is not None:
            usage.refused[refusal.status] = usage.refused.get(refusal.status, 0) + 1
            return refusal, refusal.used
        minute = math.floor(now / 60)
        usage.weight += weight
        usage.by_minute[minute] = usage.by_minute.get(minute, 0) + weight
        return None, self.pool(rules.name, address).used

    def _charge(
        self, rules: MarketRules, limit: int, pool: Pool, address: str, weight: int, now: float
    ) -> Refusal | None:
        minute = math.floor(now / 60)
        if minute != pool.minute:
            pool.minute, pool.used = minute, 0
        if pool.banned_until is not None:
            if now < pool.banned_until:
                return self._banned(rules, pool, address, pool.banned_until, now)
            pool.banned_until, pool.retry_until, pool.strikes = None, None, 0
        market_ban = self.market_bans.get(rules.name)
        if market_ban is not None:
            if now < market_ban:
                return self._banned(rules, pool, address, market_ban, now)
            del self.market_bans[rules.name]
        if pool.retry_until is not None and now < pool.retry_until:
            pool.strikes += 1
            if pool.strikes >= self.ban_after_429s:
                pool.banned_until = now + self.ban_seconds
                return self._banned(rules, pool, address, pool.banned_until, now)
            return self._too_many(rules, limit, pool, address, math.ceil(pool.retry_until - now))
        pool.retry_until, pool.strikes = None, 0
        if pool.used + weight > limit:
            retry = self.retry_after if self.retry_after is not None else math.ceil((minute + 1) * 60 - now)
            pool.retry_until = now + retry
            return self._too_many(rules, limit, pool, address, retry)
        pool.used += weight
        return None

    def _too_many(self, rules: MarketRules, limit: int, pool: Pool, address: str, retry: int) -> Refusal:
        self.total_429s += 1
        return Refusal(429, rules.too_many(limit, address), retry, pool.used)

    def _banned(self, rules: MarketRules, pool: Pool, address: str, until: float, now: float) -> Refusal:
        return Refusal(418, rules.banned(int(until * 1000), address), math.ceil(until - now), pool.used)

    def ban(self, until: float | None, market: str, address: str | None) -> None:
        """Ban ``address`` (every address if None) in ``market`` until ``until``; None lifts the bans."""
        if address is not None:
            pool = self.pool(market, address)
            pool.banned_until, pool.retry_until, pool.strikes = until, None, 0
            return
        self.market_bans.pop(market, None)
        if until is not None:
            self.market_bans[market] = until
            return
        for (_, pool_market), pool in self.pools.items():
            if pool_market == market:
                pool.banned_until, pool.retry_until, pool.strikes = None, None, 0

    def banned_until(self) -> float | None:
        """The latest ban end of any pool or market still on the books."""
        bans = [pool.banned_until for pool in self.pools.values() if pool.banned_until is not None]
        return max([*bans, *self.market_bans.values()], default=None)

    def forget_usage(self) -> None:
        self.usage.clear()
        self.total_429s = 0
