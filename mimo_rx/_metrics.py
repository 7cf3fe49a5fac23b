"""Watching a run from code: ``workflow.metrics(interval)`` and ``workflow.events``.

Both are cold-looking ``reactivex.Observable`` s backed by one :class:`Watch` per workflow,
which knows the run's phase (before, running, ended) and its event loop.

``metrics(interval)`` (one timer per subscription, on the run's loop)::

    run:        start ------------------------------------------ end
    snapshots:  s0 ------ s1 ------ s2 ------ s3 ---- final |      (one every interval)

* subscribed before the run: ``s0`` when the run starts; subscribed during it: a snapshot at
  once (on the loop; a subscription made on another thread is handed to the loop first);
  subscribed after it: the final snapshot, at once on the subscribing thread (the loop may be
  gone), then ``on_completed``.
* The timers are loop ``call_at`` handles that belong to the run: the end of the run cancels
  them (whether it succeeded, failed, deadlocked or was cancelled); disposing a subscription
  cancels its own. No task is ever started.

``events``: every status change, every pause of a producer by a full input and its end, every
failure a stream resumes from. Nothing is paid while nobody listens: the hooks the ports and
steps call (``StepRuntime.events``, ``Watch.emit``) are ``None`` then, and only the slow path
of ``push`` (a pause, once per buffer-full) and status changes ever look at them. A subscriber
that joins after the run ended gets ``on_completed`` at once; one that joins during a pause
may see its ``resumed`` without the ``paused``.

An observer that raises from ``on_next`` does not break the run (a broken dashboard must not
stop a pipeline): the exception goes to the loop's exception handler, as asyncio does with
callbacks that raise.
"""

from __future__ import annotations

import asyncio
import copy
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import reactivex
from reactivex import abc as rx_abc
from reactivex.disposable import Disposable

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._monitor import StepRuntime
    from ._ports import Input, Output
    from ._workflow import Workflow

Event = dict[str, Any]
Snapshot = dict[str, Any]
_Observer = rx_abc.ObserverBase[Any]


def check_interval(interval: object) -> float:
    """Return ``interval`` as seconds, or raise ``ConfigError`` if it is not a positive number."""
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not interval > 0
        or not math.isfinite(interval)
    ):
        raise ConfigError(
            f"metrics(interval=...) takes a positive, finite number of seconds, not {interval!r}"
        )
    return float(interval)


