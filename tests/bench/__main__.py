"""`make bench`: run every benchmark module and print one table (name, value, unit, target, peer/ratio)."""

from __future__ import annotations

import importlib
import platform
import sys
import time

from tests.bench.common import BenchRow, format_table

MODULES = (
    "tests.bench.bench_pipeline",
    "tests.bench.bench_breaker",
    "tests.bench.bench_fake",
    "tests.bench.bench_fleet",
    "tests.bench.bench_shared_ip",
    "tests.bench.bench_archive",
)


def main(argv: list[str]) -> int:
    only = set(argv)
    rows: list[BenchRow] = []
    for name in MODULES:
        if only and name.rsplit(".", 1)[-1] not in only:
            continue
        began = time.monotonic()
        module = importlib.import_module(name)
        rows.extend(module.rows())
        print(f"bench: {name} done in {time.monotonic() - began:.1f} s", file=sys.stderr)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.system()} {platform.release()}, {cpu}, Python {platform.python_version()}")
    print(format_table(rows))
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
