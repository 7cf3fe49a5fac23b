"""Load: long runs, long chains, wide graphs and many runs stay correct and bounded.

Each test keeps under ~15 s on a 2-core machine at the default scale. Set the environment
variable ``MIMO_RX_LOAD=deep`` for ten times the items, stages' items and cycles (minutes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import os
import sys
import threading
import tracemalloc
import weakref
from collections import Counter
from typing import Any

import pytest
import reactivex
from harness import assert_stats_identity, run_checked
from reactivex import operators as ops
from reactivex.subject import Subject

from mimo_rx import Stream, Workflow, map_stream, operator

DEEP = os.environ.get("MIMO_RX_LOAD") == "deep"
SCALE = 10 if DEEP else 1
TIMEOUT_S = 600 if DEEP else 60


async def _forward(ins: Any, outs: Any, state: Any) -> None:
    push = outs.y.push
    async for item in ins.x:
        await push(item)


def _forward_sync(ins: Any, outs: Any, state: Any) -> bool:
    more = False
    for item in ins.x:
        if not outs.y.push(item):
            more = True
    return more


class OrderedCounter(Stream):
    """A plain-def sink that checks the items arrive as ``start, start + step, ...`` and
    counts them (keeping none: memory must not grow with the number of items)."""

    def __init__(self, start: int = 0, step: int = 1, **kwargs: Any) -> None:
        super().__init__(ins=["x"], outs=[], **kwargs)
        self.next = start
        self.step = step
        self.count = 0

    def run(self, ins: Any, outs: Any) -> bool:
        for item in ins.x:
            assert item == self.next, (item, self.next)
            self.next += self.step
            self.count += 1
        return False


def _assert_within_thresholds(wf: Workflow) -> None:
    for name, data in wf.stats()["streams"].items():
        assert data["status"] == "done", name
        for port, s in data["inputs"].items():
            assert s["peak_buffered"] <= s["threshold"], (name, port, s)
    assert_stats_identity(wf)


# -- one long run ---------------------------------------------------------------------------------


@pytest.mark.timeout(TIMEOUT_S)
def test_a_million_items_pass_through_three_stages_in_order_within_their_buffers():
    count = 1_000_000 * SCALE

    async def numbers(ins: Any, outs: Any, state: Any) -> None:
        push = outs.y.push
        for i in range(count):
            await push(i)

    async def double(ins: Any, outs: Any, state: Any) -> None:
        push = outs.y.push
        async for item in ins.x:
            await push(item * 2)

    sink = OrderedCounter(step=2)
    wf = Workflow()
    first = wf.add_stream(Stream(outs=["y"], fn=numbers))
    first.pipe(wf.add_stream(Stream(["x"], ["y"], fn=double))).pipe(wf.add_stream(sink))
    run_checked(wf, timeout=TIMEOUT_S)
    assert sink.count == count
    _assert_within_thresholds(wf)


class CountingSink(Stream):
    """A plain-def sink that only counts (no allocation per item: tracing stays cheap)."""

    def __init__(self) -> None:
        super().__init__(ins=["x"], outs=[], name="count")
        self.count = 0

    def run(self, ins: Any, outs: Any) -> bool:
        self.count += len(ins.x)
        for _ in ins.x:
            pass
        return False


def _three_stage_peak(count: int) -> int:
    """Peak traced memory of a run of ``count`` items: a lazy source, an Rx operator, a sink."""
    sink = CountingSink()
    wf = Workflow()
    src = wf.add_source(itertools.repeat("item", count), name="items")
    src.pipe(wf.add_stream(operator(ops.map(lambda x: x)))).pipe(wf.add_stream(sink))
    return _traced_peak(wf, sink, count)


def _traced_peak(wf: Workflow, sink: CountingSink, count: int) -> int:
    """Run ``wf`` under tracemalloc; check ``sink`` saw ``count`` items; return the peak."""
    gc.collect()
    tracemalloc.start()
    try:
        run_checked(wf, timeout=TIMEOUT_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.count == count
    return peak


@pytest.mark.timeout(TIMEOUT_S)
def test_peak_memory_at_a_million_items_is_at_most_one_and_a_half_times_that_at_100_000():
    small = _three_stage_peak(100_000)
    large = _three_stage_peak(1_000_000 * SCALE)
    assert large <= 1.5 * small, (small, large)


def _async_chain_peak(count: int) -> int:
    async def numbers(ins: Any, outs: Any, state: Any) -> None:
        for i in range(count):
            await outs.y.push(i)

    sink = CountingSink()
    wf = Workflow(buffer_size=64)
    src = wf.add_stream(Stream(outs=["y"], fn=numbers))
    src.pipe(wf.add_stream(Stream(["x"], ["y"], fn=_forward))).pipe(wf.add_stream(sink))
    return _traced_peak(wf, sink, count)


@pytest.mark.timeout(TIMEOUT_S)
def test_peak_memory_of_item_by_item_async_stages_does_not_grow_with_the_item_count():
    """The same bound on the per-item path (async push/pop in every stage), at a tenth of the
    size: tracing every allocation makes this path slow."""
    small = _async_chain_peak(10_000)
    large = _async_chain_peak(100_000 * SCALE)
    assert large <= 1.5 * small, (small, large)


# -- long and wide graphs -------------------------------------------------------------------------


CHAIN_KINDS = ["async", "sync", "operator", "operator", "async", "sync", "async", "map_stream"]


def _stage(k: int) -> Stream:
    """Stage ``k`` of the long chain: every kind of stream in turn (two adjacent operator
    stages fuse into one Rx chain)."""
    kind = CHAIN_KINDS[k % len(CHAIN_KINDS)]
    if kind == "async":
        return Stream(["x"], ["y"], fn=_forward, name=f"async{k}")
    if kind == "sync":
        return Stream(["x"], ["y"], fn=_forward_sync, name=f"sync{k}")
    if kind == "operator":
        return operator(ops.map(lambda x: x), name=f"operator{k}")
    return map_stream(_identity, concurrency=3, name=f"map_stream{k}")


def _chain_buffer(k: int) -> int | None:
    """Buffer sizes along the chain: a few of 1, then 4, 16, 64 and the default in turn."""
    return 1 if k % 25 == 0 else [4, 16, 64, None][k % 4]


async def _identity(item: Any) -> Any:
    return item


@pytest.mark.timeout(TIMEOUT_S)
def test_a_hundred_stage_chain_of_every_kind_delivers_every_item_in_order():
    count = 5_000 * SCALE
    sink = OrderedCounter()
    wf = Workflow()
    previous = wf.add_source(range(count), name="numbers")
    for k in range(100):
        previous = previous.pipe(wf.add_stream(_stage(k)), buffer_size=_chain_buffer(k))
    previous.pipe(wf.add_stream(sink))
    run_checked(wf, timeout=TIMEOUT_S)
    assert sink.count == count
    _assert_within_thresholds(wf)


@pytest.mark.timeout(TIMEOUT_S)
def test_a_200_wide_fan_out_then_fan_in_delivers_every_item_once_per_path_in_order():
    width = 200
    count = 1_000 * SCALE
    got: list[tuple[int, int]] = []

    async def numbers(ins: Any, outs: Any, state: Any) -> None:
        for i in range(count):
            await outs.y.push(i)

    def tagger(j: int) -> Stream:
        async def tag(ins: Any, outs: Any, state: Any) -> None:
            async for item in ins.x:
                await outs.y.push((j, item))

        return Stream(["x"], ["y"], fn=tag, name=f"path{j}")

    async def collect(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            got.append(item)

    wf = Workflow()
    src = wf.add_stream(Stream(outs=["y"], fn=numbers))
    sink = wf.add_stream(Stream(["x"], fn=collect))
    for j in range(width):
        path = src.pipe(wf.add_stream(tagger(j)), buffer_size=8)
        path.pipe(sink)  # every path merges into one input (its default buffer)
    run_checked(wf, timeout=TIMEOUT_S)

    assert len(got) == width * count
    per_path: dict[int, list[int]] = {}
    for j, item in got:
        per_path.setdefault(j, []).append(item)
    assert all(items == list(range(count)) for items in per_path.values())
    assert len(per_path) == width
    _assert_within_thresholds(wf)


# -- many runs ------------------------------------------------------------------------------------

CYCLES = 1_000 * SCALE


class _Cycle:
    """Builds one small workflow that uses every kind of resource a run may hold: a generator,
    a cold observable (its own thread), a hot Subject shared by all runs, an Rx operator, an
    async and a plain-def stream, and a map_stream on a thread pool."""

    def __init__(self) -> None:
        self.ticks: Subject[int] = Subject()  # lives across runs: subscriptions must not pile up
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="load-pool")

    def build(self) -> tuple[Workflow, list[Any]]:
        got: list[Any] = []
        ticks = self.ticks

        def sink(ins: Any, outs: Any, state: Any) -> bool:
            got.extend(ins.x)
            return False

        async def ticker(ins: Any, outs: Any, state: Any) -> None:
            for i in range(3):
                ticks.on_next(i)
                await asyncio.sleep(0)

        wf = Workflow(buffer_size=4)
        a = wf.add_source(range(20))
        a = a.pipe(wf.add_stream(operator(ops.map(lambda x: x + 1))))
        a = a.pipe(wf.add_stream(Stream(["x"], ["y"], fn=_forward)))
        a.pipe(wf.add_stream(Stream(["x"], fn=sink)))
        b = wf.add_source(reactivex.from_iterable(range(10)))
        b = b.pipe(wf.add_stream(map_stream(lambda x: x, concurrency=2, executor=self.pool)))
        b.pipe(wf.add_stream(Stream(["x"], fn=sink)))
        c = wf.add_source(ticks.pipe(ops.take(3)))
        wf.add_stream(Stream(fn=ticker))
        c.pipe(wf.add_stream(Stream(["x"], fn=sink)))
        return wf, got

    def threads(self) -> set[threading.Thread]:
        """Threads alive now, except the pool's own (at most two, reused by every run)."""
        return {t for t in threading.enumerate() if not t.name.startswith("load-pool")}

    def close(self) -> None:
        self.pool.shutdown()


