"""The virtual-time event loop behind :func:`mimo_rx.testing.run`.

A :class:`VirtualLoop` is the standard selector loop with two changes:

* ``time()`` reads an integer count of nanoseconds, so sums of delays are exact at any time.
* Its selector never sleeps for a timer. When a task is ready, time stands still. When none is,
  the selector is polled with a zero timeout (I/O comes first); if nothing arrived, the clock
  jumps to the next timer. While work sent to another thread is unfinished (its result has
  not reached the loop yet), the clock runs at real speed instead: the wait for the next timer
  takes its real time, so a jump never overtakes the thread.

When nothing can ever run again (no task ready, no timer but the deadlock monitors', no I/O
awaited, no thread work) every running workflow's monitor is asked for its verdict at once;
if none is given, :func:`run` raises :class:`Stalled`. With ``autojump=False`` the clock moves
only inside :func:`advance`, and pending timers do not keep a stalled run alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .._handoff import on_loop_thread
from .._monitor import Monitor

T = TypeVar("T")

_NS = 1_000_000_000


class Stalled(RuntimeError):
    """``main`` waits for something that can never happen: no task can run, no timer is due
    (or, with ``autojump=False``, time is not advanced), no I/O or thread work is pending.

    The message names every task still waiting and where it waits.
    """


class _Stall(BaseException):
    """Raised out of the selector to end ``run_until_complete`` (internal)."""


def _is_monitors(handle: asyncio.TimerHandle) -> bool:
    """A timer of a deadlock monitor (its checks), not one of the application."""
    return isinstance(getattr(handle._callback, "__self__", None), Monitor)  # type: ignore[attr-defined]


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


class _VirtualSelector:
    """Wraps the real selector: ``select`` is the loop's virtual-time policy."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.loop: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        return self.loop._select(self.selector, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.selector, name)


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock is virtual (see the module docstring)."""

    def __init__(self, autojump: bool = True) -> None:
        self._now_ns = 0
        self.autojump = autojump
        selector = _VirtualSelector(selectors.DefaultSelector())
        super().__init__(selector)  # type: ignore[arg-type]
        selector.loop = self
        self._clock_resolution = 1e-9
        self._thread_lock = threading.Lock()
        self._thread_work = 0
        self._advance_to: list[int] = []  # targets of advance() calls in progress
        # mimo_rx's deadlock monitors register here (Monitor.add), to be asked at once.
        self.mimo_monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()

    # -- the clock ---------------------------------------------------------------------------

    def time(self) -> float:
        return self._now_ns / _NS

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: Any = None,
    ) -> asyncio.TimerHandle:
        # Counted in nanoseconds from the integer clock: no float drift.
        when = (self._now_ns + max(_ns(delay), 0)) / _NS
        return self.call_at(when, callback, *args, context=context)

    # -- thread work -------------------------------------------------------------------------

    def mimo_thread_work(self) -> Callable[[], None]:
        """Work was sent to another thread: the clock runs at real speed until the returned
        function is called (from any thread, once the work's result was handed to the loop)."""
        with self._thread_lock:
            self._thread_work += 1
        finished = False

        def finish() -> None:
            nonlocal finished
            if not on_loop_thread(self):
                # After the result's own call_soon_threadsafe: the result reaches the loop first.
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self.call_soon_threadsafe(finish)
                return
            with self._thread_lock:
                if not finished:
                    finished = True
                    self._thread_work -= 1

        return finish

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        finish = self.mimo_thread_work()
        future.add_done_callback(lambda _: finish())
        return future

    async def shutdown_default_executor(self, *args: Any) -> None:
        finish = self.mimo_thread_work()  # joining the executor's threads happens in a thread
        try:
            await super().shutdown_default_executor(*args)
        finally:
            finish()

    # -- the selector's policy ---------------------------------------------------------------

    def _next_timer(self, monitors_too: bool) -> int | None:
        """The earliest pending timer (in ns), ignoring the deadlock monitors' unless asked."""
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if not scheduled:
            return None
        head = scheduled[0]  # the heap's earliest (the loop drops cancelled ones at the head)
        if not head.cancelled() and (monitors_too or not _is_monitors(head)):
            return _ns(head.when())
        best: float | None = None
        for handle in scheduled:
            if handle.cancelled():
                continue
            if not monitors_too and _is_monitors(handle):
                continue
            if best is None or handle.when() < best:
                best = handle.when()
        return None if best is None else _ns(best)

    def _io_awaited(self, selector: selectors.BaseSelector) -> bool:
        own = self._ssock.fileno()  # type: ignore[attr-defined]
        return any(fd != own for fd in selector.get_map())

    def _select(
        self, selector: selectors.BaseSelector, timeout: float | None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:  # something is ready: time stands still
            return selector.select(0)
        events = selector.select(0)  # I/O is polled before time jumps
        if events:
            return events
        if self._thread_work and self.autojump:
            # Real speed: wait for the next timer (or the thread's result) for real.
            started = time.perf_counter_ns()
            events = selector.select(timeout)
            self._now_ns += time.perf_counter_ns() - started
            return events
        due = self._next_timer(monitors_too=False)
        if due is not None:
            limit = max(self._advance_to, default=None)
            if self.autojump or (limit is not None and due <= limit):
                # The monitors' own timers due before it come first, in order.
                self._now_ns = max(self._now_ns, self._next_timer(monitors_too=True) or due)
                return []
        if self._thread_work:  # autojump=False: time stands still while the thread works
            return selector.select(0.05)
        # Only the deadlock monitors' timers are left: a running workflow gets its verdict now.
        if any([monitor.settle() for monitor in list(self.mimo_monitors)]):
            return []
        if self._io_awaited(selector):
            return selector.select(None)  # only I/O can move things on: wait for it for real
        raise _Stall  # nothing can ever run again

    def _advance(self, target_ns: int) -> None:
        self._advance_to.append(target_ns)

    def _advanced(self, target_ns: int) -> None:
        self._advance_to.remove(target_ns)


def _loop() -> VirtualLoop:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if not isinstance(loop, VirtualLoop):
        raise RuntimeError(
            "mimo_rx.testing.now() and advance() work only inside mimo_rx.testing.run() "
            "(or a test marked @pytest.mark.mimo_virtual)"
        )
    return loop


def now() -> float:
    """The virtual time in seconds since the loop started (0.0 at the start).

    Raises:
        RuntimeError: called outside :func:`run`.
    """
    return _loop().time()


async def advance(seconds: float) -> None:
    """Move the virtual clock forward by ``seconds``, running every timer due on the way in
    order; returns once the clock has reached that time. The way to move time when
    ``run(..., autojump=False)``; with autojump it is a sleep.

    Raises:
        ValueError: ``seconds`` is negative.
        RuntimeError: called outside :func:`run`.
    """
    if seconds < 0:
        raise ValueError(f"advance() takes a duration >= 0, got {seconds!r}")
    loop = _loop()
    target = loop._now_ns + _ns(seconds)
    reached: asyncio.Future[None] = loop.create_future()

    def reach() -> None:
        if not reached.done():
            reached.set_result(None)

    handle = loop.call_at(target / _NS, reach)
    loop._advance(target)
    try:
        await reached
    finally:
        handle.cancel()
        loop._advanced(target)


def _describe_tasks(loop: asyncio.AbstractEventLoop) -> str:
    lines = []
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        if task.done():
            continue
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", repr(coro))
        where = ""
        stack = task.get_stack(limit=1)
        if stack:
            frame = stack[-1]
            summary = traceback.extract_stack(frame, limit=1)[-1]
            where = f" at {summary.filename}:{summary.lineno} ({summary.line})"
        lines.append(f"  task {task.get_name()!r} ({name}) waits{where}")
    return "\n".join(lines)


def run(
    main: Callable[[], Coroutine[Any, Any, T]] | Coroutine[Any, Any, T], *, autojump: bool = True
) -> T:
    """Run ``main`` like :func:`asyncio.run`, on an event loop with a virtual clock.

    Args:
        main: a coroutine function (called with no arguments) or a coroutine.
        autojump: when every task waits, jump the clock to the next timer. ``False``: time
            moves only by ``await advance(seconds)``.

    Returns:
        What ``main`` returned. Tasks left when it returns are cancelled.

    Raises:
        Stalled: ``main`` waits forever and nothing can ever run again (the message names
            the waiting tasks).
    """
    coro = main() if callable(main) else main
    if not asyncio.iscoroutine(coro):
        raise TypeError(f"testing.run() takes a coroutine or a coroutine function, got {main!r}")
    with asyncio.Runner(loop_factory=lambda: VirtualLoop(autojump)) as runner:
        loop = runner.get_loop()
        try:
            return runner.run(coro)
        except _Stall:
            message = (
                f"main waits forever at virtual time {loop.time():g} s: no task can run, "
                + (
                    "no timer is pending"
                    if autojump
                    else "and time moves only by testing.advance() (autojump=False)"
                )
                + ", no I/O or thread work is pending. Waiting:\n"
                + _describe_tasks(loop)
            )
        finally:
            _cancel_stuck(loop)
    raise Stalled(message)


def _cancel_stuck(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left, as Runner.close would; tasks that stall even then are dropped."""
    if loop.is_closed():
        return
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    with contextlib.suppress(_Stall):
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
