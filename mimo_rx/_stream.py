"""Stream: a unit of work with named input and output ports.

Two ways to write one (as in the original mimo)::

    class Double(Stream):                       async def double(ins, outs, state):
        IN = ['x']                                  async for item in ins.x:
        OUT = ['y']                                     await outs.y.push(item * 2)
        async def run(self, ins, outs):
            async for item in ins.x:            Stream(['x'], ['y'], fn=double)
                await outs.y.push(item * 2)

``run``/``fn`` may also be a plain ``def``: the mimo 1.0 step protocol, driven by
:func:`drive_step_function` below.
"""

from __future__ import annotations

import asyncio
import inspect
import keyword
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from ._errors import ClosedError, ConfigError, safe_repr
from ._ports import AnyInput, Held, Input, Output, check_buffer_size
from ._supervision import (
    ERRORS,
    Failure,
    TrackedInput,
    Tracker,
    check_on_error,
    report_failure,
    run_resuming,
    step_name,
)


class Ports:
    """The ``ins``/``outs`` handed to ``run``: one attribute per port, in declaration order.

    ``ins.x`` is the port named ``x``; ``ports['x']`` works too, iteration yields the ports
    in order and ``len(ports)`` counts them.
    """

    def __init__(self, ports: Sequence[Any]) -> None:
        self._order = list(ports)
        for port in self._order:
            self.__dict__[port.name] = port

    def __getitem__(self, name: str) -> Any:
        return self.__dict__[name]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return any(port.name == name for port in self._order)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not ports.
        known = ", ".join(repr(p.name) for p in self._order) or "none"
        raise AttributeError(f"no port named {name!r} (ports: {known})")

    def __repr__(self) -> str:
        return f"Ports({', '.join(p.name for p in self._order)})"


