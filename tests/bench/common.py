"""The one table every benchmark row goes into."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchRow:
    """One printed result, e.g. ``B1 backfill sqlite | 61,200 | klines/s | >= 50,000 | 19.7x``."""

    name: str
    value: float
    unit: str
    target: str
    peer: str = ""
    ok: bool | None = None


def format_table(rows: list[BenchRow]) -> str:
    header = ("row", "value", "unit", "target", "peer / ratio", "ok")
    body = [
        (
            r.name,
            f"{r.value:,.3f}" if r.value < 100 else f"{r.value:,.0f}",
            r.unit,
            r.target,
            r.peer,
            "" if r.ok is None else ("yes" if r.ok else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep, *(fmt(b) for b in body)])
