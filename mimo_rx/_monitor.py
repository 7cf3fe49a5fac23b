"""Who is waiting on what: the bookkeeping behind deadlock detection.

Every running step has a :class:`StepRuntime`. When the step's own task suspends inside a
mimo_rx wait (``await push`` on a full input, ``pop``/``peek`` on an empty one, a plain-``def``
stream waiting for input or room) the wait is *parked* here. When every live step is parked
and none of the parked futures has been resolved, nothing inside the workflow can ever move
again: the :class:`Monitor` reports a deadlock instead of letting the run hang.

Waits that can make progress on their own (a sleep, I/O, an executor, a hot source, an Rx
timer) are not parked, so they never count towards a deadlock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._ports import Input, Output


class StepRuntime:
    """The run-time state of one step that its ports report to."""

    __slots__ = ("busy", "inputs", "monitor", "name", "task", "wait")

    def __init__(self, name: str, monitor: Monitor | None, inputs: list[Input[Any]]) -> None:
        self.name = name
        self.monitor = monitor
        self.inputs = inputs
        self.task: asyncio.Task[None] | None = None
        # (what, port, future) of the wait the step's task is suspended in, if any.
        self.wait: tuple[str, Input[Any] | Output[Any], asyncio.Future[None]] | None = None
        # Library work in flight on the step's behalf (Rx timers, executor jobs): while it is
        # positive the step can make progress without help, so it is never deadlocked.
        self.busy = 0

    def park(self, what: str, port: Input[Any] | Output[Any], future: asyncio.Future[None]) -> bool:
        """Record that the step's task suspends on ``future``; returns whether it was recorded.

        Only the step's own task is tracked: a helper task a user spawns inside a stream may
        wait on a port while the stream itself does something else.
        """
        monitor = self.monitor
        if monitor is None or asyncio.current_task() is not self.task:
            return False
        self.wait = (what, port, future)
        monitor.parked += 1
        # A producer paused on one of our inputs waits for the low-water mark. Once we stop
        # reading, the mark may never be reached, so let it fill whatever room there is.
        for inp in self.inputs:
            if inp._producers and len(inp._items) < inp.threshold:
                inp._release_producers()
        if monitor.parked >= monitor.live:
            monitor.schedule_check()
        return True

    def unpark(self) -> None:
        self.wait = None
        if self.monitor is not None:
            self.monitor.parked -= 1

    def describe_wait(self) -> str:
        assert self.wait is not None
        what, port, _ = self.wait
        return f"stream {self.name!r} waits in {what} on {port._describe_wait()}"


class Monitor:
    """Counts live and parked steps of one run and calls ``on_deadlock`` when all are stuck."""

    def __init__(self, on_deadlock: Callable[[list[str]], None]) -> None:
        self.on_deadlock = on_deadlock
        self.runtimes: list[StepRuntime] = []
        self.live = 0
        self.parked = 0
        self._check_pending = False

    def add(self, runtime: StepRuntime) -> None:
        runtime.monitor = self
        self.runtimes.append(runtime)
        self.live += 1

    def finished(self, runtime: StepRuntime) -> None:
        """A step's task ended: one fewer live step; the others may now all be stuck."""
        self.live -= 1
        if runtime.wait is not None:  # ended while parked (cancelled): not parked any more
            runtime.wait = None
            self.parked -= 1
        if self.live and self.parked >= self.live:
            self.schedule_check()

    def schedule_check(self) -> None:
        # Checked one loop iteration later, so that a wake-up already decided (a future whose
        # result is set but whose task has not resumed yet) is seen as progress.
        if not self._check_pending:
            self._check_pending = True
            asyncio.get_running_loop().call_soon(self._check)

    def recheck(self) -> None:
        """Called when library work on a step's behalf ends (``busy`` dropped to zero)."""
        if self.live and self.parked >= self.live:
            self.schedule_check()

    def _check(self) -> None:
        self._check_pending = False
        if not self.live or self.parked < self.live:
            return
        waiting = [rt for rt in self.runtimes if rt.task is not None and not rt.task.done()]
        for rt in waiting:
            if rt.wait is None or rt.wait[2].done() or rt.busy:
                return
        self.on_deadlock([rt.describe_wait() for rt in waiting])
