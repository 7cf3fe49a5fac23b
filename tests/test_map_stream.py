"""Contract section 8: map_stream runs fn concurrently (tasks, threads, processes, Dask)
without losing back-pressure, order, errors or cleanliness.

The Dask tests run a real ``distributed.LocalCluster`` (2 worker processes) started once for
the module; they are skipped when ``distributed`` is not installed (``mimo_rx[dask]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import Collector, input_stats, linear, run_checked, source, yield_to_loop

from mimo_rx import ConfigError, DeadlockError, Stream, StreamError, Workflow, map_stream

HAS_DASK = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAS_DASK, reason="needs distributed (mimo_rx[dask])")


# -- functions shipped to other processes: module level, so that they pickle ---------------


def double(x: int) -> int:
    return 2 * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


def nap_then_double(x: int) -> int:
    """Takes longer for small items, so completion order differs from input order."""
    time.sleep(0.02 * (x % 4 == 0))
    return 2 * x


def nap(x: float) -> float:
    time.sleep(x)
    return x


def stop_iteration(x: int) -> int:
    return next(iter([]))


def run_stage(
    stage: Stream, items: list[Any], buffer_size: int = 4, sink: Collector | None = None
) -> tuple[Workflow, Collector]:
    sink = sink or Collector()
    wf, _ = linear(source(items), stage, sink, buffer_size=buffer_size)
    run_checked(wf, timeout=30)
    return wf, sink


def stream_error(stage: Stream, items: list[Any]) -> StreamError:
    wf, _ = linear(source(items), stage, Collector(), buffer_size=4)
    with pytest.raises(StreamError) as info:
        run_checked(wf, timeout=30)
    return info.value


class InFlight:
    """Counts calls running at once (from any thread) and remembers the peak."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.calls = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


class CountingExecutor(concurrent.futures.Executor):
    """Wraps an executor; at each submit, checks the bounds the contract promises.

    ``submit`` runs on the event loop (the stream's task calls it), so reading the workflow's
    counters there is exact.
    """

    def __init__(self, inner: concurrent.futures.Executor) -> None:
        self.inner = inner
        self.submitted = 0
        self.completed = 0
        self.peak_in_flight = 0
        self.on_submit: Callable[[int], None] = lambda n: None
        self.lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        with self.lock:
            self.peak_in_flight = max(self.peak_in_flight, self.submitted - self.completed)
        self.on_submit(self.submitted)
        future = self.inner.submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Any) -> None:
        with self.lock:
            self.completed += 1


@pytest.fixture(scope="module")
def threads() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        yield pool


@pytest.fixture(scope="module")
def processes() -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    # spawn, not fork: the module's Dask cluster may have threads running in this process.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        yield pool


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    import cloudpickle
    from distributed import Client, LocalCluster

    # Worker processes cannot import this test module: ship its functions by value.
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        # Without a dashboard the scheduler still serves /health, by default on port 8787;
        # another cluster on the machine may hold that port (Dask then warns and leaks a
        # socket), so take any free local port.
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(module)


