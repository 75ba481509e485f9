"""How a run stops: one event that every wait and every request checks, so a decided run sends nothing more.

The command's outcome (success, an error, a signal) sets it; worker threads then raise ``Cancelled``
at their next request or wait instead of sending, and waits wake at once instead of sleeping out a
backoff or a weight-budget minute.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from types import FrameType
from typing import Any

from extractor.errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted


class Cancelled(BaseException):
    """The run has decided its outcome; this thread must stop without sending anything more.

    A BaseException, so no ``except Exception`` (and no breaker) mistakes it for a failure.
    """


class RunStop:
    """Set once when the run's outcome is decided; ``sleep`` and ``check`` honour it from any thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise ``Cancelled`` once the run has stopped."""
        if self._event.is_set():
            raise Cancelled(self.reason)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or raise ``Cancelled`` as soon as the run stops."""
        if seconds > 0 and self._event.wait(seconds):
            raise Cancelled(self.reason)
        self.check()


SIGNAL_POLL_SECONDS = 0.1


def wait_done(future: Future[Any]) -> None:
    """Wait in the main thread until ``future`` is done, in slices of :data:`SIGNAL_POLL_SECONDS`.

    CPython runs a signal's handler between bytecodes; a signal caught just before a lock wait begins
    does not interrupt that wait, so a wait without a timeout could hold SIGINT or SIGTERM until the
    future is done (a 429's pause: minutes). Slices bound that to one slice.
    """
    while not future.done():
        wait((future,), timeout=SIGNAL_POLL_SECONDS)


_SIGNALS = {signal.SIGINT: ("SIGINT", EXIT_SIGINT), signal.SIGTERM: ("SIGTERM", EXIT_SIGTERM)}


def stop_on_signals(stop: RunStop) -> Callable[[], None]:
    """SIGINT and SIGTERM stop the run: ``stop`` is set (workers send nothing more) and ``Interrupted``
    is raised in the main thread, so the write in progress commits or rolls back as it unwinds. A
    second signal is ignored: the first is already being honoured. Returns what restores the handlers.
    """

    def handle(number: int, frame: FrameType | None) -> None:
        if stop.is_set():
            return
        name, code = _SIGNALS[signal.Signals(number)]
        stop.set(name)
        raise Interrupted(name, code)

    previous = {number: signal.signal(number, handle) for number in _SIGNALS}

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore
