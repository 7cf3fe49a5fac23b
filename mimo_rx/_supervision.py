"""Supervision: what a stream with ``on_error="resume"`` does when its code raises.

Three kinds of resuming, one report::

    map_stream / operator()   the item whose processing raised is skipped (item level)
    any other stream          its body is called again with the same ports (call level)
    rx_stream                 its observables are rebuilt; items not yet fed stay buffered

Each failure becomes a :class:`Failure`, counted in ``stream._failures`` (``stats()``),
announced as a ``"failure"`` event, and pushed to the stream's hidden ``errors`` output, or
logged on the ``"mimo_rx"`` logger when nothing listens there (:func:`report_failure`).

Knowing "the last item the stream took" must not slow streams that do not resume: only a
resuming stream's body gets recording port views (:class:`TrackedInput` below, and
``TrackedSyncInput`` beside the plain-``def`` views in ``_stream.py``); the ``Input`` hot path
is the same for everyone.

The retry helpers of ``map_stream`` (``retries``, ``backoff``, ``timeout``) live here too,
with the daemon threads that run a plain ``fn`` under a timeout (:func:`call_in_thread`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._errors import BufferOverflowError, ConfigError, EndOfStream, safe_repr
from ._handoff import thread_work
from ._lineage import decref, fail

if TYPE_CHECKING:
    from ._ports import Input, Output
    from ._stream import Stream

logger = logging.getLogger("mimo_rx")

ON_ERROR: tuple[str, ...] = ("fail", "resume")
ERRORS = "errors"  # the name of a resuming stream's hidden output


_HELD: Any = object()  # report_failure's default tag: what the stream holds


class Failure:
    """One failure a stream resumed from, as its ``errors`` output carries it.

    A stream with ``on_error="resume"`` sends one ``Failure`` on ``errors`` for each item
    (or call) that failed for good, and goes on.

    Attributes:
        stream: the step name of the stream that raised (for a fused ``operator()`` chain,
            the stage that raised).
        error: the exception; after retries, the one raised by the last attempt.
        item: for ``map_stream`` and ``operator()`` the item whose processing raised; for
            other streams the last item the stream took before the failure (``None`` when
            it took none, or when an Rx timer raised).
        port: the input ``item`` came from (``None`` with no item).
    """

    __slots__ = ("error", "item", "port", "stream")

    def __init__(
        self, stream: str, error: BaseException, item: Any = None, port: str | None = None
    ) -> None:
        self.stream = stream
        self.error = error
        self.item = item
        self.port = port

    def __repr__(self) -> str:
        return (
            f"Failure(stream={self.stream!r}, error={self.error!r}, item={self.item!r}, "
            f"port={self.port!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Failure):
            return NotImplemented
        return (self.stream, self.error, self.item, self.port) == (
            other.stream,
            other.error,
            other.item,
            other.port,
        )

    __hash__ = None  # type: ignore[assignment]  # compared by value, like a record


def check_on_error(value: object, where: str) -> str:
    """Return ``value`` if it is a valid ``on_error``, else raise ``ConfigError``."""
    if not isinstance(value, str) or value not in ON_ERROR:
        raise ConfigError(
            f'on_error of {where} must be "fail" or "resume", not {value!r}; "resume" skips '
            'what failed and goes on, "fail" (the default) fails the run'
        )
    return value


async def report_failure(stream: Stream, failure: Failure, tag: Any = _HELD) -> None:
    """Count ``failure``, announce it, and push it to the ``errors`` output (or log it).

    The push is back-pressured like any other: a full dead-letter sink pauses the stream.
    Downstream of an acknowledged source (contract section 12) the Failure derives from
    ``tag`` (default: what the stream holds); when no stream takes it (``errors`` not piped)
    its messages are nacked once done.
    """
    stream._failures += 1
    errors: Output[Any] = stream._outputs[ERRORS]
    events = errors._rt.events
    if events is not None:
        events({"event": "failure", "stream": failure.stream, "error": safe_repr(failure.error)})
    taken = bool(errors.targets or errors._lossy)
    if stream._holder is not None:
        holder: Any = stream._holder
        held = holder.tag() if tag is _HELD else tag
        fail(held, failure, taken)
        if tag is _HELD:
            decref(held)
    if errors.targets or errors._lossy or errors.observers:
        if tag is _HELD:
            await errors.push(failure)
        else:
            await errors._push_tag(failure, tag)  # type: ignore[attr-defined]
    else:
        logger.warning(
            "stream %r resumed after %r (item %r from input %r); pipe its 'errors' output "
            "to keep the failures",
            failure.stream,
            failure.error,
            failure.item,
            failure.port,
        )


# -- call-level resuming: the recording port views -----------------------------------------


class Tracker:
    """What a resuming stream took since its body was last called: how many and the last."""

    __slots__ = ("item", "port", "taken")

    def __init__(self) -> None:
        self.taken = 0
        self.item: Any = None
        self.port: str | None = None

    def note(self, item: Any, port: str) -> None:
        self.taken += 1
        self.item = item
        self.port = port


class TrackedInput:
    """An ``async def`` body's view of an input of a resuming stream: it records each take.

    Everything else (``len``, ``peek``, ``closed``, ``exhausted``, ...) is the port's own.
    """

    __slots__ = ("_port", "_tracker")

    def __init__(self, port: Input[Any], tracker: Tracker) -> None:
        self._port = port
        self._tracker = tracker

    @property
    def name(self) -> str:
        return self._port.name

    async def pop(self) -> Any:
        item = await self._port.pop()
        self._tracker.note(item, self._port.name)
        return item

    async def peek(self) -> Any:
        return await self._port.peek()

    def __aiter__(self) -> TrackedInput:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._port.pop()
        except EndOfStream:
            raise StopAsyncIteration from None
        self._tracker.note(item, self._port.name)
        return item

    async def pop_many(self, max_items: int | None = None) -> list[Any]:
        items: list[Any] = await self._port.pop_many(max_items)
        self._tracker.note(items[-1], self._port.name)
        self._tracker.taken += len(items) - 1
        return items

    def batches(self, max_items: int | None = None) -> _TrackedBatches:
        return _TrackedBatches(self._port.batches(max_items), self)

    def __len__(self) -> int:
        return len(self._port)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)

    def __repr__(self) -> str:
        return repr(self._port)


class _TrackedBatches:
    """``batches()`` of a :class:`TrackedInput`: the port's own iterator, recording takes."""

    __slots__ = ("_batches", "_view")

    def __init__(self, batches: AsyncIterator[list[Any]], view: TrackedInput) -> None:
        self._batches = batches
        self._view = view

    def __aiter__(self) -> _TrackedBatches:
        return self

    async def __anext__(self) -> list[Any]:
        batch = await self._batches.__anext__()
        tracker = self._view._tracker
        tracker.note(batch[-1], self._view._port.name)
        tracker.taken += len(batch) - 1
        return batch


