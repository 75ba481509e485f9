"""Log lines: every line on stderr is a formatted, masked record, the libraries' warnings included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from extractor import logs
from extractor.secrets import Redactor


@pytest.fixture
def stderr() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.redirect(stream)
    try:
        yield stream
    finally:
        logs.redirect(None)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_library_warning_is_a_formatted_masked_record_not_a_bare_line(
    stderr: io.StringIO, log_format: str
) -> None:
    logs.configure(log_format, "WARNING", Redactor(("hunter2",)))
    logging.getLogger("urllib3.connectionpool").warning("retrying https://bot:%s@db/x", "hunter2")

    (line,) = stderr.getvalue().splitlines()
    assert "hunter2" not in line and "***" in line
    if log_format == "json":
        assert json.loads(line)["logger"] == "urllib3.connectionpool"
    else:
        assert " WARNING urllib3.connectionpool: retrying https://bot:***@db/x" in line


def test_configuring_twice_writes_each_library_record_once(stderr: io.StringIO) -> None:
    for _ in range(2):
        logs.configure("text", "INFO", Redactor(()))
    logging.getLogger("some.library").warning("once")
    logging.getLogger("some.library").info("below the root's WARNING: not shown")
    assert stderr.getvalue().count("once") == 1
    assert "not shown" not in stderr.getvalue()


def test_psycopg_cleanup_warnings_after_a_lost_connection_are_not_repeated(stderr: io.StringIO) -> None:
    logs.configure("text", "DEBUG", Redactor(()))
    logging.getLogger("psycopg").warning("error ignored terminating <psycopg.Copy [BAD]>: connection lost")
    assert stderr.getvalue() == ""
