"""Workflow: steps, the pipes between them, and the entry points of a run.

Building (``add_stream``, ``add_source``, ``add_inlet``, ``add_outlet``, ``pipe`` and its
port rules, validation), describing (``str``, ``stats()``, Mermaid/DOT, ``metrics()``,
``events``) and the ways to run (``run()``, ``start()``, ``running()``, ``as_observable()``,
``stop()``, ``cancel()``) live here; one run itself, its tasks and their supervision, is
:class:`~._run.Run`.
"""

from __future__ import annotations

import asyncio
import inspect
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from reactivex import Observable

from ._errors import (
    ConfigError,
    PipeError,
    WorkflowCancelled,
    WorkflowError,
)
from ._metrics import Watch
from ._ports import PIPE_POLICIES, Input, check_buffer_size
from ._run import Run, retrieve_exceptions
from ._service import Inlet, InletStream, Outlet, OutletStream, as_observable, running
from ._signals import TerminationSignals, wake_loop_on_signals
from ._step import Pipe, Step
from ._stream import Stream

# How long cancelled streams get to finish before the run gives up on them (default).
CANCEL_TIMEOUT_S = 5.0

S = TypeVar("S", bound=Step)


class Workflow:
    """A graph of streams, run from beginning to end with back-pressure.

    Args:
        buffer_size: the default threshold of every input (1024).
        cancel_timeout: seconds that cancelled streams get to finish (when the run fails or
            is cancelled) before ``start()`` gives up on them with a ``WorkflowError`` naming
            them; only code that swallows ``asyncio.CancelledError`` ever needs it.
    """

    # The defaults are written as values, not as the constants they equal, so that the API
    # reference shows them (tests/test_docs_site.py keeps buffer_size equal to
    # _ports.DEFAULT_BUFFER_SIZE).
    def __init__(self, buffer_size: int = 1024, *, cancel_timeout: float = 5.0) -> None:
        self.buffer_size = check_buffer_size(buffer_size, "the workflow")
        if not cancel_timeout > 0:
            raise ConfigError(
                f"cancel_timeout must be a positive number of seconds, not {cancel_timeout!r}"
            )
        self.cancel_timeout = float(cancel_timeout)
        self.steps: list[Step] = []
        self.pipes: list[Pipe] = []
        self._names: set[str] = set()
        self._started = False
        self._run_state = "pending"
        self._tasks: list[asyncio.Task[None]] = []  # the stream tasks of the run
        self._run: Run | None = None  # the active run, between start() and its end
        self._sigterm_before_run = False  # run() got SIGTERM before start() made the run
        self._begun: asyncio.Event | None = None
        self._watch = Watch(self)  # metrics() and events

    # -- building ------------------------------------------------------------------------

    def add_stream(self, stream: Stream) -> Step:
        """Add ``stream`` and return its step (named after it, ``-2``, ``-3`` for repeats).

        Raises:
            ConfigError: the stream was added before (it is a ``ValueError``).
        """
        if not isinstance(stream, Stream):
            raise ConfigError(
                f"add_stream() takes a mimo_rx.Stream, not {type(stream).__name__}; "
                "wrap functions with Stream(fn=...) or use add_source() for iterables"
            )
        return self._add(stream, Step)

    def _add(self, stream: Stream, step_type: type[S]) -> S:
        if any(step.stream is stream for step in self.steps):
            raise ConfigError(
                f"stream {stream.name!r} is already in this workflow; create a second "
                "Stream object to run the same logic twice"
            )
        step = step_type(self, stream, self._unique_name(stream.name))
        for inp in stream._inputs.values():
            inp.stream_name = step.name
        for out in stream._outputs.values():
            out.stream_name = step.name
        self.steps.append(step)
        return step

    def _unique_name(self, base: str) -> str:
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}-{n}"
        self._names.add(name)
        return name

    def _pipe(
        self,
        source: Step,
        target: Step,
        output: str | None,
        input: str | None,
        buffer_size: int | None,
        policy: str = "block",
    ) -> Step:
        if policy not in PIPE_POLICIES:
            raise ConfigError(
                f"policy {policy!r} of the pipe {source.name!r} -> "
                f"{getattr(target, 'name', target)!r} is unknown; choose one of "
                + ", ".join(repr(p) for p in PIPE_POLICIES)
            )
        if not isinstance(target, Step):
            raise PipeError(
                f"pipe() from step {source.name!r} takes a step returned by add_stream() "
                f"or add_source(), not {type(target).__name__}"
            )
        if target.workflow is not self:
            raise PipeError(
                f"cannot pipe step {source.name!r} to step {target.name!r}: they belong to "
                "different workflows; add both streams to the same workflow"
            )
        if buffer_size is not None:
            check_buffer_size(buffer_size, f"the pipe {source.name!r} -> {target.name!r}")
        pairs = self._resolve_ports(source, target, output, input)
        for out, inp in pairs:
            if any(
                p.source is source and p.output == out and p.target is target and p.input == inp
                for p in self.pipes
            ):
                raise PipeError(
                    f"output {out!r} of stream {source.name!r} is already piped to input "
                    f"{inp!r} of stream {target.name!r}; each connection is made once"
                )
        for out, inp in pairs:
            self.pipes.append(Pipe(source, out, target, inp, buffer_size, policy))
        return target

    def _resolve_ports(
        self, source: Step, target: Step, output: str | None, input: str | None
    ) -> list[tuple[str, str]]:
        outs = source.stream.outs
        ins = target.stream.ins
        # A resuming stream's ``errors`` output is not in ``outs``: only piped by name.
        hidden = output is not None and output not in outs and output in source.stream._outputs
        if output is not None and output not in outs and not hidden:
            hint = (
                "; only a stream with on_error='resume' has an 'errors' output"
                if output == "errors"
                else ""
            )
            raise PipeError(
                f"stream {source.name!r} has no output {output!r}; its outputs are {outs}{hint}"
            )
        if input is not None and input not in ins:
            raise PipeError(f"stream {target.name!r} has no input {input!r}; its inputs are {ins}")
        out_candidates = [output] if output is not None else outs
        in_candidates = [input] if input is not None else ins
        if not out_candidates:
            raise PipeError(f"stream {source.name!r} has no outputs to pipe from")
        if not in_candidates:
            raise PipeError(f"stream {target.name!r} has no inputs to pipe into")
        if output is not None and input is not None:
            return [(output, input)]
        same = [(name, name) for name in out_candidates if name in in_candidates]
        if same:
            return same
        connected = {p.input for p in self.pipes if p.target is target}
        unconnected = [name for name in in_candidates if name not in connected]
        if len(out_candidates) == 1 and len(unconnected) == 1:
            return [(out_candidates[0], unconnected[0])]
        if len(out_candidates) == 1 and len(in_candidates) == 1:
            return [(out_candidates[0], in_candidates[0])]
        raise PipeError(
            f"cannot tell which ports to connect from stream {source.name!r} (outputs "
            f"{out_candidates}) to stream {target.name!r} (inputs {in_candidates}, "
            f"unconnected {unconnected}); name them: pipe(step, output=..., input=...)"
        )

    def add_source(
        self,
        source: Any,
        name: str | None = None,
        policy: str = "buffer",
        *,
        max_in_flight: int = 1000,
        commit_interval: float = 0.5,
    ) -> Step:
        """Add a source and return its step, which has one output named ``out``.

        ``source`` may be a ``reactivex.Observable``, an iterable or an async iterable. Iterables,
        async iterables and cold observables are pulled only as fast as downstream takes them;
        a hot observable (one that emits after ``subscribe()`` returned, or from another thread)
        cannot be paused and applies ``policy`` at each input it feeds when that input is full:
        ``"buffer"``, ``"drop_newest"``, ``"drop_oldest"``, ``"latest"`` or ``"error"``.

        ``source`` may also be an acknowledged source (:class:`mimo_rx.AckSource`, contract
        section 12): each message is acked once it and every item derived from it are done.
        At most ``max_in_flight`` (default 1000) messages are fetched and not yet acked; acks
        are sent in batches every ``commit_interval`` (default 0.5) seconds. Both options are
        a ``ConfigError`` for any other kind of source, and when not positive.
        """
        from ._sources import make_source

        # An argument is told from the default by identity with the default object itself
        # (the signature shows the real defaults; 1000 and 0.5 typed by the caller are other
        # objects), so that giving either option to a plain source is a ConfigError.
        defaults = _ADD_SOURCE_DEFAULTS
        return self.add_stream(
            make_source(
                source,
                name=name,
                policy=policy,
                max_in_flight=(
                    None if max_in_flight is defaults["max_in_flight"] else max_in_flight
                ),
                commit_interval=(
                    None if commit_interval is defaults["commit_interval"] else commit_interval
                ),
            )
        )

    def add_inlet(self, name: str | None = None) -> Inlet:
        """Add an inlet: a step (default name ``inlet``) with one output ``out``, fed by
        application code with ``await inlet.send(item)``, ``inlet.send_nowait(item)`` or, from
        other threads, ``inlet.send_threadsafe(item)``. The run does not complete while an
        inlet is open: ``inlet.close()`` ends it (``running()`` closes it on exit)."""

        return self._add(InletStream(name or "inlet"), Inlet)

    def add_outlet(self, name: str | None = None, buffer_size: int | None = None) -> Outlet:
        """Add an outlet: a step (default name ``outlet``) with one input ``x``, read by
        application code with ``await outlet.receive()`` or ``async for item in outlet``.

        Its buffer is bounded like any input (``buffer_size``, else the workflow's): a
        producer is paused while the application does not read.
        """

        if buffer_size is not None:
            check_buffer_size(buffer_size, f"outlet {name or 'outlet'!r}")
        return self._add(OutletStream(name or "outlet", buffer_size), Outlet)

    # -- describing ----------------------------------------------------------------------

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart; edges carry live counters once it has run."""
        from ._render import to_mermaid

        return to_mermaid(self)

    def to_dot(self) -> str:
        """The graph in Graphviz DOT; edges carry live counters once it has run."""
        from ._render import to_dot

        return to_dot(self)

    def __str__(self) -> str:
        lines = [f"Workflow: {len(self.steps)} streams, {len(self.pipes)} pipes"]
        width = max((len(step.name) for step in self.steps), default=0)
        for step in self.steps:
            ins = ", ".join(step.stream.ins) or "-"
            outs = ", ".join(step.stream.outs) or "-"
            lines.append(f"  {step.name:<{width}}  ins: {ins:<12} outs: {outs}")
        for p in self.pipes:
            size = f"  (buffer {p.buffer_size})" if p.buffer_size else ""
            if p.policy != "block":
                size += f"  (policy {p.policy})"
            lines.append(f"  {p.source.name}.{p.output} -> {p.target.name}.{p.input}{size}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Workflow {len(self.steps)} streams, {len(self.pipes)} pipes, {self._run_state}>"

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of every stream's status and port counters.

        Safe from any thread: while the run goes on, a call from another thread is answered
        by the run's loop, so every identity holds in the snapshot, and no counter is ever
        lower than in a snapshot returned before.
        """
        return self._watch.read(self._stats_now)

    def _stats_now(self) -> dict[str, Any]:
        streams: dict[str, Any] = {}
        for step in self.steps:
            stream = step.stream
            streams[step.name] = {
                "status": step.status,
                "failures": stream._failures,
                "inputs": {
                    name: _input_stats(port, self._planned_threshold(step, name))
                    for name, port in stream._inputs.items()
                },
                "outputs": {
                    name: {"pushed": port.pushed} for name, port in stream._outputs.items()
                },
                **stream._extra_stats(),
            }
        return {"streams": streams}

    def metrics(self, interval: float = 1.0) -> Observable[dict[str, Any]]:
        """An Observable of ``stats()`` snapshots, each with ``"elapsed_s"`` (seconds since
        the run started): one when the run starts, one every ``interval`` seconds while it
        runs, a final one when it ends (also when it fails or is cancelled), then
        ``on_completed``. Subscribed during the run, the first snapshot comes at once;
        subscribed after the run, only the final one. Emitted on the run's event loop.

        Raises:
            ConfigError: ``interval`` is not a positive number of seconds.
        """
        return self._watch.metrics(interval)

    @property
    def events(self) -> Observable[dict[str, Any]]:
        """An Observable of the run's transitions, JSON-serialisable dicts emitted on the loop:
        ``{"event": "status", "stream", "status"}``, ``{"event": "paused", "stream",
        "output", "target"}`` and ``{"event": "resumed", ..., "paused_s"}`` around each pause
        of a producer by a full input, ``{"event": "failure", "stream", "error"}`` for each
        failure a stream resumes from. It completes when the run ends (at once for a
        subscriber that joins after that). Free while nothing subscribes."""
        return self._watch.events

    # -- running -------------------------------------------------------------------------

    def run(self, progress: bool = False) -> None:
        """Run the workflow to the end, blocking; returns when every stream is done.

        SIGTERM drains the run (``stop()``) and ``run()`` then returns normally; SIGINT (Ctrl-C)
        cancels it; a second signal of either kind during a drain cancels it. SIGINT, or a
        second signal during a drain, makes ``run()`` raise ``KeyboardInterrupt``. The previous
        signal handlers are restored on return.

        Raises:
            WorkflowError: called from inside a running event loop (use ``await start()``),
                the graph is invalid, or the workflow already ran.
            StreamError: a stream raised; its exception is the ``__cause__``.
            DeadlockError: every running stream waits and none can move.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise WorkflowError(
                "Workflow.run() was called while an event loop is running in this thread; "
                "use 'await workflow.start()' instead"
            )
        runner = asyncio.Runner()  # as asyncio.run, with a bounded close (see _close_runner)
        unwake = wake_loop_on_signals(runner.get_loop())
        signals = TerminationSignals(drain=self._stop_on_sigterm, cancel=self.cancel)
        signals.install()
        try:
            runner.run(self.start(progress=progress))
        except WorkflowCancelled as exc:
            if signals.interrupted:  # a second SIGTERM during the drain
                raise KeyboardInterrupt from exc
            raise
        finally:
            signals.restore()
            try:
                _close_runner(runner, self)
            finally:
                unwake()

    async def start(self, progress: bool = False) -> None:
        """Run the workflow to the end inside the running event loop.

        Cancelling the awaiting task cancels every stream; no task is left behind.
        Raises the same errors as ``run()``.
        """
        self._validate()
        if self._started:
            raise WorkflowError(
                "this workflow has already been started; a workflow runs once, build a new one"
            )
        self._started = True
        display = None
        if progress:
            from ._progress import start_progress

            display = start_progress(self)
        run = Run(self)
        self._run = run
        if self._sigterm_before_run:  # run()'s SIGTERM came before there was a run to stop
            run.graceful_stop()
        try:
            await run.run()
        finally:
            self._run = None
            if display is not None:
                await display.stop()

    def running(self, progress: bool = False) -> AbstractAsyncContextManager[Workflow]:
        """``async with workflow.running():`` runs the workflow as a task of the current loop
        while the body runs.

        The body begins once every source is subscribed and every stream has started. When
        the body ends normally, every inlet still open is closed and the run is awaited; its
        error, if any, is raised here. When the body raises, the run is cancelled (no task is
        left) and the body's exception propagates. Once the body has ended, outlets no longer
        pause their producers: an item arriving at a full outlet is discarded and counted.
        """

        return running(self, progress)

    def stop(self) -> None:
        """End the run gracefully: sources stop, what is inside flows on to the end.

        Iterables are no longer pulled, observables are disposed, inlets are closed, and
        streams without inputs are cancelled at their current ``await`` and their outputs
        closed as if they had returned (their status is ``done``). Every item a source
        produced, pulled or was sent reaches the inputs it feeds, and ``start()`` returns
        normally. Safe from any thread, a signal handler or a stream; calling it twice, or
        when no run is active, does nothing.
        """
        run = self._run
        if run is not None:
            run.call_soon(run.graceful_stop)

    def _stop_on_sigterm(self) -> None:
        """``run()``'s SIGTERM (in the main thread, between two bytecodes): ``stop()``, or,
        before ``start()`` has made the run, a note that ``start()`` stops it at once."""
        if self._run is None:
            self._sigterm_before_run = True
        else:
            self.stop()

    def cancel(self) -> None:
        """Abort the run: every stream is cancelled, no task is left, Rx subscribers get
        ``on_error(WorkflowCancelled)`` and ``start()`` raises ``WorkflowCancelled``. Safe from
        any thread; does nothing when no run is active."""
        run = self._run
        if run is not None:
            run.call_soon(run.cancel)

    def as_observable(self) -> Observable[Any]:
        """The workflow as a cold ``reactivex.Observable``: subscribing (on the thread of a
        running event loop) starts a run on that loop; it emits nothing, completes when the
        run completes and errors with what ``start()`` would raise. Disposing the
        subscription cancels the run."""

        return as_observable(self)

    def _begun_event(self) -> asyncio.Event:
        """Set once the run's streams have all started (what ``running()`` waits for)."""
        if self._begun is None:
            self._begun = asyncio.Event()
        return self._begun

    def _validate(self) -> None:
        fed = {(p.target, p.input) for p in self.pipes}
        for step in self.steps:
            for name in step.stream.ins:
                if (step, name) not in fed:
                    raise WorkflowError(
                        f"input {name!r} of stream {step.name!r} has no upstream, so it would "
                        "wait forever; pipe an output into it or remove the port"
                    )

    def _planned_threshold(self, step: Step, port: str) -> int:
        """The threshold an input has in the run, or will have once the run starts."""
        if self._started:
            return step.stream._inputs[port].threshold
        return self._threshold(step, port)

    def _threshold(self, step: Step, port: str) -> int:
        sizes = [
            p.buffer_size
            for p in self.pipes
            if p.target is step and p.input == port and p.buffer_size is not None
        ]
        if sizes:
            return min(sizes)
        if step.stream.buffer_size is not None:
            return step.stream.buffer_size
        return self.buffer_size


