"""The SQL schema every dialect shares: SQLAlchemy Core tables, the exact decimal column, row helpers.

Decimals are exact text on SQLite, whose NUMERIC would go through float, DECIMAL(48,18) on MySQL and
NUMERIC on PostgreSQL. Key columns are ASCII with a binary collation on MySQL, where the default
collation would make ``1m`` and ``1M`` collide, and collated "C" on PostgreSQL, whose locale collations
cost a fifth of the write speed in the index.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Context, Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeDecorator, TypeEngine

from extractor.klines import DECIMAL_FIELDS, FIELDS, Kline, KlineBlock

_WIDE = Context(prec=80)
_EIGHT_PLACES = Decimal("0.00000001")
_UNSIGNED_DECIMAL = re.compile(r"[0-9.]*").fullmatch
WIDTH = len(FIELDS)
DECIMAL_COLUMNS = tuple(i for i, name in enumerate(FIELDS) if name in DECIMAL_FIELDS)
UNMARKETED = ("klines", "exchange_gaps")
"""The tables an older release keyed without ``market``."""


def plain(value: Decimal) -> str:
    """A Decimal as plain text with no exponent (``1E-8`` -> ``0.00000001``), trailing zeros kept."""
    text = str(value)  # fast, and already plain unless the exponent is large or very small
    return format(value, "f") if "E" in text else text


def binance_text(value: Decimal) -> str:
    """A fixed-scale DECIMAL as Binance writes it: 8 places when that is exact, else as few as exact."""
    short = value.quantize(_EIGHT_PLACES, context=_WIDE)
    return plain(short if short == value else value.normalize(_WIDE))


class ExactDecimal(TypeDecorator[str]):
    """Decimal text in, decimal text out: TEXT on SQLite, DECIMAL(48,18) on MySQL, NUMERIC on PostgreSQL."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(asdecimal=True))
        return dialect.type_descriptor(Numeric(48, 18, asdecimal=True))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        # PostgreSQL's NUMERIC keeps the scale it was given; MySQL's DECIMAL(48,18) has one fixed scale.
        return plain(value) if dialect.name == "postgresql" else binance_text(value)


def _key(length: int) -> String:
    """A key column compared byte for byte: ``1m`` is not ``1M``, and the index needs no locale."""
    return (
        String(length)
        .with_variant(mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql")
        .with_variant(postgresql.VARCHAR(length, collation="C"), "postgresql")
    )


def _utc_time() -> DateTime:
    """Naive UTC on MySQL and SQLite (design §7); ``timestamptz`` on PostgreSQL, so ``now()`` compares right
    in any session time zone."""
    return DateTime(timezone=False).with_variant(DateTime(timezone=True), "postgresql")


metadata = MetaData()

klines_table = Table(
    "klines",
    metadata,
    Column("market", _key(5), primary_key=True),
    Column("symbol", _key(20), primary_key=True),
    Column("interval", _key(3), primary_key=True),
    Column("open_time", BigInteger, primary_key=True, autoincrement=False),
    *(
        Column(name, ExactDecimal, nullable=False)
        if name in DECIMAL_FIELDS
        else Column(name, BigInteger, nullable=False)
        for name in FIELDS[4:]
    ),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

exchange_gaps_table = Table(
    "exchange_gaps",
    metadata,
    Column("market", _key(5), primary_key=True),
    Column("symbol", _key(20), primary_key=True),
    Column("interval", _key(3), primary_key=True),
    Column("start_time", BigInteger, primary_key=True, autoincrement=False),
    Column("end_time", BigInteger, nullable=False),
    Column("confirmations", Integer, nullable=False, server_default="0"),
    Column("confirmed_at", BigInteger, nullable=True),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

kline_series_table = Table(
    "kline_series",
    metadata,
    Column("market", _key(5), primary_key=True),
    Column("symbol", _key(20), primary_key=True),
    Column("interval", _key(3), primary_key=True),
    Column("last_write_time", BigInteger, nullable=False),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

events_table = Table(
    "circuit_breaker_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("timestamp", _utc_time(), nullable=False),
    Column("breaker", String(100), nullable=False),
    Column("from_state", String(20), nullable=False),
    Column("state", String(20), nullable=False),
    Column("failure_count", Integer, nullable=False),
    Column("failure_threshold", Integer, nullable=False),
    Index("ix_circuit_breaker_events_timestamp", "timestamp"),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)

operations_table = Table(
    "circuit_breaker_operations",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("timestamp", _utc_time(), nullable=False),
    Column("breaker", String(100), nullable=False),
    Column("success", Boolean, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("error", String(500), nullable=True),
    Index("ix_circuit_breaker_operations_timestamp", "timestamp"),
    mysql_engine="InnoDB",
    mariadb_engine="InnoDB",
)


def flat_values(klines: Sequence[Kline]) -> list[Any]:
    """The parameters of ``klines``, row after row, in column order."""
    if isinstance(klines, KlineBlock):
        return klines.flat()
    return [value for kline in klines for value in kline]


def unsigned_decimals(klines: Sequence[Kline], values: list[Any]) -> bool:
    """True when every decimal of ``klines`` (``values``: their ``flat_values``) is text of digits and
    points, safe to inline in SQL or COPY data; anything else (None, a sign, a quote) is left to the
    driver and the server's refusal. A KlineBlock's passed the row checks, which allow nothing else."""
    if isinstance(klines, KlineBlock):
        return True
    try:
        return all(_UNSIGNED_DECIMAL("".join(values[c::WIDTH])) for c in DECIMAL_COLUMNS)
    except TypeError:
        return False
