"""The exception tree: drawn completely in its docstring, one documented exit code per class, messages
that say when to try again, and signals that end a run with their own code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import signal
import threading

import pytest

import extractor
from extractor import errors
from extractor.lifecycle import Cancelled, RunStop, stop_on_signals

DOCUMENTED_EXIT_CODES = {
    errors.EXIT_OK: 0,
    errors.EXIT_FAILURE: 1,
    errors.EXIT_BAD_INPUT: 2,
    errors.EXIT_TEMPFAIL: 75,
    errors.EXIT_SIGINT: 130,
    errors.EXIT_SIGTERM: 143,
}
"""Design §6: the codes a run may end with (the README's table is tied to these constants)."""


def _drawn_classes() -> dict[str, type[errors.ExtractorError]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, errors.ExtractorError)
    }


def _every_subclass() -> list[type[errors.ExtractorError]]:
    """Every ExtractorError subclass in the extractor package, wherever it is defined."""
    for module in pkgutil.walk_packages(extractor.__path__, "extractor."):
        if module.name != "extractor.__main__":
            importlib.import_module(module.name)
    found: list[type[errors.ExtractorError]] = []
    pending: list[type[errors.ExtractorError]] = [errors.ExtractorError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def test_the_exit_codes_are_those_of_design_section_6() -> None:
    assert list(DOCUMENTED_EXIT_CODES) == list(DOCUMENTED_EXIT_CODES.values())


def test_the_docstring_draws_every_class_under_its_real_parent() -> None:
    doc = errors.__doc__ or ""
    drawn = re.findall(r"^(\s*(?:[│ ]*[├└]── )?)(\w+)\s+(\d+)", doc, flags=re.MULTILINE)
    classes = _drawn_classes()
    assert {name for _, name, _ in drawn} == set(classes)
    assert len(drawn) == len(classes), "a class is drawn twice"
    stack: list[tuple[int, str]] = []
    for indent, name, code in drawn:
        depth = len(indent)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        cls = classes[name]
        if stack:
            assert cls.__bases__[0].__name__ == stack[-1][1], f"{name} is drawn under {stack[-1][1]}"
        else:
            assert cls is errors.ExtractorError
        assert cls.exit_code == int(code), f"{name} is drawn with exit {code}"
        stack.append((depth, name))


def test_the_docstring_gives_sigterm_its_own_code() -> None:
    assert re.search(r"^\s*└── Interrupted\s+130\s+SIGINT or SIGTERM \(143\)", errors.__doc__ or "", re.M)


@pytest.mark.parametrize("cls", _every_subclass(), ids=lambda cls: cls.__qualname__)
def test_every_error_class_maps_to_a_documented_exit_code(cls: type[errors.ExtractorError]) -> None:
    assert cls.exit_code in DOCUMENTED_EXIT_CODES
    assert cls.exit_code != errors.EXIT_OK, "an error never exits 0"
    assert (cls.exit_code == errors.EXIT_TEMPFAIL) == issubclass(cls, errors.TemporaryError)
    assert (cls.exit_code == errors.EXIT_BAD_INPUT) == issubclass(cls, errors.BadInputError)
    assert (cls.exit_code == errors.EXIT_SIGINT) == issubclass(cls, errors.Interrupted)


def test_every_subclass_in_the_package_is_drawn() -> None:
    """A class defined outside errors.py would escape the tree the docstring and the README show."""
    assert {cls.__name__ for cls in _every_subclass()} == set(_drawn_classes())


@pytest.mark.parametrize(("signal_name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interruption_exits_with_the_code_of_its_signal(signal_name: str, code: int) -> None:
    interrupted = errors.Interrupted(signal_name, code, stored=1234)
    assert interrupted.exit_code == code
    assert interrupted.exit_code in (errors.EXIT_SIGINT, errors.EXIT_SIGTERM)
    assert str(interrupted) == (
        f"interrupted by {signal_name}: 1,234 candles stored in this run; run the same command to resume"
    )
    assert errors.Interrupted.exit_code == errors.EXIT_SIGINT  # the class stays 130
    assert not isinstance(interrupted, errors.TemporaryError)


def test_an_interruption_that_stored_one_candle_says_candle() -> None:
    assert "1 candle stored" in str(errors.Interrupted("SIGINT", 130, stored=1))
    assert "0 candles stored" in str(errors.Interrupted("SIGINT", 130))


def test_messages_that_tell_when_to_retry_say_when() -> None:
    banned = errors.IPBanned(1_795_000_000_000)
    assert "until 2026-11-18T" in str(banned) and "retry after that time" in str(banned)
    assert banned.until_ms == 1_795_000_000_000
    opened = errors.BreakerOpen("api", 1_795_000_000.0, "the exchange", "HTTP 503")
    assert "next trial at 2026-11-18T" in str(opened) and "breakers reset" in str(opened)
    assert "(last error: HTTP 503)" in str(opened)
    assert opened.retry_at == 1_795_000_000.0
    limited = errors.RateLimited("429 kept coming; retry in a few minutes", retry_after=60.0)
    assert limited.retry_after == 60.0
    unavailable = errors.SeriesUnavailable({"spot BTCUSDT 1m": "HTTP 503"})
    assert "the next run retries them" in str(unavailable)
    assert unavailable.exit_code == errors.EXIT_TEMPFAIL


def test_rejections_keep_binance_code_and_message_and_exit_2() -> None:
    rejected = errors.RequestRejected(-1121, "Invalid symbol.")
    assert (rejected.code, rejected.msg, rejected.status, rejected.exit_code) == (
        -1121,
        "Invalid symbol.",
        400,
        2,
    )
    assert str(rejected) == "Binance rejected the request: Invalid symbol. (code -1121)"
    series = errors.SeriesRejected({"spot FOOUSDT 1m": "Invalid symbol", "usdm BARUSDT 1h": "not trading"})
    assert str(series).startswith("2 series rejected by the exchange, the others stored: spot FOOUSDT 1m")
    assert "fix or remove them in the configuration" in str(series)
    assert series.exit_code == errors.EXIT_BAD_INPUT


def test_times_in_messages_are_utc_to_the_second() -> None:
    assert errors.format_utc(0) == "1970-01-01T00:00:00Z"
    assert errors.format_utc(1_704_067_199.999) == "2023-12-31T23:59:59Z"


@pytest.mark.parametrize(
    ("count", "text"), [(0, "0 requests"), (1, "1 request"), (2, "2 requests"), (1000, "1,000 requests")]
)
def test_plurals(count: int, text: str) -> None:
    assert errors.plural(count, "request") == text
    assert errors.plural(1, "series", "series") == "1 series"


# -- signals become Interrupted with their own exit code ------------------------------------------


@pytest.mark.parametrize(
    ("signal_number", "name", "code"), [(signal.SIGINT, "SIGINT", 130), (signal.SIGTERM, "SIGTERM", 143)]
)
def test_a_signal_stops_the_run_and_raises_interrupted_with_its_code(
    signal_number: signal.Signals, name: str, code: int
) -> None:
    stop = RunStop()
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    restore = stop_on_signals(stop)
    try:
        with pytest.raises(errors.Interrupted) as caught:
            signal.raise_signal(signal_number)
        assert (caught.value.signal_name, caught.value.exit_code) == (name, code)
        assert stop.is_set() and stop.reason == name
        signal.raise_signal(signal.SIGINT)  # a second signal is ignored: the first is being honoured
        with pytest.raises(Cancelled):
            stop.check()
    finally:
        restore()
    assert {number: signal.getsignal(number) for number in before} == before


def test_a_stopped_run_wakes_every_sleeper_and_keeps_its_first_reason() -> None:
    stop = RunStop()
    stop.check()
    stop.sleep(0)
    woke: list[BaseException] = []

    def sleeper() -> None:
        try:
            stop.sleep(600)
        except Cancelled as exc:
            woke.append(exc)

    threads = [threading.Thread(target=sleeper) for _ in range(3)]
    for thread in threads:
        thread.start()
    stop.set("SIGTERM")
    stop.set("later")
    for thread in threads:
        thread.join(10)
    assert [str(exc) for exc in woke] == ["SIGTERM"] * 3
    assert stop.reason == "SIGTERM"
    assert not issubclass(Cancelled, Exception), "no except Exception (and no breaker) may swallow it"