# The default objects of add_source's options (see add_source: compared by identity).
_ADD_SOURCE_DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(Workflow.add_source).parameters.items()
}


def _input_stats(port: Input[Any], threshold: int) -> dict[str, int | float]:
    # Each counter read once, in Input.taken's order, and taken derived from those very
    # values: the snapshot's identity holds even in a read that races the loop.
    received = port.received
    buffered = port.buffered
    dropped = port.dropped
    discarded = port.discarded
    return {
        "received": received,
        "taken": received - buffered - dropped - discarded,
        "dropped": dropped,
        "discarded": discarded,
        "buffered": buffered,
        "peak_buffered": port.peak,
        "paused_s": round(port.paused_s, 6),
        "threshold": threshold,
    }


def _close_runner(runner: asyncio.Runner, workflow: Workflow) -> None:
    """Close ``runner`` like ``asyncio.run`` does, but give up on tasks that will not stop.

    ``asyncio.run`` waits for every task it cancels; a stream that swallows cancellation
    would then hang ``run()`` although ``start()`` already raised ``WorkflowError``.
    """
    loop = runner.get_loop()
    retrieve_exceptions(workflow._tasks)
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if pending:
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.wait(pending, timeout=workflow.cancel_timeout))
        retrieve_exceptions(workflow._tasks)
        if any(not t.done() for t in pending):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()  # the stuck tasks are abandoned; WorkflowError named them
            return
    runner.close()
