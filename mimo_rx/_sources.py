"""Sources: the steps that feed a workflow from outside it (``Workflow.add_source``).

* **Iterables and async iterables** are pulled only as fast as downstream takes them: true
  back-pressure.
* **Observables** are subscribed on a worker thread when ``start()`` begins. ``start()`` waits
  (up to ``SUBSCRIBE_WAIT_S``) until ``subscribe()`` has returned or the thread is paused on a
  full hand-off, so a hot part subscribed after a few cold items
  (``subject.pipe(ops.start_with(...))``) misses nothing emitted once ``start()`` has begun.
  What the observable emits *on that thread while subscribe() runs* is a cold, synchronous
  sequence (``reactivex.range``, ``from_iterable``): the worker blocks when the hand-off to the
  loop is full (:mod:`._handoff`), so the source is truly paused and never drained into
  memory. Anything emitted later, or from another thread (a ``Subject`` fed by the
  application, a timer), is hot: it cannot be paused, and each input it feeds applies the
  source's overflow policy when full.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, cast

from reactivex import Observable
from reactivex import abc as rx_abc
from reactivex import operators as ops
from reactivex.subject import Subject

from ._acksource import AckSource
from ._acksources import (
    DEFAULT_COMMIT_INTERVAL,
    DEFAULT_MAX_IN_FLIGHT,
    AckSourceStream,
    check_ack_options,
)
from ._batches import IterChunks
from ._errors import ConfigError
from ._handoff import Handoff, thread_work
from ._ports import POLICIES, Output
from ._signals import block_signals_in_this_thread
from ._stream import Ports, Stream

get_ident = threading.get_ident

# How long start() may wait (blocking the loop) for an observable's subscribe() to return or
# pause; only a cold source that is slow to produce (blocking I/O in subscribe) costs this.
SUBSCRIBE_WAIT_S = 0.1


class _Stop(Exception):
    """Breaks the loop of a cold observable that keeps emitting after it was disposed.

    Raised from ``on_next`` on the observable's own thread; Rx turns it into ``on_error``.
    """


def make_source(
    source: Any,
    name: str | None,
    policy: str,
    max_in_flight: int | None = None,
    commit_interval: float | None = None,
) -> Stream:
    """Wrap ``source`` in a stream with one output ``out`` (see ``Workflow.add_source``)."""
    check_ack_options(source, name or "source", max_in_flight, commit_interval)
    if isinstance(source, AckSource):
        return AckSourceStream(
            source,
            name=name or "source",
            max_in_flight=DEFAULT_MAX_IN_FLIGHT if max_in_flight is None else max_in_flight,
            commit_interval=(
                DEFAULT_COMMIT_INTERVAL if commit_interval is None else commit_interval
            ),
        )
    if policy not in POLICIES:
        raise ConfigError(
            f"policy {policy!r} of source {name or 'source'!r} is unknown; "
            f"choose one of {', '.join(POLICIES)}"
        )
    if isinstance(source, rx_abc.ObservableBase):
        return ObservableSource(source, name=name or "source", policy=policy)
    if isinstance(source, AsyncIterable):
        return AsyncIterableSource(source, name=name or "source")
    if isinstance(source, Iterable):
        return IterableSource(source, name=name or "source")
    raise ConfigError(
        f"source {name or 'source'!r} must be a reactivex Observable, an iterable or an async "
        f"iterable, not {type(source).__name__}"
    )


class IterableSource(Stream):
    """Pulls a plain iterable one item per ``await push``."""

    OUT = ("out",)

    def __init__(self, iterable: Iterable[Any], name: str) -> None:
        super().__init__(name=name)
        self.iterable = iterable
        self._stopping = False

    def _stop_source(self, cancel: Callable[[], None]) -> None:
        self._stopping = True  # what was pulled is pushed; nothing more is pulled

    async def run(self, ins: Ports, outs: Ports) -> None:
        out: Output[Any] = outs.out
        iterator = iter(self.iterable)
        chunks = IterChunks(iterator)  # an error partway: what was pulled before is pushed
        try:
            # Stop pulling once every consumer has finished, or workflow.stop() was called.
            while not out.abandoned and not self._stopping:
                # Pull only what the downstream buffers have room for right now: never ahead.
                batch = chunks.take(max(out._room(), 1))
                if not batch:
                    return
                await out.push_many(batch)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator stopped early runs its finally blocks now
                close()


class AsyncIterableSource(Stream):
    """Pulls an async iterable (or async generator) one item per ``await push``."""

    OUT = ("out",)

    def __init__(self, iterable: AsyncIterable[Any], name: str) -> None:
        super().__init__(name=name)
        self.iterable = iterable
        self._stopping = False
        self._pulling = False  # awaiting the iterator's next item

    def _stop_source(self, cancel: Callable[[], None]) -> None:
        # Waiting for the next item: no item is lost by cancelling that wait. Pushing one:
        # let it be delivered, then stop.
        self._stopping = True
        if self._pulling:
            cancel()

    async def run(self, ins: Ports, outs: Ports) -> None:
        iterator = aiter(self.iterable)
        out: Output[Any] = outs.out
        push = out.push
        next_item = iterator.__anext__
        try:
            while not self._stopping:
                self._pulling = True
                try:
                    item = await next_item()
                except StopAsyncIteration:
                    return
                finally:
                    self._pulling = False
                await push(item)
                if out.abandoned:
                    return  # every consumer finished: stop pulling
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()


class _SourceObserver(rx_abc.ObserverBase[Any]):
    """Classifies each signal as cold (emitted on our thread during subscribe) or hot; a hot
    item emitted on the loop's own thread may go straight to the inputs."""

    def __init__(self, handoff: Handoff, out: Output[Any], direct: Callable[[Any], bool]) -> None:
        self.handoff = handoff
        self.out = out
        self.direct = direct  # the rest of on_next's loop-thread path: see _deliver_on_loop
        self.loop_thread = get_ident()  # made on the loop, as start() begins
        self.cold_thread: int | None = None  # the worker's ident while subscribe() runs
        # Fired (on the emitting thread) once the workflow wants no more: the subscription
        # is made through take_until(stop), so Rx completes and disposes everything it holds.
        self.stop: Subject[None] = Subject()
        self.stop_sent = False

    def on_next(self, value: Any) -> None:
        ident = get_ident()
        if ident == self.loop_thread:
            # A hot item emitted on the loop's own thread (a ``Subject`` fed by application
            # code on the loop) goes straight to the inputs when that keeps every promise
            # (see _deliver_on_loop). The common case first: Output.push's fast path,
            # inlined as InletStream.send does (each call here measured ~400-800
            # instructions more per item): keep the three in step. Below the input's peak
            # so far no policy applies, and an idle source task has nothing earlier on its way.
            out, handoff = self.out, self.handoff
            fast = out._fast_target  # one blocking input, nothing else to serve
            if fast is not None and handoff.waiter is not None:
                items = fast._items
                if len(items) < fast._mark and not handoff.entries and not handoff.stopped:
                    items.append(value)
                    out.pushed += 1
                    if fast._getter is not None:
                        fast._wake_getter()
                    return
            if self.direct(value):
                return
        cold = ident == self.cold_thread
        if self.handoff.put("cold" if cold else "hot", value, block=cold) or not cold:
            return
        if not self.stop_sent:
            self.stop_sent = True
            self.stop.on_next(None)
        else:  # a source that ignores disposal and keeps emitting: break out of its loop
            raise _Stop

    def on_error(self, error: Exception) -> None:
        self.handoff.put("error", error, block=False)

    def on_completed(self) -> None:
        self.handoff.put("completed", None, block=False)


