"""Rx adapters: sources of every kind, Rx operators as streams, and the loop scheduler.

Sources (``Workflow.add_source``):

* **Iterables and async iterables** are pulled one item per ``await push``: true back-pressure.
* **Observables** are subscribed on a worker thread when ``start()`` begins. ``start()`` waits
  (up to ``SUBSCRIBE_WAIT_S``) until ``subscribe()`` has returned or the thread is paused on a
  full hand-off, so a hot part subscribed after a few cold items
  (``subject.pipe(ops.start_with(...))``) misses nothing emitted once ``start()`` has begun.
  What the observable emits *on that thread while subscribe() runs* is a cold, synchronous
  sequence (``reactivex.range``, ``from_iterable``): the worker blocks when the hand-off to the
  loop holds ``HANDOFF_ITEMS`` items, so the source is truly paused and never drained into
  memory. Anything emitted later, or from another thread (a ``Subject`` fed by the
  application, a timer), is hot: it cannot be paused, and each input it feeds applies the
  source's overflow policy when full.

Every item, cold or hot, travels through one ordered hand-off, so items reach the loop in the
order they were emitted, whatever thread emitted them.

Operators (``operator`` and ``rx_stream``) feed the items of their inputs into Rx subjects on
the loop and push what the Rx chain emits with back-pressure. Time-based operators run on the
workflow's event loop through :class:`LoopScheduler`, which also tells the deadlock monitor
that a stream with pending timers can still make progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from reactivex import Observable
from reactivex import abc as rx_abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import CurrentThreadScheduler
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler
from reactivex.subject import Subject

from ._errors import ConfigError
from ._monitor import StepRuntime
from ._ports import POLICIES, AnyInput, Input, Output
from ._signals import block_signals_in_this_thread
from ._stream import FusedStageError, Ports, Stream

# How many items a cold observable may run ahead of the loop before its thread is paused.
HANDOFF_ITEMS = 1024

# How long start() may wait (blocking the loop) for an observable's subscribe() to return or
# pause; only a cold source that is slow to produce (blocking I/O in subscribe) costs this.
SUBSCRIBE_WAIT_S = 0.1


class _Stop(Exception):
    """Breaks the loop of a cold observable that keeps emitting after it was disposed.

    Raised from ``on_next`` on the observable's own thread; Rx turns it into ``on_error``.
    """


# -- sources ---------------------------------------------------------------------------------


def make_source(source: Any, name: str | None, policy: str) -> Stream:
    """Wrap ``source`` in a stream with one output ``out`` (see ``Workflow.add_source``)."""
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

    async def run(self, ins: Ports, outs: Ports) -> None:
        out: Output[Any] = outs.out
        iterator = iter(self.iterable)
        try:
            while not out.abandoned:  # stop pulling once every consumer has finished
                # Pull only what the downstream buffers have room for right now: never ahead.
                batch = list(itertools.islice(iterator, max(out._room(), 1)))
                if not batch:
                    return
                await out._push_many(batch)
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

    async def run(self, ins: Ports, outs: Ports) -> None:
        iterator = aiter(self.iterable)
        out: Output[Any] = outs.out
        push = out.push
        try:
            async for item in iterator:
                await push(item)
                if out.abandoned:
                    return  # every consumer finished: stop pulling
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()


class _Handoff:
    """The ordered, thread-safe hand-off from an observable's threads to the loop.

    Entries are ``(kind, value)``: ``"cold"`` items are pushed with back-pressure, ``"hot"``
    items with the overflow policy, then one terminal ``"completed"`` or ``"error"``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entries: deque[tuple[str, Any]] = deque()
        self.lock = threading.Condition(threading.Lock())
        self.waiter: asyncio.Future[None] | None = None  # the source task, waiting for entries
        self.wake_scheduled = False
        self.stopped = False  # the source task ended: producers must stop
        self.terminated = False  # a terminal signal was received: ignore anything after it
        self.settled = threading.Event()  # subscribe() returned, or its thread is paused
        self.returned = False  # subscribe() has returned or raised
        self.late_error: Exception | None = None  # subscribe() raised after completing

    def put(self, kind: str, value: Any, block: bool) -> bool:
        """Append an entry (from any thread); block a cold producer while the hand-off is full.

        Returns ``False`` when the entry was refused because the source task has stopped.
        """
        with self.lock:
            if self.stopped:
                return False
            if self.terminated:
                return True  # a misbehaving source: nothing after the terminal signal counts
            if kind in ("completed", "error"):
                self.terminated = True
            if block:
                while len(self.entries) >= HANDOFF_ITEMS and not self.stopped:
                    self.settled.set()
                    self.lock.wait()
                if self.stopped:
                    return False
            self.entries.append((kind, value))
            # One wake-up per batch: the loop takes everything that arrived in the meantime.
            self._schedule_wake()
            return True

    def subscribe_failed(self, error: Exception) -> None:
        """subscribe() raised: an error entry, or a late error once the source completed."""
        with self.lock:
            if self.terminated:
                self.late_error = error
                return
        self.put("error", error, block=False)

    def subscribe_returned(self) -> None:
        """subscribe() has returned (or raised): wake the loop, which may be waiting for it."""
        with self.lock:
            self.returned = True
            self.settled.set()
            self._schedule_wake()

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until something is put or subscribe() returns.

        A hot source or a thread makes progress without us, so this wait is never a
        deadlock candidate (it is not parked).
        """
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiter = waiter
        try:
            await waiter
        finally:
            self.waiter = None

    def _schedule_wake(self) -> None:
        # Called with the lock held; at most one wake-up is in flight at a time.
        if self.wake_scheduled:
            return
        self.wake_scheduled = True
        if _on_loop_thread(self.loop):
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_all(self) -> list[tuple[str, Any]]:
        with self.lock:
            batch = list(self.entries)
            self.entries.clear()
            self.wake_scheduled = False
            self.lock.notify_all()
        return batch

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify_all()


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _SourceObserver(rx_abc.ObserverBase[Any]):
    """Classifies each signal as cold (emitted on our thread during subscribe) or hot."""

    def __init__(self, handoff: _Handoff) -> None:
        self.handoff = handoff
        self.cold_thread: int | None = None  # the worker's ident while subscribe() runs
        # Fired (on the emitting thread) once the workflow wants no more: the subscription
        # is made through take_until(stop), so Rx completes and disposes everything it holds.
        self.stop: Subject[None] = Subject()
        self.stop_sent = False

    def _cold(self) -> bool:
        return threading.get_ident() == self.cold_thread

    def on_next(self, value: Any) -> None:
        cold = self._cold()
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


class ObservableSource(Stream):
    """An observable as a source; see the module docstring for how it is paused."""

    OUT = ("out",)

    def __init__(self, observable: rx_abc.ObservableBase[Any], name: str, policy: str) -> None:
        super().__init__(name=name)
        self.observable = observable
        self.policy = policy
        self._handoff: _Handoff | None = None
        self._subscription: rx_abc.DisposableBase | None = None
        self._thread: threading.Thread | None = None

    def _on_start(self) -> None:
        """Subscribe (on a worker thread) as ``start()`` begins, before any task runs."""
        handoff = _Handoff(asyncio.get_running_loop())
        observer = _SourceObserver(handoff)
        self._handoff = handoff

        def subscribe() -> None:
            block_signals_in_this_thread()  # Ctrl-C belongs to the loop's thread
            observer.cold_thread = threading.get_ident()
            try:
                # Any ObservableBase works here (take_until only calls its subscribe()).
                source = cast(Observable[Any], self.observable)
                stoppable = ops.take_until(observer.stop)(source)
                subscription = stoppable.subscribe(observer)
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

        self._thread = threading.Thread(
            target=subscribe, name=f"mimo_rx source {self.name}", daemon=True
        )
        self._thread.start()
        handoff.settled.wait(SUBSCRIBE_WAIT_S)

    async def run(self, ins: Ports, outs: Ports) -> None:
        handoff = self._handoff
        assert handoff is not None, "the workflow subscribes sources before running them"
        out: Output[Any] = outs.out
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = handoff.take_all()
                if not batch:
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


# -- the loop scheduler ------------------------------------------------------------------------


class LoopScheduler(AsyncIOThreadSafeScheduler):
    """Runs Rx time operators on the workflow's loop and counts what they have scheduled.

    Immediate actions scheduled from the loop's thread run synchronously (trampolined), like
    with Rx's default ``CurrentThreadScheduler``; timed ones go on the loop.

    While an operator stream has scheduled work pending it can make progress on its own, so
    the deadlock monitor must not count it as stuck (``StepRuntime.busy``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, runtime: StepRuntime) -> None:
        super().__init__(loop)
        self.runtime = runtime
        self._lock = threading.Lock()

    def _track(self) -> Callable[[], None]:
        with self._lock:
            self.runtime.busy += 1
        finished = False

        def finish() -> None:
            nonlocal finished
            with self._lock:
                if finished:
                    return
                finished = True
                self.runtime.busy -= 1
                idle = self.runtime.busy == 0
            if idle and self.runtime.monitor is not None and _on_loop_thread(self._loop):
                self.runtime.monitor.recheck()

        return finish

    def schedule(self, action: Any, state: Any = None) -> rx_abc.DisposableBase:
        if _on_loop_thread(self._loop):
            # Immediate work (start_with, merge, concat subscribing their sources) runs at
            # once on the trampoline, as with Rx's default scheduler: a chain must be fully
            # subscribed to its input before the stream feeds it, or items would vanish.
            # The action gets this scheduler, not the trampoline: what it schedules in turn
            # with a delay must go on the loop (the trampoline would block the thread).
            def run_here(_: Any, st: Any) -> Any:
                return action(self, st)

            return CurrentThreadScheduler.singleton().schedule(run_here, state)
        finish = self._track()

        def run(scheduler: Any, st: Any) -> Any:
            finish()
            return action(scheduler, st)

        return CompositeDisposable(super().schedule(run, state), Disposable(finish))

    def schedule_relative(
        self, duetime: Any, action: Any, state: Any = None
    ) -> rx_abc.DisposableBase:
        finish = self._track()

        def run(scheduler: Any, st: Any) -> Any:
            finish()
            return action(scheduler, st)

        return CompositeDisposable(
            super().schedule_relative(duetime, run, state), Disposable(finish)
        )


