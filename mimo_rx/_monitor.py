"""Who is waiting on what: the bookkeeping behind deadlock detection.

Every running step has a :class:`StepRuntime`. When the step's own task suspends inside a
mimo_rx wait (``await push`` on a full input, ``pop``/``peek`` on an empty one, a plain-``def``
stream waiting for input or room) the wait is *parked* here. When every live step is parked
and none of the parked futures has been resolved, nothing inside the workflow can ever move
again: the :class:`Monitor` reports a deadlock instead of letting the run hang.

Waits that can make progress on their own (a sleep, I/O, an executor, a hot source, an Rx
timer) are not parked, so they never count towards a deadlock. Tasks that stream code spawns
(helpers) are tracked too, through a task factory installed on the loop while a run lasts: a
step is stuck only if each of its helpers is done or parked in a mimo_rx wait as well.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._ports import Input


class WaitSite(Protocol):
    """What a parked wait is waiting on: it can say so in a deadlock report."""

    def _describe_wait(self) -> str: ...


# The step whose code is running: set in each step's task, inherited by the tasks it spawns.
current_step: contextvars.ContextVar[StepRuntime | None] = contextvars.ContextVar(
    "mimo_rx_current_step", default=None
)


class StepRuntime:
    """The run-time state of one step that its ports report to."""

    __slots__ = (
        "busy",
        "events",
        "helper_waits",
        "helpers",
        "inputs",
        "loop",
        "monitor",
        "name",
        "task",
        "wait",
    )

    def __init__(self, name: str, monitor: Monitor | None, inputs: list[Input[Any]]) -> None:
        self.name = name
        self.monitor = monitor
        self.inputs = inputs
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the run's loop, once monitored
        # (what, port, future) of the wait the step's task is suspended in, if any.
        self.wait: tuple[str, WaitSite, asyncio.Future[None]] | None = None
        # Library work in flight on the step's behalf (Rx timers, executor jobs): while it is
        # positive the step can make progress without help, so it is never deadlocked.
        self.busy = 0
        # Tasks spawned by the step's code, and the mimo_rx futures those are parked on.
        self.helpers: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.helper_waits: dict[asyncio.Task[Any], asyncio.Future[None]] = {}
        # Where this step's transitions go (``workflow.events``): a function taking one event
        # dict, or ``None`` while nothing is subscribed, so unwatched runs pay one check per
        # pause, never per item.
        self.events: Callable[[dict[str, Any]], None] | None = None

    def park(
        self, what: str, port: WaitSite, future: asyncio.Future[None]
    ) -> asyncio.Task[Any] | None:
        """Record that a task of this step suspends on ``future``.

        Returns the task that parked (the step's own or a helper), or ``None`` when the wait
        is not tracked. Hand it to :meth:`unpark` when the wait ends.
        """
        # A producer paused on one of our inputs waits for the low-water mark. Once we stop
        # reading (in any of our tasks), the mark may never be reached, so let it fill
        # whatever room there is. This is about wake-ups, not bookkeeping: always done.
        for inp in self.inputs:
            if inp._producers and len(inp._items) < inp.threshold:
                inp._release_producers()
        monitor = self.monitor
        if monitor is None:
            return None
        task = asyncio.current_task(self.loop)  # passing the loop halves its cost
        if task is not self.task:
            if task is None or task not in self.helpers:
                return None
            self.helper_waits[task] = future
            return task
        self.wait = (what, port, future)
        monitor.parked += 1
        if monitor.parked >= monitor.live:
            monitor.schedule_check()
        return task

    def unpark(self, task: asyncio.Task[Any]) -> None:
        """The wait that :meth:`park` returned ``task`` for has ended."""
        monitor = self.monitor
        if monitor is None:
            return
        monitor.moves += 1
        if task is not self.task:
            self.helper_waits.pop(task, None)
            return
        self.wait = None
        monitor.parked -= 1

    def stuck(self) -> bool:
        """Parked on an unresolved wait, with no library work in flight and no helper that
        could still move (every helper is done or parked on an unresolved wait too)."""
        if self.wait is None or self.wait[2].done() or self.busy:
            return False
        for helper in list(self.helpers):
            if helper.done():
                continue
            waiting_on = self.helper_waits.get(helper)
            if waiting_on is None or waiting_on.done():
                return False
        return True

    def describe_wait(self) -> str:
        assert self.wait is not None
        what, port, _ = self.wait
        return f"stream {self.name!r} waits in {what} on {port._describe_wait()}"


# -- tracking the tasks that stream code spawns -------------------------------------------------

_TaskFactory = Callable[..., "asyncio.Future[Any]"]
# Per loop: how many runs are active, and the factory that was installed before ours.
_installed: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[int, _TaskFactory | None]
] = weakref.WeakKeyDictionary()


def track_spawned_tasks(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Tag tasks created from inside a step with that step, for as long as a run lasts.

    Chains to the loop's existing task factory. Returns the function that undoes it (the
    last run on a loop to finish restores the previous factory, unless someone replaced ours).
    """
    count, previous = _installed.get(loop, (0, None))
    if count == 0:
        previous = loop.get_task_factory()

        def factory(
            loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
        ) -> asyncio.Future[Any]:
            if previous is not None:
                task = previous(loop, coro, **kwargs)
            else:
                task = asyncio.Task(coro, loop=loop, **kwargs)
            step = current_step.get()
            if step is not None and isinstance(task, asyncio.Task):
                step.helpers.add(task)
            return task

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        _installed[loop] = (1, previous)
        ours = factory
    else:
        _installed[loop] = (count + 1, previous)
        ours = loop.get_task_factory()  # type: ignore[assignment]

    def undo() -> None:
        count, previous = _installed.get(loop, (1, None))
        if count > 1:
            _installed[loop] = (count - 1, previous)
            return
        _installed.pop(loop, None)
        if loop.get_task_factory() is ours:
            loop.set_task_factory(previous)

    return undo


class Monitor:
    """Counts live and parked steps of one run and calls ``on_deadlock`` when all are stuck.

    A verdict takes two looks. The first, ``CHECK_DELAY_S`` after a step parked while all
    others were parked too, finds every live step parked on an unresolved future. The run is
    then *suspected*, and confirmed only if no step has moved once every timer pending on the
    loop at that moment has fired, and at least ``GRACE_S`` has passed: a ``pop()`` under
    ``asyncio.timeout``, a helper task that sleeps before it pushes, or an Rx operator waiting
    on a thread of its own all get the chance to move things on first.
    """

    GRACE_S = 0.1
    CHECK_DELAY_S = 0.02

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
        runtime.loop = asyncio.get_running_loop()
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
        # Looked at a little later, not at once: with small buffers "every step parked" is
        # true for an instant at nearly every item (a woken task has not resumed yet), and
        # one look per CHECK_DELAY_S instead of one per item keeps the hot path cheap.
        if not self._check_pending:
            self._check_pending = True
            asyncio.get_running_loop().call_later(self.CHECK_DELAY_S, self._check)

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
        return all(rt.stuck() for rt in self._waiting())

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
