"""B12, polite on a shared IP (issue 17 point 2): a backfill of 200 days of 1m candles while another
client on the same IP spends 60 % of a 400 a minute limit in bursts.

Exchange minutes on a manual clock shared with the fake (the run waits for each minute's weight and a
benchmark need not sit through them); the fake bans at the first request inside a Retry-After.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.bench.common import BenchRow, format_table
from tests.test_shared_ip import run_beside_a_bursting_client

LIMIT = 400
DAYS = 200
CONCURRENCY = 32
"""The default ``--concurrency``."""


def rows() -> list[BenchRow]:
    work = Path(tempfile.mkdtemp(prefix="bench-shared-ip-"))
    try:
        run = run_beside_a_bursting_client(work, limit=LIMIT, days=DAYS, concurrency=CONCURRENCY)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = run.most_refusals_in_a_minute <= 1 and run.bans == 0 and run.exact
    return [
        BenchRow(
            f"B12 shared IP: {run.candles:,} candles beside a client spending 60 % of {LIMIT}/min, "
            f"concurrency {CONCURRENCY}",
            run.most_refusals_in_a_minute,
            "429/min (max)",
            "<= 1, no 418, exact",
            f"{run.minutes} minutes of contention, {run.refusals} 429s, {run.bans} 418s, "
            f"exact {'yes' if run.exact else 'no'}",
            ok,
        )
    ]


if __name__ == "__main__":
    print(format_table(rows()))
