"""The CIRCUIT_BREAKER_* environment: from_env, its per-group overrides, and check_environ."""

from __future__ import annotations

import pytest

from tests.breaker_helpers import Clock, ExchangeDown, fail_times, succeed
from utils.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfigError,
    CircuitState,
    JsonFileStateStore,
    check_environ,
)
from utils.circuit_breaker.config import settings_from_env


def test_from_env_reads_the_global_variables_and_the_groups_win() -> None:
    environ = {
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "7",
        "CIRCUIT_BREAKER_RECOVERY_TIMEOUT": "90",
        "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "3",
        "CIRCUIT_BREAKER_API_SUCCESS_THRESHOLD": "2",
        "CIRCUIT_BREAKER_API_HALF_OPEN_MAX_CALLS": "4",
        "CIRCUIT_BREAKER_DB_ENABLED": "off",
        "CIRCUIT_BREAKER_DB_RECOVERY_TIMEOUT": "",
    }
    api = CircuitBreaker.from_env("api", environ=environ, expected_exception=ExchangeDown)
    db = CircuitBreaker.from_env("db", environ=environ, recovery_timeout=5)
    assert (api.name, api.failure_threshold, api.recovery_timeout) == ("api", 3, 90)
    assert (api.success_threshold, api.half_open_max_calls, api.enabled) == (2, 4, True)
    assert api.expected_exception is ExchangeDown
    assert (db.failure_threshold, db.recovery_timeout, db.enabled) == (7, 90, False)


def test_from_env_names_a_breaker_apart_from_its_group() -> None:
    environ = {
        "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "3",
        "CIRCUIT_BREAKER_API_API_BINANCE_COM_FAILURE_THRESHOLD": "99",
    }
    breaker = CircuitBreaker.from_env("api:api.binance.com", environ=environ, group="api")
    assert (breaker.name, breaker.failure_threshold) == ("api:api.binance.com", 3)


def test_breakers_of_one_group_keep_their_own_state_under_their_own_names(tmp_path: object) -> None:
    path = f"{tmp_path}/api-breaker.json"
    clock = Clock()

    def api_breaker(host: str) -> CircuitBreaker:
        return CircuitBreaker.from_env(
            f"api:{host}",
            environ={"CIRCUIT_BREAKER_API_FAILURE_THRESHOLD": "1"},
            group="api",
            expected_exception=ExchangeDown,
            state_store=JsonFileStateStore(path),
            clock=clock.monotonic,
            wall_clock=clock.wall,
        )

    testnet, production = api_breaker("testnet.binance.vision"), api_breaker("api.binance.com")
    fail_times(testnet, 1)
    assert testnet.state is CircuitState.OPEN
    assert production.call(succeed) == "fetched"
    assert sorted(JsonFileStateStore(path).load_all()) == ["api:testnet.binance.vision"]


def test_from_env_uses_the_defaults_when_nothing_is_set() -> None:
    breaker = CircuitBreaker.from_env("api", environ={}, failure_threshold=9)
    assert (breaker.failure_threshold, breaker.recovery_timeout, breaker.enabled) == (9, 60, True)


def test_from_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD", "11")
    assert CircuitBreaker.from_env("db").failure_threshold == 11


@pytest.mark.parametrize("word", ["true", "1", "YES", " on "])
def test_from_env_accepts_the_usual_boolean_words(word: str) -> None:
    assert CircuitBreaker.from_env("api", environ={"CIRCUIT_BREAKER_ENABLED": word}).enabled


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("1.5m", 90.0), ("2h", 7200.0), ("500ms", 0.5), ("0", 0)],
)
def test_a_timeout_is_seconds_or_a_duration_with_a_unit(raw: str, seconds: float) -> None:
    breaker = CircuitBreaker.from_env("api", environ={"CIRCUIT_BREAKER_RECOVERY_TIMEOUT": raw})
    assert breaker.recovery_timeout == seconds


