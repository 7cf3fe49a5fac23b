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

``stats()`` from any thread (:meth:`Watch.read`): counters a machine can trust. A Prometheus
scrape runs on the HTTP server's thread, and a counter such as ``taken`` is derived from values
that the loop changes between two bytecodes of the reader. So, while the run goes on, a read
from another thread is handed to the loop and made there, between two callbacks, where every
identity of the snapshot holds (``received == taken + dropped + discarded + buffered``); it
waits at most ``LOOP_READ_TIMEOUT_S`` for a busy loop, then reads directly (the ports' write
order makes such a read count short, never over: see ``Input.taken``). On top of that every
counter of every snapshot, whoever reads it, is clamped to the highest value already handed
out (:class:`Highest`), so no reader ever sees one go down; Prometheus would read a decrease
as a counter reset and ``rate()`` would spike by the whole value.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import math
import threading
import time
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

# How long a read of stats() from another thread waits for a busy loop before reading directly.
LOOP_READ_TIMEOUT_S = 1.0
# The keys of stats() that are counters (never go down); every other number is a gauge.
COUNTERS = frozenset(
    {
        "received",
        "taken",
        "dropped",
        "discarded",
        "paused_s",
        "peak_buffered",
        "pushed",
        "failures",
        "fetched",
        "acked",
        "nacked",
    }
)


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
        self._highest = Highest()
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

    # -- stats() from any thread -------------------------------------------------------------

    def read(self, stats: Callable[[], Snapshot]) -> Snapshot:
        """``stats()`` made where it is consistent, with every counter clamped to the highest
        value handed out before (see the module doc)."""

        def clamped() -> Snapshot:
            # Clamped where it is made, not where it is returned: a snapshot made on the loop
            # but returned after a later one must not have its counters raised to the later
            # one's (its gauges would not match them any more).
            return self._highest.clamp(stats())

        loop = self._loop
        if (
            self._phase == "running"
            and loop is not None
            and threading.get_ident() != self._loop_thread
        ):
            return self._read_on_loop(loop, clamped)
        if self._phase == "before":
            # The run cannot begin while this reads (run_started takes the lock before any
            # stream runs): a read begun before the run never straddles its first pushes.
            with self._lock:
                if self._phase == "before":
                    return clamped()
            return self.read(stats)  # it began meanwhile: read as during the run
        return clamped()

    def _read_on_loop(
        self, loop: asyncio.AbstractEventLoop, stats: Callable[[], Snapshot]
    ) -> Snapshot:
        """Call ``stats`` on ``loop`` and wait for it; read directly if the run ends
        meanwhile, the loop is closed, or it does not answer within ``LOOP_READ_TIMEOUT_S``."""
        future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def on_loop() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(stats())
                except BaseException as exc:  # handed to the reader
                    future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(on_loop)
        except RuntimeError:  # the loop is closed: nothing changes the counters any more
            return stats()
        deadline = time.monotonic() + LOOP_READ_TIMEOUT_S
        while True:
            try:
                return future.result(timeout=0.05)
            except TimeoutError:
                if self._phase == "running" and time.monotonic() < deadline:
                    continue
                if future.cancel():  # the loop has not begun it: it never will
                    return stats()

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


class Highest:
    """The highest value of each counter handed out so far: a snapshot's counters are raised
    to it (and it to them), under a lock, so a read that begins after another one returned
    never sees a smaller value, whichever threads made them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, Any] = {}  # shaped like the snapshots: counters at the leaves

    def clamp(self, snapshot: Snapshot) -> Snapshot:
        """Clamp every counter of ``snapshot`` (in place) and return it."""
        with self._lock:
            _clamp(snapshot, self._seen)
        return snapshot


def _clamp(node: dict[str, Any], seen: dict[str, Any]) -> None:
    for key, value in node.items():
        if type(value) is dict:  # a port or a stream may be named like a counter
            inner = seen.get(key)
            if inner is None:
                inner = seen[key] = {}
            _clamp(value, inner)
        elif key in COUNTERS:
            highest = seen.get(key)
            if highest is not None and value < highest:
                node[key] = highest
            else:
                seen[key] = value


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
