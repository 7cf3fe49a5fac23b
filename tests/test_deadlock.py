"""Contract section 9: a graph that can never move fails with DeadlockError instead of hanging."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from harness import Collector, RecordingObserver, linear, run_checked, source

import mimo_rx
from mimo_rx import DeadlockError, Stream, StreamError, Workflow


def broadcast_then_drain_one_input_first(buffer_size: int = 2) -> Workflow:
    """src.out feeds join.a and join.b; join reads all of a before looking at b."""

    async def produce(ins, outs, state):
        for i in range(10):
            await outs.out.push(i)

    async def drain_a_first(ins, outs, state):
        async for _ in ins.a:
            pass
        async for _ in ins.b:
            pass

    wf = Workflow(buffer_size=buffer_size)
    src = wf.add_stream(Stream(outs=["out"], fn=produce, name="src"))
    join = wf.add_stream(Stream(["a", "b"], fn=drain_a_first, name="join"))
    src.pipe(join, input="a")
    src.pipe(join, input="b")
    return wf


def assert_names(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_broadcast_to_a_consumer_that_drains_one_input_first_is_a_deadlock():
    wf = broadcast_then_drain_one_input_first()
    with pytest.raises(DeadlockError) as info:
        run_checked(wf)
    message = str(info.value)
    assert_names(message, "'src'", "'out'", "'join'", "'a'", "'b'", "full", "empty")


def test_the_same_graph_with_enough_room_does_not_deadlock():
    wf = broadcast_then_drain_one_input_first(buffer_size=10)
    run_checked(wf)


def test_deadlock_error_is_raised_directly_and_is_a_mimo_error_not_a_stream_error():
    with pytest.raises(DeadlockError) as info:
        run_checked(broadcast_then_drain_one_input_first())
    assert isinstance(info.value, mimo_rx.MimoError)
    assert not isinstance(info.value, StreamError)


def test_run_blocking_raises_deadlock_error_too():
    with pytest.raises(DeadlockError, match="'join'"):
        broadcast_then_drain_one_input_first().run()


def test_a_deadlock_leaves_no_task_and_terminates_every_subscriber():
    wf = broadcast_then_drain_one_input_first()
    obs = RecordingObserver()
    wf.steps[0].stream.output("out").subscribe(obs)
    with pytest.raises(DeadlockError):
        run_checked(wf)  # also checks: no task left, no subscriber left
    assert obs.completed == 0 and len(obs.errors) == 1
    assert isinstance(obs.errors[0], mimo_rx.MimoError)
    statuses = {s["status"] for s in wf.stats()["streams"].values()}
    assert statuses <= {"failed", "cancelled"}


def test_a_deadlock_is_detected_after_other_streams_have_finished():
    wf = broadcast_then_drain_one_input_first()
    sink = Collector(name="done_early")
    wf.add_stream(source([1, 2, 3], name="quick")).pipe(wf.add_stream(sink))
    with pytest.raises(DeadlockError, match="'join'"):
        run_checked(wf)
    assert sink.items == [1, 2, 3]


def test_a_plain_def_stream_waiting_for_more_items_than_its_buffer_holds_is_a_deadlock():
    """mimo 1.0 style: read a count, then wait until that many items are buffered."""

    async def produce(ins, outs, state):
        await outs.count.push(5)
        for i in range(5):
            await outs.items.push(i)

    def batch(ins, outs, state):
        if "n" not in state:
            if not len(ins.count):
                return False
            state["n"] = ins.count.pop()
        if len(ins.items) < state["n"]:
            return False  # wait for the whole batch
        state["batch"] = [ins.items.pop() for _ in range(state["n"])]
        return False

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["count", "items"], fn=produce, name="producer"))
    b = wf.add_stream(Stream(["count", "items"], fn=batch))
    p.pipe(b, output="count", input="count")
    p.pipe(b, output="items", input="items", buffer_size=3)  # smaller than the batch
    with pytest.raises(DeadlockError) as info:
        run_checked(wf)
    assert_names(str(info.value), "'producer'", "'items'", "'batch'", "full")


def test_reading_a_count_that_the_producer_sends_after_the_items_is_a_deadlock():
    async def produce(ins, outs, state):
        for i in range(5):
            await outs.items.push(i)
        await outs.count.push(5)

    async def consume(ins, outs, state):
        n = await ins.count.pop()
        for _ in range(n):
            await ins.items.pop()

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["count", "items"], fn=produce, name="producer"))
    c = wf.add_stream(Stream(["count", "items"], fn=consume, name="consumer"))
    p.pipe(c, output="count", input="count")
    p.pipe(c, output="items", input="items", buffer_size=2)
    with pytest.raises(DeadlockError) as info:
        run_checked(wf)
    assert_names(str(info.value), "'producer'", "'consumer'", "'count'", "'items'")


def test_an_unbalanced_cycle_is_a_deadlock():
    async def doubler(ins, outs, state):
        await outs.out.push(1)
        async for item in ins.back:
            await outs.out.push(item)
            await outs.out.push(item)

    wf = Workflow(buffer_size=1)
    d = wf.add_stream(Stream(["back"], ["out"], fn=doubler))
    relay = wf.add_stream(Stream(["y"], ["z"], name="relay"))
    d.pipe(relay)
    relay.pipe(d)
    with pytest.raises(DeadlockError) as info:
        run_checked(wf)
    assert_names(str(info.value), "'doubler'", "'relay'", "'out'", "'z'", "full")


def test_a_plain_def_producer_waiting_for_downstream_to_drain_can_be_part_of_a_deadlock():
    def numbers(ins, outs, state):
        it = state.setdefault("it", iter(range(20)))
        for item in it:  # noqa: SIM110 - mimo 1.0 idiom
            if not outs.out.push(item):
                return True
        return False

    async def drain_a_first(ins, outs, state):
        async for _ in ins.a:
            pass
        async for _ in ins.b:
            pass

    wf = Workflow(buffer_size=2)
    src = wf.add_stream(Stream(outs=["out"], fn=numbers))
    join = wf.add_stream(Stream(["a", "b"], fn=drain_a_first, name="join"))
    src.pipe(join, input="a")
    src.pipe(join, input="b")
    with pytest.raises(DeadlockError) as info:
        run_checked(wf)
    assert_names(str(info.value), "'numbers'", "'join'", "'a'")


# -- waits that can still make progress are not deadlocks -------------------------------------


def test_a_stream_sleeping_while_the_others_wait_is_not_a_deadlock():
    async def sleepy_source(ins, outs, state):
        await asyncio.sleep(0.3)  # everyone else waits on this stream meanwhile
        for i in range(5):
            await outs.y.push(i)

    async def sleepy_sink(ins, outs, state):
        await asyncio.sleep(0.3)  # its producer is paused on a full input meanwhile
        state["items"] = [item async for item in ins.x]

    wf = Workflow(buffer_size=1)
    a = wf.add_stream(Stream(outs=["y"], fn=sleepy_source))
    relay = wf.add_stream(Stream(["x"], ["y"], name="relay"))
    sink = Collector()
    a.pipe(relay).pipe(wf.add_stream(sink))
    p = wf.add_stream(source(range(5), name="eager"))
    s = Stream(["x"], fn=sleepy_sink)
    p.pipe(wf.add_stream(s))
    run_checked(wf)
    assert sink.items == list(range(5))
    assert s.state["items"] == list(range(5))


def test_a_stream_waiting_for_an_executor_while_the_others_wait_is_not_a_deadlock():
    async def threaded(ins, outs, state):
        value = await asyncio.to_thread(lambda: (time.sleep(0.3), 42)[1])
        await outs.y.push(value)

    sink = Collector()
    wf, _ = linear(Stream(outs=["y"], fn=threaded), Stream(["x"], ["y"]), sink)
    run_checked(wf)
    assert sink.items == [42]


def test_a_stream_waiting_for_a_timer_while_the_others_wait_is_not_a_deadlock():
    async def timed(ins, outs, state):
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[Any] = loop.create_future()
        loop.call_later(0.3, fired.set_result, "tick")
        await outs.y.push(await fired)

    sink = Collector()
    wf, _ = linear(Stream(outs=["y"], fn=timed), sink, buffer_size=1)
    run_checked(wf)
    assert sink.items == ["tick"]


def test_a_producer_paused_by_a_consumer_that_is_busy_elsewhere_is_not_a_deadlock():
    async def busy_consumer(ins, outs, state):
        seen = []
        async for item in ins.x:
            seen.append(item)
            if item == 0:
                await asyncio.sleep(0.3)  # the producer stays paused meanwhile
        state["seen"] = seen

    s = Stream(["x"], fn=busy_consumer)
    wf, _ = linear(source(range(10)), s, buffer_size=1)
    run_checked(wf)
    assert s.state["seen"] == list(range(10))


@pytest.mark.parametrize("helper_waits_for", ["sleep", "executor"])
def test_a_stream_whose_helper_task_is_busy_before_pushing_is_not_a_deadlock(helper_waits_for):
    got: list[int] = []

    async def feedback(ins, outs, state):
        async def emit_later():
            if helper_waits_for == "sleep":
                await asyncio.sleep(0.3)
            else:
                await asyncio.to_thread(time.sleep, 0.3)
            for i in range(3):
                await outs.y.push(i)
            outs.y.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(emit_later())
            async for item in ins.x:  # the items come back through the relay
                got.append(item)

    wf = Workflow()
    s = wf.add_stream(Stream(["x"], ["y"], fn=feedback))
    relay = wf.add_stream(Stream(["y"], ["z"], name="relay"))
    s.pipe(relay)
    relay.pipe(s)
    run_checked(wf)
    assert got == [0, 1, 2]


def test_a_pop_under_an_asyncio_timeout_is_not_a_deadlock():
    async def produce(ins, outs, state):
        for i in range(6):
            await outs.out.push(i)

    got: list[tuple[str, int]] = []

    async def read_each_input_until_it_idles(ins, outs, state):
        pending = {"a": ins.a, "b": ins.b}
        while pending:
            for name, port in list(pending.items()):
                try:
                    async with asyncio.timeout(0.3):
                        while True:
                            got.append((name, await port.pop()))
                except TimeoutError:
                    pass  # idle: look at the other input
                except mimo_rx.EndOfStream:
                    del pending[name]

    wf = Workflow(buffer_size=2)
    p = wf.add_stream(Stream(outs=["out"], fn=produce))
    j = wf.add_stream(Stream(["a", "b"], fn=read_each_input_until_it_idles))
    p.pipe(j, input="a")
    p.pipe(j, input="b")
    run_checked(wf)
    assert sorted(got) == sorted((n, i) for n in "ab" for i in range(6))


def test_a_deadlock_is_reported_when_a_streams_helper_task_is_stuck_too():
    async def split(ins, outs, state):
        async def push_both():
            for i in range(10):
                await outs.a.push(i)  # parks on a full 'a' while nobody reads it
                await outs.b.push(i)

        helper = asyncio.get_running_loop().create_task(push_both())
        try:
            async for _ in ins.back:  # the stream's own task waits here
                pass
        finally:
            helper.cancel()

    async def drain_b_first(ins, outs, state):
        async for _ in ins.b:
            pass
        async for _ in ins.a:
            pass

    wf = Workflow(buffer_size=2)
    p = wf.add_stream(Stream(["back"], ["a", "b"], fn=split))
    j = wf.add_stream(Stream(["a", "b"], ["done"], fn=drain_b_first))
    p.pipe(j, output="a", input="a")
    p.pipe(j, output="b", input="b")
    j.pipe(p, output="done", input="back")
    with pytest.raises(DeadlockError, match="drain_b_first"):
        run_checked(wf)