ITEMS_PER_CYCLE = 33


@pytest.mark.timeout(TIMEOUT_S)
def test_a_thousand_runs_in_one_loop_leave_no_task_thread_or_subscription_behind():
    cycle = _Cycle()
    threads_before = cycle.threads()
    finished: list[weakref.ref[Workflow]] = []

    async def main() -> None:
        me = asyncio.current_task()
        for k in range(CYCLES):
            wf, got = cycle.build()
            await wf.start()
            assert len(got) == ITEMS_PER_CYCLE, (k, got)
            assert asyncio.all_tasks() == {me}, k
            assert cycle.threads() == threads_before, k
            assert not cycle.ticks.observers, k
            if k < 10:
                finished.append(weakref.ref(wf))

    try:
        run_checked(main(), timeout=TIMEOUT_S)
    finally:
        cycle.close()
    gc.collect()
    assert [ref() for ref in finished] == [None] * len(finished)  # nothing keeps old runs


@pytest.mark.timeout(TIMEOUT_S)
def test_a_thousand_blocking_runs_do_not_grow_memory_objects_or_threads():
    cycle = _Cycle()
    threads_before = cycle.threads()
    finished: list[weakref.ref[Workflow]] = []
    runs = 0

    def run_cycles(count: int) -> tuple[Counter[str], int]:
        """Run ``count`` blocking cycles; return the live objects by type and allocated blocks."""
        nonlocal runs
        for _ in range(count):
            wf, got = cycle.build()
            wf.run()
            assert len(got) == ITEMS_PER_CYCLE, (runs, got)
            if runs < 10:
                finished.append(weakref.ref(wf))
            runs += 1
            del wf, got
        gc.collect()
        assert cycle.threads() == threads_before, runs
        assert not cycle.ticks.observers, runs
        return Counter(type(o).__name__ for o in gc.get_objects()), sys.getallocatedblocks()

    grown = CYCLES - CYCLES // 10

    def growth(before: tuple[Counter[str], int], after: tuple[Counter[str], int]) -> str | None:
        """Why ``grown`` runs look leaky (a leak of even one object per run shows as ``grown``
        more objects), or None."""
        objects = after[0].total() - before[0].total()
        blocks = after[1] - before[1]
        if objects < grown // 4 and blocks < grown:  # (caches warm up slowly)
            return None
        by_type = (after[0] - before[0]).most_common(5)
        return f"{objects} more objects, {blocks} more blocks after {grown} runs; {by_type}"

    try:
        early = run_cycles(CYCLES // 10)
        late = run_cycles(grown)
        first = growth(early, late)
        if first is not None:
            # Something else in the process (a thread of an earlier test winding down) can
            # allocate meanwhile; a leak of ours grows again in the next as many runs.
            again = growth(late, run_cycles(grown))
            assert again is None, f"{first}; then {again}"
    finally:
        cycle.close()
    gc.collect()
    assert [ref() for ref in finished] == [None] * len(finished)


def test_the_load_cycle_workflow_sees_every_item_once():
    """Guards the cycle tests above: the workflow they repeat does what they count on."""
    cycle = _Cycle()
    try:
        wf, got = cycle.build()
        run_checked(wf)
    finally:
        cycle.close()
    expected = list(range(1, 21)) + list(range(10)) + [0, 1, 2]
    assert sorted(got) == sorted(expected)
    assert len(got) == ITEMS_PER_CYCLE
