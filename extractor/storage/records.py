"""The plain records of storage: what a store hands back (exchange gaps, series summaries, the series a
run could lock) and who holds a run lock, as lock files and lease documents record it."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from extractor.errors import format_utc
from extractor.klines import Series


@dataclass(frozen=True, slots=True)
class ExchangeGap:
    """A range the exchange answered twice with no rows: an outage, or the time before a listing.

    ``confirmations`` counts the empty answers behind it; 0 marks a gap recorded by an older release,
    which trusted a single answer (``gaps --recheck`` asks again).
    """

    start: int
    end: int
    confirmations: int
    confirmed_at: int | None


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """What is stored of one series, for ``status``."""

    market: str
    symbol: str
    interval: str
    first_open_time: int
    last_open_time: int
    candles: int
    last_write: int | None
    """Epoch ms of the last write batch, when the store has recorded it."""


def this_holder() -> dict[str, object]:
    """Who is taking a run lock, as lock files and lease documents record it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def describe_holder(recorded: bytes | Mapping[str, Any] | None) -> str:
    """``pid 4242 on host-a, since 2026-01-01T00:00:00Z`` from what ``this_holder()`` recorded."""
    holder: Any = recorded
    if isinstance(recorded, bytes):
        try:
            holder = json.loads(recorded.decode())
        except ValueError:
            holder = None
    if not isinstance(holder, Mapping):
        return "holder unknown"
    text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = holder.get("since")
    if isinstance(since, datetime):
        since = since.timestamp()
    return f"{text}, since {format_utc(since)}" if isinstance(since, int | float) else text


@dataclass
class SeriesLocks:
    """What a run could lock: the series it now holds, and those another run is writing."""

    held: list[Series] = field(default_factory=list)
    busy: list[Series] = field(default_factory=list)