class Watch:
    """The observers of one workflow's run: metrics subscriptions and events subscribers.

    The run calls :meth:`run_started` (on its loop, once the ports are wired) and
    :meth:`run_ended` (once every stream has ended and every status is final).
    """

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow
        self._lock = threading.Lock()
        self._phase = "before"  # "running", "ended"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._t0 = 0.0
        self._final: Snapshot | None = None
        self._runtimes: list[StepRuntime] = []
        self._tickers: list[_Ticker] = []
        self._listeners: list[_Observer] = []
        # Called by Step.status on every change: set only while events has a subscriber.
        self.emit: Callable[[Event], None] | None = None
        self.events: reactivex.Observable[Event] = reactivex.create(self._subscribe_events)

    # -- the run's lifecycle ---------------------------------------------------------------

    def run_started(self, loop: asyncio.AbstractEventLoop, runtimes: list[StepRuntime]) -> None:
        """The run begins on ``loop``: start the timers of the metrics subscribed so far."""
        found = {id(rt): rt for rt in runtimes}
        for step in self._workflow.steps:  # fused followers' runtimes are reachable by port
            ports: list[Input[Any] | Output[Any]] = [*step.stream._inputs.values()]
            ports.extend(step.stream._outputs.values())
            for port in ports:
                found.setdefault(id(port._rt), port._rt)
        with self._lock:
            self._phase = "running"
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._t0 = loop.time()
            self._runtimes = list(found.values())
            self._set_hooks()
            tickers = list(self._tickers)
        for ticker in tickers:
            ticker.start(loop)

    def run_ended(self) -> None:
        """The run is over: cancel every timer, send the final snapshot, complete everyone."""
        with self._lock:
            if self._phase != "running":
                return
            self._final = self.snapshot()
            self._phase = "ended"
            tickers, self._tickers = self._tickers, []
            listeners, self._listeners = self._listeners, []
            self._set_hooks()
            self._runtimes = []
        for ticker in tickers:
            ticker.finish(copy.deepcopy(self._final))
        for observer in listeners:
            self._deliver(observer.on_completed)

    def snapshot(self) -> Snapshot:
        """``stats()`` plus ``elapsed_s``: seconds since the run started."""
        snap = self._workflow.stats()
        loop = self._loop
        snap["elapsed_s"] = round(loop.time() - self._t0, 6) if loop is not None else 0.0
        return snap

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self, interval: float) -> reactivex.Observable[Snapshot]:
        """An Observable of snapshots every ``interval`` seconds of the run (see module doc)."""
        seconds = check_interval(interval)

        def subscribe(
            observer: _Observer, scheduler: rx_abc.SchedulerBase | None = None
        ) -> rx_abc.DisposableBase:
            ticker = _Ticker(self, observer, seconds)
            with self._lock:
                phase, loop, final = self._phase, self._loop, self._final
                if phase != "ended":
                    self._tickers.append(ticker)
            if phase == "ended":
                assert final is not None
                observer.on_next(copy.deepcopy(final))
                observer.on_completed()
            elif phase == "running":
                assert loop is not None
                if threading.get_ident() == self._loop_thread:
                    ticker.start(loop)
                else:
                    try:
                        loop.call_soon_threadsafe(ticker.start, loop)
                    except RuntimeError:  # the loop is closed: the run will not tick again
                        self._forget(ticker)
                        observer.on_completed()
            return Disposable(ticker.dispose)

        return reactivex.create(subscribe)

    def _forget(self, ticker: _Ticker) -> None:
        with self._lock:
            if ticker in self._tickers:
                self._tickers.remove(ticker)

    # -- events --------------------------------------------------------------------------------

    def _subscribe_events(
        self, observer: _Observer, scheduler: rx_abc.SchedulerBase | None = None
    ) -> rx_abc.DisposableBase:
        with self._lock:
            ended = self._phase == "ended"
            if not ended:
                self._listeners.append(observer)
                self._set_hooks()
        if ended:
            observer.on_completed()
            return Disposable()

        def dispose() -> None:
            with self._lock:
                if observer in self._listeners:
                    self._listeners.remove(observer)
                    self._set_hooks()

        return Disposable(dispose)

    def _set_hooks(self) -> None:
        """Point the steps' hooks at ``_emit`` while someone listens to a running run, else
        clear them (the caller holds the lock)."""
        hook = self._emit if self._listeners and self._phase == "running" else None
        self.emit = hook
        for runtime in self._runtimes:
            runtime.events = hook

    def _emit(self, event: Event) -> None:
        for observer in list(self._listeners):
            self._deliver(observer.on_next, event)

    def _deliver(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception as exc:
            self.report(exc, "an observer of workflow.events or workflow.metrics() raised")

    def report(self, exc: Exception, message: str) -> None:
        """Hand an observer's exception to the loop's handler (the run goes on)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise exc
        loop.call_exception_handler({"message": message, "exception": exc})


class _Ticker:
    """One metrics subscription: a snapshot now, then one every ``interval`` on the loop."""

    def __init__(self, watch: Watch, observer: _Observer, interval: float) -> None:
        self._watch = watch
        self._observer = observer
        self._interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._done = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: the first snapshot, and the timer for the next one."""
        if self._done or self._loop is not None:
            return
        self._loop = loop
        self._due = loop.time()
        self._tick()

    def _tick(self) -> None:
        self._handle = None
        if self._done:
            return
        self._send(self._watch.snapshot())
        loop = self._loop
        if self._done or loop is None:  # the observer disposed while handling it
            return
        # Keep to the grid start + k * interval; a tick held up by a busy loop skips ahead.
        self._due += self._interval
        now = loop.time()
        if self._due <= now:
            self._due = now + self._interval
        self._handle = loop.call_at(self._due, self._tick)

    def _send(self, snapshot: Snapshot) -> None:
        try:
            self._observer.on_next(snapshot)
        except Exception as exc:
            self._watch.report(exc, "an observer of workflow.metrics() raised")

    def finish(self, final: Snapshot) -> None:
        """The run ended: the final snapshot, then ``on_completed``."""
        if self._done:
            return
        self._cancel_timer()
        self._send(final)
        self._done = True
        try:
            self._observer.on_completed()
        except Exception as exc:
            self._watch.report(exc, "an observer of workflow.metrics() raised")

    def dispose(self) -> None:
        """The subscription was disposed: stop the timer and forget this subscription."""
        if self._done:
            return
        self._done = True
        self._watch._forget(self)
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        loop = self._loop
        if (
            loop is not None
            and not loop.is_closed()
            and threading.get_ident() != (self._watch._loop_thread)
        ):
            loop.call_soon_threadsafe(handle.cancel)  # TimerHandle.cancel is not thread-safe
        else:
            handle.cancel()
