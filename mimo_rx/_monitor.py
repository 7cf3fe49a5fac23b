"""Who is waiting on what: the bookkeeping behind deadlock detection.

Every running step has a :class:`StepRuntime`. When a task of the step suspends inside a
mimo_rx wait (``await push`` on a full input, ``pop``/``peek`` on an empty one, a plain-``def``
stream waiting for input or room) the wait is *parked* here. The :class:`Monitor` reports a
deadlock when every step that is not external (an inlet or outlet, fed or read by application
code) is stuck and none of the waits can be ended by a step that can still move.

Design (contract section 9: the verdict depends only on the workflow's own tasks and timers):

* **Whose tasks.** A step's tasks are its own task and its *helpers*: the tasks its code
  spawns, tagged by a task factory installed on the loop while a run lasts. Nothing else on
  the loop is looked at: not the caller's ``wait_for`` or ``asyncio.timeout``, not other
  application tasks or timers, not a web server. The loop's private timer list is never
  read (uvloop has none).
* **Locally stuck.** A task is stuck when it is parked on an unresolved mimo_rx future, or
  when it awaits only stuck helpers: a helper task (``await task``), a ``gather`` of them, or
  the end of a ``TaskGroup`` whose tasks are helpers. That is read from ``Task._fut_waiter``
  and the TaskGroup's done-callback on its tasks, defensively: whatever is not recognised can
  move. A step is stuck when its own task and every live helper are, and no library work runs
  on its behalf (``busy``: Rx timers, executor jobs).
* **Wait-for analysis**, so that an open inlet (which can always send) or an outlet (which
  the application may read at any time) neither is a deadlock nor hides one elsewhere. When
  every non-external step is stuck, those steps are the candidates. A candidate is removed
  when a step that is not a candidate can end one of its waits: a pop on an empty input ends
  when any step feeding it through an open output moves; a push ends when the consumers of
  all the full inputs it waits for move; a wait on several inputs ends when any feeder of any
  of them moves. Repeated to a fixed point, what remains is a deadlock among exactly those
  steps, and only they are named (not the ones waiting on an inlet or an outlet).
* **Timers of the workflow's own tasks.** A parked wait inside an entered ``asyncio.timeout``
  (which ``wait_for`` also uses from Python 3.12) ends when the timeout fires. Those timeouts
  are found only when a verdict is about to be given, by ``gc.get_referrers`` on the
  deadlocked steps' tasks (an ``asyncio.Timeout`` holds its task): the verdict then waits for
  the earliest deadline and looks again. Never per item, never per park: the scan of the heap
  happens once per confirmation of a suspected deadlock, which is rare, whereas recording
  timeouts when a task parks would cost a lookup per pause. The caller's own timeout is never
  found, because the caller's task is not a task of the workflow.
* **When to look.** A look is scheduled ``CHECK_DELAY_S`` after a park (or a step ending, or
  library work ending) when every live step might be stuck: parked, external, or a step with
  helpers (its own task may be awaiting them). At most one look is pending at a time, so the
  cost stays per park, not per item. A task that starts awaiting its helpers parks nothing,
  so while every step is stuck or has helpers, the monitor looks again every ``POLL_S``.
* **Two looks.** A suspected deadlock is confirmed ``GRACE_S`` later (or after the earliest
  timeout) only if no parked wait has ended meanwhile: a task woken but not yet resumed gets
  its chance first.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._ports import Input


class WaitSite(Protocol):
    """What a parked wait is waiting on (a port, or several inputs waited on together).

    The ports implement it, so this module never needs to know their classes: imports flow
    one way, from the ports to the monitor.
    """

    def _describe_wait(self) -> str:
        """The wait, for a deadlock report."""
        ...

    def _wait_can_end(self, stuck: set[StepRuntime]) -> bool:
        """Can a step outside ``stuck`` end a wait here (or will it end by itself)?"""
        ...


# (what, port, future): a wait in progress, e.g. ("pop()", an Input, the future it awaits).
Wait = tuple[str, WaitSite, "asyncio.Future[None]"]

# The step whose code is running: set in each step's task, inherited by the tasks it spawns.
current_step: contextvars.ContextVar[StepRuntime | None] = contextvars.ContextVar(
    "mimo_rx_current_step", default=None
)


class StepRuntime:
    """The run-time state of one step that its ports report to."""

    __slots__ = (
        "busy",
        "events",
        "external",
        "helper_waits",
        "helpers",
        "inputs",
        "loop",
        "monitor",
        "name",
        "spawned",
        "task",
        "wait",
    )

    def __init__(self, name: str, monitor: Monitor | None, inputs: list[Input[Any]]) -> None:
        self.name = name
        self.monitor = monitor
        self.inputs = inputs
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the run's loop, once monitored
        # An inlet or outlet: application code moves it, so it is never stuck.
        self.external = False
        # The wait the step's own task is suspended in, if any.
        self.wait: Wait | None = None
        # Library work in flight on the step's behalf (Rx timers, executor jobs): while it is
        # positive the step can make progress without help, so it is never deadlocked.
        self.busy = 0
        # Tasks spawned by the step's code, and the mimo_rx waits those are parked in.
        self.helpers: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.helper_waits: dict[asyncio.Task[Any], Wait] = {}
        self.spawned = False  # the step has had a helper (counted in Monitor.with_helpers)
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
        if monitor is None or self.external:
            return None
        task = asyncio.current_task(self.loop)  # passing the loop halves its cost
        if task is not self.task:
            if task is None or task not in self.helpers:
                return None
            self.helper_waits[task] = (what, port, future)
        else:
            self.wait = (what, port, future)
            monitor.parked += 1
        if monitor.parked + monitor.external + monitor.with_helpers >= monitor.live:
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

    # -- the verdict's view (read only when a look is due, never per item) --------------------

    def stuck(self) -> bool:
        """No task of the step can move: its own task and every live helper are parked on
        unresolved mimo_rx futures or await stuck helpers, and no library work is in flight."""
        task = self.task
        if self.external or self.busy or task is None or task.done():
            return False
        if not self._task_stuck(task, set()):
            return False
        return all(helper.done() or self._task_stuck(helper, set()) for helper in self._live())

    def waits(self) -> list[Wait]:
        """The unresolved mimo_rx waits of the step's tasks (its own first)."""
        found = [self.wait] if self.wait is not None and not self.wait[2].done() else []
        for helper in self._live():
            wait = self.helper_waits.get(helper)
            if wait is not None and not wait[2].done():
                found.append(wait)
        return found

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The step's own task and its live helpers."""
        own = [self.task] if self.task is not None and not self.task.done() else []
        return own + self._live()

    def describe_waits(self) -> list[str]:
        """One line per stuck task of the step, for the deadlock report."""
        lines = []
        if self.wait is not None:
            lines.append(f"stream {self.name!r} waits in {_describe(self.name, self.wait)}")
        else:
            lines.append(f"stream {self.name!r} waits for the helper tasks it spawned")
        for helper in self._live():
            wait = self.helper_waits.get(helper)
            if wait is not None:
                lines.append(
                    f"stream {self.name!r} (helper task {helper.get_name()!r}) waits in "
                    f"{_describe(self.name, wait)}"
                )
        return lines

    def _live(self) -> list[asyncio.Task[Any]]:
        return [helper for helper in list(self.helpers) if not helper.done()]

    def _task_stuck(self, task: asyncio.Task[Any], seen: set[asyncio.Task[Any]]) -> bool:
        """``task`` (the step's or a helper) can only move if a mimo_rx wait ends."""
        if task.done():
            return True
        if task in seen:  # awaits itself through others: not a case to guess about
            return False
        seen.add(task)
        wait = self.wait if task is self.task else self.helper_waits.get(task)
        if wait is not None:
            return not wait[2].done()
        awaited = getattr(task, "_fut_waiter", None)
        if awaited is None:  # running, or ready to run
            return False
        children = self._awaited_helpers(awaited)
        if children is None:
            return False
        return all(self._task_stuck(child, seen) for child in children)

    def _awaited_helpers(self, awaited: object) -> list[asyncio.Task[Any]] | None:
        """The helpers whose end ``awaited`` stands for, or ``None`` if it is anything else:
        a helper task itself, a ``gather`` of helpers, or the end of a TaskGroup of helpers."""
        helpers = self.helpers
        if isinstance(awaited, asyncio.Task):
            return [awaited] if awaited in helpers else None
        if not isinstance(awaited, asyncio.Future) or awaited.done():
            return None
        children = getattr(awaited, "_children", None)  # asyncio.gather's _GatheringFuture
        if isinstance(children, list):
            return _only_helpers(children, helpers)
        group = _task_group_ending_with(awaited, self._live())
        if group is not None:
            return _only_helpers(getattr(group, "_tasks", None) or (), helpers)
        return None


