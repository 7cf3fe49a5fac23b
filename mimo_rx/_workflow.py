"""Workflow: steps, the pipes between them, and running the whole graph.

Running is structured: ``start()`` owns one task per step and does not return (or raise)
before every one of them has ended. The first stream to fail, a deadlock, or the
cancellation of ``start()`` itself cancels all the others; every Rx subscriber of an
unfinished output then receives a terminal ``on_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from reactivex import Observable

from ._errors import (
    BufferOverflowError,
    ConfigError,
    DeadlockError,
    PipeError,
    SourceOverflowError,
    StreamError,
    WorkflowCancelled,
    WorkflowError,
)
from ._metrics import Watch
from ._monitor import Monitor, StepRuntime, current_step, track_spawned_tasks
from ._ports import DEFAULT_BUFFER_SIZE, PIPE_POLICIES, Input, check_buffer_size
from ._signals import TerminationSignals, wake_loop_on_signals
from ._stream import FusedStageError, Stream, UserStopIteration

if TYPE_CHECKING:
    from ._service import Inlet, Outlet

# How long cancelled streams get to finish before the run gives up on them (default).
CANCEL_TIMEOUT_S = 5.0

S = TypeVar("S", bound="Step")


@dataclass(frozen=True)
class Pipe:
    """One connection: an output of one step to an input of another (or the same) step."""

    source: Step
    output: str
    target: Step
    input: str
    buffer_size: int | None
    policy: str = "block"  # what a full input does to this pipe's pushes (see Step.pipe)


class Step:
    """A stream placed in a workflow. Made by ``Workflow.add_stream``; pipe steps together."""

    def __init__(self, workflow: Workflow, stream: Stream, name: str) -> None:
        self.workflow = workflow
        self.stream = stream
        self.name = name
        self._status = "pending"
        self.error: BaseException | None = None

    @property
    def status(self) -> str:
        """``pending``, ``running``, ``done``, ``failed`` or ``cancelled``."""
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        if value != self._status:
            self._status = value
            emit = self.workflow._watch.emit  # None unless workflow.events has a subscriber
            if emit is not None:
                emit({"event": "status", "stream": self.name, "status": value})

    def pipe(
        self,
        other: Step,
        output: str | None = None,
        input: str | None = None,
        buffer_size: int | None = None,
        policy: str = "block",
    ) -> Step:
        """Connect an output of this step to an input of ``other``; return ``other``.

        Ports are chosen by the first rule that applies (a named side is kept, the other side
        is resolved by the same rules): explicit names; outputs whose name equals an input of
        ``other``; the only output to the only unconnected input; the only output to the only
        input (a merge). The ``errors`` output of a resuming stream is only ever piped by
        name (``output="errors"``).

        ``policy`` is what a full input does to this pipe alone: ``"block"`` (the default)
        pauses the pushing stream (back-pressure); ``"buffer"``, ``"drop_newest"``,
        ``"drop_oldest"``, ``"latest"`` and ``"error"`` never pause it and decide as for a
        hot source (drops are counted in the input's ``dropped``), so a slow branch of a
        broadcast cannot stall the others.

        Raises:
            PipeError: the ports are unknown or ambiguous, ``other`` belongs to another
                workflow, or the same output is already piped to the same input.
            ConfigError: ``policy`` is unknown.
        """
        return self.workflow._pipe(self, other, output, input, buffer_size, policy)

    def __repr__(self) -> str:
        return f"<Step {self.name!r} {self.status}>"


class Workflow:
    """A graph of streams, run from beginning to end with back-pressure.

    Args:
        buffer_size: the default threshold of every input (1024).
        cancel_timeout: seconds that cancelled streams get to finish (when the run fails or
            is cancelled) before ``start()`` gives up on them with a ``WorkflowError`` naming
            them; only code that swallows ``asyncio.CancelledError`` ever needs it.
    """

    def __init__(
        self, buffer_size: int = DEFAULT_BUFFER_SIZE, *, cancel_timeout: float = CANCEL_TIMEOUT_S
    ) -> None:
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
        self._run: _Run | None = None  # the active run, between start() and its end
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

    def add_source(self, source: Any, name: str | None = None, policy: str = "buffer") -> Step:
        """Add a source and return its step, which has one output named ``out``.

        ``source`` may be a ``reactivex.Observable``, an iterable or an async iterable. Iterables,
        async iterables and cold observables are pulled only as fast as downstream takes them;
        a hot observable (one that emits after ``subscribe()`` returned, or from another thread)
        cannot be paused and applies ``policy`` at each input it feeds when that input is full:
        ``"buffer"``, ``"drop_newest"``, ``"drop_oldest"``, ``"latest"`` or ``"error"``.
        """
        from ._sources import make_source

        return self.add_stream(make_source(source, name=name, policy=policy))

    def add_inlet(self, name: str | None = None) -> Inlet:
        """Add an inlet: a step (default name ``inlet``) with one output ``out``, fed by
        application code with ``await inlet.send(item)``, ``inlet.send_nowait(item)`` or, from
        other threads, ``inlet.send_threadsafe(item)``. The run does not complete while an
        inlet is open: ``inlet.close()`` ends it (``running()`` closes it on exit)."""
        from ._service import Inlet, InletStream

        return self._add(InletStream(name or "inlet"), Inlet)

    def add_outlet(self, name: str | None = None, buffer_size: int | None = None) -> Outlet:
        """Add an outlet: a step (default name ``outlet``) with one input ``x``, read by
        application code with ``await outlet.receive()`` or ``async for item in outlet``.

        Its buffer is bounded like any input (``buffer_size``, else the workflow's): a
        producer is paused while the application does not read.
        """
        from ._service import Outlet, OutletStream

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
        """A JSON-serialisable snapshot of every stream's status and port counters."""
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
        cancels it; a second signal of either kind during a drain cancels it. Both then raise
        ``KeyboardInterrupt``. The previous signal handlers are restored on return.

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
        signals = TerminationSignals(drain=self.stop, cancel=self.cancel)
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
        Raises the same errors as :meth:`run`.
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
        run = _Run(self)
        self._run = run
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
        from ._service import running

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
        from ._service import as_observable

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


def _input_stats(port: Input[Any], threshold: int) -> dict[str, int | float]:
    return {
        "received": port.received,
        "taken": port.taken,
        "dropped": port.dropped,
        "discarded": port.discarded,
        "buffered": port.buffered,
        "peak_buffered": port.peak,
        "paused_s": round(port.paused_s, 6),
        "threshold": threshold,
    }


class _Run:
    """One run of a workflow: the tasks, their supervision and the final bookkeeping."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self.loop = asyncio.get_running_loop()
        self.stop: asyncio.Future[None] = self.loop.create_future()
        self.monitor = Monitor(self._on_deadlock)
        self.deadlock: DeadlockError | None = None
        self.failures: list[StreamError] = []
        self.remaining = 0
        self.begun = 0  # step tasks that have started
        self.chains: dict[Step, list[Step]] = {}
        self.stopping = False  # workflow.stop(): sources stop, the rest drains
        self.graceful: set[Step] = set()  # sources cancelled by stop(): that is their return
        self.cancelled = False  # workflow.cancel()
        self.tasks: dict[Step, asyncio.Task[None]] = {}

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the run's loop soon (from any thread or a signal handler)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
            self.loop.call_soon_threadsafe(callback)

    def graceful_stop(self) -> None:
        if self.stopping or self.stop.done():
            return
        self.stopping = True
        for step, task in self.tasks.items():
            if step.stream.ins or task.done():
                continue

            def cancel(step: Step = step, task: asyncio.Task[None] = task) -> None:
                if not task.done():
                    self.graceful.add(step)
                    task.cancel()

            step.stream._stop_source(cancel)

    def cancel(self) -> None:
        if not self.stop.done():
            self.cancelled = True
            self._stop()

    def _plan_fusion(self) -> dict[Step, list[Step]]:
        """Find chains of adjacent fusable streams (``operator()`` stages); head -> followers.

        Two stages fuse when the first's only output feeds only the second's only input, that
        input has no other upstream, and no Rx observer watches the output between them: the
        items then go through one synchronous Rx chain instead of a buffer hop per stage.
        """
        pipes = self.workflow.pipes

        def successor(step: Step) -> Step | None:
            stream = step.stream
            if not stream._fusable or len(stream.outs) != 1:
                return None
            # The ``errors`` pipes of a resuming stage do not stand in the way of fusing.
            out_pipes = [p for p in pipes if p.source is step and p.output in stream.outs]
            if len(out_pipes) != 1:
                return None
            pipe = out_pipes[0]
            nxt = pipe.target
            if nxt is step or not nxt.stream._fusable or len(nxt.stream.ins) != 1:
                return None
            if nxt.stream._on_error != stream._on_error:  # one chain resumes as one
                return None
            if pipe.policy != "block":
                return None
            if sum(1 for p in pipes if p.target is nxt) != 1:
                return None
            if stream._outputs[pipe.output].observers:
                return None
            return nxt

        successors = {step: successor(step) for step in self.workflow.steps}
        followed = {nxt for nxt in successors.values() if nxt is not None}
        chains: dict[Step, list[Step]] = {}
        for step, nxt in successors.items():
            if nxt is None or step in followed:
                continue
            chain = []
            while nxt is not None:
                chain.append(nxt)
                nxt = successors[nxt]
            chains[step] = chain
        return chains

    def _wire(self) -> list[tuple[Step, StepRuntime]]:
        wf = self.workflow
        self.chains = self._plan_fusion()
        followers = {f for chain in self.chains.values() for f in chain}
        runtimes: dict[Step, StepRuntime] = {}
        for step in wf.steps:
            if step not in followers:
                runtime = StepRuntime(step.name, None, list(step.stream._inputs.values()))
                runtime.external = step.stream._external  # inlets/outlets are never stuck
                runtimes[step] = runtime
        for head, chain in self.chains.items():
            for follower in chain:  # it runs in its head's task: its waits are the head's
                runtimes[follower] = runtimes[head]
        steps = []
        for step in wf.steps:
            stream = step.stream
            runtime = runtimes[step]
            for name, inp in stream._inputs.items():
                upstreams = sum(1 for p in wf.pipes if p.target is step and p.input == name)
                inp._configure(wf._threshold(step, name), upstreams, runtime)
            for out in stream._outputs.values():
                out._rt = runtime
            if step not in followers:  # a fused follower runs inside its head's task
                self.monitor.add(runtime)
                steps.append((step, runtime))
        for p in wf.pipes:
            out = p.source.stream._outputs[p.output]
            inp = p.target.stream._inputs[p.input]
            if p.target in followers:  # a follower's only pipe is its link in the chain
                inp._feeders.append(out)  # the link counts the items that pass (_Counting)
            else:
                out._connect(inp, p.policy)
        for head, chain in self.chains.items():
            head.stream._fuse([step.stream for step in chain])
        return steps

    async def run(self) -> None:
        steps = self._wire()
        self.remaining = len(steps)
        for step, _ in steps:
            step.stream._on_start()
        watch = self.workflow._watch
        watch.run_started(self.loop, [runtime for _, runtime in steps])
        untrack = track_spawned_tasks(self.loop)
        error: BaseException | None = None
        try:
            await self._supervise(steps)
        except BaseException as exc:
            error = exc
            raise
        finally:
            untrack()
            for step in self.workflow.steps:
                step.stream._on_end(error)
            watch.run_ended()  # every status is final: the last snapshot, then completion

    async def _supervise(self, steps: list[tuple[Step, StepRuntime]]) -> None:
        tasks: list[asyncio.Task[None]] = []
        for step, runtime in steps:
            task = self.loop.create_task(self._run_step(step, runtime), name=f"mimo_rx:{step.name}")
            runtime.task = task
            tasks.append(task)
            self.tasks[step] = task
        self.workflow._tasks = tasks
        self.workflow._run_state = "running"
        if not tasks:
            self.workflow._begun_event().set()
            self.workflow._run_state = "done"
            return
        try:
            await asyncio.shield(self.stop)
        except asyncio.CancelledError:
            await self._shutdown(tasks, WorkflowCancelled(), "cancelled")
            raise
        finally:
            self.monitor.close()
        if self.cancelled:
            await self._shutdown(tasks, WorkflowCancelled(), "cancelled")
            raise WorkflowCancelled()
        if self.deadlock is not None:
            await self._shutdown(tasks, self.deadlock, "failed")
            _attach_others(self.deadlock, self.failures)
            raise self.deadlock
        if self.failures:
            first = self.failures[0]
            await self._shutdown(tasks, first, "failed")
            first.errors = list(self.failures)
            _attach_others(first, self.failures[1:])
            raise first from first.error
        self.workflow._run_state = "done"

    async def _run_step(self, step: Step, runtime: StepRuntime) -> None:
        current_step.set(runtime)  # tasks this stream spawns are tracked as its helpers
        group = [step, *self.chains.get(step, [])]  # the step and any fused behind it
        for member in group:
            member.status = "running"
        self.begun += 1
        if self.begun == len(self.tasks):
            self.workflow._begun_event().set()
        try:
            try:
                await step.stream._execute()
            except asyncio.CancelledError:
                if step not in self.graceful or self.stop.done():
                    raise
                # workflow.stop() cancelled this source: that is how it returns.
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
            # Closing notifies Rx subscribers, whose errors are this stream's failure.
            for member in group:
                for out in member.stream._outputs.values():
                    out.close()
        except asyncio.CancelledError:
            for member in group:
                member.status = "cancelled"
            raise
        except Exception as exc:
            failed = step
            if isinstance(exc, FusedStageError):
                failed = next(m for m in group if m.name == exc.step_name)
            for member in group:
                member.status = "failed" if member is failed else "cancelled"
            failed.error = exc
            self.failures.append(_stream_error(failed.name, exc))
            self._stop()
        else:
            for member in group:
                member.status = "done"
        finally:
            for member in group:
                member.stream._finish_inputs()
            self.monitor.finished(runtime)
            self.remaining -= 1
            if self.remaining == 0:
                self._stop()

    def _stop(self) -> None:
        if not self.stop.done():
            self.stop.set_result(None)

    def _on_deadlock(self, waits: list[str]) -> None:
        if self.deadlock is None and not self.stop.done():
            self.deadlock = DeadlockError(waits)
            self._stop()

    async def _shutdown(
        self, tasks: list[asyncio.Task[None]], reason: Exception, state: str
    ) -> None:
        """Cancel every task still running and wait for all of them, within a grace period.

        Every Rx subscriber gets its terminal signal even when a stream will not stop; then
        ``WorkflowError`` names the streams still running.
        """
        self.workflow._run_state = state
        for task in tasks:
            task.cancel()
        pending = {t for t in tasks if not t.done()}
        grace = self.workflow.cancel_timeout
        deadline = self.loop.time() + grace
        while pending:
            timeout = deadline - self.loop.time()
            if timeout <= 0:
                break
            try:
                _, pending = await asyncio.wait(pending, timeout=timeout)
            except asyncio.CancelledError:
                continue  # cancelled again while cleaning up: finish cleaning up first
            for task in pending:
                task.cancel()
        _retrieve_exceptions(tasks)
        self._terminate_subscribers(reason)
        if pending:
            stuck = ", ".join(repr(t.get_name().removeprefix("mimo_rx:")) for t in pending)
            raise WorkflowError(
                f"stream(s) {stuck} did not stop within {grace} s of being "
                "cancelled; do not swallow asyncio.CancelledError in stream code"
            ) from reason

    def _terminate_subscribers(self, reason: Exception) -> None:
        for step in self.workflow.steps:
            if step.status in ("pending", "running"):
                step.status = "cancelled"
            for port in step.stream._outputs.values():
                error = (
                    WorkflowCancelled(step.name, port.name)
                    if isinstance(reason, WorkflowCancelled)
                    else reason
                )
                try:
                    port._fail(error)
                except Exception as exc:
                    # reactivex's default on_error re-raises what it was given: not news.
                    if exc is not error:
                        self.failures.append(_stream_error(step.name, exc))


def _retrieve_exceptions(tasks: list[asyncio.Task[None]]) -> None:
    """Mark the outcome of finished tasks as seen (no "exception was never retrieved")."""
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()


def _close_runner(runner: asyncio.Runner, workflow: Workflow) -> None:
    """Close ``runner`` like ``asyncio.run`` does, but give up on tasks that will not stop.

    ``asyncio.run`` waits for every task it cancels; a stream that swallows cancellation
    would then hang ``run()`` although ``start()`` already raised ``WorkflowError``.
    """
    loop = runner.get_loop()
    _retrieve_exceptions(workflow._tasks)
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if pending:
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.wait(pending, timeout=workflow.cancel_timeout))
        _retrieve_exceptions(workflow._tasks)
        if any(not t.done() for t in pending):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()  # the stuck tasks are abandoned; WorkflowError named them
            return
    runner.close()


def _attach_others(error: Exception, others: list[StreamError]) -> None:
    """Make the failures that came with ``error`` part of its report: none is swallowed."""
    for other in others:
        if other is not error:
            error.add_note(f"also: {other}")
    if isinstance(error, DeadlockError):
        error.errors = list(others)


def _stream_error(name: str, exc: BaseException) -> StreamError:
    if isinstance(exc, (UserStopIteration, FusedStageError)):  # carriers: unwrap
        exc = exc.original
    if isinstance(exc, BufferOverflowError):
        error: StreamError = SourceOverflowError(name, exc)
    else:
        error = StreamError(name, exc)
    error.__cause__ = exc
    return error
