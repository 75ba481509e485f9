"""The exception tree: drawn completely in its docstring, one exit code per class, 75 for retryables."""

from __future__ import annotations

import inspect
import re

import pytest

from extractor import errors


def _classes() -> dict[str, type[errors.ExtractorError]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, errors.ExtractorError)
    }


def test_the_docstring_draws_every_class_under_its_real_parent() -> None:
    doc = errors.__doc__ or ""
    drawn = re.findall(r"^(\s*(?:[│ ]*[├└]── )?)(\w+)\s+(\d+)", doc, flags=re.MULTILINE)
    assert {name for _, name, _ in drawn} == set(_classes())
    stack: list[tuple[int, str]] = []
    for indent, name, code in drawn:
        depth = len(indent)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        cls = _classes()[name]
        if stack:
            assert cls.__bases__[0].__name__ == stack[-1][1], f"{name} is drawn under {stack[-1][1]}"
        assert cls.exit_code == int(code), f"{name} is drawn with exit {code}"
        stack.append((depth, name))


@pytest.mark.parametrize("name", sorted(_classes()))
def test_every_class_maps_to_a_documented_exit_code(name: str) -> None:
    cls = _classes()[name]
    assert cls.exit_code in (errors.EXIT_FAILURE, errors.EXIT_BAD_INPUT, errors.EXIT_TEMPFAIL)
    assert (cls.exit_code == errors.EXIT_TEMPFAIL) == issubclass(cls, errors.TemporaryError)


def test_messages_that_tell_when_to_retry_say_when() -> None:
    banned = errors.IPBanned(1_795_000_000_000)
    assert "until 2026-11-18T" in str(banned) and "retry after" in str(banned)
    opened = errors.BreakerOpen("api", 1_795_000_000.0, "exchange")
    assert "next trial at 2026-11-18T" in str(opened) and "breakers reset" in str(opened)
    rejected = errors.RequestRejected(-1121, "Invalid symbol.")
    assert (rejected.code, rejected.exit_code) == (-1121, 2)
