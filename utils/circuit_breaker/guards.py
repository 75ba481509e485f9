"""The forms a guarded call takes, all reduced to the breaker's two steps: admit, then settle exactly once.

A plain call settles when it returns or raises. A coroutine, generator or async generator settles when it
finishes, whichever way: returned, raised, closed, cancelled, or dropped unfinished (then its trial permit
comes back when it is garbage-collected). A ``with`` block settles the entry it opened, even when it is left
from another thread or task.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar
from types import AsyncGeneratorType, CoroutineType, GeneratorType
from typing import Any, cast


class Entry:
    """One admitted call: the episode it was admitted in, its trial permit (if any) and when it started."""

    __slots__ = ("episode", "permit", "started")

    def __init__(self, episode: int, permit: int | None, started: float | None) -> None:
        self.episode = episode
        self.permit = permit
        self.started = started


Settle = Callable[[Entry, "BaseException | None"], None]
Call = Callable[..., Any]
"""``breaker.call``: ``call(func, *args, **kwargs)``."""

ITERATED = frozenset({CoroutineType, GeneratorType, AsyncGeneratorType})
"""Results whose outcome is only known once they have been run to the end."""


def guard_iteration(result: Any, entry: Entry, settle: Settle, lapse: Callable[[Entry], None]) -> Any:
    """Wrap a coroutine, generator or async generator so that it settles ``entry`` when it finishes."""
    if result.__class__ is CoroutineType:
        return GuardedCoroutine(result, entry, settle, lapse)
    if result.__class__ is GeneratorType:
        return GuardedGenerator(result, entry, settle, lapse)
    return GuardedAsyncGenerator(result, entry, settle, lapse)


class _Admitted:
    """Holds an admitted entry until the wrapped run ends; a run dropped unfinished hands it to ``lapse``."""

    __slots__ = ("_entry", "_lapse", "_settle")

    def __init__(self, entry: Entry, settle: Settle, lapse: Callable[[Entry], None]) -> None:
        self._entry: Entry | None = entry
        self._settle = settle
        self._lapse = lapse

    def _finish(self, exc: BaseException | None) -> None:
        entry = self._entry
        if entry is not None:
            self._entry = None
            self._settle(entry, exc)

    def __del__(self) -> None:
        if self._entry is not None:
            self._lapse(self._entry)


class _GuardedSteps(_Admitted):
    """send / throw / close of a coroutine or generator, passed through and watched for its end."""

    __slots__ = ("_inner",)

    def __init__(
        self,
        inner: Coroutine[Any, Any, Any] | Generator[Any, Any, Any],
        entry: Entry,
        settle: Settle,
        lapse: Callable[[Entry], None],
    ) -> None:
        super().__init__(entry, settle, lapse)
        self._inner = inner

    def send(self, value: Any) -> Any:
        try:
            return self._inner.send(value)
        except StopIteration:
            self._finish(None)
            raise
        except BaseException as exc:
            self._finish(exc)
            raise

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        try:
            if val is None and tb is None:
                return self._inner.throw(typ)
            return self._inner.throw(typ, val, tb)
        except StopIteration:
            self._finish(None)
            raise
        except BaseException as exc:
            self._finish(exc)
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(GeneratorExit())

    def __next__(self) -> Any:
        return self.send(None)


class GuardedCoroutine(_GuardedSteps, Coroutine[Any, Any, Any]):
    """An admitted coroutine: awaitable, and schedulable as a task."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, Any]:
        return cast(Generator[Any, None, Any], self)

    def __iter__(self) -> GuardedCoroutine:
        return self


class GuardedGenerator(_GuardedSteps, Generator[Any, Any, Any]):
    """An admitted generator: guarded over its whole iteration."""

    __slots__ = ()


