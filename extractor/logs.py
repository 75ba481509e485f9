"""Logging to stderr as text or JSON lines, UTC timestamps, every record passed through the one masker.

The command's final line (an error, an interruption) is written here too, in the same format, so a
``--log-format json`` run emits nothing but JSON lines on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

Redact = Callable[[str], str]


class TextStream(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class _SecretFilter(logging.Filter):
    def __init__(self, redact: Redact) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        return f"{line}\n{record.exc_text}" if record.exc_text else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        exit_code = getattr(record, "exit_code", None)
        if exit_code is not None:
            entry["exit_code"] = exit_code
        return json.dumps(entry, ensure_ascii=False)


class _Stderr:
    """stderr as it is when a record is written (a progress display may stand in for it)."""

    def write(self, text: str) -> int:
        return current_stream().write(text)

    def flush(self) -> None:
        current_stream().flush()


_stream: list[TextStream] = []


def current_stream() -> TextStream:
    return _stream[-1] if _stream else sys.stderr


def redirect(stream: TextStream | None) -> None:
    """Write log lines to ``stream`` (a progress display's writer), or back to stderr with None."""
    _stream.clear()
    if stream is not None:
        _stream.append(stream)


_root_handlers: list[logging.Handler] = []
QUIET_LIBRARIES = {"psycopg": logging.ERROR}
"""Libraries whose warnings only repeat what our own lines say (psycopg's "error ignored terminating"
of a COPY on a connection already reported lost)."""


def configure(log_format: str, level: str, redact: Redact) -> None:
    """Send the ``extractor`` and ``utils`` loggers to stderr in the chosen format, masked; the
    libraries' warnings go the same way (never as bare lines of Python's last-resort handler)."""
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    handler.addFilter(_SecretFilter(redact))
    for name in ("extractor", "utils"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    root = logging.getLogger()
    for previous in _root_handlers:  # a second configure in one process replaces, never doubles
        root.removeHandler(previous)
    _root_handlers[:] = [handler]
    root.addHandler(handler)  # the root's level stays Python's default, WARNING
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(quiet)


def final_line(message: str, *, log_format: str, exit_code: int, redact: Redact) -> str:
    """The one line a failed or interrupted run ends with, in the run's log format."""
    text = f"binance-extractor: {redact(message)}"
    if log_format != "json":
        return text
    entry = {
        "ts": _utc(time.time()),
        "level": "ERROR",
        "logger": "extractor",
        "message": text,
        "exit_code": exit_code,
    }
    return json.dumps(entry, ensure_ascii=False)
