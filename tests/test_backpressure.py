"""Contract section 4, stream-to-stream edges: bounded inputs, paused producers, atomicity."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from harness import (
    Collector,
    assert_stats_identity,
    input_stats,
    linear,
    run_checked,
    source,
    yield_to_loop,
)

from mimo_rx import Stream, Workflow


class SlowSink(Collector):
    """Yields to the loop a few times after every item, so producers get ahead of it."""

    async def run(self, ins, outs):
        async for item in getattr(ins, self.port):
            self.items.append(item)
            await yield_to_loop(3)


def peak(wf: Workflow, step: str = "sink", port: str = "x") -> int:
    return input_stats(wf, step, port)["peak_buffered"]


# -- thresholds -------------------------------------------------------------------------------


def test_the_default_threshold_is_1024():
    sink = SlowSink()
    wf, _ = linear(source(range(1500)), sink)
    run_checked(wf)
    assert sink.items == list(range(1500))
    assert peak(wf) == 1024


def test_the_workflow_buffer_size_sets_the_default_threshold():
    sink = SlowSink()
    wf, _ = linear(source(range(40)), sink, buffer_size=5)
    run_checked(wf)
    assert sink.items == list(range(40))
    assert peak(wf) == 5


def test_a_stream_buffer_size_overrides_the_workflows():
    sink = SlowSink(buffer_size=3)
    wf, _ = linear(source(range(40)), sink, buffer_size=7)
    run_checked(wf)
    assert sink.items == list(range(40))
    assert peak(wf) == 3


def test_a_pipe_buffer_size_overrides_the_streams():
    wf = Workflow(buffer_size=2)
    sink = SlowSink(buffer_size=2)
    wf.add_stream(source(range(40))).pipe(wf.add_stream(sink), buffer_size=6)
    run_checked(wf)
    assert sink.items == list(range(40))
    assert peak(wf) == 6


def test_an_input_fed_by_several_pipes_takes_the_smallest_size_given_on_them():
    wf = Workflow(buffer_size=100)
    sink = SlowSink(buffer_size=50)
    s = wf.add_stream(sink)
    wf.add_stream(source(range(40), name="a")).pipe(s, buffer_size=5)
    wf.add_stream(source(range(40), name="b")).pipe(s, buffer_size=3)
    wf.add_stream(source(range(40), name="c")).pipe(s)  # no size given on this one
    run_checked(wf)
    assert len(sink.items) == 120
    assert peak(wf) == 3


def test_a_size_given_on_one_pipe_of_a_merge_beats_the_stream_and_workflow_sizes():
    wf = Workflow(buffer_size=1)
    sink = SlowSink(buffer_size=2)
    s = wf.add_stream(sink)
    wf.add_stream(source(range(40), name="a")).pipe(s, buffer_size=4)
    wf.add_stream(source(range(40), name="b")).pipe(s)
    run_checked(wf)
    assert len(sink.items) == 80
    assert peak(wf) == 4


@pytest.mark.parametrize("size", [0, -1, -1024])
def test_a_workflow_buffer_size_below_1_is_a_value_error(size):
    with pytest.raises(ValueError, match=str(size)):
        Workflow(buffer_size=size)


@pytest.mark.parametrize("size", [0, -3])
def test_a_stream_buffer_size_below_1_is_a_value_error_naming_the_stream(size):
    with pytest.raises(ValueError, match="'tiny'"):
        Stream(["x"], name="tiny", buffer_size=size)


@pytest.mark.parametrize("size", [0, -3])
def test_a_pipe_buffer_size_below_1_is_a_value_error_naming_the_streams(size):
    wf = Workflow()
    a = wf.add_stream(Stream(outs=["y"], name="up"))
    b = wf.add_stream(Stream(["x"], name="down"))
    with pytest.raises(ValueError, match=r"'up'.*'down'"):
        a.pipe(b, buffer_size=size)


def test_a_buffer_size_of_1_is_allowed_and_works():
    sink = SlowSink(buffer_size=1)
    wf, _ = linear(source(range(20)), Stream(["x"], ["y"], buffer_size=1), sink)
    run_checked(wf)
    assert sink.items == list(range(20))
    assert peak(wf) == 1


# -- paused producers -------------------------------------------------------------------------


def test_push_waits_while_any_connected_input_is_full():
    pushed: list[int] = []
    release = asyncio.Event()
    observed: dict[str, Any] = {}

    async def produce(ins, outs, state):
        for i in range(20):
            await outs.y.push(i)
            pushed.append(i)

    async def blocked(ins, outs, state):
        await release.wait()
        observed["blocked_buffer"] = len(ins.x)
        async for _ in ins.x:
            pass

    fast = Collector(name="fast")

    async def watcher(ins, outs, state):
        await yield_to_loop(20)  # plenty of turns for an unpaused producer to finish
        observed["pushed"] = len(pushed)
        observed["fast"] = list(fast.items)
        release.set()

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["y"], fn=produce))
    p.pipe(wf.add_stream(fast), buffer_size=100)
    p.pipe(wf.add_stream(Stream(["x"], fn=blocked)), buffer_size=2)
    wf.add_stream(Stream(fn=watcher))
    run_checked(wf)
    assert observed["pushed"] == 2
    assert observed["fast"] == [0, 1]  # the fast branch is held back too: same push
    assert observed["blocked_buffer"] == 2
    assert fast.items == list(range(20))
    assert_stats_identity(wf)


def test_paused_producers_drop_nothing_and_the_peak_never_exceeds_the_threshold():
    sinks = [SlowSink(name=f"sink{i}") for i in range(3)]
    wf = Workflow(buffer_size=3)
    relay = wf.add_stream(Stream(["x"], ["y"], name="relay"))
    wf.add_stream(source(range(200), name="p1")).pipe(relay)
    wf.add_stream(source(range(200, 400), name="p2")).pipe(relay)
    for sink in sinks:
        relay.pipe(wf.add_stream(sink))
    run_checked(wf)
    for sink in sinks:
        assert sorted(sink.items) == list(range(400))
    for step, data in wf.stats()["streams"].items():
        for port, s in data["inputs"].items():
            assert s["peak_buffered"] <= 3, (step, port, s)
            assert s["dropped"] == 0 and s["discarded"] == 0
    assert_stats_identity(wf)


def test_a_paused_producer_spends_measurable_time_paused():
    sink = SlowSink()
    wf, _ = linear(source(range(100)), sink, buffer_size=2)
    run_checked(wf)
    assert input_stats(wf, "sink", "x")["paused_s"] > 0


def test_stats_identity_holds_after_a_normal_run():
    wf, _ = linear(source(range(50)), Stream(["x"], ["y"]), SlowSink(), buffer_size=4)
    run_checked(wf)
    for data in wf.stats()["streams"].values():
        for s in data["inputs"].values():
            assert s["received"] == s["taken"] == 50
            assert s["buffered"] == 0
    assert_stats_identity(wf)


def test_stats_identity_holds_while_the_workflow_runs():
    snapshots: list[dict[str, Any]] = []
    holder: dict[str, Workflow] = {}

    async def observe(ins, outs, state):
        async for item in ins.x:
            if item % 7 == 0:
                snapshots.append(holder["wf"].stats())
            await yield_to_loop()

    wf, _ = linear(
        source(range(60)), Stream(["x"], ["y"]), Stream(["x"], fn=observe), buffer_size=4
    )
    holder["wf"] = wf
    run_checked(wf)
    assert snapshots
    for snap in snapshots:
        for data in snap["streams"].values():
            for s in data["inputs"].values():
                total = s["taken"] + s["dropped"] + s["discarded"] + s["buffered"]
                assert s["received"] == total
                assert s["buffered"] <= 4


# -- cancellation is atomic -------------------------------------------------------------------


def test_a_cancelled_pop_loses_no_item():
    go = asyncio.Event()
    shared: dict[str, asyncio.Future[Any]] = {}
    got: list[Any] = []

    async def produce(ins, outs, state):
        await go.wait()
        await outs.y.push(1)  # wakes the waiting pop ...
        shared["pop"].cancel()  # ... which is cancelled before it resumes
        await outs.y.push(2)

    async def consume(ins, outs, state):
        pop = asyncio.ensure_future(ins.x.pop())
        shared["pop"] = pop
        await yield_to_loop()
        go.set()
        with contextlib.suppress(asyncio.CancelledError):
            got.append(await pop)
        got.extend([item async for item in ins.x])

    wf, _ = linear(Stream(outs=["y"], fn=produce), Stream(["x"], fn=consume))
    run_checked(wf)
    assert got == [1, 2]
    assert_stats_identity(wf)


def test_a_cancelled_peek_leaves_the_item_buffered():
    shared: dict[str, asyncio.Future[Any]] = {}
    go = asyncio.Event()
    got: list[Any] = []

    async def produce(ins, outs, state):
        await go.wait()
        await outs.y.push("only")
        shared["peek"].cancel()

    async def consume(ins, outs, state):
        peek = asyncio.ensure_future(ins.x.peek())
        shared["peek"] = peek
        await yield_to_loop()
        go.set()
        with contextlib.suppress(asyncio.CancelledError):
            await peek
        got.extend([item async for item in ins.x])

    wf, _ = linear(Stream(outs=["y"], fn=produce), Stream(["x"], fn=consume))
    run_checked(wf)
    assert got == ["only"]


def test_a_cancelled_push_delivers_to_no_input_under_fan_out():
    observed: dict[str, Any] = {}
    gate = asyncio.Event()

    class GatedCollector(Collector):
        async def run(self, ins, outs):
            await gate.wait()
            await super().run(ins, outs)

    small = GatedCollector(name="small")
    large = GatedCollector(name="large")

    async def produce(ins, outs, state):
        await outs.y.push(1)  # small: 1/1 (full), large: 1/3
        push = asyncio.ensure_future(outs.y.push(2))
        await yield_to_loop()  # the push is now parked on the full input
        observed["parked"] = not push.done()
        push.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await push
        observed["small"] = len(small.input("x"))
        observed["large"] = len(large.input("x"))
        gate.set()
        await outs.y.push(3)

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["y"], fn=produce))
    p.pipe(wf.add_stream(small), buffer_size=1)
    p.pipe(wf.add_stream(large), buffer_size=3)
    run_checked(wf)
    assert observed == {"parked": True, "small": 1, "large": 1}
    assert small.items == [1, 3]
    assert large.items == [1, 3]
    assert wf.stats()["streams"]["produce"]["outputs"]["y"]["pushed"] == 2
    assert_stats_identity(wf)


def test_a_push_cancelled_while_parked_does_not_keep_the_producer_blocked():
    """After a cancelled push, the next push still waits for room and then succeeds."""
    gate = asyncio.Event()

    class Gated(Collector):
        async def run(self, ins, outs):
            await gate.wait()
            await super().run(ins, outs)

    sink = Gated()

    async def produce(ins, outs, state):
        await outs.y.push("a")
        for _ in range(3):
            attempt = asyncio.ensure_future(outs.y.push("never"))
            await yield_to_loop()
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attempt
        gate.set()
        await outs.y.push("b")

    wf, _ = linear(Stream(outs=["y"], fn=produce), sink, buffer_size=1)
    run_checked(wf)
    assert sink.items == ["a", "b"]


def test_a_producer_discarding_into_a_finished_consumer_still_lets_the_graph_run():
    turns = {"n": 0, "consumer_done": -1, "producer_done": -1}

    async def produce(ins, outs, state):
        for i in range(5000):
            await outs.y.push(i)
        turns["producer_done"] = turns["n"]

    async def take_one(ins, outs, state):
        await ins.x.pop()
        turns["consumer_done"] = turns["n"]

    async def other_work(ins, outs, state):
        while turns["producer_done"] < 0:
            turns["n"] += 1
            await asyncio.sleep(0)

    wf = Workflow(buffer_size=4)
    p = wf.add_stream(Stream(outs=["y"], fn=produce))
    p.pipe(wf.add_stream(Stream(["x"], fn=take_one)))
    wf.add_stream(Stream(fn=other_work))
    run_checked(wf)
    assert input_stats(wf, "take_one", "x")["discarded"] == 4999
    # at most buffer_size items ahead before yielding: other streams get turns meanwhile
    assert turns["producer_done"] > turns["consumer_done"] + 100, turns


def test_items_discarded_by_a_finished_consumer_never_count_as_buffered():
    """The peak is the most items an input buffered at once: items that arrive after its
    stream finished are discarded, never buffered, so they do not raise it."""
    consumer_done = asyncio.Event()

    async def produce(ins, outs, state):
        await outs.y.push("kept")
        await consumer_done.wait()
        for i in range(50):
            await outs.y.push(i)

    async def take_one(ins, outs, state):
        await ins.x.pop()
        consumer_done.set()

    wf = Workflow(buffer_size=100)
    p = wf.add_stream(Stream(outs=["y"], fn=produce))
    p.pipe(wf.add_stream(Stream(["x"], fn=take_one)))
    run_checked(wf)
    stats = input_stats(wf, "take_one", "x")
    assert stats["discarded"] == 50
    assert stats["peak_buffered"] == 1
    assert_stats_identity(wf)


def test_stats_report_the_threshold_an_input_will_have_before_the_run_starts() -> None:
    workflow = Workflow(buffer_size=64)
    source = workflow.add_stream(Stream(outs=["out"], name="source"))
    sized = workflow.add_stream(Stream(["x"], name="sized", buffer_size=16))
    piped = workflow.add_stream(Stream(["x"], name="piped"))
    source.pipe(sized)
    source.pipe(piped, buffer_size=8)
    before = {
        name: workflow.stats()["streams"][name]["inputs"]["x"]["threshold"]
        for name in ("sized", "piped")
    }
    assert before == {"sized": 16, "piped": 8}
    workflow.run()
    after = {
        name: workflow.stats()["streams"][name]["inputs"]["x"]["threshold"]
        for name in ("sized", "piped")
    }
    assert after == before