def _only_helpers(
    futures: Iterable[object], helpers: weakref.WeakSet[asyncio.Task[Any]]
) -> list[asyncio.Task[Any]] | None:
    """``futures`` as helper tasks, or ``None`` if one is not a helper and not done."""
    tasks = []
    for fut in futures:
        if isinstance(fut, asyncio.Task) and fut in helpers:
            tasks.append(fut)
        elif not (isinstance(fut, asyncio.Future) and fut.done()):
            return None
    return tasks


def _task_group_ending_with(
    fut: asyncio.Future[Any], tasks: list[asyncio.Task[Any]]
) -> asyncio.TaskGroup | None:
    """The TaskGroup whose ``__aexit__`` awaits ``fut``, found through the done-callback
    (``TaskGroup._on_task_done``) it puts on each of its tasks."""
    for task in tasks:
        for entry in getattr(task, "_callbacks", None) or ():
            callback = entry[0] if isinstance(entry, tuple) else entry
            group = getattr(callback, "__self__", None)
            if (
                isinstance(group, asyncio.TaskGroup)
                and getattr(group, "_on_completed_fut", None) is fut
            ):
                return group
    return None


def _describe(step_name: str, wait: Wait) -> str:
    what, port, _ = wait
    owner = getattr(port, "stream_name", step_name)
    if owner != step_name:  # the port of an operator stage fused behind this step
        return f"{what} on {port._describe_wait()} of fused stage {owner!r}"
    return f"{what} on {port._describe_wait()}"


