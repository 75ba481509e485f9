"""State stores: the contract both stores keep, and what the JSON file store does with a file gone wrong."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.breaker_helpers import WALL_START, Clock, ExchangeDown, fail_times, make_breaker, opened, succeed
from utils.circuit_breaker import (
    BreakerSnapshot,
    CircuitBreakerConfigError,
    CircuitBreakerError,
    CircuitBreakerStateStore,
    CircuitState,
    JsonFileStateStore,
    MemoryStateStore,
)
from utils.circuit_breaker.state import Permit

OPEN_API = BreakerSnapshot(
    "api",
    CircuitState.HALF_OPEN,
    failure_count=5,
    last_failure_time=WALL_START,
    opened_at=WALL_START - 60,
    open_until=None,
    permits=(Permit(7, WALL_START + 1),),
    trial_successes=1,
    episode=7,
    version=7,
    failure_threshold=5,
    recovery_timeout=60.0,
    reason="ExchangeDown: exchange down",
)
CLOSED_DB = BreakerSnapshot("db", version=2, episode=1, failure_count=1, last_failure_time=WALL_START)


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CircuitBreakerStateStore]:
    yield MemoryStateStore() if request.param == "memory" else JsonFileStateStore(tmp_path / "s" / "b.json")


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "breakers.json"


def put(store: CircuitBreakerStateStore, *snapshots: BreakerSnapshot) -> None:
    if isinstance(store, JsonFileStateStore):
        store.ensure_writable()
    for snapshot in snapshots:
        assert store.compare_and_swap(snapshot, 0)


# -- the contract --------------------------------------------------------------------------------------


def test_a_store_keeps_every_breaker_by_name_with_every_field(store: CircuitBreakerStateStore) -> None:
    assert store.load("api") is None
    assert store.load_all() == {}
    put(store, OPEN_API, CLOSED_DB)
    assert store.load("api") == OPEN_API
    assert store.load_all() == {"api": OPEN_API, "db": CLOSED_DB}


def test_a_write_based_on_an_older_version_never_replaces_a_newer_one(
    store: CircuitBreakerStateStore,
) -> None:
    put(store, OPEN_API)
    stale = BreakerSnapshot("api", CircuitState.CLOSED, failure_count=1, version=7)
    assert not store.compare_and_swap(stale, 6)
    assert not store.compare_and_swap(stale, 0)
    assert store.load("api") == OPEN_API
    newer = BreakerSnapshot("api", CircuitState.OPEN, version=8)
    assert store.compare_and_swap(newer, 7)
    assert store.load("api") == newer


def test_the_stamp_changes_with_every_write_and_only_then(store: CircuitBreakerStateStore) -> None:
    put(store, CLOSED_DB)
    seen = {store.stamp()}
    assert store.stamp() in seen
    for version in range(3, 6):  # same size, written within one tick of a coarse file clock
        assert store.compare_and_swap(BreakerSnapshot("db", version=version), version - 1)
        assert store.stamp() not in seen
        seen.add(store.stamp())
    assert not store.compare_and_swap(BreakerSnapshot("db", version=9), 1)
    assert store.stamp() in seen


# -- the JSON file -------------------------------------------------------------------------------------


def test_each_write_moves_the_files_modification_time_forward_even_after_a_clock_step_back(
    state_file: Path,
) -> None:
    """Inodes are reused and clocks step back: a rising mtime is what keeps (inode, mtime, size) unique."""
    store = JsonFileStateStore(state_file)
    put(store, BreakerSnapshot("db", version=1))
    ahead = state_file.stat().st_mtime_ns + 3_600 * 10**9
    os.utime(state_file, ns=(ahead, ahead))  # written before the machine's clock was stepped back an hour
    for version in range(2, 5):
        assert store.compare_and_swap(BreakerSnapshot("db", version=version), version - 1)
        modified = state_file.stat().st_mtime_ns
        assert modified > ahead
        ahead = modified


def test_the_file_is_one_json_object_a_person_can_read(state_file: Path) -> None:
    put(JsonFileStateStore(state_file), OPEN_API)
    assert json.loads(state_file.read_text())["api"] == {
        "state": "HALF_OPEN",
        "version": 7,
        "episode": 7,
        "failure_count": 5,
        "last_failure_time": WALL_START,
        "opened_at": WALL_START - 60,
        "open_until": None,
        "permits": [[7, WALL_START + 1]],
        "trial_successes": 1,
        "failure_threshold": 5,
        "recovery_timeout": 60.0,
        "reason": "ExchangeDown: exchange down",
    }


def test_a_write_keeps_the_other_breakers_in_the_file(state_file: Path) -> None:
    store = JsonFileStateStore(state_file)
    put(store, OPEN_API, CLOSED_DB)
    assert store.compare_and_swap(BreakerSnapshot("db", version=3), 2)
    assert JsonFileStateStore(state_file).load("api") == OPEN_API


def test_a_file_of_the_first_release_is_read(state_file: Path) -> None:
    state_file.write_text(
        json.dumps(
            {
                "api": {
                    "state": "OPEN",
                    "failure_count": 3,
                    "last_failure_time": WALL_START,
                    "opened_at": WALL_START,
                    "failure_threshold": 3,
                    "recovery_timeout": 60.0,
                }
            }
        )
    )
    loaded = JsonFileStateStore(state_file).load("api")
    assert loaded is not None
    assert (loaded.state, loaded.failure_count, loaded.version, loaded.retry_at) == (
        CircuitState.OPEN,
        3,
        1,
        WALL_START + 60,
    )


def test_a_missing_file_holds_nothing_and_says_nothing(
    state_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert JsonFileStateStore(state_file).load_all() == {}
    assert caplog.records == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is empty"),
        ('{"api": {"state": "OPE', "is truncated or not JSON"),
        ("\x00\x00\x00", "is truncated or not JSON"),
        ('["api"]', "does not hold a JSON object"),
    ],
)
def test_a_broken_file_means_closed_is_logged_once_and_is_rewritten_by_the_next_save(
    state_file: Path, content: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    state_file.write_text(content)
    with caplog.at_level(logging.WARNING, logger="utils.circuit_breaker"):
        breaker = make_breaker(
            Clock(), name="api", failure_threshold=1, state_store=JsonFileStateStore(state_file)
        )
        assert breaker.state is CircuitState.CLOSED
        assert breaker.call(succeed) == "fetched"
        assert breaker.state is CircuitState.CLOSED
    assert [r.getMessage() for r in caplog.records] == [
        f"circuit breaker state file {state_file} {problem}; "
        "its breakers are taken as CLOSED until the next write"
    ]
    fail_times(breaker, 1)
    assert json.loads(state_file.read_text())["api"]["state"] == "OPEN"


def test_an_unreadable_file_means_closed_and_names_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_file = tmp_path / "breakers.json"
    state_file.mkdir()  # reading it fails, as an unreadable file would (even for root)
    with caplog.at_level(logging.WARNING, logger="utils.circuit_breaker"):
        assert JsonFileStateStore(state_file).load_all() == {}
    assert len(caplog.records) == 1
    assert f"circuit breaker state file {state_file} cannot be read (Is a directory)" in caplog.text


def test_a_file_that_disappears_is_logged_once(state_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = JsonFileStateStore(state_file)
    put(store, OPEN_API)
    assert store.load("api") == OPEN_API
    state_file.unlink()
    with caplog.at_level(logging.WARNING, logger="utils.circuit_breaker"):
        assert store.load("api") is None
        assert store.load("api") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"circuit breaker state file {state_file} has disappeared; "
        "its breakers are taken as CLOSED until the next write"
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_count", -1),
        ("failure_count", "3"),
        ("failure_count", 2.5),
        ("version", 0),
        ("state", "AJAR"),
        ("last_failure_time", "yesterday"),
        ("recovery_timeout", float("nan")),
        ("permits", [[0, WALL_START]]),
    ],
)
def test_an_entry_with_impossible_values_is_skipped_with_a_warning_naming_it(
    state_file: Path, field: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    put(JsonFileStateStore(state_file), OPEN_API, CLOSED_DB)
    document = json.loads(state_file.read_text())
    document["api"][field] = value
    state_file.write_text(json.dumps(document))
    store = JsonFileStateStore(state_file)
    with caplog.at_level(logging.WARNING, logger="utils.circuit_breaker"):
        assert store.load_all() == {"db": CLOSED_DB}
        assert store.load("api") is None
    assert len(caplog.records) == 1
    assert f"circuit breaker state file {state_file}: entry 'api' is unusable" in caplog.text
    assert store.compare_and_swap(BreakerSnapshot("api", version=1), 0)  # rewritten over it
    assert store.load("api") == BreakerSnapshot("api", version=1)


def test_ensure_writable_creates_the_directory(tmp_path: Path) -> None:
    store = JsonFileStateStore(tmp_path / "state" / "nested" / "breakers.json")
    store.ensure_writable()
    assert (tmp_path / "state" / "nested").is_dir()
    assert os.listdir(tmp_path / "state" / "nested") == ["breakers.json.lock"]


def test_ensure_writable_names_a_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the state directory should be")
    directory = tmp_path / "not-a-dir" / "state"
    store = JsonFileStateStore(directory / "breakers.json")
    with pytest.raises(CircuitBreakerConfigError) as bad:
        store.ensure_writable("EXTRACTOR_STATE_DIR")
    assert isinstance(bad.value, ValueError)
    assert (bad.value.variable, bad.value.value) == ("EXTRACTOR_STATE_DIR", str(directory))
    assert str(bad.value) == (
        f"EXTRACTOR_STATE_DIR={str(directory)!r} "
        "is a state directory that cannot be written (Not a directory)"
    )


# -- breakers on one file: the store is the source of truth -------------------------------------------


def test_a_closed_breaker_sees_another_ones_opening_before_its_next_call(state_file: Path) -> None:
    clock = Clock()
    watcher = make_breaker(clock, name="api", state_store=JsonFileStateStore(state_file))
    assert watcher.call(succeed) == "fetched"
    opened(clock, name="api", state_store=JsonFileStateStore(state_file))
    ran: list[int] = []
    with pytest.raises(CircuitBreakerError) as refused:
        watcher.call(ran.append, 1)
    assert ran == []
    assert refused.value.retry_after == 60


def test_an_open_breaker_sees_a_reset_made_elsewhere(state_file: Path) -> None:
    clock = Clock()
    worker = opened(clock, name="api", state_store=JsonFileStateStore(state_file))
    operator = make_breaker(clock, name="api", state_store=JsonFileStateStore(state_file))
    assert operator.state is CircuitState.OPEN
    operator.reset()
    assert worker.call(succeed) == "fetched"


def test_a_late_outcome_of_a_stale_view_never_recloses_or_reopens(state_file: Path) -> None:
    clock = Clock()
    late_runner = make_breaker(
        clock, name="api", failure_threshold=1, state_store=JsonFileStateStore(state_file)
    )
    other_run = make_breaker(
        clock, name="api", failure_threshold=1, state_store=JsonFileStateStore(state_file)
    )
    with late_runner:  # admitted while closed; meanwhile the other run opens the breaker
        fail_times(other_run, 1)
    stored = JsonFileStateStore(state_file).load("api")
    assert stored is not None and stored.state is CircuitState.OPEN
    other_run.reset()
    with pytest.raises(ExchangeDown), late_runner:  # admitted in the new closed episode...
        other_run.reset()  # ...which a second reset ends before the failure comes back
        raise ExchangeDown("late")
    stored = JsonFileStateStore(state_file).load("api")
    assert stored is not None and (stored.state, stored.failure_count) == (CircuitState.CLOSED, 0)


def test_one_trial_at_a_time_across_breakers_sharing_a_file(state_file: Path) -> None:
    clock = Clock()
    runs = [make_breaker(clock, name="api", state_store=JsonFileStateStore(state_file)) for _ in range(3)]
    fail_times(runs[0], 5)
    clock.advance(60)
    with runs[1]:
        for run in (runs[0], runs[2]):
            with pytest.raises(CircuitBreakerError) as refused:
                run.call(succeed)
            assert refused.value.retry_after == 0
    assert all(run.state is CircuitState.CLOSED for run in runs)