class GuardedAsyncGenerator(_Admitted, AsyncGenerator[Any, Any]):
    """An admitted async generator: guarded over its whole iteration."""

    __slots__ = ("_inner",)

    def __init__(
        self, inner: AsyncGenerator[Any, Any], entry: Entry, settle: Settle, lapse: Callable[[Entry], None]
    ) -> None:
        super().__init__(entry, settle, lapse)
        self._inner = inner

    def __anext__(self) -> Coroutine[Any, Any, Any]:
        return self._through(self._inner.__anext__())

    def asend(self, value: Any) -> Coroutine[Any, Any, Any]:
        return self._through(self._inner.asend(value))

    def athrow(self, typ: Any, val: Any = None, tb: Any = None, /) -> Coroutine[Any, Any, Any]:
        if val is None and tb is None:
            return self._through(self._inner.athrow(typ))
        return self._through(self._inner.athrow(typ, val, tb))

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(GeneratorExit())

    async def _through(self, step: Awaitable[Any]) -> Any:
        try:
            return await step
        except StopAsyncIteration:
            self._finish(None)
            raise
        except BaseException as exc:
            self._finish(exc)
            raise


class GuardedFunction(functools.partial[Any]):
    """``call`` with the guarded function bound: a partial, so calling it costs no Python frame.

    It binds like a function when it is a method, and pickles by name like the function it replaces.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return self if instance is None else types.MethodType(self, instance)

    def __reduce__(self) -> str:
        return self._name()

    def __repr__(self) -> str:
        return f"<guarded function {self._name()}>"

    def _name(self) -> str:
        """The guarded function's qualified name, which ``functools.update_wrapper`` copied here."""
        return cast(str, self.__dict__["__qualname__"])


def decorate(func: Callable[..., Any], call: Call) -> Callable[..., Any]:
    """A wrapper of the same kind as ``func`` (plain, coroutine, generator or async generator function).

    Admission happens when the wrapper starts running: a coroutine that is never awaited, or a generator
    never iterated, takes no trial permit.
    """
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def guarded_coroutine(*args: Any, **kwargs: Any) -> Any:
            return await call(func, *args, **kwargs)

        return guarded_coroutine

    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def guarded_generator(*args: Any, **kwargs: Any) -> Any:
            return (yield from call(func, *args, **kwargs))

        return guarded_generator

    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def guarded_async_generator(*args: Any, **kwargs: Any) -> Any:
            inner: AsyncGenerator[Any, Any] = call(func, *args, **kwargs)
            try:
                item = await inner.__anext__()
                while True:
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:
                        item = await inner.athrow(exc)
                    else:
                        item = await inner.asend(sent)
            except StopAsyncIteration:
                return
            finally:
                await inner.aclose()

        return guarded_async_generator

    return functools.update_wrapper(GuardedFunction(call, func), func)


class OpenBlocks:
    """The ``with`` blocks of one breaker that have been entered and not yet left.

    Each block's entry is kept by itself; the current context (thread or task) remembers which ones it
    opened, so nested and interleaved blocks each settle their own. A block left from another context than
    the one that entered it settles the oldest open entry.
    """

    def __init__(self, name: str) -> None:
        self._open: dict[int, Entry] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._mine: ContextVar[tuple[int, ...]] = ContextVar(f"circuit_breaker_blocks_{name}", default=())

    def enter(self, entry: Entry) -> None:
        """Keep the entry of a block just entered, as the current context's newest."""
        key = next(self._keys)
        with self._lock:
            self._open[key] = entry
        self._mine.set((*self._mine.get(), key))

    def leave(self) -> Entry:
        """The entry of the block being left: this context's newest, else the oldest of any."""
        mine = self._mine.get()
        with self._lock:
            while mine and mine[-1] not in self._open:
                mine = mine[:-1]
            if mine:
                key, mine = mine[-1], mine[:-1]
            elif self._open:
                key = next(iter(self._open))
            else:
                raise RuntimeError("a circuit breaker's with block was left more often than entered")
            entry = self._open.pop(key)
        self._mine.set(mine)
        return entry