@pytest.mark.parametrize(
    ("environ", "arguments"),
    [
        ({"CIRCUIT_BREAKER_FAILURE_RATE": "0.25"}, {"failure_rate_threshold": 0.25}),
        ({"CIRCUIT_BREAKER_FAILURE_RATE": "50%"}, {"failure_rate_threshold": 0.5}),
        ({"CIRCUIT_BREAKER_MINIMUM_CALLS": "20"}, {"minimum_calls": 20}),
        ({"CIRCUIT_BREAKER_WINDOW": "100"}, {"window_size": 100, "window_seconds": None}),
        ({"CIRCUIT_BREAKER_WINDOW": "60s"}, {"window_seconds": 60.0}),
        ({"CIRCUIT_BREAKER_WINDOW": "100", "CIRCUIT_BREAKER_API_WINDOW": "5m"}, {"window_seconds": 300.0}),
        ({"CIRCUIT_BREAKER_SLOW_CALL_SECONDS": "2.5"}, {"slow_call_seconds": 2.5}),
    ],
)
def test_the_failure_rate_variables_give_these_arguments(
    environ: dict[str, str], arguments: dict[str, object]
) -> None:
    assert settings_from_env(environ, "api")[0] == arguments


def test_a_failure_rate_from_the_environment_puts_the_breaker_in_rate_mode() -> None:
    environ = {"CIRCUIT_BREAKER_API_FAILURE_RATE": "50%", "CIRCUIT_BREAKER_API_MINIMUM_CALLS": "4"}
    breaker = CircuitBreaker.from_env("api", environ=environ, expected_exception=ExchangeDown)
    for _ in range(2):
        breaker.call(succeed)
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.CLOSED
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.OPEN  # 2 of 4, though never more than 2 in a row


def test_a_time_window_from_the_environment_forgets_older_calls() -> None:
    environ = {
        "CIRCUIT_BREAKER_FAILURE_RATE": "0.5",
        "CIRCUIT_BREAKER_MINIMUM_CALLS": "2",
        "CIRCUIT_BREAKER_WINDOW": "60s",
    }
    clock = Clock()
    breaker = CircuitBreaker.from_env(
        "api", environ=environ, expected_exception=ExchangeDown, clock=clock.monotonic, wall_clock=clock.wall
    )
    fail_times(breaker, 1)
    clock.advance(61)
    breaker.call(succeed)
    breaker.call(succeed)
    fail_times(breaker, 1)
    assert breaker.state is CircuitState.CLOSED  # 1 of the 3 calls of the last minute


BAD_VALUES = [
    ("CIRCUIT_BREAKER_ENABLED", "maybe"),
    ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "five"),
    ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2.5"),
    ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "-1"),
    ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0"),
    ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "soon"),
    ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "-30"),
    ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "nan"),
    ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "inf"),
    ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "0"),
    ("CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS", "x"),
    ("CIRCUIT_BREAKER_FAILURE_RATE", "0"),
    ("CIRCUIT_BREAKER_FAILURE_RATE", "150%"),
    ("CIRCUIT_BREAKER_FAILURE_RATE", "half"),
    ("CIRCUIT_BREAKER_MINIMUM_CALLS", "0"),
    ("CIRCUIT_BREAKER_WINDOW", "0"),
    ("CIRCUIT_BREAKER_WINDOW", "2.5"),
    ("CIRCUIT_BREAKER_WINDOW", "0s"),
    ("CIRCUIT_BREAKER_WINDOW", "a minute"),
    ("CIRCUIT_BREAKER_SLOW_CALL_SECONDS", "0"),
    ("CIRCUIT_BREAKER_API_ENABLED", "2"),
    ("CIRCUIT_BREAKER_API_FAILURE_THRESHOLD", "0"),
    ("CIRCUIT_BREAKER_API_RECOVERY_TIMEOUT", "-5"),
    ("CIRCUIT_BREAKER_API_SUCCESS_THRESHOLD", "-2"),
    ("CIRCUIT_BREAKER_API_HALF_OPEN_MAX_CALLS", "0"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_from_env_names_the_variable_and_the_value_it_cannot_use(variable: str, value: str) -> None:
    with pytest.raises(CircuitBreakerConfigError) as bad:
        CircuitBreaker.from_env("api", environ={variable: value})
    assert isinstance(bad.value, ValueError)
    assert (bad.value.variable, bad.value.value) == (variable, value)
    assert variable in str(bad.value) and repr(value) in str(bad.value)


def test_from_env_error_message_reads_as_a_sentence() -> None:
    with pytest.raises(CircuitBreakerConfigError) as bad:
        CircuitBreaker.from_env("db", environ={"CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD": "abc"})
    assert str(bad.value) == "CIRCUIT_BREAKER_DB_FAILURE_THRESHOLD='abc' is not a whole number"


def test_settings_that_cannot_go_together_name_the_variable_that_set_one() -> None:
    environ = {
        "CIRCUIT_BREAKER_FAILURE_RATE": "0.5",
        "CIRCUIT_BREAKER_WINDOW": "10",
        "CIRCUIT_BREAKER_API_MINIMUM_CALLS": "20",
    }
    with pytest.raises(CircuitBreakerConfigError) as bad:
        CircuitBreaker.from_env("api", environ=environ)
    assert str(bad.value) == "CIRCUIT_BREAKER_API_MINIMUM_CALLS='20' is above window_size (10)"


def test_a_bad_default_is_named_as_the_parameter() -> None:
    with pytest.raises(CircuitBreakerConfigError) as bad:
        CircuitBreaker.from_env("api", environ={}, failure_threshold=0)
    assert bad.value.variable == "failure_threshold"


# -- check_environ -----------------------------------------------------------------------------------


def test_check_environ_accepts_every_known_setting_and_ignores_other_variables() -> None:
    check_environ(
        {
            "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "7",
            "CIRCUIT_BREAKER_API_WINDOW": "60s",
            "CIRCUIT_BREAKER_DB_ENABLED": "false",
            "CIRCUIT_BREAKER_ARCHIVE_RECOVERY_TIMEOUT": "5m",
            "CIRCUIT_BREAKER_API_FAILURE_RATE": "",
            "PATH": "/usr/bin",
        }
    )


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("CIRCUIT_BREAKER_API_FAILURE_TRESHOLD", "CIRCUIT_BREAKER_API_FAILURE_THRESHOLD"),
        ("CIRCUIT_BREAKER_ARCHIV_WINDOW", "CIRCUIT_BREAKER_ARCHIVE_WINDOW"),
        ("CIRCUIT_BREAKER_RECOVERY_TIME", "CIRCUIT_BREAKER_RECOVERY_TIMEOUT"),
        ("CIRCUIT_BREAKER_db_enabled", "CIRCUIT_BREAKER_DB_ENABLED"),
    ],
)
def test_check_environ_refuses_an_unknown_setting_and_suggests_the_closest(
    variable: str, suggestion: str
) -> None:
    with pytest.raises(CircuitBreakerConfigError) as bad:
        check_environ({variable: "3"})
    assert (bad.value.variable, bad.value.value) == (variable, "3")
    assert str(bad.value) == f"{variable}='3' is not a known setting; did you mean {suggestion}?"


def test_check_environ_lists_the_settings_when_nothing_is_close() -> None:
    with pytest.raises(CircuitBreakerConfigError, match="is not a known setting; known settings: ENABLED, "):
        check_environ({"CIRCUIT_BREAKER_XYZZY": "1"})


def test_check_environ_knows_only_the_groups_it_is_given() -> None:
    check_environ({"CIRCUIT_BREAKER_CACHE_ENABLED": "on"}, groups=["cache"])
    with pytest.raises(CircuitBreakerConfigError):
        check_environ({"CIRCUIT_BREAKER_CACHE_ENABLED": "on"})


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_check_environ_refuses_a_value_from_env_would_refuse(variable: str, value: str) -> None:
    with pytest.raises(CircuitBreakerConfigError) as bad:
        check_environ({variable: value})
    assert (bad.value.variable, bad.value.value) == (variable, value)


def test_check_environ_refuses_a_group_whose_settings_cannot_go_together() -> None:
    environ = {"CIRCUIT_BREAKER_DB_FAILURE_RATE": "0.5", "CIRCUIT_BREAKER_DB_MINIMUM_CALLS": "200"}
    with pytest.raises(CircuitBreakerConfigError) as bad:
        check_environ(environ)
    assert bad.value.variable == "CIRCUIT_BREAKER_DB_MINIMUM_CALLS"


def test_check_environ_refuses_a_bad_global_value_even_where_every_group_overrides_it() -> None:
    environ = {"CIRCUIT_BREAKER_WINDOW": "soon"}
    environ.update({f"CIRCUIT_BREAKER_{group}_WINDOW": "10" for group in ("API", "DB", "ARCHIVE")})
    with pytest.raises(CircuitBreakerConfigError) as bad:
        check_environ(environ)
    assert bad.value.variable == "CIRCUIT_BREAKER_WINDOW"
