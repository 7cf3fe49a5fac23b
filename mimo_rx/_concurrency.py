"""map_stream: one stage that runs ``fn`` on many items at once, with back-pressure intact.

``map_stream(fn, concurrency=4)`` is a one-input (``x``), one-output (``y``) stream. An
``async def fn`` runs as up to ``concurrency`` tasks on the event loop (with one, in the
stream's own task: ``_run_inline``); a plain ``fn`` runs on
a ``concurrent.futures.Executor``: threads, processes, or a Dask cluster
(``distributed.Client(...).get_executor()``). The API follows aiostream's
``map(task_limit=...)`` and Akka's ``mapAsync``/``mapAsyncUnordered``.

Timing with ``concurrency=2`` (``[==]`` = ``fn(item)`` running)::

    x:      a-b-c-------d-------|
    fn(a):  [=======]
    fn(b):    [=]                      b is done first but keeps its slot until a is out
    fn(c):          [=====]            c waits, buffered in x, until a slot frees
    fn(d):              [===]
    y:      --------a-b---c-d---|      ordered=True: results in input order

With ``ordered=False`` each result goes out as soon as it is ready (b at once, which frees its
slot for c). An error does not wait for its turn: the first exception ends the stage.

Invariants (the stream's own task does every ``pop`` and every ``push``):

* **At most ``concurrency`` items in flight.** An item counts from the moment it is taken from
  ``x`` until its result has been pushed, so ordered results waiting for an earlier one count
  too: memory stays bounded by ``concurrency`` results.
* **Back-pressure crosses the executor.** New items are submitted only by the stream's task,
  and never while it is suspended in ``await y.push(...)``: a full downstream stops
  submission, and the jobs already submitted are the only work that continues.
* **Not a deadlock while jobs run.** Jobs in flight can finish without any other stream's help,
  so they are counted in ``StepRuntime.busy`` (see ``_monitor.py``) until they complete.
* **Nothing left behind.** When the stream ends early (an error, the workflow failing or being
  cancelled) every job not yet finished is cancelled: asyncio tasks are cancelled *and awaited*;
  executor jobs not yet started never start, and Dask futures are released on the scheduler. A
  job already running in a thread or a process cannot be interrupted by Python: it runs to its
  end and its result is dropped.
* **Errors keep their type.** An exception raised by ``fn`` (also on a remote worker) ends the
  stream with that exception as soon as it arrives, even with ``ordered=True`` while earlier
  items still run; the workflow raises ``StreamError`` with it as ``__cause__``.
* **Supervision** (``on_error="resume"``, ``retries``, ``timeout``): a job that raises is
  retried inside its own task, so it keeps its slot and its place in the order while it backs
  off; once it has failed for good it becomes a ``Failure`` on ``errors`` instead of ending
  the stream. Without retries or a timeout a job is exactly the plain call above.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._errors import ConfigError, EndOfStream
from ._handoff import thread_work
from ._lineage import decref
from ._monitor import StepRuntime
from ._ports import Input, Output
from ._stream import Ports, Stream, is_async_callable
from ._supervision import (
    Failure,
    await_thread_future,
    await_with_timeout,
    call_in_thread,
    check_on_error,
    check_retry_options,
    report_failure,
    step_name,
    with_retries,
)

T = TypeVar("T")
R = TypeVar("R")

_Future = asyncio.Future[Any] | concurrent.futures.Future[Any]


def map_stream(
    fn: Callable[[Any], Any],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    executor: concurrent.futures.Executor | None = None,
    name: str | None = None,
    on_error: str = "fail",
    retries: int = 0,
    backoff: float = 0.1,
    timeout: float | None = None,
) -> Stream:
    """Return a stream (input ``x``, output ``y``) that pushes ``fn(item)`` for each item.

    Args:
        fn: ``async def fn(item)`` runs as a task on the event loop; a plain ``fn(item)`` runs
            on ``executor``.
        concurrency: the most items in flight at once (taken from ``x`` but not yet pushed).
        ordered: ``True`` pushes results in input order; ``False`` as they complete.
        executor: any ``concurrent.futures.Executor`` for a plain ``fn``: a
            ``ThreadPoolExecutor``, a ``ProcessPoolExecutor`` or a Dask client's
            ``client.get_executor()``. ``None`` uses the event loop's default executor (threads).
        name: the stream's name (default: ``fn.__name__``; ``'map_stream'`` for a lambda).
        on_error: ``"fail"`` (the default): a call that fails for good fails the run.
            ``"resume"``: its item is skipped and a ``mimo_rx.Failure`` goes to the extra
            output ``errors``.
        retries: how many times a call that raised is tried again before it fails for good.
        backoff: seconds to wait before the first retry; each further retry waits twice as
            long as the one before.
        timeout: seconds each call may take (``None``: no limit). An ``async def fn`` is
            cancelled; a call on an executor is abandoned (its result dropped). The call
            then raises ``TimeoutError``, retried and handled like any exception. With
            ``executor=None`` timed calls run on daemon threads of mimo_rx's own, so an
            abandoned call never holds up the end of ``run()``.

    Returns:
        A ``Stream`` to add to a workflow with ``add_stream``.

    Raises:
        ConfigError: ``fn`` is not callable, ``concurrency`` is not an integer >= 1,
            ``executor`` is not a ``concurrent.futures.Executor``, an ``executor`` is given
            for an ``async def fn`` (which always runs on the loop), ``on_error`` is unknown,
            ``retries`` is not an integer >= 0, ``backoff`` is negative, or ``timeout`` is
            not ``None`` or positive. It is a ``ValueError``.
    """
    return _MapStream(fn, concurrency, ordered, executor, name, on_error, retries, backoff, timeout)


def _default_name(fn: object) -> str:
    fn_name = getattr(fn, "__name__", None)
    if isinstance(fn_name, str) and fn_name and fn_name != "<lambda>":
        return fn_name
    return "map_stream"


class _MapStream(Stream):
    """The stream :func:`map_stream` returns; its ``run`` drives a :class:`_Jobs`."""

    IN = ("x",)
    OUT = ("y",)
    _resumes_itself = True  # item by item, in run()

    def __init__(
        self,
        fn: Callable[[Any], Any],
        concurrency: int,
        ordered: bool,
        executor: concurrent.futures.Executor | None,
        name: str | None,
        on_error: str = "fail",
        retries: int = 0,
        backoff: float = 0.1,
        timeout: float | None = None,
    ) -> None:
        stream_name = _default_name(fn) if name is None else name
        check_on_error(on_error, f"map_stream {stream_name!r}")
        check_retry_options(retries, backoff, timeout, f"map_stream {stream_name!r}")
        if not callable(fn):
            raise ConfigError(f"fn of map_stream {stream_name!r} is not callable: {fn!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(
                f"concurrency of map_stream {stream_name!r} must be an integer >= 1, "
                f"not {concurrency!r}"
            )
        is_async = is_async_callable(fn)
        if executor is not None:
            if not isinstance(executor, concurrent.futures.Executor):
                raise ConfigError(
                    f"executor of map_stream {stream_name!r} must be a "
                    f"concurrent.futures.Executor (a thread or process pool, or a Dask "
                    f"client.get_executor()), not {type(executor).__name__}"
                )
            if is_async:
                raise ConfigError(
                    f"fn of map_stream {stream_name!r} is an async function, which runs as "
                    "tasks on the event loop; executor= is for plain functions: drop it, or "
                    "pass a plain def"
                )
        super().__init__(name=stream_name, on_error=on_error)
        self.func = fn
        self.concurrency = concurrency
        self.ordered = bool(ordered)
        self.executor = executor
        self.fn_is_async = is_async
        self.retries = retries
        self.backoff = float(backoff)
        self.timeout = None if timeout is None else float(timeout)

    async def run(self, ins: Ports, outs: Ports) -> None:
        if self.fn_is_async and self.concurrency == 1:
            return await self._run_inline(ins.x, outs.y)
        if self._holder is not None:
            return await self._run_tracked(ins.x, outs.y, _Jobs(self, ins.x._rt))
        x: Input[Any] = ins.x
        y: Output[Any] = outs.y
        jobs = _Jobs(self, x._rt)
        limit = self.concurrency
        resume = self._on_error == "resume"
        try:
            while True:
                if self._holder is not None:  # an inlet's send_and_wait switched it on
                    return await self._run_tracked(x, y, jobs)
                # Push what is ready first: a full downstream parks us here, and while we are
                # parked nothing new is submitted.
                while (job := jobs.next_ready()) is not None:
                    if not resume:
                        await y.push(jobs.result(job))
                        continue
                    item = job.item
                    try:
                        value = jobs.result(job)
                    except Exception as exc:  # fn failed for good: skip its item
                        failure = Failure(step_name(self), exc, item, "x")
                        await report_failure(self, failure)
                        continue
                    await y.push(value)
                # Fill the free slots from what is buffered (these pops do not suspend), while
                # untracked: a push above may have waited while an inlet began tracking.
                while jobs.in_flight < limit and len(x) and self._holder is None:
                    jobs.submit(await x.pop())
                if not jobs.in_flight:
                    # Nothing runs on our behalf: a plain wait on the input, which the
                    # deadlock monitor tracks like any other.
                    try:
                        item = await x.pop()
                    except EndOfStream:
                        return
                    jobs.submit(item)
                    continue
                await jobs.wait(x if jobs.in_flight < limit else None)
        finally:
            await jobs.close()

    async def _run_inline(self, x: Input[Any], y: Output[Any]) -> None:
        """``concurrency=1`` with an ``async def fn``: each call runs in the stream's own
        task, before the next item is taken. The order, the single slot and back-pressure
        are those of one job task at a time, without a task (and the loop turns it costs) per
        item: a job that does not suspend lets the stream go on through its buffer at once.
        The item stays held while ``fn`` runs (contract section 12), so its result, or its
        Failure, derives from it as in any stream."""
        call = self._call_with_retries if self.retries or self.timeout is not None else self.func
        if self._on_error != "resume":
            async for item in x:
                await y.push(await call(item))
            return
        async for item in x:
            try:
                value = await call(item)
            except Exception as exc:  # fn failed for good: skip its item
                await report_failure(self, Failure(step_name(self), exc, item, "x"))
                continue
            await y.push(value)

    async def _call_with_retries(self, item: Any) -> Any:
        """One call of an ``async def fn`` with its timeout and retries (inline, or inside
        a job's task)."""
        fn, timeout = self.func, self.timeout

        async def attempt() -> Any:
            return await await_with_timeout(fn(item), timeout)

        return await with_retries(attempt, self.retries, self.backoff)

    async def _run_tracked(self, x: Any, y: Any, jobs: _Jobs) -> None:
        """``run`` downstream of an acknowledged source (contract section 12): each job keeps
        the tickets of its own item (taken out of the stream's holder), and its result, or its
        Failure, derives from that item only. The same loop as ``run`` otherwise."""
        holder = self._holder
        limit = self.concurrency
        resume = self._on_error == "resume"
        orphan = x._adopt_orphan()  # the item the untracked loop took as tracking began
        if orphan is not None and jobs.jobs:
            jobs.jobs[-1].tag = orphan
        elif orphan is not None:
            decref(orphan)

        async def take() -> None:
            item = await x.pop()
            tag = holder.detach(x)
            jobs.submit(item)
            jobs.jobs[-1].tag = tag

        try:
            while True:
                while (job := jobs.next_ready()) is not None:
                    tag = getattr(job, "tag", None)  # unset: submitted before tracking began
                    try:
                        value = jobs.result(job)
                    except Exception as exc:
                        if not resume:
                            raise
                        failure = Failure(step_name(self), exc, job.item, "x")
                        await report_failure(self, failure, tag)
                    else:
                        await y._push_tag(value, tag)
                    decref(tag)
                while jobs.in_flight < limit and len(x):
                    await take()
                if not jobs.in_flight:
                    try:
                        await take()
                    except EndOfStream:
                        return
                    continue
                await jobs.wait(x if jobs.in_flight < limit else None)
        finally:
            await jobs.close()


class _Job:
    """One call of ``fn``: its future and whether it has completed.

    The future's done-callback refers to the job, so the job lets go of the future once its
    result is taken (or it is cancelled): no reference cycle keeps a Dask future, and with it
    the task's result on the cluster, alive until the garbage collector runs.
    """

    __slots__ = ("done", "future", "item", "tag")
    tag: Any  # set only downstream of an acknowledged source (_run_tracked)

    def __init__(self, future: _Future, item: Any) -> None:
        self.future: _Future | None = future
        self.done = False
        self.item = item  # for the Failure, should it fail


class _Jobs:
    """The jobs of one run of a map_stream, in submission order, and their bookkeeping.

    Completion callbacks run on the event loop (an executor's are moved there with
    ``call_soon_threadsafe``); they only mark the job done, update ``busy`` and wake the
    stream's task, which does everything else.
    """

    def __init__(self, stream: _MapStream, runtime: StepRuntime) -> None:
        self.stream = stream
        self.runtime = runtime
        self.loop = asyncio.get_running_loop()
        self.jobs: deque[_Job] = deque()  # submitted, result not yet pushed, in input order
        self.finished: deque[_Job] = deque()  # completed, in completion order (unordered)
        self.running = 0  # jobs not yet completed, counted in runtime.busy
        self.failed: _Job | None = None  # the first job that raised: it goes out first
        self.wake: asyncio.Future[None] | None = None
        self.closed = False

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    def submit(self, item: Any) -> None:
        stream = self.stream
        future: _Future
        if stream.retries or stream.timeout is not None:
            future = self.loop.create_task(self._attempts(item), name=f"mimo_rx:{stream.name}:job")
        elif stream.fn_is_async:
            awaitable = stream.func(item)
            if not asyncio.iscoroutine(awaitable):
                awaitable = _await(awaitable)
            future = self.loop.create_task(awaitable, name=f"mimo_rx:{stream.name}:job")
        elif stream.executor is None:
            future = self.loop.run_in_executor(None, _call_local, stream.func, item)
        else:
            # Chained by hand rather than with asyncio.wrap_future, which never completes (and
            # so would hang the stream) when fn raises StopIteration.
            future = stream.executor.submit(stream.func, item)
        job = _Job(future, item)
        self.jobs.append(job)
        self.running += 1
        self.runtime.busy += 1
        if isinstance(future, concurrent.futures.Future):
            finished = thread_work(self.loop)
            future.add_done_callback(lambda _: self._from_thread(job, finished))
        else:
            future.add_done_callback(lambda _: self._completed(job))

    async def _attempts(self, item: Any) -> Any:
        """One job with retries and/or a timeout: every attempt runs inside this task."""
        stream = self.stream
        if stream.fn_is_async:
            return await stream._call_with_retries(item)
        fn, timeout = stream.func, stream.timeout
        attempt: Callable[[], Awaitable[Any]]
        if stream.executor is not None:
            executor = stream.executor

            def attempt() -> Awaitable[Any]:
                return await_thread_future(executor.submit(fn, item), timeout)

        elif timeout is None:
            loop = self.loop

            def attempt() -> Awaitable[Any]:
                return loop.run_in_executor(None, _call_local, fn, item)

        else:  # never the loop's default executor: run() would wait for abandoned calls

            def attempt() -> Awaitable[Any]:
                return await_thread_future(call_in_thread(fn, item), timeout)

        return await with_retries(attempt, stream.retries, stream.backoff)

    def _from_thread(self, job: _Job, finished: Callable[[], None]) -> None:
        # A job that outlives the run (a thread cannot be interrupted) may finish after the
        # loop has closed: nobody waits for it any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._completed, job)
        finished()

    def _completed(self, job: _Job) -> None:
        if self.closed or job.done:
            return
        job.done = True
        self.running -= 1
        runtime = self.runtime
        runtime.busy -= 1
        if runtime.busy == 0 and runtime.monitor is not None:
            runtime.monitor.recheck()
        future = job.future
        if (
            self.failed is None
            and future is not None
            and not future.cancelled()
            and future.exception() is not None
        ):
            self.failed = job
        elif not self.stream.ordered:
            self.finished.append(job)
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def next_ready(self) -> _Job | None:
        """The next job whose result may be pushed now, removed from the in-flight jobs."""
        if self.failed is not None:  # fail fast: do not wait for earlier items
            job, self.failed = self.failed, None
            self.jobs.remove(job)
            return job
        if self.stream.ordered:
            if self.jobs and self.jobs[0].done:
                return self.jobs.popleft()
            return None
        if self.finished:
            job = self.finished.popleft()
            self.jobs.remove(job)
            return job
        return None

    def result(self, job: _Job) -> Any:
        """The job's result, or raise what ``fn`` raised."""
        future, job.future = job.future, None
        assert future is not None
        if future.cancelled():
            raise RuntimeError(
                f"a job of map_stream {self.stream.name!r} was cancelled outside the workflow "
                "(was its executor shut down while the workflow ran?)"
            )
        error = future.exception()
        if error is None:
            return future.result()
        del future  # the traceback of the raise below must not keep the future alive
        _release_executor_frames(error)
        if isinstance(error, StopIteration):  # a coroutine cannot raise it: say what happened
            raise RuntimeError(
                f"fn of map_stream {self.stream.name!r} raised StopIteration"
            ) from error
        raise error

    async def wait(self, x: Input[Any] | None) -> None:
        """Wait until a job completes or, when ``x`` is given, an item arrives or ``x`` closes."""
        wake: asyncio.Future[None] = self.loop.create_future()
        self.wake = wake
        # The input's getter is the future an arriving item (or the close) resolves; only this
        # task reads x, so the slot is free. The wait is not parked with the deadlock monitor:
        # the jobs in flight (busy) can end it without help.
        listen = (
            x is not None
            and not x.closed
            and not len(x)
            and (x._getter is None or x._getter.done())
        )
        if listen:
            assert x is not None
            x._getter = wake
        try:
            await wake
        finally:
            self.wake = None
            if listen:
                assert x is not None
                if x._getter is wake:
                    x._getter = None

    async def close(self) -> None:
        """Cancel every job still running; await the tasks so none is left behind."""
        tasks: list[asyncio.Future[Any]] = []
        for job in self.jobs:
            future, job.future = job.future, None
            if future is not None and not job.done:
                future.cancel()
                if isinstance(future, asyncio.Future):
                    tasks.append(future)
        self.closed = True
        self.runtime.busy -= self.running
        self.running = 0
        self.jobs.clear()
        self.finished.clear()
        self.failed = None
        if tasks:
            await asyncio.wait(tasks)


# Executor internals whose frames end up in the traceback of a job's exception.
_EXECUTOR_MODULES = ("distributed.cfexecutor",)


def _release_executor_frames(error: BaseException) -> None:
    """Drop the executor's own frames from the start of ``error``'s traceback.

    Dask's ``ClientExecutor`` re-raises a remote exception inside a frame that holds the Dask
    future, and the client keeps that same exception object for as long as the future lives:
    a cycle rooted in the client, so an erred task would never leave the cluster
    (dask/distributed#8790). The frame may still be running in the client's thread, so it
    cannot be cleared; it is unlinked instead (it shows nothing about ``fn`` anyway).
    """
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in _EXECUTOR_MODULES:
        tb = tb.tb_next
    if tb is not error.__traceback__:
        error.__traceback__ = tb


async def _await(awaitable: Awaitable[R]) -> R:
    return await awaitable


def _call_local(fn: Callable[[T], R], item: T) -> R:
    """Run ``fn(item)`` on the default executor; StopIteration cannot cross into a Future."""
    try:
        return fn(item)
    except StopIteration as exc:
        raise RuntimeError(f"{_default_name(fn)} raised StopIteration") from exc
