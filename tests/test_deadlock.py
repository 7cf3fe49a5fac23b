"""Contract section 9: a graph that can never move fails with DeadlockError instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from harness import (
    Collector,
    RecordingObserver,
    broadcast_then_drain_one_input_first,
    linear,
    mapper,
    run_checked,
    source,
    yield_to_loop,
)
from reactivex import operators as ops

import mimo_rx
from mimo_rx import DeadlockError, Stream, StreamError, Workflow


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


async def _pop_under_asyncio_timeout(port):
    async with asyncio.timeout(0.3):
        return await port.pop()


async def _pop_under_wait_for(port):
    # On 3.11 wait_for runs the pop in a task of its own: a helper of the stream.
    return await asyncio.wait_for(port.pop(), 0.3)


@pytest.mark.parametrize("bounded_pop", [_pop_under_asyncio_timeout, _pop_under_wait_for])
def test_a_pop_under_a_timeout_inside_a_stream_is_not_a_deadlock(bounded_pop):
    """The wait ends by its timeout and the stream goes on to its other input."""

    async def produce(ins, outs, state):
        for i in range(6):
            await outs.out.push(i)

    got: list[tuple[str, int]] = []

    async def read_each_input_until_it_idles(ins, outs, state):
        pending = {"a": ins.a, "b": ins.b}
        while pending:
            for name, port in list(pending.items()):
                try:
                    while True:
                        got.append((name, await bounded_pop(port)))
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


# -- inside real applications (issue #11): only the workflow's own tasks and timers count -------

REPORT_BOUND_S = 5  # "within about a second", with room for a loaded machine


def size_then_item(buffer_size: int = 3, *, producer=None, consumer=None) -> Workflow:
    """The graph of issue #11: a producer pushes ``size`` then ``item``, 100 times, into a
    consumer that drains ``item`` before it reads ``size``; ``size`` fills up and the producer
    waits on it while the consumer waits for items that never come."""

    async def produce(ins, outs, state):
        for i in range(100):
            await outs.size.push(1)
            await outs.item.push(i)

    async def drain_items_first(ins, outs, state):
        async for _ in ins.item:
            pass
        async for _ in ins.size:
            pass

    wf = Workflow(buffer_size=buffer_size)
    p = wf.add_stream(Stream(outs=["size", "item"], fn=producer or produce, name="producer"))
    c = wf.add_stream(Stream(["size", "item"], fn=consumer or drain_items_first, name="consumer"))
    p.pipe(c)  # size -> size, item -> item
    return wf


async def bounded(awaitable):
    """Await ``awaitable`` under the test's own bound: a late report fails as TimeoutError."""
    async with asyncio.timeout(REPORT_BOUND_S):
        return await awaitable


@pytest.mark.parametrize("how", ["await", "wait_for", "timeout", "task_awaited_later"])
def test_a_deadlock_is_reported_promptly_however_the_caller_waits_for_the_run(how):
    wf = size_then_item()

    async def main():
        if how == "await":
            await bounded(wf.start())
        elif how == "wait_for":
            await bounded(asyncio.wait_for(wf.start(), 30))
        elif how == "timeout":
            async with asyncio.timeout(30):
                await bounded(wf.start())
        else:
            run = asyncio.get_running_loop().create_task(wf.start())
            await yield_to_loop()
            await bounded(run)

    with pytest.raises(DeadlockError) as info:
        run_checked(main(), workflows=[wf])
    assert_names(str(info.value), "'producer'", "'size'", "'consumer'", "'item'", "full")


def test_a_deadlock_is_reported_while_an_application_task_sleeps_for_30_seconds():
    wf = size_then_item()

    async def main():
        housekeeping = asyncio.get_running_loop().create_task(asyncio.sleep(30))
        try:
            await bounded(wf.start())
        finally:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping

    with pytest.raises(DeadlockError, match="'consumer'"):
        run_checked(main(), workflows=[wf])


def test_a_deadlock_is_reported_beside_a_fast_heartbeat_under_wait_for():
    wf = size_then_item()
    beats = 0

    async def heartbeat():
        nonlocal beats
        while True:
            await asyncio.sleep(0.01)
            beats += 1

    async def main():
        beating = asyncio.get_running_loop().create_task(heartbeat())
        try:
            await bounded(asyncio.wait_for(wf.start(), 30))
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    with pytest.raises(DeadlockError, match="'producer'"):
        run_checked(main(), workflows=[wf])
    assert beats > 0  # the heartbeat did run beside the workflow