# -- operators as streams -----------------------------------------------------------------------


class _Feed(Observable[Any]):
    """What ``fn`` sees of one input: a minimal hot observable the stream feeds on the loop.

    A ``Subject`` takes two locks and copies its observer list per item; this takes none,
    because it is only ever fed from the stream's own task.
    """

    def __init__(self) -> None:
        super().__init__()
        self.observers: list[rx_abc.ObserverBase[Any]] = []
        self.done = False

    def _subscribe_core(
        self, observer: rx_abc.ObserverBase[Any], scheduler: rx_abc.SchedulerBase | None = None
    ) -> rx_abc.DisposableBase:
        if self.done:
            observer.on_completed()
            return Disposable()
        self.observers.append(observer)

        def unsubscribe() -> None:
            if observer in self.observers:
                self.observers.remove(observer)

        return Disposable(unsubscribe)

    def on_next(self, value: Any) -> None:
        observers = self.observers
        if len(observers) == 1:
            observers[0].on_next(value)
        else:
            for observer in list(observers):
                observer.on_next(value)

    def on_completed(self) -> None:
        self.done = True
        for observer in list(self.observers):
            observer.on_completed()
        self.observers.clear()


class _Link(Observable[Any]):
    """The join between two fused stages: counts what passes and names who failed.

    It stands where a buffer would be, so ``stats()`` still shows the items that went from
    the first stage's output to the second's input (none is ever buffered there). An error
    that reaches a link first came from the stage before it.

    The second stage's operator subscribes to the link with its callbacks; they are called
    directly, without the ``AutoDetachObserver`` a plain ``Observable.subscribe`` adds (the
    first stage's subscription to :class:`_Counting` keeps that guard): a fused chain costs
    one Python call per link and item, not two.
    """

    def __init__(
        self, source: rx_abc.ObservableBase[Any], out: Output[Any], owner: RxStream
    ) -> None:
        super().__init__()
        self.source = source
        self.out = out
        self.owner = owner

    def subscribe(
        self,
        on_next: Any = None,
        on_error: Callable[[Exception], None] | None = None,
        on_completed: Callable[[], None] | None = None,
        *,
        scheduler: rx_abc.SchedulerBase | None = None,
    ) -> rx_abc.DisposableBase:
        if callable(getattr(on_next, "on_next", None)):  # an observer rather than callbacks
            observer = on_next
            on_next, on_error, on_completed = (
                observer.on_next,
                observer.on_error,
                observer.on_completed,
            )
        counting = _Counting(self, on_next, on_error, on_completed)
        return self.source.subscribe(counting, scheduler=scheduler)


