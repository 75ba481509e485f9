"""The fake counts weight per client address and market, logs who asked what, and reports it in stats."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.fake_exchange import FakeExchange, ManualClock

NOW = 1736000090.0  # 50 s into a minute
MINUTE_INDEX = 1736000090 // 60
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")  # all of 127/8 is local on Linux
PAGE: dict[str, Any] = {"symbol": "BTCUSDT", "interval": "1m", "startTime": 1704067200000, "limit": 5}

Start = Callable[..., FakeExchange]


class SourceAddress(HTTPAdapter):
    """Connections that leave from one local address, as a pod behind its own egress IP does."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


@pytest.fixture
def clients() -> Iterator[dict[str, requests.Session]]:
    sessions = {}
    for address in ADDRESSES:
        session = requests.Session()
        session.trust_env = False  # no proxy between a client and the fake: the fake must see its address
        session.mount("http://", SourceAddress(address))
        sessions[address] = session
    yield sessions
    for session in sessions.values():
        session.close()


def spend(session: requests.Session, exchange: FakeExchange, times: int, api: str = "/api/v3") -> list[int]:
    return [
        session.get(exchange.url + api + "/klines", params=PAGE, timeout=10).status_code for _ in range(times)
    ]


def test_each_client_address_has_its_own_pool(
    fake_exchanges: Start, clients: dict[str, requests.Session]
) -> None:
    exchange = fake_exchanges(clock=ManualClock(NOW), weight_limit=40)
    for session in clients.values():
        assert spend(session, exchange, 20) == [200] * 20
    usage = exchange.usage("spot")
    assert sorted(usage) == list(ADDRESSES)
    assert all((u.weight, u.peak, u.requests, u.refused) == (40, 40, 20, {}) for u in usage.values())
    assert all(exchange.used_weight("spot", address) == 40 for address in ADDRESSES)
    over = clients["127.0.0.3"].get(exchange.url + "/api/v3/klines", params=PAGE, timeout=10)
    assert over.status_code == 429
    assert "current limit of IP(127.0.0.3) request weight per minute is 40" in over.json()["msg"]
    with requests.Session() as loopback:  # 127.0.0.1 is one more address, with a pool of its own
        loopback.trust_env = False
        assert spend(loopback, exchange, 1) == [200]
    assert exchange.usage("spot")["127.0.0.3"].refused == {429: 1}
    assert exchange.total_weight_429s == 1


def test_with_a_shared_ip_every_address_draws_on_one_pool(
    fake_exchanges: Start, clients: dict[str, requests.Session]
) -> None:
    exchange = fake_exchanges(clock=ManualClock(NOW), weight_limit=40, shared_ip=True)
    for session in clients.values():
        assert spend(session, exchange, 5) == [200] * 5
    assert spend(clients["127.0.0.2"], exchange, 1) == [429]
    assert {a: u.weight for a, u in exchange.usage("spot").items()} == dict.fromkeys(ADDRESSES, 10)
    assert all(exchange.used_weight("spot", address) == 40 for address in ADDRESSES)


def test_usage_is_kept_per_minute_and_per_market(
    fake_exchanges: Start, clients: dict[str, requests.Session]
) -> None:
    clock = ManualClock(NOW)
    exchange = fake_exchanges(clock=clock)
    session = clients["127.0.0.4"]
    spend(session, exchange, 3)
    clock.advance(60)
    spend(session, exchange, 1)
    spend(session, exchange, 2, api="/fapi/v1")
    spot, usdm = exchange.usage("spot")["127.0.0.4"], exchange.usage("usdm")["127.0.0.4"]
    assert spot.by_minute == {MINUTE_INDEX: 6, MINUTE_INDEX + 1: 2} and spot.peak == 6
    assert usdm.by_minute == {MINUTE_INDEX + 1: 2}  # limit 5: weight 1 a page
    assert exchange.usage("coinm") == {}
    exchange.reset_counts()
    assert exchange.usage("spot") == {} and exchange.used_weight("spot", "127.0.0.4") == 2  # weight is kept


