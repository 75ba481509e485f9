"""The fake's archive keeps data.binance.vision's layout, formats and delays, and serves REST's candles."""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.fake_exchange import ArchiveFaults, FakeExchange, ManualClock, SymbolSpec

NOW = 1739145630.0  # 2025-02-10T00:00:30Z: January's monthly files are out, and the dailies to 02-08
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
JAN_2025, FEB_2025 = 1735689600000, 1738368000000
NOV_2024 = 1730419200000
SYMBOL = {"spot": "BTCUSDT", "usdm": "BTCUSDT", "coinm": "BTCUSD_PERP"}
CHECKSUM_LINE = re.compile(r"([0-9a-f]{64})  (\S+\.zip)\n")

Start = Callable[..., FakeExchange]


@pytest.fixture
def exchange(fake_exchanges: Start) -> FakeExchange:
    return fake_exchanges(clock=ManualClock(NOW))


def fetch(http: requests.Session, exchange: FakeExchange, path: str) -> requests.Response:
    return http.get(exchange.archive_url + path, timeout=10)


def csv_text(data: bytes) -> tuple[list[str], str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        return names, archive.read(names[0]).decode()


def downloaded(http: requests.Session, exchange: FakeExchange, path: str) -> str:
    """The CSV of a file after its CHECKSUM matched, as a careful client reads it."""
    checksum = fetch(http, exchange, path + ".CHECKSUM")
    answer = fetch(http, exchange, path)
    assert (checksum.status_code, answer.status_code) == (200, 200), path
    found = CHECKSUM_LINE.fullmatch(checksum.text)
    assert found is not None and found[2] == path.rsplit("/", 1)[1]
    assert hashlib.sha256(answer.content).hexdigest() == found[1]
    names, text = csv_text(answer.content)
    assert names == [path.rsplit("/", 1)[1].removesuffix(".zip") + ".csv"]
    return text


def as_rest_rows(text: str) -> list[list[Any]]:
    """Archive CSV rows in REST's wire format: the header skipped, microseconds made milliseconds."""
    rows: list[list[Any]] = []
    for line in text.splitlines():
        if not line[:1].isdigit():
            continue
        fields: list[Any] = line.split(",")
        open_time, close_time = int(fields[0]), int(fields[6])
        if open_time > 10**14:
            open_time, close_time = open_time // 1000, close_time // 1000
        fields[0], fields[6], fields[8] = open_time, close_time, int(fields[8])
        rows.append(fields)
    return rows


def path(exchange: FakeExchange, market: str, interval: str, period: str, symbol: str = "") -> str:
    return exchange.archive_path(market, symbol or SYMBOL[market], interval, period)


# -- layout ---------------------------------------------------------------------------------------


def test_paths_name_1m_as_1mo_and_each_zip_holds_one_csv_named_like_it(
    exchange: FakeExchange, http: requests.Session
) -> None:
    assert exchange.archive_url == exchange.url
    expected = {
        ("spot", "1m", "2024-12"): "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-12.zip",
        ("spot", "1M", "2024-12"): "/data/spot/monthly/klines/BTCUSDT/1mo/BTCUSDT-1mo-2024-12.zip",
        ("usdm", "1h", "2025-02-03"): "/data/futures/um/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-02-03.zip",
        (
            "coinm",
            "1d",
            "2024-12",
        ): "/data/futures/cm/monthly/klines/BTCUSD_PERP/1d/BTCUSD_PERP-1d-2024-12.zip",
    }
    for (market, interval, period), wanted in expected.items():
        assert path(exchange, market, interval, period) == wanted
        assert downloaded(http, exchange, wanted)
    answer = fetch(http, exchange, wanted)
    assert answer.headers["Content-Type"] == "application/zip"
    assert "X-MBX-USED-WEIGHT-1M" not in answer.headers
    month_as_1M = "/data/spot/monthly/klines/BTCUSDT/1M/BTCUSDT-1M-2024-12.zip"
    missing = fetch(http, exchange, month_as_1M)
    assert missing.status_code == 404 and b"<Code>NoSuchKey</Code>" in missing.content
    for wrong in ("BTCUSDT-1m-2024-02-30", "BTCUSDT-1m-2024-13", "ETHUSDT-1m-2024-12"):
        assert fetch(http, exchange, f"/data/spot/monthly/klines/BTCUSDT/1m/{wrong}.zip").status_code == 404


@pytest.mark.parametrize("interval", ["3d", "1w", "1M"])
def test_there_are_no_daily_files_past_1d(
    exchange: FakeExchange, http: requests.Session, interval: str
) -> None:
    assert fetch(http, exchange, path(exchange, "spot", interval, "2025-01")).status_code == 200
    assert fetch(http, exchange, path(exchange, "spot", interval, "2025-01-06")).status_code == 404
    assert fetch(http, exchange, path(exchange, "spot", "1d", "2025-01-06")).status_code == 200


@pytest.mark.parametrize("market", ["usdm", "coinm"])
def test_futures_have_no_1s_files(exchange: FakeExchange, http: requests.Session, market: str) -> None:
    assert fetch(http, exchange, path(exchange, market, "1s", "2025-01-06")).status_code == 404
    assert fetch(http, exchange, path(exchange, market, "1s", "2025-01")).status_code == 404


def test_spot_1s_has_daily_files(exchange: FakeExchange, http: requests.Session) -> None:
    rows = as_rest_rows(downloaded(http, exchange, path(exchange, "spot", "1s", "2024-12-31")))
    assert len(rows) == 86_400
    assert rows[:3] == exchange.rows("BTCUSDT", "1s", JAN_2025 - DAY, JAN_2025 - DAY + 3000)


# -- formats --------------------------------------------------------------------------------------


def test_spot_files_of_2025_on_write_microseconds(exchange: FakeExchange, http: requests.Session) -> None:
    before = downloaded(http, exchange, path(exchange, "spot", "1m", "2024-12-31")).splitlines()
    after = downloaded(http, exchange, path(exchange, "spot", "1m", "2025-01-01")).splitlines()
    assert before[0].split(",")[0] == str(JAN_2025 - DAY)
    assert before[0].split(",")[6] == str(JAN_2025 - DAY + MINUTE - 1)
    first = after[0].split(",")
    assert (first[0], first[6]) == ("1735689600000000", "1735689659999999")  # close_ms * 1000 + 999
    assert downloaded(http, exchange, path(exchange, "spot", "1h", "2025-01")).startswith("1735689600000000,")
    assert downloaded(http, exchange, path(exchange, "spot", "1h", "2024-12")).startswith("1733011200000,")
    for market in ("usdm", "coinm"):
        assert re.search(
            r"\n1735689600000,", downloaded(http, exchange, path(exchange, market, "1h", "2025-01"))
        )


@pytest.mark.parametrize("market", ["usdm", "coinm"])
def test_futures_files_carry_a_header_from_may_2022(
    exchange: FakeExchange, http: requests.Session, market: str
) -> None:
    header = (
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
        "taker_buy_volume,taker_buy_quote_volume,ignore"
    )
    old = downloaded(http, exchange, path(exchange, market, "1d", "2022-04"))
    new = downloaded(http, exchange, path(exchange, market, "1d", "2022-05"))
    daily = downloaded(http, exchange, path(exchange, market, "1h", "2022-05-01"))
    assert old[:1].isdigit() and old.count("\n") == 30
    assert new.splitlines()[0] == header and new.count("\n") == 32
    assert daily.splitlines()[0] == header
    assert not downloaded(http, exchange, path(exchange, "spot", "1d", "2022-05")).startswith("open_time")


def test_the_header_cut_over_can_be_moved(fake_exchanges: Start, http: requests.Session) -> None:
    exchange = fake_exchanges(clock=ManualClock(NOW), futures_header_from=0)
    assert downloaded(http, exchange, path(exchange, "usdm", "1d", "2019-10")).startswith("open_time,")


# -- which files exist, and when ------------------------------------------------------------------


def test_files_appear_after_their_period_and_the_publication_delay(
    fake_exchanges: Start, http: requests.Session
) -> None:
    clock = ManualClock(FEB_2025 / 1000 + 2 * 86400 - 1)  # 2025-02-02T23:59:59Z
    exchange = fake_exchanges(clock=clock)
    january = path(exchange, "spot", "1m", "2025-01")
    assert fetch(http, exchange, january).status_code == 404
    assert fetch(http, exchange, january + ".CHECKSUM").status_code == 404
    day = path(exchange, "spot", "1m", "2025-02-02")
    assert fetch(http, exchange, day).status_code == 404  # the day has not ended
    clock.advance(1)  # the month ended two days ago: published
    assert fetch(http, exchange, january + ".CHECKSUM").status_code == 200
    clock.advance(6 * 3600 - 1)
    assert fetch(http, exchange, day).status_code == 404
    clock.advance(1)  # six hours after the day ended
    assert fetch(http, exchange, day).status_code == 200
    assert fetch(http, exchange, path(exchange, "spot", "1m", "2025-02")).status_code == 404


def test_publication_delays_can_be_set(fake_exchanges: Start, http: requests.Session) -> None:
    exchange = fake_exchanges(clock=ManualClock(NOW), archive_daily_delay=0, archive_monthly_delay=40 * 86400)
    assert fetch(http, exchange, path(exchange, "spot", "1h", "2025-02-09")).status_code == 200
    assert fetch(http, exchange, path(exchange, "spot", "1h", "2025-02-10")).status_code == 404  # today
    assert fetch(http, exchange, path(exchange, "spot", "1h", "2025-01")).status_code == 404
    assert fetch(http, exchange, path(exchange, "spot", "1h", "2024-12")).status_code == 200


def test_a_week_that_ends_next_month_holds_its_file_back(
    fake_exchanges: Start, http: requests.Session
) -> None:
    clock = ManualClock(FEB_2025 / 1000 + 3 * 86400)  # 2025-02-04: January's files are out...
    exchange = fake_exchanges(clock=clock)
    assert fetch(http, exchange, path(exchange, "spot", "1d", "2025-01")).status_code == 200
    week = path(exchange, "spot", "1w", "2025-01")  # ...but its last week closes on 02-02 23:59:59.999
    assert fetch(http, exchange, week).status_code == 404
    clock.advance(86400)
    rows = as_rest_rows(downloaded(http, exchange, week))
    assert [row[0] for row in rows] == [1736121600000 + k * 7 * DAY for k in range(4)]  # Mondays 6 .. 27
    assert rows == exchange.rows("BTCUSDT", "1w", JAN_2025, FEB_2025)


def test_no_file_before_a_listing_or_after_a_delivery(exchange: FakeExchange, http: requests.Session) -> None:
    listed = 1502942400000  # spot BTCUSDT, 2017-08-17 04:00
    assert fetch(http, exchange, path(exchange, "spot", "1h", "2017-07")).status_code == 404
    assert fetch(http, exchange, path(exchange, "spot", "1h", "2017-08-16")).status_code == 404
    august = as_rest_rows(downloaded(http, exchange, path(exchange, "spot", "1h", "2017-08")))
    assert august[0][0] == listed and august == exchange.rows("BTCUSDT", "1h", 0, 1504224000000)
    quarterly = "BTCUSDT_240628"
    assert fetch(http, exchange, path(exchange, "usdm", "1h", "2024-07", quarterly)).status_code == 404
    june = as_rest_rows(downloaded(http, exchange, path(exchange, "usdm", "1h", "2024-06", quarterly)))
    assert june[-1][0] == 1719561600000 - HOUR  # the last hour before delivery
    assert (
        fetch(http, exchange, path(exchange, "coinm", "1h", "2020-08-09")).status_code == 404
    )  # listed 08-10


def test_an_outage_is_missing_from_the_file_as_from_rest(
    exchange: FakeExchange, http: requests.Session
) -> None:
    day = as_rest_rows(downloaded(http, exchange, path(exchange, "spot", "1m", "2023-03-24")))
    start = 1679616000000
    assert day == exchange.rows("BTCUSDT", "1m", start, start + DAY)
    assert len(day) == 1440 - 80  # 12:40-14:00 UTC


# -- the same data as REST ------------------------------------------------------------------------


@pytest.mark.parametrize("market", ["spot", "usdm", "coinm"])
def test_archive_rows_are_rest_rows_across_2024_to_2025(
    exchange: FakeExchange, http: requests.Session, market: str
) -> None:
    months = ["2024-11", "2024-12", "2025-01"]
    days = [f"2025-02-0{d}" for d in range(1, 9)]
    served: list[list[Any]] = []
    for period in months + days:
        served += as_rest_rows(downloaded(http, exchange, path(exchange, market, "1h", period)))
    api = {"spot": "/api/v3", "usdm": "/fapi/v1", "coinm": "/dapi/v1"}[market]
    end = FEB_2025 + 8 * DAY
    rest: list[list[Any]] = []
    cursor = NOV_2024
    while cursor < end:  # COIN-M answers the newest rows of a span: ask for spans of one page
        window: dict[str, Any] = {"startTime": cursor, "endTime": cursor + 999 * HOUR, "limit": 1000}
        page = http.get(
            exchange.url + api + "/klines",
            params={"symbol": SYMBOL[market], "interval": "1h", **window},
            timeout=10,
        ).json()
        rest += [row for row in page if row[0] < end]
        cursor += 1000 * HOUR
    assert len(served) == (end - NOV_2024) // HOUR
    assert served == rest


@pytest.mark.parametrize("interval", ["1m", "3d", "1M"])
def test_archive_rows_are_rest_rows_for_any_interval(
    exchange: FakeExchange, http: requests.Session, interval: str
) -> None:
    periods = ["2024-12-31", "2025-01-01"] if interval == "1m" else ["2024-11", "2024-12", "2025-01"]
    served: list[list[Any]] = []
    for period in periods:
        served += as_rest_rows(downloaded(http, exchange, path(exchange, "spot", interval, period)))
    start = JAN_2025 - DAY if interval == "1m" else NOV_2024
    end = JAN_2025 + DAY if interval == "1m" else FEB_2025
    assert served == exchange.rows("BTCUSDT", interval, start, end)
    assert len(served) > 2


# -- bookkeeping ----------------------------------------------------------------------------------


def test_archive_requests_carry_no_weight_and_are_counted_by_path(
    exchange: FakeExchange, http: requests.Session
) -> None:
    file = path(exchange, "usdm", "1d", "2025-01")
    downloaded(http, exchange, file)
    downloaded(http, exchange, file)
    fetch(http, exchange, path(exchange, "usdm", "1d", "2025-03"))
    assert exchange.archive_counts == {
        file: 2,
        file + ".CHECKSUM": 2,
        path(exchange, "usdm", "1d", "2025-03"): 1,
    }
    assert exchange.used_weight("usdm") == 0 and exchange.usage("usdm") == {}
    assert [(r.market, r.weight, r.is_archive) for r in exchange.log] == [("usdm", 0, True)] * 5
    stats = exchange.stats()
    assert stats["archive"]["requests"] == 5 and stats["archive"]["built"] == 1
    assert stats["requests"][file] == 2


def test_built_zips_are_cached_within_their_byte_budget(
    fake_exchanges: Start, http: requests.Session
) -> None:
    exchange = fake_exchanges(clock=ManualClock(NOW))
    file = path(exchange, "spot", "1h", "2024-12")
    first = downloaded(http, exchange, file)
    assert downloaded(http, exchange, file) == first
    assert [p for p, _ in exchange.archive.builds] == [file]
    assert 0 < exchange.archive.cached_bytes < 100_000
    tiny = fake_exchanges(clock=ManualClock(NOW), archive_cache_bytes=1)
    assert downloaded(http, tiny, file) == first  # the same bytes, built again each time
    assert [p for p, _ in tiny.archive.builds] == [file, file]
    assert tiny.archive.cached_bytes == 0


# -- faults ---------------------------------------------------------------------------------------

GOOD = "/data/spot/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-12.zip"


def good_file(http: requests.Session, exchange: FakeExchange) -> tuple[bytes, str]:
    return fetch(http, exchange, GOOD).content, downloaded(http, exchange, GOOD)


def test_a_missing_file_is_a_404_for_the_zip_and_its_checksum(
    exchange: FakeExchange, http: requests.Session
) -> None:
    exchange.archive_faults.files["data/spot/monthly/klines/BTCUSDT/1h/*-2024-1?.zip"] = "missing"
    assert fetch(http, exchange, GOOD).status_code == 404
    assert fetch(http, exchange, GOOD + ".CHECKSUM").status_code == 404
    assert fetch(http, exchange, GOOD.replace("2024-12", "2024-11")).status_code == 404
    assert fetch(http, exchange, GOOD.replace("2024-12", "2024-09")).status_code == 200
    exchange.archive_faults.files.clear()
    assert fetch(http, exchange, GOOD).status_code == 200


def test_a_damaged_zip_keeps_the_checksum_of_the_good_one(
    exchange: FakeExchange, http: requests.Session
) -> None:
    good, _ = good_file(http, exchange)
    exchange.archive_faults = ArchiveFaults(files={GOOD: "damaged"})
    damaged = fetch(http, exchange, GOOD).content
    checksum = fetch(http, exchange, GOOD + ".CHECKSUM").text
    assert checksum.split()[0] == hashlib.sha256(good).hexdigest() != hashlib.sha256(damaged).hexdigest()
    assert len(damaged) == len(good) and damaged != good
    with pytest.raises((zipfile.BadZipFile, OSError, EOFError, ValueError)):
        csv_text(damaged)


@pytest.mark.parametrize("kind", ["truncated", "duplicated", "off_grid"])
def test_a_bad_upload_is_a_valid_zip_whose_checksum_matches(
    exchange: FakeExchange, http: requests.Session, kind: str
) -> None:
    _, good = good_file(http, exchange)
    exchange.archive_faults.files[GOOD] = kind
    bad = downloaded(http, exchange, GOOD)  # the checksum matches: only the rows tell
    good_lines, bad_lines = good.splitlines(), bad.splitlines()
    if kind == "truncated":
        assert good.startswith(bad) and len(bad_lines) == len(good_lines) // 2 + 1
        assert len(bad_lines[-1].split(",")) < 12 and not bad.endswith("\n")
    elif kind == "duplicated":
        assert len(bad_lines) == len(good_lines) + 1 and set(bad_lines) == set(good_lines)
        assert len(set(bad_lines)) == len(good_lines)
    else:
        moved = [line for line in bad_lines if line not in good_lines]
        assert len(moved) == 1 and int(moved[0].split(",")[0]) % HOUR == 1
        assert len(bad_lines) == len(good_lines)


def test_off_grid_in_a_microsecond_file_is_one_millisecond_off(
    exchange: FakeExchange, http: requests.Session
) -> None:
    file = path(exchange, "spot", "1h", "2025-01")
    exchange.archive_faults.files[file] = "off_grid"
    moved = [row[0] for row in as_rest_rows(downloaded(http, exchange, file)) if row[0] % HOUR]
    assert len(moved) == 1 and moved[0] % HOUR == 1


def test_a_one_shot_fault_spoils_one_download_of_the_next_file(
    exchange: FakeExchange, http: requests.Session
) -> None:
    good, good_csv = good_file(http, exchange)
    exchange.archive_faults.next_files += ["damaged", "truncated", "missing"]
    checksum = fetch(http, exchange, GOOD + ".CHECKSUM").text.split()[0]
    assert fetch(http, exchange, GOOD + ".CHECKSUM").text.split()[0] == checksum  # bound to the file
    assert (
        checksum
        == hashlib.sha256(good).hexdigest()
        != hashlib.sha256(fetch(http, exchange, GOOD).content).hexdigest()
    )
    truncated = downloaded(http, exchange, GOOD)  # the next kind: CHECKSUM and zip agree
    assert good_csv.startswith(truncated) and truncated != good_csv
    assert fetch(http, exchange, GOOD).status_code == 404
    assert downloaded(http, exchange, GOOD) == good_csv
    assert exchange.archive_faults.next_files == []


def test_the_archive_host_answers_5xx_all_first_or_at_a_seeded_rate(
    exchange: FakeExchange, http: requests.Session
) -> None:
    faults = exchange.archive_faults
    faults.fail_all = 503
    answer = fetch(http, exchange, GOOD)
    assert answer.status_code == 503 and answer.content.startswith(b"<html>")
    faults.error_html = False
    assert fetch(http, exchange, GOOD + ".CHECKSUM").content == b""
    faults.fail_all = None
    faults.fail_first = 2
    assert [fetch(http, exchange, GOOD).status_code for _ in range(3)] == [503, 503, 200]
    sequences = []
    for _ in range(2):
        exchange.archive_faults = ArchiveFaults(error_rate=0.5, seed=3)
        sequences.append([fetch(http, exchange, GOOD).status_code for _ in range(16)])
    assert sequences[0] == sequences[1]
    assert 200 in sequences[0] and set(sequences[0]) - {200} <= {500, 502, 503} and set(sequences[0]) != {200}
    exchange.archive_faults = ArchiveFaults()
    assert fetch(http, exchange, GOOD).status_code == 200


def test_archive_latency_delays_the_files_it_names(exchange: FakeExchange, http: requests.Session) -> None:
    exchange.archive_faults.latency_for["*-2024-12.zip"] = 60.0
    assert exchange.archive.latency(GOOD) == 60.0 and exchange.archive.latency("/data/x-2024-11.zip") == 0.0
    outcome: list[BaseException | int] = []

    def slow() -> None:
        try:
            outcome.append(requests.get(exchange.url + GOOD, timeout=30).status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while GOOD not in exchange.archive_counts and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fetch(http, exchange, GOOD.replace("2024-12", "2024-11")).status_code == 200
    assert thread.is_alive() and outcome == []
    exchange.stop()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)


def test_listings_of_the_archive_follow_the_symbols_given(
    fake_exchanges: Start, http: requests.Session
) -> None:
    outage = (JAN_2025 + 20 * DAY + 5 * HOUR, JAN_2025 + 20 * DAY + 7 * HOUR)
    exchange = fake_exchanges(
        clock=ManualClock(NOW), symbols={"NEWUSDT": SymbolSpec(JAN_2025 + 15 * DAY + 1, outages=[outage])}
    )
    rows = as_rest_rows(downloaded(http, exchange, exchange.archive_path("spot", "NEWUSDT", "1h", "2025-01")))
    assert rows[0][0] == JAN_2025 + 15 * DAY and len(rows) == 16 * 24 - 2  # listed mid-month, an outage
    assert (
        fetch(http, exchange, exchange.archive_path("spot", "NEWUSDT", "1h", "2025-01-02")).status_code == 404
    )
