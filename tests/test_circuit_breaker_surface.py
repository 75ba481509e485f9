"""The breaker's surface (design §8, issue 16 point 4): attributes, hooks, validation, CircuitState, metrics,
the refusal error, open_until, the failure-rate mode and tracing. Time is a fake clock throughout."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.breaker_helpers import (
    WALL_START,
    Clock,
    ExchangeDown,
    Recorder,
    fail,
    fail_times,
    make_breaker,
    opened,
    succeed,
    unknown_symbol,
)
from utils.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfigError,
    CircuitBreakerError,
    CircuitBreakerMetrics,
    CircuitState,
    JsonFileStateStore,
    MemoryStateStore,
    OpenTelemetryListener,
)
from utils.circuit_breaker.listeners import RECENT_TRANSITIONS

# -- design §8: assignable attributes and the internal hooks -------------------------------------------


def test_state_can_be_assigned_and_reads_back_as_the_member() -> None:
    breaker = make_breaker(Clock())
    breaker.state = CircuitState.OPEN
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    breaker.state = "CLOSED"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.call(succeed) == "fetched"
    with pytest.raises(ValueError):
        breaker.state = "ajar"


def test_the_seeds_manual_reset_works_and_is_saved_to_the_store() -> None:
    clock = Clock()
    store = MemoryStateStore()
    breaker = opened(clock, name="api", state_store=store)
    breaker.state = CircuitState.CLOSED
    breaker.failure_count = 0
    assert breaker.call(succeed) == "fetched"
    saved = store.load("api")
    assert saved is not None and (saved.state, saved.failure_count) == (CircuitState.CLOSED, 0)
    assert make_breaker(clock, name="api", state_store=store).state is CircuitState.CLOSED


def test_assigned_last_failure_time_counts_the_timeout_from_then() -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60)
    breaker.state = CircuitState.OPEN
    assert not breaker._should_attempt_reset()
    breaker.last_failure_time = time.time() - 61
    assert breaker._should_attempt_reset()
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.call(succeed) == "fetched"
    assert breaker.state is CircuitState.CLOSED


def test_assigned_thresholds_and_expected_exception_take_effect() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    breaker.failure_threshold = 1
    breaker.recovery_timeout = 5
    breaker.expected_exception = KeyError
    with pytest.raises(ExchangeDown):
        breaker.call(fail)
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(KeyError):
        breaker.call(unknown_symbol)
    assert breaker.state is CircuitState.OPEN
    clock.advance(5)
    assert breaker.state is CircuitState.HALF_OPEN


def test_a_shorter_recovery_timeout_assigned_while_open_takes_effect_at_once() -> None:
    clock = Clock()
    breaker = opened(clock)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    clock.advance(10)
    breaker.recovery_timeout = 10
    assert breaker.call(succeed) == "fetched"


def test_assigned_failure_count_is_kept() -> None:
    breaker = make_breaker(Clock(), failure_threshold=3)
    breaker.failure_count = 2
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.OPEN


def test_on_failure_counts_stamps_the_wall_clock_and_opens_at_the_threshold() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=2)
    breaker._on_failure()
    assert (breaker.failure_count, breaker.last_failure_time, breaker.state) == (1, WALL_START, "CLOSED")
    clock.advance(3)
    breaker._on_failure()
    assert (breaker.failure_count, breaker.last_failure_time, breaker.state) == (2, WALL_START + 3, "OPEN")
    assert breaker.metrics.failure_count == 2


def test_on_failure_from_half_open_opens_at_once() -> None:
    breaker = make_breaker(Clock(), failure_threshold=5)
    breaker.state = CircuitState.HALF_OPEN
    breaker._on_failure()
    assert breaker.state is CircuitState.OPEN


def test_on_success_resets_the_count_and_closes_from_half_open() -> None:
    breaker = make_breaker(Clock(), failure_threshold=5)
    breaker._on_failure()
    breaker._on_success()
    assert breaker.failure_count == 0
    breaker.state = CircuitState.HALF_OPEN
    breaker._on_success()
    assert breaker.state is CircuitState.CLOSED
    fail_times(breaker, 5)
    breaker._on_success()
    assert (breaker.failure_count, breaker.state) == (0, CircuitState.OPEN)


def test_get_state_info_reports_the_design_keys() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=3, recovery_timeout=45)
    breaker._on_failure()
    assert breaker.get_state_info() == {
        "state": "CLOSED",
        "failure_count": 1,
        "last_failure_time": WALL_START,
        "failure_threshold": 3,
        "recovery_timeout": 45,
    }
    fail_times(breaker, 2)
    clock.advance(45)
    assert breaker.get_state_info()["state"] == "HALF_OPEN"
    assert json.dumps(breaker.get_state_info()["state"]) == '"HALF_OPEN"'


def test_seconds_until_trial_is_zero_unless_open() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_threshold=1, recovery_timeout=60)
    assert breaker.seconds_until_trial() == 0
    fail_times(breaker, 1)
    clock.advance(15)
    assert breaker.seconds_until_trial() == 45
    clock.advance(45)
    assert breaker.seconds_until_trial() == 0


def test_reset_closes_and_forgets_as_a_newer_version() -> None:
    store = MemoryStateStore()
    breaker = opened(Clock(), name="db", state_store=store)
    before = store.load("db")
    breaker.reset()
    after = store.load("db")
    assert before is not None and after is not None and after.version > before.version
    assert (after.state, after.failure_count, after.last_failure_time) == (CircuitState.CLOSED, 0, None)
    assert (breaker.state, breaker.failure_count, breaker.last_failure_time) == ("CLOSED", 0, None)


# -- validation: the setters reject what the constructor rejects ---------------------------------------

BAD_SETTINGS = [
    ("failure_threshold", 0),
    ("failure_threshold", -1),
    ("failure_threshold", 2.5),
    ("failure_threshold", True),
    ("failure_threshold", "5"),
    ("recovery_timeout", float("nan")),
    ("recovery_timeout", float("inf")),
    ("recovery_timeout", -1),
    ("recovery_timeout", "60"),
    ("success_threshold", 0),
    ("success_threshold", 1.0),
    ("half_open_max_calls", 0),
    ("half_open_max_calls", None),
    ("expected_exception", "ConnectionError"),
    ("expected_exception", (ValueError, 3)),
    ("expected_exception", ()),
]


@pytest.mark.parametrize(("setting", "value"), BAD_SETTINGS)
def test_the_constructor_rejects_an_unusable_setting(setting: str, value: object) -> None:
    with pytest.raises(CircuitBreakerConfigError) as bad:
        CircuitBreaker(**{setting: value})
    assert isinstance(bad.value, ValueError)
    assert (bad.value.variable, bad.value.value) == (setting, str(value))


@pytest.mark.parametrize(("setting", "value"), BAD_SETTINGS)
def test_each_setter_rejects_what_the_constructor_rejects_and_keeps_the_old_value(
    setting: str, value: object
) -> None:
    breaker = CircuitBreaker()
    before = getattr(breaker, setting)
    with pytest.raises(CircuitBreakerConfigError):
        setattr(breaker, setting, value)
    assert getattr(breaker, setting) == before


@pytest.mark.parametrize(
    ("setting", "value"),
    [("failure_threshold", 3), ("recovery_timeout", 0), ("success_threshold", 2), ("half_open_max_calls", 4)],
)
def test_each_setter_accepts_what_the_constructor_accepts(setting: str, value: int) -> None:
    breaker = CircuitBreaker()
    setattr(breaker, setting, value)
    assert getattr(breaker, setting) == getattr(CircuitBreaker(**{setting: value}), setting) == value


@pytest.mark.parametrize(("attribute", "value"), [("failure_count", -1), ("failure_count", 1.5)])
def test_counts_are_validated_on_assignment(attribute: str, value: object) -> None:
    breaker = CircuitBreaker()
    with pytest.raises(CircuitBreakerConfigError):
        setattr(breaker, attribute, value)
    assert breaker.failure_count == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "yesterday"])
def test_an_impossible_last_failure_time_is_refused(value: object) -> None:
    breaker = CircuitBreaker()
    with pytest.raises(CircuitBreakerConfigError):
        breaker.last_failure_time = value  # type: ignore[assignment]
    assert breaker.last_failure_time is None


def test_a_last_failure_time_ahead_of_now_is_taken_as_now() -> None:
    clock = Clock()
    breaker = make_breaker(clock, recovery_timeout=60)
    breaker.state = CircuitState.OPEN
    breaker.last_failure_time = WALL_START + 86_400
    assert breaker.last_failure_time == WALL_START
    assert breaker.seconds_until_trial() == 60


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 1.5},
        {"failure_rate_threshold": 0.5, "minimum_calls": 0},
        {"failure_rate_threshold": 0.5, "window_size": 0},
        {"failure_rate_threshold": 0.5, "minimum_calls": 20, "window_size": 10},
        {"failure_rate_threshold": 0.5, "window_seconds": 0},
        {"slow_call_seconds": 0},
        {"slow_call_seconds": float("nan")},
    ],
)
def test_the_failure_rate_settings_are_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(CircuitBreakerConfigError):
        CircuitBreaker(**settings)


# -- CircuitState ---------------------------------------------------------------------------------------


def test_state_is_a_plain_str_enum_equal_to_its_upper_case_value() -> None:
    assert CircuitState.OPEN == "OPEN"
    assert hash(CircuitState.OPEN) == hash("OPEN")
    assert {CircuitState.OPEN, "OPEN"} == {"OPEN"}
    assert {"HALF_OPEN": 1}[CircuitState.HALF_OPEN] == 1
    assert CircuitState.OPEN != "open"
    assert CircuitState("CLOSED") is CircuitState.CLOSED
    assert f"{CircuitState.HALF_OPEN}" == "HALF_OPEN" == str(CircuitState.HALF_OPEN)
    assert json.dumps({"state": CircuitState.OPEN}) == '{"state": "OPEN"}'
    with pytest.raises(ValueError):
        CircuitState("closed")


@pytest.mark.parametrize(
    ("text", "state"),
    [("open", "OPEN"), (" Closed ", "CLOSED"), ("half_open", "HALF_OPEN"), ("half-open", "HALF_OPEN")],
)
def test_parse_reads_a_state_typed_in_any_case(text: str, state: str) -> None:
    assert CircuitState.parse(text) is CircuitState(state)


def test_parse_names_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="'ajar' is not a circuit state"):
        CircuitState.parse("ajar")


# -- metrics and the refusal error ----------------------------------------------------------------------


def test_metrics_count_successes_failures_and_rejections() -> None:
    breaker = make_breaker(Clock(), failure_threshold=2)
    assert breaker.metrics.get_success_rate() == 0.0
    for _ in range(3):
        breaker.call(succeed)
    fail_times(breaker, 2)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    metrics = breaker.metrics
    assert (metrics.success_count, metrics.failure_count, metrics.rejection_count) == (3, 2, 1)
    assert metrics.total_requests == 5
    assert metrics.get_success_rate() == pytest.approx(0.6)


def test_metrics_record_methods_work_standalone_as_in_the_seed() -> None:
    metrics = CircuitBreakerMetrics(wall_clock=lambda: 42.0)
    assert metrics.state_transitions == 0
    metrics.record_success()
    metrics.record_failure()
    metrics.record_rejection()
    metrics.record_state_transition(CircuitState.CLOSED, "open")
    assert (metrics.total_requests, metrics.rejection_count, metrics.get_success_rate()) == (2, 1, 0.5)
    assert metrics.state_transitions == 1
    assert metrics.recent_transitions == [{"from_state": "CLOSED", "to_state": "OPEN", "timestamp": 42.0}]


def test_recent_transitions_keep_the_last_hundred_and_the_count_keeps_counting() -> None:
    metrics = CircuitBreakerMetrics(wall_clock=lambda: 1.0)
    for n in range(RECENT_TRANSITIONS + 20):
        metrics.record_state_transition("CLOSED" if n % 2 else "OPEN", "OPEN" if n % 2 else "CLOSED")
    assert metrics.state_transitions == RECENT_TRANSITIONS + 20
    assert len(metrics.recent_transitions) == RECENT_TRANSITIONS == 100
    assert metrics.recent_transitions[-1]["to_state"] == "OPEN"


def test_each_refusal_raises_a_fresh_error_saying_when_the_next_trial_is() -> None:
    clock = Clock()
    breaker = opened(clock, name="db")
    clock.advance(20)
    errors: list[CircuitBreakerError] = []
    for _ in range(2):
        with pytest.raises(CircuitBreakerError) as refused:
            breaker.call(succeed)
        errors.append(refused.value)
    assert errors[0] is not errors[1]
    assert (errors[0].breaker_name, errors[0].retry_after, errors[0].retry_at) == ("db", 40, WALL_START + 60)
    assert errors[0].reason == "ExchangeDown: exchange down"
    assert str(errors[0]) == (
        "circuit breaker 'db' is open: next trial in 40.0 s (at 2023-11-14T22:14:20Z); "
        "it opened on ExchangeDown: exchange down"
    )


def test_refusal_error_can_be_built_by_keyword() -> None:
    error = CircuitBreakerError(breaker_name="api", retry_after=5.0, retry_at=WALL_START)
    assert (error.breaker_name, error.retry_after, error.retry_at, error.reason) == (
        "api",
        5.0,
        WALL_START,
        None,
    )
    assert str(error) == "circuit breaker 'api' is open: next trial in 5.0 s (at 2023-11-14T22:13:20Z)"


def test_a_half_open_refusal_says_retry_at_once() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.advance(60)
    with breaker, pytest.raises(CircuitBreakerError) as refused:
        breaker.call(succeed)
    assert (refused.value.retry_after, refused.value.retry_at) == (0, WALL_START + 60)


# -- disabled, open_until --------------------------------------------------------------------------------


def test_a_disabled_breaker_never_opens_or_refuses_but_keeps_metrics() -> None:
    recorder = Recorder()
    breaker = make_breaker(Clock(), failure_threshold=1, enabled=False, listeners=[recorder])
    fail_times(breaker, 10)
    assert breaker.call(succeed) == "fetched"
    assert breaker.state is CircuitState.CLOSED
    assert (breaker.metrics.failure_count, breaker.metrics.success_count) == (10, 1)
    assert len(recorder.events) == 11


def test_disabling_an_open_breaker_lets_calls_through_and_enabling_it_refuses_again() -> None:
    breaker = opened(Clock())
    breaker.enabled = False
    assert breaker.call(succeed) == "fetched"
    assert breaker.seconds_until_trial() == 0
    breaker.enabled = True
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)


def test_open_until_refuses_until_the_server_given_time_and_is_stored() -> None:
    clock = Clock()
    store = MemoryStateStore()
    breaker = make_breaker(clock, name="api", state_store=store)
    breaker.open_until(WALL_START + 600, reason="418 IP banned")
    with pytest.raises(CircuitBreakerError) as refused:
        breaker.call(succeed)
    assert (refused.value.retry_after, refused.value.retry_at) == (600, WALL_START + 600)
    assert refused.value.reason == "418 IP banned"
    other_run = make_breaker(clock, name="api", state_store=store)
    assert other_run.seconds_until_trial() == 600
    clock.advance(600)
    assert breaker.call(succeed) == "fetched"
    assert other_run.state is CircuitState.CLOSED


def test_open_until_never_shortens_an_opening() -> None:
    clock = Clock()
    breaker = opened(clock)
    breaker.open_until(WALL_START + 10)
    assert breaker.seconds_until_trial() == 60
    breaker.open_until(WALL_START + 90)
    assert breaker.seconds_until_trial() == 90
    breaker.open_until(WALL_START - 5)
    assert breaker.seconds_until_trial() == 90


def test_open_until_a_past_time_changes_nothing() -> None:
    breaker = make_breaker(Clock())
    breaker.open_until(WALL_START - 1)
    assert breaker.state is CircuitState.CLOSED


# -- failure-rate mode ---------------------------------------------------------------------------------


def test_rate_mode_opens_when_enough_of_the_last_calls_failed() -> None:
    breaker = make_breaker(Clock(), failure_rate_threshold=0.5, minimum_calls=4, window_size=6)
    fail_times(breaker, 3)
    assert breaker.state is CircuitState.CLOSED  # 3 of 3 failed, but fewer than minimum_calls were made
    breaker.call(succeed)
    assert breaker.state is CircuitState.CLOSED
    breaker.call(succeed)
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.OPEN  # 4 of 6


def test_rate_mode_only_counts_the_last_window_size_calls() -> None:
    breaker = make_breaker(Clock(), failure_rate_threshold=0.5, minimum_calls=4, window_size=4)
    fail_times(breaker, 1)
    for _ in range(4):
        breaker.call(succeed)  # the failure leaves the window
    fail_times(breaker, 1)
    breaker.call(succeed)
    assert breaker.state is CircuitState.CLOSED  # 1 of 4
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.OPEN  # 2 of 4


def test_rate_mode_with_a_time_window_forgets_calls_older_than_it() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_rate_threshold=0.5, minimum_calls=4, window_seconds=60)
    fail_times(breaker, 3)
    clock.advance(61)
    for _ in range(3):
        breaker.call(succeed)
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.CLOSED  # the three early failures are out of the window
    fail_times(breaker, 2)
    assert breaker.state is CircuitState.OPEN  # 3 of 6 within the minute


def test_rate_mode_recovers_like_the_default_mode_and_starts_a_fresh_window() -> None:
    clock = Clock()
    breaker = make_breaker(clock, failure_rate_threshold=0.5, minimum_calls=2, window_size=10)
    fail_times(breaker, 2)
    assert breaker.state is CircuitState.OPEN
    clock.advance(60)
    breaker.call(succeed)
    assert breaker.state is CircuitState.CLOSED
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.CLOSED  # one call in the new window: below minimum_calls


# -- OpenTelemetry ---------------------------------------------------------------------------------------


class RecordingSpan:
    def __init__(self) -> None:
        self.attributes: dict[str, object] = {}

    def is_recording(self) -> bool:
        return True

    def set_attribute(self, key: str, value: object) -> None:
        self.attributes[key] = value


def test_the_opentelemetry_listener_puts_each_outcome_on_the_current_span() -> None:
    span = RecordingSpan()
    breaker = make_breaker(
        Clock(), name="api", failure_threshold=1, listeners=[OpenTelemetryListener(lambda: span)]
    )
    breaker.call(succeed)
    assert span.attributes == {
        "circuit_breaker.name": "api",
        "circuit_breaker.state": "CLOSED",
        "circuit_breaker.failure_count": 0,
        "circuit_breaker.success": True,
    }
    fail_times(breaker, 1)
    assert span.attributes == {
        "circuit_breaker.name": "api",
        "circuit_breaker.state": "OPEN",
        "circuit_breaker.failure_count": 1,
        "circuit_breaker.success": False,
        "circuit_breaker.error": "ExchangeDown: exchange down",
    }


def test_the_breaker_works_with_a_file_store_it_shares_with_nobody(tmp_path: Any) -> None:
    breaker = make_breaker(Clock(), failure_threshold=1, state_store=JsonFileStateStore(tmp_path / "b.json"))
    fail_times(breaker, 1)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