async def run_resuming(
    stream: Stream,
    body: Callable[[Any, Any], Awaitable[Any]],
    ins: Any,
    outs: Any,
    tracker: Tracker,
) -> None:
    """Run an ``async def`` body; after each exception, call it again with the same ports.

    ``ins`` are the body's recording input views (:class:`TrackedInput`) writing to
    ``tracker``. A body that raises before taking any item since it was last called fails
    the run: it would only fail again. So does a ``BufferOverflowError``: a pipe's
    ``policy="error"`` raises it inside the body's ``push``, but it is the graph's verdict,
    not the stream's code failing, and resuming covers only the latter (as for the other
    kinds of stream, whose pushes are outside the user's code).
    """
    while True:
        tracker.taken = 0
        try:
            await body(ins, outs)
            return
        except Exception as exc:
            if not tracker.taken or isinstance(exc, BufferOverflowError):
                raise
            await report_failure(
                stream, Failure(step_name(stream), exc, tracker.item, tracker.port)
            )


def step_name(stream: Stream) -> str:
    """The step name of ``stream`` in its workflow (what a ``Failure`` names)."""
    return stream._outputs[ERRORS].stream_name


# -- map_stream: retries, backoff and timeouts ---------------------------------------------


def check_retry_options(retries: object, backoff: object, timeout: object, where: str) -> None:
    """Raise ``ConfigError`` naming ``where`` unless the three options are valid."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries of {where} must be an integer >= 0, not {retries!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise ConfigError(f"backoff of {where} must be a number of seconds >= 0, not {backoff!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ConfigError(
            f"timeout of {where} must be None or a number of seconds > 0, not {timeout!r}"
        )


async def with_retries(attempt: Callable[[], Awaitable[Any]], retries: int, backoff: float) -> Any:
    """Await ``attempt()`` until it returns; after a failure wait ``backoff``, then twice that,
    ... and try again, at most ``retries`` times; then raise the last attempt's exception."""
    delay = backoff
    for _ in range(retries):
        try:
            return await attempt()
        except Exception:
            pass
        await asyncio.sleep(delay)
        delay *= 2
    return await attempt()


async def await_with_timeout(awaitable: Awaitable[Any], seconds: float | None) -> Any:
    """Await ``awaitable``; past ``seconds`` cancel it and raise ``TimeoutError``."""
    if seconds is None:
        return await awaitable
    async with asyncio.timeout(seconds):
        return await awaitable


async def await_thread_future(future: concurrent.futures.Future[Any], seconds: float | None) -> Any:
    """Wait for an executor's ``future`` on the loop; past ``seconds`` abandon it.

    Abandoned: a call not started yet is cancelled, one already running goes on in its
    thread or process and its result is dropped. Chained by hand rather than with
    ``asyncio.wrap_future``, which never completes when the call raised StopIteration.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    finished = thread_work(loop)

    def on_done(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(_resolve, done)
        finished()

    future.add_done_callback(on_done)
    try:
        if seconds is None:
            await done
        else:
            async with asyncio.timeout(seconds):
                await done
    except BaseException:
        future.cancel()  # not started: never starts; running: its result is dropped
        raise
    if future.cancelled():
        raise RuntimeError(
            "a call was cancelled outside the workflow (was its executor shut down while "
            "the workflow ran?)"
        )
    error = future.exception()
    if error is not None:
        if isinstance(error, StopIteration):  # cannot be raised in a coroutine: say so
            raise RuntimeError("fn raised StopIteration") from error
        raise error
    return future.result()


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class _DaemonThreads:
    """Daemon threads that run plain calls under a timeout, owned by mimo_rx.

    A timed-out call cannot be interrupted; on the loop's default executor it would hold up
    ``run()`` (``asyncio.Runner`` joins that executor's threads on close) and interpreter
    exit. Daemon threads hold up neither. A thread is started whenever every existing one is
    busy, so an abandoned call never delays the calls after it; idle threads wait for work.
    """

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]]
        self._work = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        self._work.put((future, call))
        if start:
            threading.Thread(target=self._serve, name="mimo_rx timed call", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            future, call = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:  # handed over whole, like an executor does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, call
            with self._lock:
                self._idle += 1


_threads = _DaemonThreads()


def call_in_thread(fn: Callable[[Any], Any], item: Any) -> concurrent.futures.Future[Any]:
    """Run ``fn(item)`` on one of mimo_rx's daemon threads."""
    return _threads.submit(lambda: fn(item))
