"""Running inside an application: inlets, outlets, ``running()`` and ``as_observable()``.

A workflow can live inside a long-running asyncio program. Application code feeds it through
**inlets** and reads from it through **outlets**, with the same back-pressure as streams::

    orders = workflow.add_inlet("orders")        # a step with one output: out
    results = workflow.add_outlet("results")     # a step with one input: x
    async with workflow.running():               # the run has started when the body begins
        await orders.send(order)                 # suspends while a buffer it feeds is full
        orders.close()
        async for result in results:             # ends when everything upstream has closed
            ...

* An inlet is a source. ``await send`` pushes from the caller's task like ``await push``;
  ``send_threadsafe`` hands items from other threads to the loop through the same
  :class:`~._handoff.Handoff` that cold observables use, whose capacity is the room left
  downstream: the sending thread blocks while the graph is full, so back-pressure reaches it.
  The inlet's own task delivers what threads sent, in the order each thread sent it, and ends
  (closing ``out``) once the inlet is closed and every send that began before has delivered.
* An outlet's input is an ordinary bounded input read by the application. Its task only waits
  for the input to close; items still buffered when the run ends stay readable. When the run
  fails, readers get the run's exception.
* Both are ``_external`` steps: deadlock detection never counts them as stuck, and a wait they
  can end (a pop on an input an open inlet feeds, a push into an outlet) is not a deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import reactivex
from reactivex import abc as rx_abc
from reactivex.disposable import Disposable

from ._errors import (
    ClosedError,
    EndOfStream,
    ItemFailed,
    WorkflowCancelled,
    WorkflowError,
    WouldBlock,
)
from ._handoff import Handoff, on_loop_thread
from ._lineage import TrackedOutput, Waiter, decref, new_ticket
from ._ports import Input, Output
from ._step import Step
from ._stream import Ports, Stream
from ._unawaited import recognise

if TYPE_CHECKING:
    from ._workflow import Workflow


# -- inlets ------------------------------------------------------------------------------------


class InletStream(Stream):
    """The stream behind an inlet: delivers what threads send, and ends when closed."""

    OUT = ("out",)
    _external = True
    _tracks_late = True  # send_and_wait tracks what it sends from its first call on

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self._out: Output[Any] = self._outputs["out"]
        self._closed = False  # close() was called: new sends are refused
        self._ended = False  # the run is over
        self._accepting = False  # started, not closed, not ended: sends go straight through
        self._loop_thread: int | None = None
        self._started = threading.Event()  # the run has begun (for send_threadsafe)
        self._started_async: asyncio.Event | None = None  # the same, for await send
        self._in_flight = 0  # loop sends that began and have not delivered yet
        self._handoff: Handoff | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[list[Any]]] = set()  # send_and_wait calls pending
        self._frozen = False  # the run failed or was cancelled: no send_and_wait is done

    # -- run-time hooks (on the loop) --

    def _on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._handoff = Handoff(loop, capacity=self._out._room)
        if self._closed:
            self._handoff.seal()
        else:
            self._accepting = True
        self._started.set()
        self._started_event().set()

    def _on_end(self, error: BaseException | None) -> None:
        self._ended = True
        self._accepting = False
        if self._handoff is not None:
            self._handoff.stop()  # threads still waiting get ClosedError
        if self._waiters:
            if isinstance(error, asyncio.CancelledError):
                error = WorkflowCancelled(self._step_name, "out")
            for waiter in self._waiters:
                if not waiter.done():
                    if error is None:
                        waiter.set_result([])
                    else:
                        waiter.set_exception(error)

    def _stop_source(self, cancel: Callable[[], None]) -> None:
        self.close()

    def _freeze_lineage(self) -> None:
        self._frozen = True

    @property
    def _step_name(self) -> str:
        """The inlet's step name in its workflow (``inlet-2`` for a second inlet)."""
        return self._out.stream_name

    def _started_event(self) -> asyncio.Event:
        if self._started_async is None:
            self._started_async = asyncio.Event()
        return self._started_async

    async def run(self, ins: Ports, outs: Ports) -> None:
        handoff = self._handoff
        assert handoff is not None, "the workflow starts inlets before running them"
        out: Output[Any] = outs.out
        loop = asyncio.get_running_loop()
        while True:
            batch = handoff.take_all()
            if batch:
                await out.push_many([value for _, value in batch])
                continue
            if handoff.blocked and out._room() <= 0:
                await out._wait_for_room()  # on behalf of the threads waiting in send_threadsafe
                handoff.notify()
                continue
            if handoff.sealed and not handoff.blocked and not self._in_flight:
                return  # closed, and every send that began before has delivered
            await handoff.wait(loop)

    # -- the application's side --

    def _refuse(self, what: str) -> ClosedError:
        state = "has been closed" if self._closed else "belongs to a run that has ended"
        return ClosedError(
            self._step_name,
            "out",
            f"cannot {what} on inlet {self._step_name!r}: it {state}; send every item before "
            "close(), and before the run ends",
        )

    async def send(self, item: Any) -> None:
        # The common case, Output.push's own fast path: one input with room, below its peak
        # so far. It cannot suspend, so it needs none of the bookkeeping below.
        target = self._out._fast_target
        if target is not None and self._accepting:
            items = target._items
            if len(items) < target._mark:
                items.append(item)
                self._out.pushed += 1
                if target._getter is not None:
                    target._wake_getter()
                return
        await self._send_waiting(item)

    async def _send_waiting(self, item: Any) -> None:
        if self._closed or self._ended:
            raise self._refuse("send()")
        if not self._started.is_set():
            await self._started_event().wait()
            if self._closed or self._ended:
                raise self._refuse("send()")
        self._in_flight += 1  # close() lets this send deliver before the inlet ends
        try:
            await self._out.push(item)
        finally:
            self._in_flight -= 1
            if self._closed and not self._in_flight and self._handoff is not None:
                self._handoff.seal()  # wakes the inlet's task, which may now end

    async def send_and_wait(self, item: Any, track: Callable[[], None]) -> None:
        """See ``Inlet.send_and_wait``; ``track`` switches the inlet's downstream to lineage
        tracking (called once, at the first call, after the run has started)."""
        if self._closed or self._ended:
            raise self._refuse("send_and_wait()")
        if not self._started.is_set():
            await self._started_event().wait()
            if self._closed or self._ended:
                raise self._refuse("send_and_wait()")
        out = self._out
        if not isinstance(out, TrackedOutput):
            track()
        assert isinstance(out, TrackedOutput)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        ticket = new_ticket(Waiter(future, lambda: self._frozen), None)
        self._waiters.add(future)
        try:
            self._in_flight += 1
            try:
                await out._push_tag(item, ticket)
            finally:
                self._in_flight -= 1
                if self._closed and not self._in_flight and self._handoff is not None:
                    self._handoff.seal()
            decref(ticket)
            failures = await asyncio.shield(future)
        finally:
            self._waiters.discard(future)
        if failures:
            raise ItemFailed(self._step_name, list(failures))

    def send_nowait(self, item: Any) -> None:
        if self._closed or self._ended:
            raise self._refuse("send_nowait()")
        out = self._out
        if not self._started.is_set():
            raise WouldBlock(self._step_name, "out", "the run has not started")
        if self._loop is not None and not on_loop_thread(self._loop):
            raise WorkflowError(
                f"inlet {self._step_name!r}: send_nowait() was called from a thread other than "
                "the run's event loop; use send_threadsafe(item) from other threads"
            )
        full = next((t for t in out.targets if not t._has_room()), None)
        if full is not None:
            raise WouldBlock(
                self._step_name,
                "out",
                f"input {full.name!r} of stream {full.stream_name!r} is full "
                f"({len(full._items)}/{full.threshold})",
            )
        out._push_unpaused(
            item, "buffer", self._step_name
        )  # every input has room: no policy applies

    def send_threadsafe(self, item: Any, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._accepting and threading.get_ident() != self._loop_thread:
            handoff = self._handoff
            assert handoff is not None
            self._put(handoff, item, timeout, deadline)
            return
        if self._closed or self._ended:
            raise self._refuse("send_threadsafe()")
        if self._loop is not None and on_loop_thread(self._loop):
            raise WorkflowError(
                f"inlet {self._step_name!r}: send_threadsafe() was called from the thread of the "
                "run's own event loop, which it would block; use 'await inlet.send(item)' there"
            )
        if not self._started.wait(
            None if deadline is None else max(deadline - time.monotonic(), 0)
        ):
            raise TimeoutError(
                f"inlet {self._step_name!r}: the run did not start within {timeout} s; "
                f"nothing was sent{self._own_loop_hint()}"
            )
        handoff = self._handoff
        assert handoff is not None
        self._put(handoff, item, timeout, deadline)

    def _put(
        self, handoff: Handoff, item: Any, timeout: float | None, deadline: float | None
    ) -> None:
        try:
            accepted = handoff.put("cold", item, block=True, deadline=deadline)
        except TimeoutError:
            raise TimeoutError(
                f"inlet {self._step_name!r}: the graph had no room for {timeout} s; "
                "nothing was sent"
            ) from None
        if not accepted:
            raise self._refuse("send_threadsafe()")

    @staticmethod
    def _own_loop_hint() -> str:
        """Before the run, the thread that waited may run the very loop the run was to start
        on (which the wait blocked): say so. Which loop a run will use is not known before it
        starts, so such a call waits, as from any other thread (contract section 10)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return ""
        return (
            " (this thread runs an event loop: if the run was to start on it, the wait blocked "
            "it; use 'await inlet.send(item)' on the run's own loop)"
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        handoff = self._handoff
        if handoff is None:
            return  # before the run: _on_start seals it
        if self._loop is not None and on_loop_thread(self._loop):
            if not self._in_flight:
                handoff.seal()
        else:
            # From another thread: the loop decides once the sends in flight there are done.
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                self._loop_call(self._seal_when_idle)

    def _loop_call(self, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback)

    def _seal_when_idle(self) -> None:
        if not self._in_flight and self._handoff is not None:
            self._handoff.seal()


class Inlet(Step):
    """A step fed by application code (``workflow.add_inlet()``); its one output is ``out``.

    ``await inlet.send(item)`` delivers like ``await push`` (suspending while a buffer it feeds
    is full); ``send_nowait`` delivers at once or raises ``WouldBlock``; ``send_threadsafe``
    blocks another thread while the inlet would have to wait. ``close()`` ends the inlet.
    """

    stream: InletStream

    def __init__(self, workflow: Workflow, stream: Stream, name: str) -> None:
        super().__init__(workflow, stream, name)
        self.send = self.stream.send  # type: ignore[method-assign]  # no extra frame per item

    async def send(self, item: Any) -> None:
        """Deliver ``item``, suspending while any input it feeds is full.

        A send made before the run has started waits for it.

        Raises:
            ClosedError: the inlet was closed, or the run has ended.
        """
        await self.stream.send(item)

    async def send_and_wait(self, item: Any) -> None:
        """Send ``item`` like ``send`` and return once it, and every item derived from it
        anywhere in the graph, is done (contract section 12: taken and released, dropped by a
        pipe policy, discarded by a finished consumer, or read past at an outlet).

        The inlet's downstream tracks lineage from the first call on (until then, inlets
        cost nothing more than before).

        Raises:
            ItemFailed: something derived from ``item`` became a ``Failure``; its
                ``failures`` lists them.
            ClosedError: the inlet was closed, or the run has ended.
            StreamError, DeadlockError, WorkflowCancelled: the run failed or was cancelled
                before the item was done (what ``receive()`` would raise).
        """

        def track() -> None:
            run = self.workflow._run
            if run is not None:
                run.track([self.stream], late=True)

        await self.stream.send_and_wait(item, track)

    def send_nowait(self, item: Any) -> None:
        """Deliver ``item`` at once, from the run's event loop.

        Raises:
            WouldBlock: an input it feeds is full, or the run has not started; nothing was
                delivered.
            ClosedError: the inlet was closed, or the run has ended.
            WorkflowError: called from a thread other than the run's event loop.
        """
        self.stream.send_nowait(item)

    def send_threadsafe(self, item: Any, timeout: float | None = None) -> None:
        """Deliver ``item`` from any thread other than the run's event loop, blocking that
        thread while the inlet would have to wait (back-pressure). Items sent from one thread
        arrive in the order sent. Called before the run has started, it waits for it.

        Raises:
            TimeoutError: ``timeout`` seconds passed without delivering; nothing was sent.
            ClosedError: the inlet was closed (before this call), or the run has ended.
            WorkflowError: called from the thread of the run's own event loop.
        """
        self.stream.send_threadsafe(item, timeout)

    def close(self) -> None:
        """End the inlet (from any thread; closing twice is harmless): inputs it feeds see end
        of stream after every item sent before."""
        self.stream.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self.stream._closed


# -- outlets -----------------------------------------------------------------------------------


recognise("send", InletStream.send, Inlet.send)  # a send without await fails the run


class _OutletInput(Input[Any]):
    """The input of an outlet, read by the application with ``pop``/``async for`` directly.

    It tells the outlet's task when every upstream has closed, and once the run has failed
    every read raises the run's exception (the buffer is discarded then, so the reads' fast
    path, which never looks at errors, always reaches ``_wait_for_item``).
    """

    __slots__ = ("_error", "_on_closed")

    def __init__(self, name: str, stream_name: str) -> None:
        super().__init__(name, stream_name)
        self._on_closed: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    async def _wait_for_item(self, what: str) -> None:
        if self._error is None:
            try:
                await super()._wait_for_item(what)
            except EndOfStream:
                if self._error is None:
                    raise
        if self._error is not None:
            raise self._error

    def _fail(self, error: BaseException) -> None:
        """The run failed or was cancelled: no item will arrive; readers get ``error``."""
        self._error = error
        self.discarded += len(self._items)
        self._items.clear()
        self._closed = True
        self._wake_getter()

    def _upstream_closed(self) -> None:
        super()._upstream_closed()
        if self._closed and self._on_closed is not None and not self._on_closed.done():
            self._on_closed.set_result(None)


class OutletStream(Stream):
    """The stream behind an outlet: its input is read by the application."""

    IN = ("x",)
    _external = True

    def __init__(self, name: str, buffer_size: int | None) -> None:
        super().__init__(name=name, buffer_size=buffer_size)
        self._input = _OutletInput("x", name)
        self._inputs["x"] = self._input

    async def run(self, ins: Ports, outs: Ports) -> None:
        port = self._input
        if not port._closed:
            port._on_closed = asyncio.get_running_loop().create_future()
            await port._on_closed

    def _finish_inputs(self) -> None:
        pass  # what is buffered stays readable after the run

    def _on_end(self, error: BaseException | None) -> None:
        if error is not None:
            if isinstance(error, asyncio.CancelledError):
                error = WorkflowCancelled(self._input.stream_name, "x")
            self._input._fail(error)


class Outlet(Step):
    """A step read by application code (``workflow.add_outlet()``); its one input is ``x``.

    ``await outlet.receive()`` returns the next item; ``async for item in outlet`` iterates
    until everything upstream has closed and the buffer is drained.
    """

    stream: OutletStream

    def __init__(self, workflow: Workflow, stream: Stream, name: str) -> None:
        super().__init__(workflow, stream, name)
        self.receive = self.stream._input.pop  # type: ignore[method-assign]  # no extra frame

    def _ports_changed(self) -> None:
        # The input became a tracked one (contract section 12): bind its tracked pop.
        self.receive = self.stream._input.pop  # type: ignore[method-assign]

    async def receive(self) -> Any:
        """Return the next item, waiting while none is buffered.

        Raises:
            EndOfStream: the input has closed and is drained.
            StreamError, DeadlockError, WorkflowCancelled: the run failed or was cancelled
                (the same kind of exception the run raised).
        """
        return await self.stream._input.pop()

    def __aiter__(self) -> AsyncIterator[Any]:
        """Iterate until everything upstream has closed and the buffer is drained (raises
        the run's exception when it failed or was cancelled)."""
        return self.stream._input

    def __len__(self) -> int:
        return len(self.stream._input)


# -- the workflow as part of an application ----------------------------------------------------


@contextlib.asynccontextmanager
async def running(workflow: Workflow, progress: bool = False) -> AsyncIterator[Workflow]:
    """See ``Workflow.running``."""
    run = asyncio.get_running_loop().create_task(
        workflow.start(progress=progress), name="mimo_rx:run"
    )
    begun = asyncio.ensure_future(workflow._begun_event().wait())
    try:
        await asyncio.wait({run, begun}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        begun.cancel()
        await _cancel_and_wait(run)
        raise
    if not begun.done():
        begun.cancel()
        await asyncio.wait({begun})
    if run.done():
        run.result()  # raises what start() raised (validation, an early failure)
    try:
        yield workflow
    except BaseException:
        await _cancel_and_wait(run)  # nothing is left to release: the run is over
        raise
    try:
        _release_outlets(workflow)
        for step in workflow.steps:
            if isinstance(step, Inlet):
                step.close()
        await asyncio.shield(run)
    except BaseException:
        if not run.done():  # e.g. we were cancelled while the run drained: no task left
            await _cancel_and_wait(run)
        raise


def _release_outlets(workflow: Workflow) -> None:
    """The body has ended: nobody reads the outlets any more, so they stop pausing producers."""
    for step in workflow.steps:
        if isinstance(step, Outlet):
            port = step.stream._input
            if port._closed:
                continue  # every upstream has closed: no producer is left to release
            for upstream in port._upstreams:
                if port in upstream.targets:
                    upstream._set_policy(port, "discard")


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end, whatever it raises (no task left behind)."""
    task.cancel()
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            continue  # cancelled again while cleaning up: finish cleaning up first
    if not task.cancelled():
        task.exception()  # retrieved: it is the body's exception that propagates


def as_observable(workflow: Workflow) -> reactivex.Observable[Any]:
    """See ``Workflow.as_observable``."""

    def subscribe(
        observer: rx_abc.ObserverBase[Any], scheduler: rx_abc.SchedulerBase | None = None
    ) -> rx_abc.DisposableBase:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise WorkflowError(
                "workflow.as_observable() must be subscribed on the thread of a running event "
                "loop: the run starts on that loop"
            ) from None
        task = loop.create_task(workflow.start(), name="mimo_rx:observable run")
        disposed = False

        def finished(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                if not disposed:
                    observer.on_error(WorkflowCancelled())
                return
            error = task.exception()
            if error is None:
                observer.on_completed()
            elif not disposed:
                observer.on_error(error)  # type: ignore[arg-type]

        def dispose() -> None:
            nonlocal disposed
            disposed = True
            task.cancel()

        task.add_done_callback(finished)
        return Disposable(dispose)

    return reactivex.create(subscribe)
