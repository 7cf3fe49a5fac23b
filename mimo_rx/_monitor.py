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
            self.monitor.moves += 1

    def describe_wait(self) -> str:
        assert self.wait is not None
        what, port, _ = self.wait
        return f"stream {self.name!r} waits in {what} on {port._describe_wait()}"


class Monitor:
    """Counts live and parked steps of one run and calls ``on_deadlock`` when all are stuck.

    A verdict takes two looks. The first, one loop iteration after the last step parked,
    finds every live step parked on an unresolved future. The run is then *suspected*, and
    confirmed only if no step has moved once every timer pending on the loop at that moment
    has fired, and at least ``GRACE_S`` has passed: a ``pop()`` under ``asyncio.timeout``, a
    helper task that sleeps before it pushes, or an Rx operator waiting on a thread of its own
    all get the chance to move things on first.
    """

    GRACE_S = 0.1

    def __init__(self, on_deadlock: Callable[[list[str]], None]) -> None:
        self.on_deadlock = on_deadlock
        self.runtimes: list[StepRuntime] = []
        self.live = 0
        self.parked = 0
        self.moves = 0  # parked waits that ended: any change means progress
        self._check_pending = False
        self._suspect: asyncio.TimerHandle | None = None
        self._moves_at_suspicion = 0
        self.caller: asyncio.Task[Any] | None = None  # the task awaiting start()

    def add(self, runtime: StepRuntime) -> None:
        runtime.monitor = self
        self.runtimes.append(runtime)
        self.live += 1

    def finished(self, runtime: StepRuntime) -> None:
        """A step's task ended: one fewer live step; the others may now all be stuck."""
        self.live -= 1
        self.moves += 1
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

    def close(self) -> None:
        """The run is over: drop a pending confirmation."""
        if self._suspect is not None:
            self._suspect.cancel()
            self._suspect = None

    def _all_stuck(self) -> bool:
        if not self.live or self.parked < self.live:
            return False
        return all(
            rt.wait is not None and not rt.wait[2].done() and not rt.busy for rt in self._waiting()
        )

    def _waiting(self) -> list[StepRuntime]:
        return [rt for rt in self.runtimes if rt.task is not None and not rt.task.done()]

    def _check(self) -> None:
        self._check_pending = False
        if self._suspect is not None or not self._all_stuck():
            return
        loop = asyncio.get_running_loop()
        due = max((t.when() for t in self._timers_that_may_help(loop)), default=0.0)
        self._moves_at_suspicion = self.moves
        self._suspect = loop.call_at(max(due, loop.time() + self.GRACE_S), self._confirm)

    def _timers_that_may_help(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
        """Timers pending on the loop, except those of the task awaiting ``start()``.

        The caller's own timeout (``asyncio.timeout``, ``wait_for``) must not delay the
        verdict: the point of reporting a deadlock is not to wait for that timeout. Any other
        timer (a sleep in a stream or in a helper task, a stream's ``asyncio.timeout``) may
        wake something that moves the graph. Reads asyncio internals defensively: on a loop
        without them only the grace period applies.
        """
        timers: list[asyncio.TimerHandle] = list(getattr(loop, "_scheduled", ()))
        return [t for t in timers if not t.cancelled() and _timer_task(t) is not self.caller]

    def _confirm(self) -> None:
        self._suspect = None
        if not self._all_stuck():
            return
        if self.moves != self._moves_at_suspicion:
            self._check()  # something moved meanwhile and is stuck again: look anew
            return
        self.on_deadlock([rt.describe_wait() for rt in self._waiting()])


def _timer_task(timer: asyncio.TimerHandle) -> asyncio.Task[Any] | None:
    """The task a timer will wake, when asyncio's internals tell (else ``None``)."""
    callback = getattr(timer, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Timeout):
        task = getattr(owner, "_task", None)
        return task if isinstance(task, asyncio.Task) else None
    for arg in getattr(timer, "_args", None) or ():
        if isinstance(arg, asyncio.Future):
            for entry in getattr(arg, "_callbacks", None) or ():
                waker = entry[0] if isinstance(entry, tuple) else entry
                task = getattr(waker, "__self__", None)
                if isinstance(task, asyncio.Task):
                    return task
    return None