class _Counting(rx_abc.ObserverBase[Any]):
    """A link's observer of the first stage: counts, then calls the second stage directly."""

    def __init__(
        self,
        link: _Link,
        on_next: Callable[[Any], None] | None,
        on_error: Callable[[Exception], None] | None,
        on_completed: Callable[[], None] | None,
    ) -> None:
        self.out = link.out
        self.owner = link.owner
        self.next = on_next or _ignore
        self.error = on_error or _reraise
        self.completed = on_completed or _nothing

    def on_next(self, value: Any) -> None:
        self.out.pushed += 1  # the second stage's input counts it as received and taken
        self.next(value)

    def on_error(self, error: Exception) -> None:
        if self.owner._failed_stage is None:
            self.owner._failed_stage = self.out.stream_name
        self.error(error)

    def on_completed(self) -> None:
        self.completed()


def _ignore(value: Any) -> None:
    pass


def _nothing() -> None:
    pass


def _reraise(error: Exception) -> None:
    raise error


class _Collector(rx_abc.ObserverBase[Any]):
    """Collects what one result observable emits, and wakes the stream's task."""

    def __init__(self, owner: RxStream, index: int) -> None:
        self.owner = owner
        self.index = index

    def on_next(self, value: Any) -> None:
        owner = self.owner
        # Emitted while the stream's own task feeds the chain (not from an operator's own
        # thread meanwhile): nobody to wake.
        if owner._feeding and threading.get_ident() == owner._loop_thread:
            if owner._tail_index == self.index:
                owner._tail.append(value)  # the common case: one more item of the open run
            else:
                owner._record(("next", self.index, [value]))
        else:
            owner._emit(("next", self.index, [value]))

    def on_error(self, error: Exception) -> None:
        self.owner._emit(("error", self.index, error))

    def on_completed(self) -> None:
        self.owner._emit(("completed", self.index, None))