def eventually(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    """Poll ``condition`` (state owned by another process) until true, within a deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def dask_is_idle(client: Any) -> bool:
    """Nothing held by the client, the scheduler or any worker."""
    scheduler_tasks = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    worker_tasks = client.run(lambda dask_worker: len(dask_worker.state.tasks))
    return not client.futures and scheduler_tasks == 0 and not any(worker_tasks.values())


# -- construction ---------------------------------------------------------------------------


def test_map_stream_has_input_x_output_y_and_is_named_after_fn():
    stage = map_stream(double)
    assert (stage.ins, stage.outs, stage.name) == (["x"], ["y"], "double")
    assert isinstance(stage, Stream)


def test_a_lambda_map_stream_is_named_map_stream_and_name_overrides():
    assert map_stream(lambda x: x).name == "map_stream"
    assert map_stream(double, name="twice").name == "twice"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_concurrency_below_one_or_not_an_integer_is_a_config_error_naming_the_stream(bad):
    message = r"concurrency of map_stream 'double' must be an integer >= 1"
    with pytest.raises(ConfigError, match=message):
        map_stream(double, concurrency=bad)
    with pytest.raises(ValueError):
        map_stream(double, concurrency=bad)


def test_an_executor_for_an_async_fn_is_a_config_error(threads):
    async def fetch(x):
        return x

    with pytest.raises(ConfigError, match=r"'fetch' is an async function.*executor= is for plain"):
        map_stream(fetch, executor=threads)


def test_an_executor_that_is_not_a_concurrent_futures_executor_is_a_config_error():
    with pytest.raises(ConfigError, match=r"must be a concurrent.futures.Executor"):
        map_stream(double, executor=object())  # type: ignore[arg-type]


def test_a_fn_that_is_not_callable_is_a_config_error():
    with pytest.raises(ConfigError, match="not callable"):
        map_stream(42)  # type: ignore[arg-type]


# -- async fn: tasks on the loop --------------------------------------------------------------


def delays_then_double(delays: dict[int, int], gauge: InFlight | None = None):
    async def work(x):
        if gauge:
            gauge.enter()
        try:
            await yield_to_loop(delays.get(x, 0))
            return 2 * x
        finally:
            if gauge:
                gauge.leave()

    return work


def test_async_fn_results_keep_input_order_when_later_items_finish_first():
    slow_first = {x: 20 for x in range(0, 40, 4)}
    _, sink = run_stage(map_stream(delays_then_double(slow_first), concurrency=4), list(range(40)))
    assert sink.items == [2 * x for x in range(40)]


def test_async_fn_unordered_results_go_out_as_they_complete():
    slow_first = {x: 20 for x in range(0, 40, 4)}
    stage = map_stream(delays_then_double(slow_first), concurrency=4, ordered=False)
    _, sink = run_stage(stage, list(range(40)))
    assert sorted(sink.items) == [2 * x for x in range(40)]
    assert sink.items.index(2) < sink.items.index(0)  # 1 finished before 0


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_async_fn_never_has_more_than_concurrency_calls_in_flight_and_uses_them(
    concurrency, ordered
):
    gauge = InFlight()
    fn = delays_then_double({x: 3 for x in range(30)}, gauge)
    _, sink = run_stage(map_stream(fn, concurrency=concurrency, ordered=ordered), list(range(30)))
    assert sorted(sink.items) == [2 * x for x in range(30)]
    assert gauge.peak == concurrency


def test_an_empty_input_closes_the_output_without_calling_fn():
    gauge = InFlight()
    _, sink = run_stage(map_stream(delays_then_double({}, gauge), concurrency=4), [])
    assert sink.items == []
    assert gauge.calls == 0


def test_none_is_a_legal_item_and_a_legal_result():
    async def identity(x):
        return x

    _, sink = run_stage(map_stream(identity, concurrency=2), [None, 1, None])
    assert sink.items == [None, 1, None]


def test_an_async_fn_error_fails_the_workflow_with_the_original_cause():
    async def check(x):
        return fail_on_three(x)

    error = stream_error(map_stream(check, concurrency=3), list(range(10)))
    assert error.stream == "check"
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "item 3 is bad"


def test_an_async_fn_error_cancels_the_other_calls_in_flight():
    cancelled = []

    async def work(x):
        if x == 0:
            await yield_to_loop(2)
            raise ValueError("first item fails")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(x)
            raise

    error = stream_error(map_stream(work, concurrency=4), list(range(10)))
    assert isinstance(error.__cause__, ValueError)
    assert sorted(cancelled) == [1, 2, 3]  # run_checked also saw no task left behind


@pytest.mark.parametrize("ordered", [True, False])
def test_an_error_fails_the_stage_at_once_even_while_earlier_items_still_run(ordered):
    cancelled = []

    async def work(x):
        if x == 1:
            raise ValueError("item 1 is bad")
        try:
            await asyncio.Event().wait()  # item 0 never finishes
        except asyncio.CancelledError:
            cancelled.append(x)
            raise

    error = stream_error(map_stream(work, concurrency=2, ordered=ordered), list(range(5)))
    assert str(error.__cause__) == "item 1 is bad"
    assert cancelled == [0]


def test_cancelling_the_workflow_cancels_every_async_call_in_flight():
    cancelled = []
    all_started = asyncio.Event()

    async def hang(x):
        if x == 2:
            all_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(x)
            raise

    wf, _ = linear(source(range(10)), map_stream(hang, concurrency=3), Collector())

    async def main():
        run = asyncio.create_task(wf.start())
        await all_started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    run_checked(main(), timeout=30, workflows=[wf])
    assert sorted(cancelled) == [0, 1, 2]
    assert wf.stats()["streams"]["hang"]["status"] == "cancelled"


# -- back-pressure and the deadlock monitor ----------------------------------------------------


class SlowSink(Collector):
    """Lets the loop run a few times per item, so the stage gets ahead of it."""

    def __init__(self, on_item: Callable[[int], None] = lambda n: None) -> None:
        super().__init__()
        self.on_item = on_item

    async def run(self, ins, outs):
        async for item in ins.x:
            self.items.append(item)
            self.on_item(len(self.items))
            await yield_to_loop(5)


def check_backpressure(executor: CountingExecutor, concurrency: int, items: int) -> None:
    """A slow sink behind a bounded buffer: submission never runs ahead of it."""
    buffer_size = 2
    consumed = [0]
    sink = SlowSink(lambda n: consumed.__setitem__(0, n))

    def bound(submitted: int) -> None:
        # Everything submitted is consumed, buffered at the sink, or in flight.
        assert submitted <= consumed[0] + buffer_size + concurrency

    executor.on_submit = bound
    stage = map_stream(double, concurrency=concurrency, executor=executor, name="stage")
    wf, _ = run_stage(stage, list(range(items)), buffer_size=buffer_size, sink=sink)
    assert sink.items == [2 * x for x in range(items)]
    assert executor.submitted == items
    assert executor.peak_in_flight <= concurrency
    assert input_stats(wf, "sink", "x")["peak_buffered"] <= buffer_size
    assert input_stats(wf, "stage", "x")["peak_buffered"] <= buffer_size


def test_a_full_downstream_stops_submission_to_a_thread_pool(threads):
    check_backpressure(CountingExecutor(threads), concurrency=3, items=60)


def test_a_full_downstream_stops_submission_to_a_process_pool(processes):
    check_backpressure(CountingExecutor(processes), concurrency=3, items=30)


def test_a_full_downstream_stops_async_calls_too():
    gauge = InFlight()
    consumed = [0]
    started = []

    async def work(x):
        started.append(x)
        assert len(started) <= consumed[0] + 2 + 3
        return await delays_then_double({}, gauge)(x)

    sink = SlowSink(lambda n: consumed.__setitem__(0, n))
    run_stage(map_stream(work, concurrency=3), list(range(50)), buffer_size=2, sink=sink)
    assert sink.items == [2 * x for x in range(50)]
    assert gauge.peak <= 3


def test_jobs_in_flight_while_every_other_stream_waits_are_not_a_deadlock(threads):
    # Each job outlasts the deadlock monitor's grace period while source and sink both wait.
    stage = map_stream(nap, concurrency=2, executor=threads)
    _, sink = run_stage(stage, [0.15] * 4, buffer_size=1)
    assert sink.items == [0.15] * 4


def test_a_real_deadlock_around_a_map_stream_is_still_reported(threads):
    class DrainAFirst(Stream):
        IN = ("a", "b")

        async def run(self, ins, outs):
            async for _ in ins.a:
                pass
            async for _ in ins.b:
                pass

    wf = Workflow(buffer_size=2)
    src = wf.add_stream(source(range(20)))
    stage = wf.add_stream(map_stream(double, concurrency=2, executor=threads))
    sink = wf.add_stream(DrainAFirst())
    src.pipe(stage).pipe(sink, input="a")
    src.pipe(sink, input="b")
    with pytest.raises(DeadlockError, match="double"):
        run_checked(wf, timeout=30)


# -- executors: threads and processes ----------------------------------------------------------


def test_the_default_executor_runs_a_plain_fn_in_threads():
    names = []

    def where(x):
        names.append(threading.current_thread().name)
        return x

    _, sink = run_stage(map_stream(where, concurrency=2), list(range(6)))
    assert sink.items == list(range(6))
    assert threading.main_thread().name not in names


@pytest.mark.parametrize("concurrency", [2, 4])
def test_a_thread_pool_runs_exactly_concurrency_calls_at_once(threads, concurrency):
    # Every call waits at a barrier for `concurrency` parties: the run can only finish if
    # that many calls really run at the same time; the gauge shows never more.
    barrier = threading.Barrier(concurrency, timeout=10)
    gauge = InFlight()

    def meet(x):
        gauge.enter()
        try:
            barrier.wait()
            return x
        finally:
            gauge.leave()

    items = list(range(4 * concurrency))
    _, sink = run_stage(map_stream(meet, concurrency=concurrency, executor=threads), items)
    assert sink.items == items
    assert gauge.peak == concurrency


def test_a_thread_pool_unordered_emits_fast_items_before_slow_ones(threads):
    stage = map_stream(nap_then_double, concurrency=4, ordered=False, executor=threads)
    _, sink = run_stage(stage, list(range(8)))
    assert sorted(sink.items) == [2 * x for x in range(8)]
    assert sink.items.index(2) < sink.items.index(0)


def test_a_thread_pool_error_fails_the_workflow_with_the_original_cause(threads):
    error = stream_error(map_stream(fail_on_three, concurrency=2, executor=threads), [1, 2, 3, 4])
    assert error.stream == "fail_on_three"
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "item 3 is bad"


@pytest.mark.parametrize("use_pool", [True, False])
def test_stop_iteration_from_fn_fails_the_stream_instead_of_hanging(threads, use_pool):
    stage = map_stream(stop_iteration, executor=threads if use_pool else None)
    error = stream_error(stage, [1])
    assert isinstance(error.__cause__, RuntimeError)
    assert isinstance(error.__cause__.__cause__, StopIteration)


def test_cancelling_the_workflow_cancels_jobs_not_yet_started_in_the_pool():
    release = threading.Event()
    calls = []
    first_call = asyncio.Event()
    loops = []

    def blocked(x):
        calls.append(x)
        loops[0].call_soon_threadsafe(first_call.set)
        release.wait(10)
        return x

    # Three jobs go to a pool with one thread: one runs, two wait in the pool's queue.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    stage = map_stream(blocked, concurrency=3, executor=pool)
    wf, _ = linear(source(range(10)), stage, Collector())

    async def main():
        loops.append(asyncio.get_running_loop())
        run = asyncio.create_task(wf.start())
        await first_call.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    try:
        run_checked(main(), timeout=30, workflows=[wf])
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert calls == [0]  # the two queued jobs were cancelled and never ran


def test_a_process_pool_keeps_order(processes):
    stage = map_stream(nap_then_double, concurrency=4, executor=processes)
    _, sink = run_stage(stage, list(range(12)))
    assert sink.items == [2 * x for x in range(12)]


def test_a_process_pool_error_keeps_its_type_and_message(processes):
    error = stream_error(map_stream(fail_on_three, concurrency=2, executor=processes), [1, 2, 3])
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "item 3 is bad"


# -- Dask: a real LocalCluster with 2 worker processes ------------------------------------------


@needs_dask
@pytest.mark.parametrize("ordered", [True, False])
def test_a_dask_cluster_runs_the_stage_with_at_most_concurrency_in_flight(dask_client, ordered):
    executor = CountingExecutor(dask_client.get_executor())
    stage = map_stream(double, concurrency=4, ordered=ordered, executor=executor)
    _, sink = run_stage(stage, list(range(40)))
    expected = [2 * x for x in range(40)]
    assert (sink.items if ordered else sorted(sink.items)) == expected
    assert executor.submitted == 40
    assert executor.peak_in_flight <= 4
    eventually(lambda: dask_is_idle(dask_client), "the cluster forgets every task")


@needs_dask
def test_a_dask_cluster_keeps_order_when_later_items_finish_first(dask_client):
    stage = map_stream(nap_then_double, concurrency=4, executor=dask_client.get_executor())
    _, sink = run_stage(stage, list(range(12)))
    assert sink.items == [2 * x for x in range(12)]


@needs_dask
def test_a_full_downstream_stops_submission_to_a_dask_cluster(dask_client):
    check_backpressure(CountingExecutor(dask_client.get_executor()), concurrency=4, items=30)


@needs_dask
def test_a_remote_dask_error_fails_the_workflow_with_its_type_and_message(dask_client):
    stage = map_stream(fail_on_three, concurrency=2, executor=dask_client.get_executor())
    error = stream_error(stage, [1, 2, 3, 4, 5])
    assert error.stream == "fail_on_three"
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "item 3 is bad"
    # Even while the error is held (dask/distributed#8790 would keep its task alive).
    eventually(lambda: dask_is_idle(dask_client), "the cluster forgets every task")


@needs_dask
def test_cancelling_the_workflow_leaves_no_task_on_the_dask_cluster(dask_client):
    executor = CountingExecutor(dask_client.get_executor(pure=False))
    submitted = asyncio.Event()
    executor.on_submit = lambda n: submitted.set() if n == 4 else None
    wf, _ = linear(
        source([0.5] * 20), map_stream(nap, concurrency=4, executor=executor), Collector()
    )

    async def main():
        run = asyncio.create_task(wf.start())
        await submitted.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    run_checked(main(), timeout=30, workflows=[wf])
    assert executor.submitted == 4
    eventually(lambda: dask_is_idle(dask_client), "the cluster forgets every task")
