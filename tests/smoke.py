"""`make smoke`: the installed console script against the fake exchange, into a temporary SQLite file.

Runs `check`, a small backfill on the default source (auto: the fake's archive files, then REST), a cron
`extract` and `status`, then compares the stored candles with the exchange's. Nothing leaves loopback: the
REST and archive URLs are the fake's, and every variable of ours from the shell is dropped.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fake_exchange import FakeExchange

DAY = 86_400_000


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("binance-extractor")
    result = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=120)
    print(f"$ binance-extractor {' '.join(args)}  -> exit {result.returncode}")
    for line in (result.stdout + result.stderr).splitlines():
        print(f"    {line}")
    return result


def stored(db: Path, symbol: str, interval: str, start: int, end: int) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT open_time, open, high, low, close, volume, close_time, quote_asset_volume,"
            " number_of_trades, taker_buy_base_asset_volume, taker_buy_quote_asset_volume FROM klines"
            " WHERE symbol = ? AND interval = ? AND open_time >= ? AND open_time < ?"
            " ORDER BY open_time",
            (symbol, interval, start, end),
        ).fetchall()


def main() -> int:
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, FakeExchange() as exchange:
        db = Path(tmp) / "smoke.db"
        ours = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "LOG_", "BINANCE_", "DATABASE_URL")
        env = {
            **{name: value for name, value in os.environ.items() if not name.startswith(ours)},
            "DATABASE_URL": f"sqlite:///{db}",
            "BINANCE_API_URL": exchange.url,
            "BINANCE_ARCHIVE_URL": exchange.archive_url,
            "EXTRACTOR_STATE_DIR": str(Path(tmp) / "state"),
            "EXTRACTOR_SYMBOLS": "BTCUSDT,ETHUSDT",
        }
        began = time.monotonic()
        if run(["check"], env).returncode != 0:
            failures.append("check did not exit 0")
        start, end = 1_704_067_200_000, 1_704_067_200_000 + 2 * DAY  # 2024-01-01 .. 01-03
        backfill_args = ["backfill", "-s", "BTCUSDT,ETHUSDT", "-i", "1m,1h", "--start", str(start)]
        backfill_args += ["--end", str(end), "--no-progress"]
        backfill = run(backfill_args, env)
        if backfill.returncode != 0:
            failures.append("backfill did not exit 0")
        if not exchange.archive_counts or " from 2 archive files, " not in backfill.stdout:
            failures.append("backfill did not take the closed days from the archive (the default source)")
        for symbol in ("BTCUSDT", "ETHUSDT"):
            for interval in ("1m", "1h"):
                want = [tuple(row[:11]) for row in exchange.rows(symbol, interval, start, end)]
                got = stored(db, symbol, interval, start, end)
                if got != want:
                    failures.append(
                        f"backfill {symbol} {interval}: stored {len(got)} rows, exchange has {len(want)}"
                    )
        began_extract = exchange.now_ms()
        extract = run(["extract", "-s", "BNBUSDT", "-i", "1m", "--lookback", "3h"], env)
        if extract.returncode != 0 or extract.stdout or extract.stderr:
            failures.append("extract was not silent with exit 0")
        lo = began_extract - 3 * 3_600_000
        lo, hi = lo - lo % 60_000 + 60_000, began_extract - began_extract % 60_000
        want = [tuple(row[:11]) for row in exchange.rows("BNBUSDT", "1m", lo, hi)]
        got = stored(db, "BNBUSDT", "1m", lo, hi)
        if got != want or len(want) < 170:
            failures.append(f"extract BNBUSDT 1m: stored {len(got)} rows, exchange has {len(want)}")
        before = exchange.request_counts.copy()
        again = run(backfill_args, env)
        asked = exchange.request_counts - before
        if again.returncode != 0 or asked["/api/v3/klines"] or any(p.startswith("/data/") for p in asked):
            failures.append("rerun of a finished backfill failed or fetched again")
        everything = {name: value for name, value in env.items() if name != "EXTRACTOR_SYMBOLS"}
        status = run(["status"], everything)  # EXTRACTOR_SYMBOLS would narrow it to those symbols
        if status.returncode != 0 or len(status.stdout.splitlines()) != 1 + 5:  # header, 5 series
            failures.append("status did not list the five stored series")
        print(f"smoke: {time.monotonic() - began:.1f} s, {sum(exchange.request_counts.values())} requests")
    for failure in failures:
        print(f"smoke: FAIL {failure}")
    print("smoke: ok" if not failures else "smoke: failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
