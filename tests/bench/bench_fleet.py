"""B11, the fleet (issue 15): 600 symbols × 1m, 5m and 15m of new candles (3,620 weight with exchangeInfo)
against a fake that allows each client address 1,000 weight a minute.

Four shard processes, each bound to its own loopback address (127.0.0.2-5) as pods behind their own
egress IPs would be, against one SQLite database: real seconds. The same work by one process on one
address: exchange seconds on a virtual clock shared with the fake, since the weight budget has it wait
for three more minutes and a benchmark need not sit through them. Then the weight each address spent.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from tests.bench.common import BenchRow, format_table
from tests.test_fleet import ADDRESS_LIMIT, ADDRESSES, FleetRun, run_fleet, run_one_address


def _minutes(run: FleetRun) -> list[int]:
    """Weight per exchange minute, over every address."""
    first = math.floor(run.start / 60)
    per_minute: dict[int, int] = {}
    for usage in run.usage.values():
        for minute, weight in usage.by_minute.items():
            per_minute[minute - first] = per_minute.get(minute - first, 0) + weight
    return [per_minute.get(minute, 0) for minute in range(max(per_minute) + 1)]


def rows() -> list[BenchRow]:
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        (work / "fleet").mkdir()
        (work / "one").mkdir()
        fleet = run_fleet(work / "fleet")
        one = run_one_address(work / "one")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fleet_minutes, one_minutes = _minutes(fleet), _minutes(one)
    refused = sum(sum(u.refused.values()) for u in fleet.usage.values())
    out = [
        BenchRow(
            f"B11 fleet: {len(ADDRESSES)} shards on {len(ADDRESSES)} addresses, {len(fleet.series):,} series",
            fleet.seconds,
            "s",
            "inside the first minute",
            f"one address: {one.seconds:.0f} s of exchange time over {len(one_minutes)} minutes",
            len(fleet_minutes) == 1 and refused == 0,
        ),
        BenchRow(
            f"B11 one process on {ADDRESSES[0]} (exchange clock)",
            one.seconds,
            "s",
            ">= 3 minutes",
            "weight a minute " + " / ".join(f"{w:,}" for w in one_minutes),
            len(one_minutes) >= 4 and max(one_minutes) <= ADDRESS_LIMIT,
        ),
    ]
    for address, usage in sorted(fleet.usage.items()):
        out.append(
            BenchRow(
                f"B11 fleet weight from {address}",
                usage.peak,
                "weight/min",
                f"<= {ADDRESS_LIMIT:,}",
                f"{usage.requests} requests, {sum(usage.refused.values())} refused (429/418)",
                usage.peak <= ADDRESS_LIMIT and not usage.refused,
            )
        )
    return out


if __name__ == "__main__":
    print(format_table(rows()))