def is_async_callable(fn: object) -> bool:
    """True for ``async def`` functions and objects whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an instance's async __call__
    )


def _check_port_names(kind: str, names: Sequence[str], stream: str) -> list[str]:
    if isinstance(names, str):
        raise ConfigError(
            f"{kind} of stream {stream!r} must be a list of port names, not the string "
            f"{names!r}; write [{names!r}]"
        )
    result = list(names)
    seen: set[str] = set()
    for name in result:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigError(
                f"{kind[:-1]} port {name!r} of stream {stream!r} is not a valid Python "
                "identifier; port names are used as attributes (ins.x, outs.y)"
            )
        if name in seen:
            raise ConfigError(
                f"{kind[:-1]} port {name!r} of stream {stream!r} is declared twice; "
                f"{kind[:-1]} names must be unique"
            )
        seen.add(name)
    return result


class Stream:
    """A stream with named inputs (``IN``) and outputs (``OUT``).

    Args:
        ins: input port names; overrides the class's ``IN``.
        outs: output port names; overrides the class's ``OUT``.
        fn: ``fn(ins, outs, state)``, used when the class does not override ``run``.
        name: the stream's name (default: ``fn.__name__``, else the class name).
        state: handed to ``fn`` as its third argument (default: a fresh ``dict``).
        buffer_size: threshold of this stream's inputs (default: the workflow's).
        on_error: ``"fail"`` (the default): an exception fails the run. ``"resume"``: the
            body is called again with the same ports (buffered items, ``state`` and the
            object kept), and the failure goes to the extra output ``errors`` as a
            ``mimo_rx.Failure``; a body that raises before taking any item since it was
            last called fails the run all the same.

    Raises:
        ConfigError: a port name is not a unique valid identifier, ``buffer_size`` is below 1,
            ``fn`` cannot be called as ``fn(ins, outs, state)``, ``on_error`` is unknown, or a
            resuming stream declares an output named ``errors``. It is a ``ValueError``.
    """

    IN: ClassVar[Sequence[str]] = ()
    OUT: ClassVar[Sequence[str]] = ()

    # Whether a run may fuse this stream with an adjacent fusable one into a single task
    # (no buffer between them); see Workflow's _plan_fusion and RxStream._fuse.
    _fusable: bool = False
    # Whether application code outside the graph feeds or reads this step (an inlet or an
    # outlet): it is never deadlocked, and a wait on a port connected to it can always end.
    _external: bool = False
    # Whether the stream's own run() resumes item by item (map_stream, Rx streams) rather
    # than being called again by _execute.
    _resumes_itself: bool = False
    # What the stream holds (contract section 12, _lineage.Holder): set by the run only on
    # streams downstream of an acknowledged source.
    _holder: Any = None
    # Whether the run may start tracking lineage from this stream while it runs (an inlet, at
    # its first send_and_wait): the streams downstream must be ready for it (_run.Run._wire).
    _tracks_late: bool = False

    def _may_be_tracked(self) -> None:
        """The run may track this stream's lineage once it has started (it is downstream
        of an inlet): a stream that can only follow lineage in some of its modes picks that
        one now (an operator stage keeps the Rx chain). Nothing to do for most streams."""

    def __init__(
        self,
        ins: Sequence[str] | None = None,
        outs: Sequence[str] | None = None,
        fn: Callable[..., Any] | None = None,
        name: str | None = None,
        state: Any = None,
        buffer_size: int | None = None,
        on_error: str = "fail",
    ) -> None:
        if name is None:
            fn_name = getattr(fn, "__name__", None)
            name = fn_name if fn_name and fn_name != "<lambda>" else type(self).__name__
        self.name: str = name
        self.fn = fn
        self.state: Any = {} if state is None else state
        if buffer_size is not None:
            check_buffer_size(buffer_size, f"stream {name!r}")
        self.buffer_size = buffer_size
        self.ins: list[str] = _check_port_names("inputs", self.IN if ins is None else ins, name)
        self.outs: list[str] = _check_port_names(
            "outputs", self.OUT if outs is None else outs, name
        )
        self._inputs: dict[str, Input[Any]] = {n: Input(n, name) for n in self.ins}
        self._outputs: dict[str, Output[Any]] = {n: Output(n, name) for n in self.outs}
        self._failures = 0  # failures resumed from (on_error="resume"), for stats()
        self._on_error = check_on_error(on_error, f"stream {name!r}")
        if on_error == "resume":
            if ERRORS in self.outs:
                raise ConfigError(
                    f"stream {name!r} resumes after errors (on_error='resume'), so it has an "
                    f"output named {ERRORS!r} that carries its failures; rename its own "
                    f"{ERRORS!r} output"
                )
            # Not in self.outs: pipe's automatic rules never pick it, the body never sees it.
            self._outputs[ERRORS] = Output(ERRORS, name)
        if fn is not None and not self._overrides_run():
            self._check_fn_signature(fn)

    # -- ports ---------------------------------------------------------------------------

    def input(self, name: str) -> Input[Any]:
        """The input port called ``name`` (raises ``ConfigError`` naming the known ones)."""
        try:
            return self._inputs[name]
        except KeyError:
            raise ConfigError(
                f"stream {self.name!r} has no input {name!r}; its inputs are {self.ins}"
            ) from None

    def output(self, name: str) -> Output[Any]:
        """The output port called ``name`` (raises ``ConfigError`` naming the known ones).

        A resuming stream also has ``output("errors")``, which carries its failures.
        """
        try:
            return self._outputs[name]
        except KeyError:
            raise ConfigError(
                f"stream {self.name!r} has no output {name!r}; its outputs are {self.outs}"
            ) from None

    # -- behaviour -----------------------------------------------------------------------

    def run(self, ins: Any, outs: Any) -> Any:
        """Default behaviour: forward each input to the output in the same position.

        Inputs without a matching output are read and dropped; with no inputs, nothing is
        emitted. This is a mimo 1.0 step function (a plain ``def``, see the class docstring):
        it forwards what is buffered and asks to be called again when an output filled up.
        """
        more = False
        outputs = list(outs)
        for position, port in enumerate(ins):
            if position < len(outputs):
                out = outputs[position]
                for item in port:
                    if not out.push(item):
                        more = True
            else:
                for _ in port:
                    pass
        return more

    def _fuse(self, followers: list[Stream]) -> None:
        """Run ``followers`` (a chain piped from this stream) inside this stream's task."""
        raise NotImplementedError(f"{type(self).__name__} cannot fuse")

    def _on_start(self) -> None:
        """Hook run synchronously when ``start()`` begins, before any stream task runs."""

    def _freeze_lineage(self) -> None:
        """The run fails or is cancelled: from now on nothing this step owns is done
        (an inlet's send_and_wait calls raise what the run raises instead)."""

    def _extra_stats(self) -> dict[str, Any]:
        """Entries this kind of step adds to its ``stats()`` (an acknowledged source's
        ``"delivery"``)."""
        return {}

    def _on_end(self, error: BaseException | None) -> None:
        """Hook run synchronously when the run has ended (``error``: how it failed, if so)."""

    def _finish_inputs(self) -> None:
        """The stream's task has ended: its inputs discard what is left and never block."""
        for port in self._inputs.values():
            port._finish()

    def _stop_source(self, cancel: Callable[[], None]) -> None:
        """``workflow.stop()`` on a stream without inputs: stop producing, gracefully.

        By default the stream is cancelled at its current ``await`` (``cancel()``) and the
        workflow treats that as a normal return. Sources that can stop between items without
        losing one (iterables, observables, inlets) override this.
        """
        cancel()

    async def _execute(self) -> None:
        """Run the stream's body to completion (called by the workflow in the step's task)."""
        outputs = Ports([self._outputs[name] for name in self.outs])  # not ``errors``
        resume = self._on_error == "resume" and not self._resumes_itself
        if self._overrides_run() or self.fn is None:
            body: Callable[[Any, Any], Any] = self.run
            is_async = is_async_callable(type(self).run)
        else:
            fn, state = self.fn, self.state
            is_async = is_async_callable(fn)

            def body(ins: Any, outs: Any) -> Any:
                return fn(ins, outs, state)

        if not is_async:
            await drive_step_function(body, self, resume)
        elif resume:
            tracker = Tracker()
            ins = Ports([TrackedInput(port, tracker) for port in self._inputs.values()])
            await run_resuming(self, body, ins, outputs, tracker)
        else:
            await body(Ports(list(self._inputs.values())), outputs)

    def _overrides_run(self) -> bool:
        return type(self).run is not Stream.run

    def _check_fn_signature(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise ConfigError(f"fn of stream {self.name!r} is not callable: {fn!r}")
        try:
            inspect.signature(fn).bind(None, None, None)
        except TypeError:
            raise ConfigError(
                f"fn of stream {self.name!r} must accept (ins, outs, state); "
                f"its signature is {inspect.signature(fn)}"
            ) from None
        except ValueError:  # builtins without a signature: trust the caller
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ins={self.ins} outs={self.outs}>"


# -- the mimo 1.0 synchronous protocol -----------------------------------------------------


class FusedStageError(Exception):
    """Carries the error of a stream that ran fused into another one, naming the right step."""

    def __init__(self, step_name: str, original: Exception) -> None:
        super().__init__(safe_repr(original))
        self.step_name = step_name
        self.original = original


class UserStopIteration(Exception):
    """Carries a ``StopIteration`` raised by a step function out of the driving coroutine."""

    def __init__(self, original: StopIteration) -> None:
        super().__init__(safe_repr(original))
        self.original = original


class SyncInput:
    """Synchronous view of an input for a plain-``def`` stream."""

    __slots__ = ("_port",)

    def __init__(self, port: Input[Any]) -> None:
        self._port = port

    @property
    def name(self) -> str:
        return self._port.name

    def pop(self) -> Any:
        """Remove and return the next buffered item (``IndexError`` when none is buffered)."""
        if not self._port._items:
            raise IndexError(f"input {self._port.name!r} has no buffered item")
        return self._port._take_now()

    def peek(self) -> Any:
        """Return the next buffered item (``IndexError`` when none is buffered)."""
        if not self._port._items:
            raise IndexError(f"input {self._port.name!r} has no buffered item")
        return self._port._items[0]

    def hold(self) -> Held:
        """Keep the item last taken from this input (``pop`` or iteration) held past the
        return of this call, until ``release()`` on what this returns: ``Input.hold()`` for a
        plain ``def`` (contract section 12: for state kept across calls, such as windows).
        Taken nothing in this call: the handle holds nothing. Outside the lineage of an
        acknowledged source the handle does nothing."""
        return self._port._hold_sync()

    def __len__(self) -> int:
        return len(self._port._items)

    def __iter__(self) -> Iterator[Any]:
        """Pop the items that are buffered when the loop starts."""
        port = self._port
        for _ in range(len(port._items)):
            yield port._take_now()

    @property
    def closed(self) -> bool:
        """True once every upstream has closed (items may still be buffered)."""
        return self._port._closed

    @property
    def exhausted(self) -> bool:
        return self._port.exhausted


class TrackedSyncInput(SyncInput):
    """A plain-``def`` body's view of an input of a resuming stream: it records each take
    (the last item goes into a ``Failure``), so plain views pay nothing for it."""

    __slots__ = ("_tracker",)

    def __init__(self, port: Input[Any], tracker: Tracker) -> None:
        super().__init__(port)
        self._tracker = tracker

    def pop(self) -> Any:
        item = super().pop()
        self._tracker.note(item, self._port.name)
        return item

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            self._tracker.note(item, self._port.name)
            yield item


class SyncOutput:
    """Synchronous view of an output: ``push`` always accepts and says whether to go on.

    Items are staged and delivered with back-pressure after the step function returns, so
    an input's buffer never exceeds its threshold even when the function ignores ``False``.
    """

    __slots__ = ("_close", "_port", "_staged")

    def __init__(self, port: Output[Any]) -> None:
        self._port = port
        self._staged: list[Any] = []
        self._close = False

    @property
    def name(self) -> str:
        return self._port.name

    def push(self, item: Any) -> bool:
        """Accept ``item``; return ``True`` while the output can take more, ``False`` once full."""
        if self._close or self._port.closed:
            raise ClosedError(self._port.stream_name, self._port.name)
        staged = self._staged
        staged.append(item)
        pending = len(staged)
        return all(t._finished or len(t._items) + pending < t.threshold for t in self._port.targets)

    def close(self) -> None:
        """Close the output once the items pushed so far are delivered."""
        self._close = True

    async def _flush(self) -> None:
        port = self._port
        staged = self._staged
        while staged:
            batch = staged[:]
            staged.clear()
            for item in batch:
                await port.push(item)
        if self._close:
            port.close()


async def drive_step_function(
    step: Callable[[Any, Any], Any], stream: Stream, resume: bool = False
) -> None:
    """Run a mimo 1.0 step function until it is done.

    * It returns true: call it again once every input its outputs feed is below threshold.
    * It returns false: call it again when an input receives an item or closes.
    * Once every input has closed, it is called until it returns false with nothing left
      buffered (or without taking anything: then the leftovers are discarded and counted).
    * With no inputs, it is done the first time it returns false.
    * ``resume`` (``on_error="resume"``): a call that raises after taking an item is a
      failure reported on ``errors``; what it pushed is delivered and it is called again.
      A call that raises without taking anything fails the run.
    * ``workflow.stop()`` on a stream without inputs: it is not called again, and what its
      ``push`` accepted is delivered first. Cancelling it in the middle of that delivery
      would lose items ``push`` had accepted, which ``stop()`` must deliver, so it is
      cancelled only while it waits with nothing staged.
    """
    inputs = list(stream._inputs.values())
    outputs = [stream._outputs[name] for name in stream.outs]
    tracker = Tracker()
    if resume:
        ins = Ports([TrackedSyncInput(p, tracker) for p in inputs])
    else:
        ins = Ports([SyncInput(p) for p in inputs])
    outs_views = [SyncOutput(p) for p in outputs]
    outs = Ports(outs_views)

    def arrivals() -> int:
        return sum(p.received for p in inputs) + sum(p._closed for p in inputs)

    stopping = False  # workflow.stop() asked this source to stop
    idle = False  # waiting with nothing staged: cancelling it loses nothing

    def stop_source(cancel: Callable[[], None]) -> None:
        nonlocal stopping
        stopping = True
        if idle:
            cancel()

    if not inputs:  # workflow.stop() asks this instance, during this run only
        stream._stop_source = stop_source  # type: ignore[method-assign]
    try:
        while True:
            closed_before = all(p._closed for p in inputs)
            taken_before = sum(p.taken for p in inputs)
            if stopping:
                return
            try:
                again = step(ins, outs)
            except Exception as exc:
                if not resume or sum(p.taken for p in inputs) == taken_before:
                    if isinstance(exc, StopIteration):  # would become RuntimeError in here
                        raise UserStopIteration(exc) from exc
                    raise
                for view in outs_views:  # what it pushed before raising is delivered
                    await view._flush()
                failure = Failure(step_name(stream), exc, tracker.item, tracker.port)
                await report_failure(stream, failure)
                if stream._holder is not None:  # the Failure derives from what it took
                    stream._holder.release_call()
                continue
            if inspect.isawaitable(again):
                if inspect.iscoroutine(again):
                    again.close()  # never awaited: no "coroutine was never awaited" warning
                raise ConfigError(
                    f"the plain function of stream {stream.name!r} returned an awaitable; a plain "
                    "def is called as a mimo 1.0 step function with synchronous ports. Write the "
                    "function as 'async def' (a lambda cannot be async) to use await in it"
                )
            seen = arrivals()
            for view in outs_views:
                await view._flush()
            holder = stream._holder
            if holder is not None:  # once per call: a plain def releases what it took
                holder.release_call()
            if not inputs and (stopping or not again):
                return  # what it pushed is delivered
            if again:
                idle = True
                try:
                    for out in outputs:
                        await out._wait_for_room()
                    await asyncio.sleep(0)  # there was room at once: still let the others run
                finally:
                    idle = False
                continue
            if closed_before:  # this call saw every input closed
                if not any(p._items for p in inputs):
                    return
                if sum(p.taken for p in inputs) == taken_before:
                    return  # it will not take the rest; the workflow counts it as discarded
                continue
            if arrivals() == seen:
                await _wait_for_arrival(inputs, stream)
    finally:
        stream.__dict__.pop("_stop_source", None)


async def _wait_for_arrival(inputs: list[Input[Any]], stream: Stream) -> None:
    """Park until any of ``inputs`` receives an item or closes."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    for port in inputs:
        port._getter = waiter
    runtime = inputs[0]._rt
    parked = runtime.park("a step function waiting for input", AnyInput(inputs), waiter)
    try:
        await waiter
    finally:
        for port in inputs:
            port._getter = None
        if parked is not None:
            runtime.unpark(parked)