def _can_end(wait: Wait, candidates: set[StepRuntime]) -> bool:
    """Can a step outside ``candidates`` end ``wait`` (or will it end by itself)?"""
    return wait[1]._wait_can_end(candidates)


def deadlocked(candidates: list[StepRuntime]) -> list[StepRuntime]:
    """The candidates (stuck steps) none of whose waits a step outside the set can end."""
    remaining = set(candidates)
    changed = True
    while changed:
        changed = False
        for rt in list(remaining):
            waits = rt.waits()
            if not waits or any(_can_end(wait, remaining) for wait in waits):
                remaining.discard(rt)
                changed = True
    return [rt for rt in candidates if rt in remaining]


def earliest_timeout(tasks: list[asyncio.Task[Any]]) -> float | None:
    """The earliest deadline of an entered ``asyncio.timeout`` that one of ``tasks`` is in.

    ``asyncio.Timeout`` (3.11+; ``wait_for`` uses it from 3.12) keeps its task in ``_task``,
    so it refers to the task: the heap is searched once for objects that do. A Timeout whose
    attributes live in a separate ``__dict__`` is found through that dict.
    """
    if not tasks:
        return None
    wanted = set(tasks)
    deadlines = []
    referrers = gc.get_referrers(*tasks)
    dicts = [
        r
        for r in referrers
        if isinstance(r, dict) and isinstance(r.get("_task"), asyncio.Task) and r["_task"] in wanted
    ]
    if dicts:
        referrers += gc.get_referrers(*dicts)
    for timeout in referrers:
        if not isinstance(timeout, asyncio.Timeout):
            continue
        if getattr(timeout, "_task", None) not in wanted:
            continue
        state = getattr(getattr(timeout, "_state", None), "name", "ENTERED")
        when = timeout.when()
        if state == "ENTERED" and when is not None:
            deadlines.append(when)
    return min(deadlines, default=None)


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
                if not step.spawned:
                    step.spawned = True
                    if step.monitor is not None:
                        step.monitor.with_helpers += 1
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
    """Counts the live steps of one run and calls ``on_deadlock`` when some are deadlocked.

    See the module docstring for what a verdict looks at and when.
    """

    GRACE_S = 0.1
    CHECK_DELAY_S = 0.02
    POLL_S = 0.25
    TIMEOUT_MARGIN_S = 0.01  # after a stream's own timeout is due: let it fire and unpark

    def __init__(self, on_deadlock: Callable[[list[str]], None]) -> None:
        self.on_deadlock = on_deadlock
        self.runtimes: list[StepRuntime] = []
        self.live = 0
        self.parked = 0  # live steps whose own task is parked
        self.external = 0  # live external steps (inlets, outlets)
        self.with_helpers = 0  # live steps that have spawned a task
        self.moves = 0  # parked waits that ended: any change means progress
        self._check_pending = False
        self._suspect: asyncio.TimerHandle | None = None
        self._moves_at_suspicion = 0
        self._closed = False

    def add(self, runtime: StepRuntime) -> None:
        runtime.monitor = self
        runtime.loop = asyncio.get_running_loop()
        self.runtimes.append(runtime)
        self.live += 1
        if runtime.external:
            self.external += 1
        if runtime.spawned:
            self.with_helpers += 1

    def finished(self, runtime: StepRuntime) -> None:
        """A step's task ended: one fewer live step; the others may now all be stuck."""
        self.live -= 1
        self.moves += 1
        if runtime.wait is not None:  # ended while parked (cancelled): not parked any more
            runtime.wait = None
            self.parked -= 1
        if runtime.external:
            self.external -= 1
        if runtime.spawned:
            self.with_helpers -= 1
        self.recheck()

    def recheck(self) -> None:
        """Something changed that may leave every live step stuck: look soon."""
        if self.live and self.parked + self.external + self.with_helpers >= self.live:
            self.schedule_check()

    def schedule_check(self, delay: float | None = None) -> None:
        # Looked at a little later, not at once: with small buffers "every step parked" is
        # true for an instant at nearly every item (a woken task has not resumed yet), and
        # one look per CHECK_DELAY_S instead of one per item keeps the hot path cheap.
        if not self._check_pending and not self._closed:
            self._check_pending = True
            asyncio.get_running_loop().call_later(
                self.CHECK_DELAY_S if delay is None else delay, self._check
            )

    def close(self) -> None:
        """The run is over: drop a pending confirmation and look no more."""
        self._closed = True
        if self._suspect is not None:
            self._suspect.cancel()
            self._suspect = None

    def _live(self) -> list[StepRuntime]:
        return [rt for rt in self.runtimes if rt.task is not None and not rt.task.done()]

    def _analyse(self) -> list[StepRuntime]:
        """The deadlocked steps, if every live non-external step is stuck (else none).

        While the only obstacle is steps with live helpers (their own task may start awaiting
        stuck helpers without parking anything), a poll is scheduled.
        """
        if not self.live or self.parked + self.external + self.with_helpers < self.live:
            return []
        candidates = []
        waiting_on_helpers = False
        for rt in self._live():
            if rt.external:
                continue
            if rt.stuck():
                candidates.append(rt)
            elif rt.spawned and rt._live():
                waiting_on_helpers = True
            else:
                return []  # moving: its next park (or its end) triggers the next look
        if waiting_on_helpers:
            self.schedule_check(self.POLL_S)
            return []
        return deadlocked(candidates)

    def _check(self) -> None:
        self._check_pending = False
        if self._suspect is None and not self._closed:
            self._suspect_if_stuck()

    def _suspect_if_stuck(self) -> None:
        """First look: if some steps are deadlocked, confirm it ``GRACE_S`` later."""
        if self._analyse():
            self._moves_at_suspicion = self.moves
            self._suspect = asyncio.get_running_loop().call_later(self.GRACE_S, self._confirm)

    def _confirm(self) -> None:
        self._suspect = None
        steps = self._analyse()
        if not steps:
            return
        if self.moves != self._moves_at_suspicion:
            self._suspect_if_stuck()  # something moved meanwhile and is stuck again: look anew
            return
        loop = asyncio.get_running_loop()
        due = earliest_timeout([task for rt in steps for task in rt.tasks()])
        if due is not None:  # a stream's own timeout will end one of the waits: wait for it
            self._moves_at_suspicion = self.moves
            delay = max(due - loop.time(), 0.0) + self.TIMEOUT_MARGIN_S
            self._suspect = loop.call_later(delay, self._confirm)
            return
        self.on_deadlock([line for rt in steps for line in rt.describe_waits()])