class RxStream(Stream):
    """A stream whose inputs are Rx observables and whose outputs follow Rx observables.

    ``fn`` gets one observable per input and returns one observable (one output) or a
    tuple/list/dict of them (several outputs). Items emitted are pushed downstream with
    back-pressure; the stream ends when every result observable has completed.

    Per round, the stream takes everything buffered at its inputs, feeds it through the Rx
    chain synchronously, and pushes what came out as one batch: one suspension per batch
    rather than per item, and never more than a buffer-full of input in hand.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        ins: Sequence[str],
        outs: Sequence[str],
        name: str,
    ) -> None:
        super().__init__(ins=ins, outs=outs, name=name)
        self.rx_fn = fn
        # What the chain emitted and is not pushed yet, in order: ("next", output index, run
        # of items), ("completed", index, None) or ("error", index, exception). Consecutive
        # items for one output share a run; the last run stays open for more (the tail).
        self._events: deque[tuple[str, int, Any]] = deque()
        self._tail: list[Any] = []
        self._tail_index = -1  # output index of the open run at the end of _events, or -1
        self._feeding = False  # the stream's task is feeding the chain right now
        self._wake: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._open_results = 0
        self._followers: list[RxStream] = []  # operator streams fused behind this one
        self._failed_stage: str | None = None  # which fused stage an error came from
        self._runtime: StepRuntime | None = None
        self._foreign = False  # the chain has emitted from a thread other than the loop's

    def _fuse(self, followers: list[Stream]) -> None:
        self._followers = [f for f in followers if isinstance(f, RxStream)]
        assert len(self._followers) == len(followers), "only operator streams fuse"

    def _emit(self, event: tuple[str, int, Any]) -> None:
        if self._loop_thread is None or threading.get_ident() == self._loop_thread:
            self._record(event)
        else:  # an operator that runs on a thread of its own: hand over to the loop
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._record_foreign, event)

    def _record_foreign(self, event: tuple[str, int, Any]) -> None:
        # The chain works on a thread of its own (observe_on, a TimeoutScheduler): it can
        # emit without any input, so this stream is never counted as deadlocked again.
        if not self._foreign and self._runtime is not None:
            self._foreign = True
            self._runtime.busy += 1
        self._record(event)

    def _record(self, event: tuple[str, int, Any]) -> None:
        kind, index, value = event
        if kind == "next":
            if self._tail_index == index:
                self._tail.extend(value)
            else:
                self._events.append(event)
                self._tail = value
                self._tail_index = index
        else:
            self._events.append(event)
            self._tail_index = -1
            if kind == "completed":
                self._open_results -= 1
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _results(
        self, feeds: Sequence[rx_abc.ObservableBase[Any]]
    ) -> list[rx_abc.ObservableBase[Any]]:
        result = self.rx_fn(*feeds)
        names = self.outs
        if isinstance(result, rx_abc.ObservableBase):
            results = [result]
        elif isinstance(result, Mapping):
            unknown = set(result) - set(names)
            missing = set(names) - set(result)
            if unknown or missing:
                raise ConfigError(
                    f"rx_stream {self.name!r} returned observables for {sorted(result)}, but "
                    f"its outputs are {names}; return exactly one per output"
                )
            results = [result[name] for name in names]
        elif isinstance(result, (tuple, list)):
            results = list(result)
        else:
            raise ConfigError(
                f"rx_stream {self.name!r} must return an Observable, or a tuple/dict of them, "
                f"not {type(result).__name__}"
            )
        if len(results) != len(names):
            raise ConfigError(
                f"rx_stream {self.name!r} returned {len(results)} observables for "
                f"{len(names)} outputs {names}; return one per output, in order"
            )
        for obs in results:
            if not isinstance(obs, rx_abc.ObservableBase):
                raise ConfigError(
                    f"rx_stream {self.name!r} returned {type(obs).__name__} where an "
                    "Observable was expected"
                )
        return results

    async def run(self, ins: Ports, outs: Ports) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        inputs: list[Input[Any]] = list(ins)
        ports: list[Input[Any] | Output[Any]] = [*inputs, *outs]
        runtime = ports[0]._rt if ports else None
        self._runtime = runtime
        scheduler = LoopScheduler(loop, runtime) if runtime is not None else None
        feeds = [_Feed() for _ in inputs]
        results = self._results(feeds)
        stage = self
        for follower in self._followers:  # fused: one chain through every stage
            (out,) = stage._outputs.values()
            results = follower._results([_Link(results[0], out, self)])
            stage = follower
        outputs = list(stage._outputs.values())
        self._open_results = len(results)
        subscriptions = [
            obs.subscribe(_Collector(self, i), scheduler=scheduler) for i, obs in enumerate(results)
        ]
        try:
            while True:
                # Feed and push in turns, one run of results at a time, so that a timer
                # emitting faster than downstream takes cannot keep the inputs unread.
                fed = self._feed(inputs, feeds)
                if self._events:
                    await self._push_run(outputs)
                elif self._open_results == 0:
                    return  # every result completed (take(n) and friends): inputs detach
                elif not fed:
                    await self._wait(inputs, runtime, loop)
        finally:
            for subscription in subscriptions:
                subscription.dispose()

    def _feed(self, inputs: list[Input[Any]], feeds: list[_Feed]) -> bool:
        """Feed everything buffered (and every close) into the chain; return whether any."""
        fed = False
        if self._open_results == 0:
            return False
        self._feeding = True
        try:
            for port, feed in zip(inputs, feeds, strict=True):
                if port._items:
                    batch = port._take_all()
                    fed = True
                    # One subscriber (the usual chain): call it directly, not through the feed.
                    observers = feed.observers
                    on_next = observers[0].on_next if len(observers) == 1 else feed.on_next
                    for position, item in enumerate(batch):
                        if self._open_results == 0:  # the chain completed: give the rest back
                            port._give_back(batch[position:])
                            return True
                        on_next(item)
                elif port._closed and not feed.done:
                    feed.on_completed()
                    fed = True
        finally:
            self._feeding = False
        return fed

    async def _push_run(self, outputs: list[Output[Any]]) -> None:
        """Push the next run of results for one output (or act on the next terminal signal)."""
        events = self._events
        kind, index, value = events.popleft()
        if kind == "next":
            if not events:  # the open run is ours now: later items start a new one
                self._tail_index = -1
            out = outputs[index]
            limit = out._room_limit()  # at most a buffer-full before the inputs are fed again
            if len(value) > limit:
                events.appendleft(("next", index, value[limit:]))
                value = value[:limit]
            await out._push_many(value)
        elif kind == "completed":
            outputs[index].close()
        elif self._followers:
            raise FusedStageError(self._failed_stage or outputs[index].stream_name, value)
        else:
            raise value

    async def _wait(
        self,
        inputs: list[Any],
        runtime: StepRuntime | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Wait for an input to receive or close, or for the Rx chain to emit."""
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        waiting = [p for p in inputs if not p._closed]
        for port in waiting:
            port._getter = wake
        # With timers pending the stream can still make progress (runtime.busy > 0): the
        # monitor checks that, so parking here is safe.
        parked = (
            runtime.park("an Rx operator waiting for input", AnyInput(waiting), wake)
            if runtime is not None and waiting
            else None
        )
        try:
            await wake
        finally:
            self._wake = None
            for port in waiting:
                port._getter = None
            if parked is not None and runtime is not None:
                runtime.unpark(parked)


