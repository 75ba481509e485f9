"""Settings precedence and the parsers of what users type (WHEN, durations, lists)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractor.errors import BadInputError
from extractor.settings import load_settings, parse_duration, parse_when, split_list

NOW = 1_732_700_000_000  # 2024-11-27T09:33:20Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01", 1_704_067_200_000),
        ("2024-01-01T12:30", 1_704_112_200_000),
        ("2024-01-01T12:30:00Z", 1_704_112_200_000),
        ("2024-01-01T14:30+02:00", 1_704_112_200_000),
        ("1704067200000", 1_704_067_200_000),
        ("now", NOW),
        ("90d", NOW - 90 * 86_400_000),
        ("12h", NOW - 12 * 3_600_000),
        ("30m", NOW - 30 * 60_000),
    ],
)
def test_when_accepts_every_documented_form_as_utc(text: str, expected: int) -> None:
    assert parse_when(text, now_ms=NOW) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2024-13-01", "2024-01-01T25:00", "90x", "-5d", "0d", "1969-12-31"]
)
def test_when_rejects_nonsense_naming_the_flag(text: str) -> None:
    with pytest.raises(BadInputError, match="--start"):
        parse_when(text, now_ms=NOW, what="--start")


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_when_never_fails_with_anything_but_bad_input(text: str) -> None:
    try:
        value = parse_when(text, now_ms=NOW)
    except BadInputError:
        return
    assert isinstance(value, int)


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)))
@settings(max_examples=200, deadline=None)
def test_naive_datetimes_mean_utc_to_the_millisecond(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    expected = (moment.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_when(moment.isoformat(), now_ms=NOW) == expected


def test_duration_units() -> None:
    assert parse_duration("45s") == 45_000
    assert parse_duration("2w") == 14 * 86_400_000
    with pytest.raises(BadInputError, match="lookback"):
        parse_duration("1M", what="lookback")


def test_lists_flatten_repeats_and_commas() -> None:
    assert split_list(("BTCUSDT,ETHUSDT", " BNBUSDT ", "BTCUSDT", "")) == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]


def test_flag_beats_env_beats_config_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "extractor.toml"
    config.write_text('database = "sqlite:///from-config.db"\nsymbols = ["BNBUSDT"]\nlookback = "2h"\n')
    env = {"EXTRACTOR_CONFIG": str(config), "DATABASE_URL": "sqlite:///from-env.db"}
    from_env = load_settings(environ=env)
    assert from_env.db_url == "sqlite:///from-env.db"
    assert from_env.symbols == ("BNBUSDT",)
    assert from_env.lookback_ms == 2 * 3_600_000
    assert load_settings(environ=env, db_url="sqlite:///flag.db").db_url == "sqlite:///flag.db"
    assert load_settings(environ={}).db_url == "sqlite:///klines.db"


def test_config_file_problems_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        load_settings(environ={"EXTRACTOR_CONFIG": str(tmp_path / "missing.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("symbols = [\n")
    with pytest.raises(BadInputError, match="not valid TOML"):
        load_settings(environ={}, config_file=str(bad))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('databse = "x"\n')
    with pytest.raises(BadInputError, match="unknown key 'databse'"):
        load_settings(environ={}, config_file=str(unknown))


def test_secrets_are_the_url_password_and_api_key() -> None:
    loaded = load_settings(
        environ={"DATABASE_URL": "mysql+pymysql://root:s3cr3t@db:3306/x", "BINANCE_API_KEY": "k3y"}
    )
    assert set(loaded.secrets) == {"s3cr3t", "k3y"}


@pytest.mark.parametrize(
    ("env", "culprit"),
    [
        ({"EXTRACTOR_CONCURRENCY": "0"}, "concurrency"),
        ({"EXTRACTOR_CONCURRENCY": "many"}, "concurrency"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"EXTRACTOR_SYMBOLS": "btcusdt"}, "btcusdt"),
        ({"EXTRACTOR_INTERVALS": "1H"}, "1H"),
        ({"BINANCE_API_URL": "ftp://x"}, "BINANCE_API_URL"),
    ],
)
def test_bad_environment_values_name_the_culprit(env: dict[str, str], culprit: str) -> None:
    with pytest.raises(BadInputError, match=culprit):
        load_settings(environ=env)
