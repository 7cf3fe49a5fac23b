"""LoopScheduler: Rx time operators on the workflow's loop, visible to the deadlock monitor."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from reactivex import abc as rx_abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.internal.basic import default_now
from reactivex.scheduler import CurrentThreadScheduler
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler

from ._handoff import on_loop_thread
from ._monitor import StepRuntime


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
        # ``now`` moves with the loop's clock (a virtual one under mimo_rx.testing), so the
        # operators that read the time agree with those that wait on the loop.
        self._epoch = default_now()
        self._t0 = loop.time()

    @property
    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=self._loop.time() - self._t0)

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
            if idle and self.runtime.monitor is not None and on_loop_thread(self._loop):
                self.runtime.monitor.recheck()

        return finish

    def schedule(self, action: Any, state: Any = None) -> rx_abc.DisposableBase:
        if on_loop_thread(self._loop):
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