def operator(op: Callable[[Any], Any], name: str | None = None) -> Stream:
    """A one-input (``x``), one-output (``y``) stream applying the Rx operator ``op``.

    Example: ``operator(ops.map(str))``, ``operator(ops.buffer_with_count(10))``,
    ``operator(ops.debounce(0.1))`` (time operators run on the workflow's event loop).
    """
    if not callable(op):
        raise ConfigError(
            f"operator {name or 'operator'!r} takes an Rx operator such as ops.map(f), "
            f"not {type(op).__name__}"
        )
    stream = RxStream(lambda x: x.pipe(op), ins=["x"], outs=["y"], name=name or "operator")
    stream._fusable = True
    return stream


def rx_stream(
    fn: Callable[..., Any],
    ins: Sequence[str],
    outs: Sequence[str],
    name: str | None = None,
) -> Stream:
    """A stream whose inputs are handed to ``fn`` as Rx observables, in order.

    ``fn`` returns one observable, or a tuple/dict of observables for several outputs, e.g.
    ``rx_stream(lambda a, b: reactivex.zip(a, b), ins=['a', 'b'], outs=['pair'])``.
    """
    if not callable(fn):
        raise ConfigError(f"rx_stream takes a function of observables, not {type(fn).__name__}")
    if name is None:
        fn_name = getattr(fn, "__name__", "rx_stream")
        name = "rx_stream" if fn_name == "<lambda>" else fn_name
    return RxStream(fn, ins=ins, outs=outs, name=name)