def test_the_log_and_stats_name_the_client_address_and_market(
    fake_exchanges: Start, clients: dict[str, requests.Session]
) -> None:
    exchange = fake_exchanges(clock=ManualClock(NOW))
    spend(clients["127.0.0.2"], exchange, 1)
    spend(clients["127.0.0.5"], exchange, 1, api="/fapi/v1")
    clients["127.0.0.5"].get(exchange.url + "/data/spot/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-12.zip")
    assert [(r.client, r.market, r.path, r.status, r.weight) for r in exchange.log] == [
        ("127.0.0.2", "spot", "/api/v3/klines", 200, 2),
        ("127.0.0.5", "usdm", "/fapi/v1/klines", 200, 1),
        ("127.0.0.5", "spot", "/data/spot/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-12.zip", 200, 0),
    ]
    stats = requests.get(exchange.url + "/fake/stats?log=full", timeout=10).json()
    assert stats["weight"]["spot"] == {
        "127.0.0.2": {
            "requests": 1,
            "weight": 2,
            "used": 2,
            "peak": 2,
            "by_minute": {str(MINUTE_INDEX): 2},
            "refused": {},
        }
    }
    assert list(stats["weight"]["usdm"]) == ["127.0.0.5"] and stats["weight"]["coinm"] == {}
    assert [(e["client"], e["market"], e["weight"]) for e in stats["log"]] == [
        ("127.0.0.2", "spot", 2),
        ("127.0.0.5", "usdm", 1),
        ("127.0.0.5", "spot", 0),
    ]
    short = requests.get(exchange.url + "/fake/stats?log=1", timeout=10).json()["log"]
    assert [entry[1:] for entry in short] == [[r.path, r.status] for r in exchange.log[:3]]


CLIENT = textwrap.dedent(
    """
    import sys, requests
    from requests.adapters import HTTPAdapter
    url, address = sys.argv[1], sys.argv[2]
    class Bound(HTTPAdapter):
        def init_poolmanager(self, *a, **kw):
            kw["source_address"] = (address, 0)
            super().init_poolmanager(*a, **kw)
    with requests.Session() as s:
        s.trust_env = False
        s.mount("http://", Bound())
        params = {"symbol": "BTCUSDT", "interval": "1m", "startTime": 1704067200000, "limit": 5}
        answers = [s.get(url + "/api/v3/klines", params=params, timeout=10) for _ in range(30)]
        print(sorted({answer.status_code for answer in answers}))
    """
)


def test_four_client_processes_on_their_own_addresses_each_get_their_own_limit(fake_exchanges: Start) -> None:
    exchange = fake_exchanges(weight_limit=60)  # the real clock: these are processes
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, exchange.url, address], stdout=subprocess.PIPE, text=True
        )
        for address in ADDRESSES
    ]
    outputs = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert outputs == ["[200]"] * 4  # 30 pages of weight 2 each: every address exactly at its limit
    usage = exchange.usage("spot")
    assert sorted(usage) == list(ADDRESSES)
    assert all(u.weight == 60 and u.peak <= 60 and not u.refused for u in usage.values())


def test_python_m_tests_fake_exchange_serves_with_its_flags() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_exchange",
            "--usdm-weight-limit",
            "7",
            "--shared-ip",
            "--archive-latency",
            "0",
            "--extra-symbols",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url + "/fapi/v1/exchangeInfo", timeout=10) as answer:
            info = json.loads(answer.read())
        assert info["rateLimits"][0]["limit"] == 7
        assert {"SYN000USDT", "SYN001USDT"} <= {s["symbol"] for s in info["symbols"]}
        with opener.open(url + "/fake/stats", timeout=10) as answer:
            stats = json.loads(answer.read())
        assert stats["requests"] == {"/fapi/v1/exchangeInfo": 1}
        assert stats["weight"]["usdm"]["127.0.0.1"]["weight"] == 1
        assert set(stats["archive"]) == {"requests", "built", "build_seconds", "cached_bytes"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_test_can_ban_a_market_or_one_address(
    fake_exchanges: Start, clients: dict[str, requests.Session]
) -> None:
    clock = ManualClock(NOW)
    exchange = fake_exchanges(clock=clock)

    def ping(address: str, api: str = "/api/v3") -> int:
        return clients[address].get(exchange.url + api + "/ping", timeout=10).status_code

    exchange.banned_until = NOW + 60  # as the single-IP fake had it: every address, in spot
    assert (ping("127.0.0.2"), ping("127.0.0.3"), ping("127.0.0.2", "/fapi/v1")) == (418, 418, 200)
    banned = clients["127.0.0.4"].get(exchange.url + "/api/v3/time", timeout=10)
    assert banned.headers["Retry-After"] == "60" and f"banned until {int((NOW + 60) * 1000)}" in banned.text
    assert exchange.banned_until == NOW + 60
    exchange.banned_until = None
    assert ping("127.0.0.2") == 200 and exchange.banned_until is None
    exchange.ban(NOW + 30, "usdm", "127.0.0.3")
    assert (ping("127.0.0.3", "/fapi/v1"), ping("127.0.0.2", "/fapi/v1"), ping("127.0.0.3")) == (
        418,
        200,
        200,
    )
    clock.advance(30)
    assert ping("127.0.0.3", "/fapi/v1") == 200
