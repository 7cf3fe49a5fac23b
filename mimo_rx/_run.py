"""One run of a workflow: the step tasks, their supervision, and the bookkeeping at the end.

``Workflow.start()`` makes a :class:`Run` and awaits :meth:`Run.run`: it wires the ports (and
fuses adjacent operator stages), starts one task per step, and does not return (or raise)
before every one of them has ended. The first stream to fail, a deadlock, ``cancel()`` or the
cancellation of ``start()`` itself cancels all the others; every Rx subscriber of an unfinished
output then receives a terminal ``on_error``. ``stop()`` stops the sources gracefully and lets
the rest drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ._acksources import AckSourceStream, wire_lineage
from ._errors import (
    BufferOverflowError,
    DeadlockError,
    MissingAwaitError,
    SourceOverflowError,
    StreamError,
    WorkflowCancelled,
    WorkflowError,
)
from ._monitor import Monitor, StepRuntime, current_step, track_spawned_tasks
from ._stream import FusedStageError, Stream, UserStopIteration
from ._unawaited import watching

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._lineage import Holder
    from ._step import Pipe, Step
    from ._workflow import Workflow


# How long a stream cancelled by a failing or cancelled run has before it is cancelled again
# (if it swallowed the first cancellation); the run's cancel_timeout still bounds the whole.
RECANCEL_S = 0.1


class Run:
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
        self.started: set[Step] = set()  # steps whose task has taken its first step
        self.chains: dict[Step, list[Step]] = {}
        self.stopping = False  # workflow.stop(): sources stop, the rest drains
        self.graceful: set[Step] = set()  # sources cancelled by stop(): that is their return
        self.cancelled = False  # workflow.cancel()
        self.tasks: dict[Step, asyncio.Task[None]] = {}
        self.ledgers: list[Ledger] = []  # one per acknowledged source (contract section 12)
        self.holders: list[Holder] = []  # the streams downstream of one
        self.runtimes: dict[Stream, StepRuntime] = {}

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the run's loop soon (from any thread or a signal handler)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
            self.loop.call_soon_threadsafe(callback)

    def graceful_stop(self) -> None:
        if self.stopping or self.stop.done():
            return
        self.stopping = True
        self._stop_sources()  # none yet while the run is set up: _supervise stops them

    def _stop_sources(self) -> None:
        """Stop every step without inputs whose task exists (``graceful_stop``)."""
        for step, task in self.tasks.items():
            if step.stream.ins or task.done():
                continue

            def cancel(step: Step = step, task: asyncio.Task[None] = task) -> None:
                if not task.done():
                    self.graceful.add(step)
                    # A task cancelled before its first step would never run _run_step (no
                    # status, no count, no close): one not started yet sees ``graceful``
                    # when it starts and returns at once instead.
                    if step in self.started:
                        task.cancel()

            step.stream._stop_source(cancel)

    def cancel(self) -> None:
        if not self.stop.done():
            self.cancelled = True
            self._freeze()
            self._stop()

    def _freeze(self) -> None:
        """The run fails or is cancelled: no message is done from now on (contract 12)."""
        for ledger in self.ledgers:
            ledger.freeze()
        for step in self.workflow.steps:
            step.stream._freeze_lineage()

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
        self.runtimes = {step.stream: runtime for step, runtime in runtimes.items()}
        roots = [step.stream for step in wf.steps if isinstance(step.stream, AckSourceStream)]
        if roots:  # lineage only where an acknowledged source feeds (zero cost elsewhere)
            self.track(roots)
            self.ledgers = [root.ledger for root in roots]
        late = [step.stream for step in wf.steps if step.stream._tracks_late]
        for stream in downstream(late, wf.pipes):
            stream._may_be_tracked()
        return steps

    def track(self, roots: Sequence[Stream], late: bool = False) -> None:
        """Track lineage downstream of ``roots`` (acknowledged sources when the run is wired;
        an inlet at its first ``send_and_wait``)."""
        wf = self.workflow
        self.holders += wire_lineage(
            [(p.source.stream, p.output, p.target.stream, p.input) for p in wf.pipes],
            [step.stream for step in wf.steps],
            self.runtimes,
            roots,
            late,
        )
        for step in wf.steps:
            step._ports_changed()

    async def _open_sources(self) -> None:
        """Open every acknowledged source (before any step runs) and start its acks."""
        for ledger in self.ledgers:
            ledger.on_error = lambda exc, name=ledger.name: self._ack_failed(name, exc)
            try:
                await ledger.source.open()
            except Exception as exc:
                raise _stream_error(ledger.name, exc) from exc
            ledger.opened = True
            ledger.start()

    def _ack_failed(self, name: str, exc: BaseException) -> None:
        self.failures.append(_stream_error(name, exc))
        self._freeze()
        self._stop()

    async def _close_sources(self, error: BaseException | None) -> None:
        """The run has ended: ack what is done (after a normal end, everything still held
        is done too), then close every acknowledged source once."""
        if error is None:
            for holder in self.holders:
                for port in holder.inputs:
                    port._release_buffered()  # an outlet's unread items: the run has ended
                holder.release_all()
        problem: BaseException | None = None
        for ledger in self.ledgers:
            try:
                await ledger.finish()
            except Exception as exc:
                problem = problem or _stream_error(ledger.name, exc)
            if ledger.error is not None and error is None:
                problem = problem or _stream_error(ledger.name, ledger.error)
        if problem is not None and error is None:
            raise problem

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
            if self.ledgers:
                await self._open_sources()
            with watching(self._missing_await):
                await self._supervise(steps)
        except BaseException as exc:
            error = exc
            raise
        finally:
            untrack()
            if self.holders:
                await self._close_sources(error)
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
        if self.stopping:  # stop() came while the run was set up (sources opening)
            self._stop_sources()
        self.workflow._tasks = tasks
        self.workflow._run_state = "running"
        if not tasks:
            self.workflow._begun_event().set()
            self.workflow._run_state = "done"
            return
        try:
            await asyncio.shield(self.stop)
        except asyncio.CancelledError:
            self._freeze()
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
        self.started.add(step)
        if self.begun == len(self.tasks):
            self.workflow._begun_event().set()
        try:
            try:
                if step not in self.graceful:  # else stop() came before this first step
                    await step.stream._execute()
                for member in group:
                    if member.stream._holder is not None:  # returned: it holds nothing
                        member.stream._holder.release_all()
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
            for member in group:  # a step failed from outside (_fail) keeps "failed"
                member.status = "failed" if member.error is not None else "cancelled"
            raise
        except (KeyboardInterrupt, SystemExit):
            raise  # asyncio hands these to the loop's caller: they end the program, not a stream
        except BaseException as exc:  # GeneratorExit, a framework's abort...: never swallowed
            failed = step
            if isinstance(exc, FusedStageError):
                failed = next(m for m in group if m.name == exc.step_name)
            for member in group:
                member.status = "failed" if member is failed else "cancelled"
            failed.error = exc
            self.failures.append(_stream_error(failed.name, exc))
            self._freeze()
            self._stop()
        else:
            for member in group:
                member.status = "failed" if member.error is not None else "done"
        finally:
            for member in group:
                member.stream._finish_inputs()
            self.monitor.finished(runtime)
            self.remaining -= 1
            if self.remaining == 0:
                self._stop()

    def _missing_await(self, owner: object, method: str) -> bool:
        """A coroutine of ``method`` (push, push_many, send) called on ``owner`` was dropped
        without being awaited (see ``_unawaited``): when ``owner`` is a port of this run, fail
        the step it belongs to. Called from any thread, in the middle of the code that
        dropped the coroutine."""
        for step in self.workflow.steps:
            stream = step.stream
            if owner is stream or owner is step:  # an inlet's send()
                error = MissingAwaitError(step.name, stream.outs[0], method, inlet=True)
                break
            port = next((n for n, out in stream._outputs.items() if out is owner), None)
            if port is not None:
                error = MissingAwaitError(step.name, port, method)
                break
        else:
            return False
        if asyncio._get_running_loop() is self.loop:
            self._fail(step, error)
        else:
            self.call_soon(lambda: self._fail(step, error))
        return True

    def _fail(self, step: Step, error: Exception) -> None:
        """Fail ``step`` from outside its task (its task is cancelled with the others)."""
        if step.error is None:
            step.error = error
            step.status = "failed"
            self.failures.append(_stream_error(step.name, error))
        self._stop()

    def _stop(self) -> None:
        if not self.stop.done():
            self.stop.set_result(None)

    def _on_deadlock(self, waits: list[str]) -> None:
        if self.deadlock is None and not self.stop.done():
            self.deadlock = DeadlockError(waits)
            self._freeze()
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
        now = self.loop.time()
        deadline = now + grace
        # A stream that swallowed the cancellation (``except CancelledError: pass``, a
        # library that retries on it) is cancelled again soon, as pressing Ctrl-C twice
        # would, rather than after the whole grace period; only one that swallows every
        # cancellation is left to the grace period and named in the WorkflowError.
        recancel = now + min(RECANCEL_S, grace / 2)
        while pending:
            timeout = min(recancel, deadline) - self.loop.time()
            if timeout <= 0:
                if recancel >= deadline:
                    break
                recancel = deadline
                for task in pending:
                    task.cancel()
                continue
            try:
                _, pending = await asyncio.wait(pending, timeout=timeout)
            except asyncio.CancelledError:
                continue  # cancelled again while cleaning up: finish cleaning up first
        retrieve_exceptions(tasks)
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


def retrieve_exceptions(tasks: list[asyncio.Task[None]]) -> None:
    """Mark the outcome of finished tasks as seen (no "exception was never retrieved")."""
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()


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


def downstream(roots: Sequence[Stream], pipes: Sequence[Pipe]) -> set[Stream]:
    """The streams that ``roots`` feed, directly or through others (not the roots)."""
    found: set[Stream] = set()
    todo = list(roots)
    while todo:
        stream = todo.pop()
        for pipe in pipes:
            target = pipe.target.stream
            if pipe.source.stream is stream and target not in found:
                found.add(target)
                todo.append(target)
    return found