def _subscribe(
    observable: rx_abc.ObservableBase[Any], observer: _SourceObserver
) -> rx_abc.DisposableBase:
    """Subscribe ``observer`` to ``observable``, through ``take_until(observer.stop)``.

    Any ObservableBase works (take_until only calls its ``subscribe()``). A plain ``Subject``
    (the hot source of an event-driven service) is the exception, for speed: it emits nothing
    while it is subscribed, so it needs no ``take_until``, and it is subscribed through its
    own ``_subscribe_core``, which is where ``subscribe()`` ends, without the
    ``AutoDetachObserver`` that ``subscribe()`` wraps around ``observer``: each item then
    costs two fewer calls on the application's side. ``_subscribe_core`` is reactivex's
    internal method: a test in ``tests/test_rx.py`` fails if a release changes what this
    relies on. (A ``ReplaySubject`` replays inside ``subscribe()``, which take_until
    must be able to break off: it takes the general path.)
    """
    if type(observable) is Subject:
        return observable._subscribe_core(observer, None)
    source = ops.take_until(observer.stop)(cast(Observable[Any], observable))
    return source.subscribe(observer)


class ObservableSource(Stream):
    """An observable as a source; see the module docstring for how it is paused."""

    OUT = ("out",)

    def __init__(self, observable: rx_abc.ObservableBase[Any], name: str, policy: str) -> None:
        super().__init__(name=name)
        self.observable = observable
        self.policy = policy
        self._handoff: Handoff | None = None
        self._subscription: rx_abc.DisposableBase | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def _stop_source(self, cancel: Callable[[], None]) -> None:
        # What is in the hand-off already is delivered; the observable is disposed after it.
        self._stopping = True
        if self._handoff is not None:
            self._handoff.stop()

    def _on_start(self) -> None:
        """Subscribe (on a worker thread) as ``start()`` begins, before any task runs."""
        handoff = Handoff(asyncio.get_running_loop())
        observer = _SourceObserver(handoff, self._outputs["out"], self._deliver_on_loop)
        self._handoff = handoff

        def subscribe() -> None:
            block_signals_in_this_thread()  # Ctrl-C belongs to the loop's thread
            observer.cold_thread = get_ident()
            try:
                subscription = _subscribe(self.observable, observer)
                self._subscription = subscription
                if handoff.stopped:  # stopped while subscribe() ran: release what it holds
                    subscription.dispose()
            except _Stop:
                pass
            except Exception as exc:  # subscribe() itself failed (maybe after completing)
                handoff.subscribe_failed(exc)
            finally:
                observer.cold_thread = None
                handoff.subscribe_returned()
                finished()

        finished = thread_work(handoff.loop)

        self._thread = threading.Thread(
            target=subscribe, name=f"mimo_rx source {self.name}", daemon=True
        )
        self._thread.start()
        handoff.settled.wait(SUBSCRIBE_WAIT_S)

    def _deliver_on_loop(self, value: Any) -> bool:
        """A hot item emitted on the loop's own thread, which the observer's fast path did
        not take, goes straight to the inputs, without the hand-off's lock and a hop through
        the source's task, when that keeps every promise: the task is idle (nothing emitted
        earlier is still on its way), no policy can raise into the emitter (``"error"``) and
        no Rx subscriber of the output can either. Returns whether it was delivered."""
        handoff = self._handoff
        out = self._outputs["out"]
        if (
            handoff is None
            or handoff.waiter is None  # the task is busy with earlier items (or not waiting)
            or handoff.entries
            or handoff.stopped
            or self.policy == "error"
            or (out._lossy and any(p == "error" for _, p in out._lossy))  # a pipe's policy
            or out.observers
            or out.closed
            or out.abandoned
        ):
            return False
        out._push_unpaused(value, self.policy, self.name)
        return True

    async def run(self, ins: Ports, outs: Ports) -> None:
        handoff = self._handoff
        assert handoff is not None, "the workflow subscribes sources before running them"
        out: Output[Any] = outs.out
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = handoff.take_all()
                if not batch:
                    if self._stopping:
                        return
                    await handoff.wait(loop)
                    continue
                for kind, value in batch:
                    if kind == "cold":
                        await out.push(value)
                    elif kind == "hot":
                        out._push_unpaused(value, self.policy, self.name)
                    elif kind == "completed":
                        # subscribe() may still fail after completing (its disposal raising):
                        # that error must not be lost, so wait for it to return.
                        while not handoff.returned:
                            await handoff.wait(loop)
                        if handoff.late_error is not None:
                            raise handoff.late_error
                        return
                    else:
                        raise value
                if out.abandoned:
                    return  # every consumer finished: stop the observable
        finally:
            handoff.stop()
            if self._subscription is not None:
                self._subscription.dispose()