def test_a_deadlock_is_reported_to_a_request_handler_of_a_server_on_the_same_loop():
    """A service runs the workflow per request under ``wait_for``: the client gets the
    verdict, not a timeout."""
    wf = size_then_item()
    handlers: list[asyncio.Task[Any]] = []

    async def handle(reader, writer):
        handlers.append(asyncio.current_task())
        await reader.readline()
        try:
            await asyncio.wait_for(wf.start(), 30)
            writer.write(b"done\n")
        except DeadlockError:
            writer.write(b"deadlock\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"run\n")
            reply = await bounded(reader.readline())
            writer.close()
            await writer.wait_closed()
            await asyncio.gather(*handlers)
        return reply

    assert run_checked(main(), workflows=[wf]) == b"deadlock\n"


def through_helper(how: str, body):
    """``body`` run as a helper task that the stream's own task awaits, the way ``how`` says."""

    async def fn(ins, outs, state):
        loop = asyncio.get_running_loop()
        if how == "taskgroup":
            async with asyncio.TaskGroup() as tg:
                tg.create_task(body(ins, outs, state))
        elif how == "gather":
            await asyncio.gather(body(ins, outs, state))
        elif how == "await":
            await loop.create_task(body(ins, outs, state))
        else:  # "await_late": the helper is stuck well before the stream starts awaiting it
            helper = loop.create_task(body(ins, outs, state))
            await asyncio.sleep(0.3)
            await helper

    return fn


async def produce_sizes_and_items(ins, outs, state):
    for i in range(100):
        await outs.size.push(1)
        await outs.item.push(i)


async def drain_items_then_sizes(ins, outs, state):
    async for _ in ins.item:
        pass
    async for _ in ins.size:
        pass


@pytest.mark.parametrize("where", ["producer", "consumer", "both"])
@pytest.mark.parametrize("how", ["taskgroup", "gather", "await", "await_late"])
def test_a_stream_awaiting_helpers_that_are_deadlocked_is_deadlocked(how, where):
    producer = consumer = None
    if where in ("producer", "both"):
        producer = through_helper(how, produce_sizes_and_items)
    if where in ("consumer", "both"):
        consumer = through_helper(how, drain_items_then_sizes)
    wf = size_then_item(producer=producer, consumer=consumer)
    with pytest.raises(DeadlockError) as info:
        run_checked(bounded(wf.start()), workflows=[wf])
    message = str(info.value)
    assert_names(message, "'producer'", "'consumer'", "'size'", "'item'", "helper task")


def test_busy_helpers_inside_a_task_group_are_not_a_deadlock():
    """One helper waits on the stream's input (stuck on its own) while the other sleeps
    longer than the grace period before it pushes what comes back to that input."""
    got: list[int] = []

    async def feedback(ins, outs, state):
        async def read_back():
            async for item in ins.x:
                got.append(item)

        async def emit_later():
            await asyncio.sleep(0.3)
            for i in range(3):
                await outs.y.push(i)
            outs.y.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(read_back())
            tg.create_task(emit_later())

    wf = Workflow(buffer_size=1)
    s = wf.add_stream(Stream(["x"], ["y"], fn=feedback))
    relay = wf.add_stream(Stream(["y"], ["z"], name="relay"))
    s.pipe(relay)
    relay.pipe(s)
    run_checked(wf)
    assert got == [0, 1, 2]


def test_a_deadlock_through_a_fused_operator_chain_is_reported():
    """``size`` goes through two operator stages, fused into one task: its waits count too."""
    wf = Workflow(buffer_size=3)
    p = wf.add_stream(Stream(outs=["size", "item"], fn=produce_sizes_and_items, name="producer"))
    first = wf.add_stream(mimo_rx.operator(ops.map(lambda n: n), name="first"))
    second = wf.add_stream(mimo_rx.operator(ops.map(lambda n: n), name="second"))
    c = wf.add_stream(Stream(["size", "item"], fn=drain_items_then_sizes, name="consumer"))
    p.pipe(first, output="size").pipe(second).pipe(c, input="size")
    p.pipe(c, output="item", input="item")
    with pytest.raises(DeadlockError) as info:
        run_checked(bounded(wf.start()), workflows=[wf])
    assert_names(str(info.value), "'producer'", "'first'", "'second'", "'consumer'", "full")


async def close_a_then_fill_side(ins, outs, state):
    await outs.a.push(0)
    outs.a.close()
    for i in range(100):  # the consumer reads side only after merged: stuck once side is full
        await outs.side.push(i)
    await outs.b.push(1)


async def drain_merged_then_side(ins, outs, state):
    async for _ in ins.merged:
        pass
    async for _ in ins.side:
        pass


def test_an_rx_stage_deadlocked_after_one_input_closed_names_only_the_open_one():
    """The stage waits on its open inputs only; the closed one is no longer part of the wait
    (the stage keeps the inputs it waits on from one wait to the next until one closes)."""
    wf = Workflow(buffer_size=3)
    p = wf.add_stream(Stream(outs=["a", "b", "side"], fn=close_a_then_fill_side, name="producer"))
    merge = wf.add_stream(
        mimo_rx.rx_stream(lambda a, b: a.pipe(ops.merge(b)), ins=["a", "b"], outs=["y"], name="m")
    )
    c = wf.add_stream(Stream(["merged", "side"], fn=drain_merged_then_side, name="consumer"))
    p.pipe(merge, output="a", input="a")
    p.pipe(merge, output="b", input="b")
    p.pipe(c, output="side", input="side")
    merge.pipe(c, input="merged")
    with pytest.raises(DeadlockError) as info:
        run_checked(bounded(wf.start()), workflows=[wf])
    message = str(info.value)
    waits = [line for line in message.splitlines() if "'m'" in line]
    assert waits and all("input 'b'" in line and "input 'a'" not in line for line in waits), message


# -- inlets and outlets: application code moves them, so they are never stuck ------------------


class StandInInlet(Stream):
    """Stands in for an inlet (``workflow.add_inlet``): an external step with one output
    ``out`` that application code feeds; here it sends ``items`` once ``release`` is set."""

    _external = True

    def __init__(self, items=(), name: str = "inlet") -> None:
        super().__init__(outs=["out"], name=name)
        self.items = list(items)
        self.release = asyncio.Event()

    async def run(self, ins, outs):
        await self.release.wait()
        for item in self.items:
            await outs.out.push(item)


class StandInOutlet(Stream):
    """Stands in for an outlet (``workflow.add_outlet``): an external step with one input
    ``x`` that application code reads; here it reads everything once ``release`` is set."""

    _external = True

    def __init__(self, name: str = "outlet") -> None:
        super().__init__(ins=["x"], name=name)
        self.items: list[Any] = []
        self.release = asyncio.Event()

    async def run(self, ins, outs):
        await self.release.wait()
        self.items = [item async for item in ins.x]


async def release_later(external, run):
    """The application sends (or reads) only after the grace period is long over."""
    await asyncio.sleep(0.3)
    external.release.set()
    await run


def test_a_stream_waiting_for_items_an_open_inlet_may_still_send_is_not_deadlocked():
    inlet = StandInInlet(range(5))
    sink = Collector()
    wf, _ = linear(inlet, sink, buffer_size=2)

    async def main():
        await release_later(inlet, asyncio.get_running_loop().create_task(wf.start()))

    run_checked(main(), workflows=[wf])
    assert sink.items == list(range(5))


def test_a_producer_paused_on_a_full_input_an_outlet_reads_is_not_deadlocked():
    outlet = StandInOutlet()
    wf, _ = linear(source(range(10)), outlet, buffer_size=2)

    async def main():
        await release_later(outlet, asyncio.get_running_loop().create_task(wf.start()))

    run_checked(main(), workflows=[wf])
    assert outlet.items == list(range(10))


def test_a_deadlock_beside_an_open_inlet_is_reported_naming_only_the_deadlocked_streams():
    wf = size_then_item()
    inlet = wf.add_stream(StandInInlet(name="inlet"))
    inlet.pipe(wf.add_stream(Collector(name="inlet_reader")))
    with pytest.raises(DeadlockError) as info:
        run_checked(bounded(wf.start()), workflows=[wf])
    message = str(info.value)
    assert_names(message, "'producer'", "'consumer'")
    assert "inlet" not in message  # waiting on an inlet is not part of the deadlock


def test_a_deadlock_beside_an_open_inlet_reaches_the_application_reading_an_outlet():
    wf = size_then_item()
    inlet = wf.add_inlet("orders")
    outlet = wf.add_outlet("results")
    inlet.pipe(wf.add_stream(mapper(str, name="pricing"))).pipe(outlet)

    async def main():
        run = asyncio.get_running_loop().create_task(wf.start())
        with pytest.raises(DeadlockError):
            await bounded(outlet.receive())  # nothing was sent: only the deadlock ends this
        with pytest.raises(DeadlockError) as info:
            await run
        return str(info.value)

    message = run_checked(main(), workflows=[wf])
    assert_names(message, "'producer'", "'consumer'")
    assert "pricing" not in message and "orders" not in message


def test_streams_waiting_on_an_inlet_and_an_outlet_served_later_are_not_deadlocked():
    wf = Workflow(buffer_size=2)
    inlet = wf.add_inlet("orders")
    outlet = wf.add_outlet("results")
    inlet.pipe(wf.add_stream(mapper(lambda n: n * 10, name="pricing"))).pipe(outlet)
    numbers = wf.add_outlet("numbers")
    wf.add_stream(source(range(10), name="counter")).pipe(numbers)  # paused: numbers is full

    async def main():
        run = asyncio.get_running_loop().create_task(wf.start())
        await asyncio.sleep(0.3)  # the application is busy elsewhere, well past the grace
        for i in range(5):
            await inlet.send(i)
        inlet.close()
        results = [item async for item in outlet]
        counted = [item async for item in numbers]
        await run
        return results, counted

    results, counted = run_checked(main(), workflows=[wf])
    assert results == [0, 10, 20, 30, 40]
    assert counted == list(range(10))


# -- the event loop the suite runs on (MIMO_RX_LOOP, see conftest.py) -------------------------


def test_the_tests_and_the_processes_they_start_run_on_the_loop_asked_for():
    import os
    import subprocess
    import sys

    wanted = "uvloop" if os.environ.get("MIMO_RX_LOOP") == "uvloop" else "asyncio"
    probe = (
        "import asyncio; loop = asyncio.new_event_loop(); loop.close(); "
        "print(type(loop).__module__.split('.')[0])"
    )
    child = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    loop = asyncio.new_event_loop()
    loop.close()
    here = type(loop).__module__.split(".")[0]
    assert (here, child.stdout.strip()) == (wanted, wanted)
