"""Running inside an application (CONTRACT section 10): inlets, outlets, running(), stop(),
cancel(), run() and signals, as_observable().

Every test goes through the public API and runs through ``run_checked`` (a fresh loop; no task,
no unretrieved exception and no Rx subscriber left behind), or in a child process for signals.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import reactivex
from harness import (
    Collector,
    RecordingObserver,
    assert_stats_identity,
    input_stats,
    run_checked,
    yield_to_loop,
)
from reactivex.subject import Subject

import mimo_rx
from mimo_rx import (
    ClosedError,
    DeadlockError,
    EndOfStream,
    Stream,
    StreamError,
    Workflow,
    WorkflowCancelled,
    WorkflowError,
    WouldBlock,
    map_stream,
)

pytestmark = pytest.mark.timeout(30)


def inlet_to_outlet(buffer_size: int = 4, **outlet: Any) -> tuple[Workflow, Any, Any]:
    workflow = Workflow(buffer_size=buffer_size)
    inlet = workflow.add_inlet()
    outlet_step = workflow.add_outlet(**outlet)
    inlet.pipe(outlet_step)
    return workflow, inlet, outlet_step


async def drain(outlet: Any) -> list[Any]:
    return [item async for item in outlet]


# -- inlets ------------------------------------------------------------------------------------


def test_add_inlet_returns_a_step_named_inlet_with_one_output_out() -> None:
    workflow = Workflow()
    inlet = workflow.add_inlet()
    named = workflow.add_inlet("orders")
    assert inlet.name == "inlet"
    assert named.name == "orders"
    assert inlet.stream.outs == ["out"]
    assert inlet.stream.ins == []
    assert isinstance(inlet, mimo_rx.Step)
    assert workflow.add_inlet().name == "inlet-2"


def test_send_delivers_every_item_in_order_and_close_ends_the_stream() -> None:
    workflow, inlet, outlet = inlet_to_outlet()

    async def main() -> list[Any]:
        async with workflow.running():
            for i in range(3):
                await inlet.send(i)
            inlet.close()
            return await drain(outlet)

    assert run_checked(main()) == [0, 1, 2]
    stats = workflow.stats()["streams"]
    assert stats["inlet"]["outputs"]["out"]["pushed"] == 3
    assert stats["outlet"]["inputs"]["x"]["taken"] == 3
    assert stats["inlet"]["status"] == "done"


def test_send_suspends_while_the_input_it_feeds_is_full_and_resumes_when_it_drains() -> None:
    workflow, inlet, outlet = inlet_to_outlet(buffer_size=3)

    async def main() -> None:
        async with workflow.running():
            for i in range(3):
                await inlet.send(i)  # room for exactly three
            fourth = asyncio.create_task(inlet.send(3))
            await yield_to_loop(5)
            assert not fourth.done()
            assert input_stats(workflow, "outlet", "x")["buffered"] == 3
            assert await outlet.receive() == 0
            await yield_to_loop(5)
            assert not fourth.done()  # paused producers wake at the low-water mark
            assert await outlet.receive() == 1
            await asyncio.wait_for(fourth, 5)
            inlet.close()
            assert await drain(outlet) == [2, 3]
        assert input_stats(workflow, "outlet", "x")["peak_buffered"] == 3

    run_checked(main())


def test_a_send_before_the_run_has_started_waits_for_it() -> None:
    workflow, inlet, outlet = inlet_to_outlet()

    async def main() -> list[Any]:
        early = asyncio.create_task(inlet.send("early"))
        await yield_to_loop(3)
        assert not early.done()
        async with workflow.running():
            await asyncio.wait_for(early, 5)
            inlet.close()
            return await drain(outlet)

    assert run_checked(main()) == ["early"]


def test_send_nowait_delivers_at_once_or_raises_would_block() -> None:
    workflow, inlet, outlet = inlet_to_outlet(buffer_size=2)

    async def main() -> None:
        with pytest.raises(WouldBlock, match="has not started"):
            inlet.send_nowait("too early")
        async with workflow.running():
            inlet.send_nowait(1)
            inlet.send_nowait(2)
            with pytest.raises(WouldBlock, match=r"input 'x' of stream 'outlet' is full") as info:
                inlet.send_nowait(3)
            assert isinstance(info.value, mimo_rx.MimoError)
            assert info.value.stream == "inlet"
            inlet.close()
            assert await drain(outlet) == [1, 2]
        assert workflow.stats()["streams"]["inlet"]["outputs"]["out"]["pushed"] == 2

    run_checked(main())


def test_sending_after_close_or_after_the_run_ended_raises_closed_error() -> None:
    workflow, inlet, outlet = inlet_to_outlet()

    async def main() -> None:
        async with workflow.running():
            inlet.close()
            inlet.close()  # idempotent
            with pytest.raises(ClosedError, match="inlet 'inlet'"):
                await inlet.send(1)
            with pytest.raises(ClosedError):
                inlet.send_nowait(1)
            assert await drain(outlet) == []

    run_checked(main())
    with pytest.raises(ClosedError):
        inlet.send_threadsafe(1, timeout=1)

    workflow2, inlet2, outlet2 = inlet_to_outlet()

    async def ended() -> None:
        async with workflow2.running():
            inlet2.close()
            await drain(outlet2)
        with pytest.raises(ClosedError, match=r"ended|closed"):
            await inlet2.send(1)

    run_checked(ended())


def test_send_threadsafe_from_two_threads_keeps_each_threads_order_over_many_items() -> None:
    workflow, inlet, outlet = inlet_to_outlet(buffer_size=16)
    per_thread = 10_000

    async def main() -> list[Any]:
        async with workflow.running():

            def produce(name: str) -> None:
                for i in range(per_thread):
                    inlet.send_threadsafe((name, i))

            threads = [threading.Thread(target=produce, args=(n,)) for n in "ab"]
            for t in threads:
                t.start()
            received = []
            while len(received) < 2 * per_thread:
                received.append(await outlet.receive())
            for t in threads:
                await asyncio.to_thread(t.join)
            inlet.close()
            assert await drain(outlet) == []
            return received

    received = run_checked(main(), timeout=60)
    for name in "ab":
        assert [i for n, i in received if n == name] == list(range(per_thread))
    stats = input_stats(workflow, "outlet", "x")
    assert stats["peak_buffered"] <= 16
    assert stats["paused_s"] > 0  # the threads really were held back


def test_send_threadsafe_blocks_the_thread_while_the_graph_is_full() -> None:
    workflow, inlet, outlet = inlet_to_outlet(buffer_size=4)
    sent: list[int] = []

    async def main() -> None:
        async with workflow.running():

            def produce() -> None:
                for i in range(20):
                    inlet.send_threadsafe(i, timeout=10)
                    sent.append(i)

            thread = threading.Thread(target=produce)
            thread.start()
            await asyncio.sleep(0.3)  # ample time for the thread to run ahead, if it could
            assert len(sent) == 4  # exactly the room downstream: the fifth send waits
            assert input_stats(workflow, "outlet", "x")["buffered"] <= 4
            received = [await outlet.receive() for _ in range(20)]
            await asyncio.to_thread(thread.join)
            assert received == list(range(20))
            inlet.close()

    run_checked(main())


def test_send_threadsafe_times_out_without_delivering() -> None:
    workflow, inlet, outlet = inlet_to_outlet(buffer_size=2)

    async def main() -> list[Any]:
        async with workflow.running():

            def produce() -> list[str]:
                outcome = []
                for i in range(3):
                    try:
                        inlet.send_threadsafe(i, timeout=0.2)
                        outcome.append("sent")
                    except TimeoutError:
                        outcome.append("timeout")
                return outcome

            outcome = await asyncio.to_thread(produce)
            assert outcome == ["sent", "sent", "timeout"]
            inlet.close()
            return await drain(outlet)

    assert run_checked(main()) == [0, 1]
    assert workflow.stats()["streams"]["inlet"]["outputs"]["out"]["pushed"] == 2


def test_send_threadsafe_on_the_runs_own_loop_raises_workflow_error() -> None:
    workflow, inlet, outlet = inlet_to_outlet()

    async def main() -> None:
        # Before the run, which loop it will use is unknown: the call waits (within its
        # timeout), and the timeout says the wait may have blocked the run's own loop.
        with pytest.raises(TimeoutError, match="this thread runs an event loop"):
            inlet.send_threadsafe(1, timeout=0.05)
        async with workflow.running():
            with pytest.raises(WorkflowError, match=r"await inlet.send"):
                inlet.send_threadsafe(1)
            inlet.close()
            assert await drain(outlet) == []

    run_checked(main())


def test_send_threadsafe_before_the_run_has_started_waits_for_it_within_the_timeout() -> None:
    workflow, inlet, outlet = inlet_to_outlet()
    with pytest.raises(TimeoutError):
        inlet.send_threadsafe("never", timeout=0.05)  # no run comes

    async def main() -> list[Any]:
        thread_done = threading.Event()

        def early() -> None:
            inlet.send_threadsafe("early", timeout=10)
            thread_done.set()

        thread = threading.Thread(target=early)
        thread.start()
        await asyncio.sleep(0.05)
        assert not thread_done.is_set()
        async with workflow.running():
            await asyncio.to_thread(thread.join)
            inlet.close()
            return await drain(outlet)

    assert run_checked(main()) == ["early"]


def test_close_from_another_thread_ends_the_inlet_after_what_was_sent() -> None:
    workflow, inlet, outlet = inlet_to_outlet(buffer_size=8)

    async def main() -> list[Any]:
        async with workflow.running():

            def produce() -> None:
                for i in range(100):
                    inlet.send_threadsafe(i)
                inlet.close()
                inlet.close()

            thread = threading.Thread(target=produce)
            thread.start()
            items = await drain(outlet)
            await asyncio.to_thread(thread.join)
            return items

    assert run_checked(main()) == list(range(100))


def test_the_run_does_not_complete_while_an_inlet_is_open_and_is_not_a_deadlock() -> None:
    workflow = Workflow(buffer_size=2)
    inlet = workflow.add_inlet()
    sink = workflow.add_stream(Collector())
    inlet.pipe(sink)

    async def main() -> None:
        run = asyncio.create_task(workflow.start())
        await asyncio.sleep(0.5)  # longer than the deadlock monitor's grace period
        assert not run.done()
        await inlet.send("late")
        inlet.close()
        await asyncio.wait_for(run, 5)

    run_checked(main())
    assert sink.stream.items == ["late"]


# -- outlets -----------------------------------------------------------------------------------


def test_add_outlet_returns_a_step_named_outlet_with_one_input_x() -> None:
    workflow = Workflow()
    outlet = workflow.add_outlet()
    assert outlet.name == "outlet"
    assert outlet.stream.ins == ["x"]
    assert outlet.stream.outs == []
    assert workflow.add_outlet("results").name == "results"
    with pytest.raises(mimo_rx.ConfigError, match="buffer_size"):
        workflow.add_outlet(buffer_size=0)


def test_receive_raises_end_of_stream_once_the_input_closed_and_is_drained() -> None:
    workflow = Workflow()
    source = workflow.add_source(range(3))
    outlet = workflow.add_outlet()
    source.pipe(outlet)

    async def main() -> None:
        async with workflow.running():
            assert [await outlet.receive() for _ in range(3)] == [0, 1, 2]
            with pytest.raises(EndOfStream):
                await outlet.receive()
            with pytest.raises(EndOfStream):
                await outlet.receive()

    run_checked(main())


def test_an_outlet_pauses_its_producer_while_the_application_does_not_read() -> None:
    workflow = Workflow()
    source = workflow.add_source(range(1000))
    outlet = workflow.add_outlet(buffer_size=5)
    source.pipe(outlet)

    async def main() -> list[Any]:
        async with workflow.running():
            await asyncio.sleep(0.2)
            assert input_stats(workflow, "outlet", "x")["buffered"] == 5
            assert workflow.stats()["streams"]["source"]["outputs"]["out"]["pushed"] == 5
            return await drain(outlet)

    assert run_checked(main()) == list(range(1000))
    assert input_stats(workflow, "outlet", "x")["peak_buffered"] == 5
    assert input_stats(workflow, "outlet", "x")["threshold"] == 5


def test_items_still_buffered_when_the_run_ends_stay_readable() -> None:
    workflow = Workflow()
    source = workflow.add_source(range(4))
    outlet = workflow.add_outlet()
    source.pipe(outlet)

    run_checked(workflow)  # start() returns: every stream finished, the outlet was not read
    assert input_stats(workflow, "outlet", "x")["buffered"] == 4

    async def read() -> list[Any]:
        return await drain(outlet)

    assert run_checked(read()) == [0, 1, 2, 3]
    assert input_stats(workflow, "outlet", "x")["taken"] == 4
    assert_stats_identity(workflow)


def test_a_waiting_receive_raises_the_runs_stream_error_when_a_stream_fails() -> None:
    workflow = Workflow()
    inlet = workflow.add_inlet()

    def explode(x: int) -> int:
        raise ValueError("bad record")

    step = workflow.add_stream(map_stream(explode))
    outlet = workflow.add_outlet()
    inlet.pipe(step).pipe(outlet)

    async def main() -> None:
        run = asyncio.create_task(workflow.start())
        reader = asyncio.create_task(outlet.receive())
        await inlet.send(1)
        with pytest.raises(StreamError):
            await run
        with pytest.raises(StreamError, match="bad record"):
            await reader
        with pytest.raises(StreamError):  # and any later receive()
            await outlet.receive()

    run_checked(main())


def test_receive_raises_workflow_cancelled_after_the_run_was_cancelled() -> None:
    workflow, _, outlet = inlet_to_outlet()

    async def main() -> None:
        run = asyncio.create_task(workflow.start())
        await yield_to_loop(3)
        reader = asyncio.create_task(outlet.receive())
        await yield_to_loop(3)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        with pytest.raises(WorkflowCancelled):
            await reader

    run_checked(main())


def test_receive_raises_deadlock_error_when_the_run_deadlocked() -> None:
    workflow = Workflow(buffer_size=2)

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        for i in range(10):
            await outs.size.push(i)
            await outs.item.push(i)

    async def consume(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.item:  # drains item before reading size: deadlocks
            await outs.y.push(item)
        async for _ in ins.size:
            pass

    producer = workflow.add_stream(Stream(outs=["size", "item"], fn=produce))
    consumer = workflow.add_stream(Stream(["size", "item"], ["y"], fn=consume))
    outlet = workflow.add_outlet()
    producer.pipe(consumer)
    consumer.pipe(outlet)

    async def main() -> None:
        run = asyncio.create_task(workflow.start())
        reader = asyncio.create_task(drain(outlet))
        with pytest.raises(DeadlockError):
            await run
        with pytest.raises(DeadlockError):
            await reader

    run_checked(main())


# -- running() ---------------------------------------------------------------------------------


def test_running_enters_the_body_once_every_stream_has_started() -> None:
    workflow = Workflow()
    subject: Subject[int] = Subject()
    hot = workflow.add_source(subject, name="hot")
    cold = workflow.add_source(reactivex.range(3), name="cold")
    outlet = workflow.add_outlet()
    hot.pipe(outlet)
    cold.pipe(outlet)

    async def main() -> list[Any]:
        async with workflow.running():
            statuses = {name: s["status"] for name, s in workflow.stats()["streams"].items()}
            assert set(statuses.values()) <= {"running", "done"}, statuses
            subject.on_next(100)  # subscribed: not lost
            subject.on_completed()
            return sorted(await drain(outlet))

    assert run_checked(main()) == [0, 1, 2, 100]


def test_running_closes_open_inlets_on_exit_and_raises_the_runs_error() -> None:
    workflow = Workflow()
    inlet = workflow.add_inlet()

    async def fail_on_two(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            if item == 2:
                raise ValueError("two")

    inlet.pipe(workflow.add_stream(Stream(["x"], fn=fail_on_two)))

    async def clean() -> None:
        closing = Workflow()
        closing_inlet = closing.add_inlet()
        sink = closing.add_stream(Collector())
        closing_inlet.pipe(sink)
        async with closing.running():
            await closing_inlet.send(1)
        assert closing_inlet.closed
        assert sink.stream.items == [1]

    run_checked(clean())

    async def failing() -> None:
        with pytest.raises(StreamError, match="two"):
            async with workflow.running():
                await inlet.send(1)
                await inlet.send(2)

    run_checked(failing())


def test_a_body_exception_cancels_the_run_and_propagates() -> None:
    workflow, inlet, _ = inlet_to_outlet()
    observer = RecordingObserver()
    inlet.stream.output("out").subscribe(observer)

    async def main() -> None:
        with pytest.raises(KeyError, match="body"):
            async with workflow.running():
                await inlet.send(1)
                raise KeyError("body")

    run_checked(main())  # no task left behind
    assert workflow.stats()["streams"]["inlet"]["status"] == "cancelled"
    assert len(observer.errors) == 1
    assert isinstance(observer.errors[0], WorkflowCancelled)


def test_running_raises_what_start_raises_before_the_body() -> None:
    workflow = Workflow()
    workflow.add_stream(Stream(["x"], name="lonely"))

    async def main() -> None:
        with pytest.raises(WorkflowError, match="lonely"):
            async with workflow.running():
                raise AssertionError("the body must not run")

    run_checked(main())


def test_an_outlet_the_body_stopped_reading_does_not_hang_the_exit() -> None:
    workflow = Workflow()
    source = workflow.add_source(range(100))
    outlet = workflow.add_outlet(buffer_size=4)
    source.pipe(outlet)

    async def main() -> list[Any]:
        async with workflow.running():
            first = await outlet.receive()
        return [first, *(await drain(outlet))]  # what was buffered stays readable

    items = run_checked(main())
    stats = input_stats(workflow, "outlet", "x")
    assert items == list(range(len(items)))
    assert stats["discarded"] == 100 - len(items)
    assert stats["discarded"] > 0
    assert_stats_identity(workflow)


# -- stop() and cancel() -----------------------------------------------------------------------


def test_stop_drains_every_kind_of_source_and_start_returns_normally() -> None:
    workflow = Workflow(buffer_size=4)
    pulled: list[int] = []

    def counting() -> Any:
        n = 0
        while True:
            pulled.append(n)
            yield n
            n += 1

    async def endless_async() -> Any:
        n = 0
        while True:
            await asyncio.sleep(0.001)
            yield n
            n += 1

    async def producer(ins: Any, outs: Any, state: Any) -> None:
        n = 0
        while True:
            await outs.out.push(n)
            n += 1
            await asyncio.sleep(0.001)

    subject: Subject[int] = Subject()
    inlet = workflow.add_inlet()
    sources = [
        workflow.add_source(counting(), name="iterable"),
        workflow.add_source(endless_async(), name="async_iterable"),
        workflow.add_source(subject, name="hot"),
        workflow.add_source(reactivex.interval(0.001), name="timer"),
        workflow.add_stream(Stream(outs=["out"], fn=producer, name="producer")),
        inlet,
    ]
    sinks = {}
    for step in sources:
        sinks[step.name] = workflow.add_stream(Collector(name=f"sink_{step.name}"))
        step.pipe(sinks[step.name])

    async def main() -> None:
        run = asyncio.create_task(workflow.start())
        await asyncio.sleep(0.2)
        subject.on_next(-1)
        await inlet.send(-2)
        workflow.stop()
        workflow.stop()  # twice: nothing more
        await asyncio.wait_for(run, 10)  # returns normally

    run_checked(main())
    streams = workflow.stats()["streams"]
    for step in sources:
        assert streams[step.name]["status"] == "done", step.name
        pushed = streams[step.name]["outputs"]["out"]["pushed"]
        assert sinks[step.name].stream.items == list(sinks[step.name].stream.items)
        assert len(sinks[step.name].stream.items) == pushed, step.name
    assert sinks["iterable"].stream.items == pulled  # every pulled item was delivered
    assert sinks["hot"].stream.items == [-1]
    assert sinks["inlet"].stream.items == [-2]
    assert inlet.closed
    assert_stats_identity(workflow)


def test_stop_lets_what_is_inside_the_graph_flow_to_the_end() -> None:
    workflow = Workflow(buffer_size=8)
    source = workflow.add_source(iter(range(10**9)))

    async def slow(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    middle = workflow.add_stream(map_stream(slow, concurrency=2))
    sink = workflow.add_stream(Collector())
    source.pipe(middle).pipe(sink)

    async def main() -> None:
        run = asyncio.create_task(workflow.start())
        await asyncio.sleep(0.1)
        workflow.stop()
        await asyncio.wait_for(run, 10)

    run_checked(main())
    pushed = workflow.stats()["streams"]["source"]["outputs"]["out"]["pushed"]
    assert sink.stream.items == list(range(pushed))
    assert_stats_identity(workflow)


@pytest.mark.parametrize("where", ["thread", "stream"])
def test_stop_works_from_another_thread_and_from_inside_a_stream(where: str) -> None:
    workflow = Workflow(buffer_size=4)
    source = workflow.add_source(iter(range(10**9)))

    async def consume(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            if item == 50 and where == "stream":
                workflow.stop()

    source.pipe(workflow.add_stream(Stream(["x"], fn=consume)))

    async def main() -> None:
        run = asyncio.create_task(workflow.start())
        if where == "thread":
            await asyncio.sleep(0.05)
            thread = threading.Thread(target=workflow.stop)
            thread.start()
            await asyncio.to_thread(thread.join)
        await asyncio.wait_for(run, 10)

    run_checked(main())
    assert workflow.stats()["streams"]["source"]["status"] == "done"
    assert_stats_identity(workflow)


def test_stop_and_cancel_without_an_active_run_do_nothing() -> None:
    workflow = Workflow()
    source = workflow.add_source(range(3))
    sink = workflow.add_stream(Collector())
    source.pipe(sink)
    workflow.stop()
    workflow.cancel()
    run_checked(workflow)
    workflow.stop()
    workflow.cancel()
    assert sink.stream.items == [0, 1, 2]


def test_cancel_aborts_the_run_with_workflow_cancelled_and_tells_rx_subscribers() -> None:
    workflow = Workflow(buffer_size=4)
    source = workflow.add_source(iter(range(10**9)))
    observer = RecordingObserver()
    source.stream.output("out").subscribe(observer)
    sink = workflow.add_stream(Collector())
    source.pipe(sink)

    async def main() -> None:
        run = asyncio.create_task(workflow.start())
        await asyncio.sleep(0.05)
        threading.Thread(target=workflow.cancel).start()
        with pytest.raises(WorkflowCancelled):
            await asyncio.wait_for(run, 10)

    run_checked(main())
    assert isinstance(observer.errors[0], WorkflowCancelled)
    assert {s["status"] for s in workflow.stats()["streams"].values()} == {"cancelled"}


# -- as_observable() ---------------------------------------------------------------------------


def test_as_observable_completes_when_the_run_completes() -> None:
    workflow = Workflow()
    source = workflow.add_source(range(5))
    sink = workflow.add_stream(Collector())
    source.pipe(sink)
    observable = workflow.as_observable()
    assert isinstance(observable, reactivex.Observable)
    assert sink.stream.items == []  # cold: nothing runs before a subscription

    async def main() -> None:
        done = asyncio.get_running_loop().create_future()
        observable.subscribe(
            on_next=lambda _: done.set_exception(AssertionError("it emits nothing")),
            on_error=done.set_exception,
            on_completed=lambda: done.set_result("completed"),
        )
        assert await asyncio.wait_for(done, 5) == "completed"

    run_checked(main())
    assert sink.stream.items == [0, 1, 2, 3, 4]


def test_as_observable_errors_with_what_start_would_raise() -> None:
    workflow = Workflow()
    source = workflow.add_source(range(5))

    async def fail(ins: Any, outs: Any, state: Any) -> None:
        await ins.x.pop()
        raise ValueError("boom")

    source.pipe(workflow.add_stream(Stream(["x"], fn=fail)))

    async def main() -> BaseException:
        failed = asyncio.get_running_loop().create_future()
        workflow.as_observable().subscribe(on_error=failed.set_result)
        return await asyncio.wait_for(failed, 5)

    error = run_checked(main())
    assert isinstance(error, StreamError)
    assert isinstance(error.__cause__, ValueError)


def test_disposing_the_subscription_cancels_the_run_and_leaves_no_task() -> None:
    workflow = Workflow(buffer_size=4)
    source = workflow.add_source(iter(range(10**9)))
    sink = workflow.add_stream(Collector())
    source.pipe(sink)

    async def main() -> None:
        events = RecordingObserver()
        subscription = workflow.as_observable().subscribe(events)
        await asyncio.sleep(0.05)
        subscription.dispose()
        me = asyncio.current_task()
        for _ in range(1000):  # until the cancelled run has wound down
            if all(t is me or t.done() for t in asyncio.all_tasks()):
                break
            await asyncio.sleep(0.001)
        assert events.completed == 0 and not events.errors

    run_checked(main())
    assert workflow.stats()["streams"]["source"]["status"] == "cancelled"


def test_as_observable_subscribed_without_a_running_loop_errors() -> None:
    workflow = Workflow()
    workflow.add_source(range(3))
    errors: list[Exception] = []
    workflow.as_observable().subscribe(on_error=errors.append)
    assert isinstance(errors[0], WorkflowError)


def test_a_whole_workflow_composes_with_rx_operators() -> None:
    first = Workflow()
    first_sink = first.add_stream(Collector())
    first.add_source(range(3)).pipe(first_sink)
    second = Workflow()
    second_sink = second.add_stream(Collector())
    second.add_source(range(3, 6)).pipe(second_sink)

    async def main() -> None:
        done = asyncio.get_running_loop().create_future()
        reactivex.concat(first.as_observable(), second.as_observable()).subscribe(
            on_error=done.set_exception, on_completed=lambda: done.set_result(None)
        )
        await asyncio.wait_for(done, 5)

    run_checked(main())
    assert first_sink.stream.items == [0, 1, 2]
    assert second_sink.stream.items == [3, 4, 5]


# -- run() and signals (in a child process) ----------------------------------------------------

CHILD = Path(__file__).parent / "scripts" / "service_child.py"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _child(scenario: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(CHILD), scenario],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_until(proc: subprocess.Popen[str], wanted: str, timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.strip() == wanted:
                return
    proc.kill()
    raise AssertionError(f"child never printed {wanted!r}: {proc.communicate()}")


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child hung after the signal: {out} {err}") from None
    return proc.returncode, out, err


def _stats(out: str) -> dict[str, str]:
    line = next(line for line in out.splitlines() if line.startswith("stats "))
    return dict(field.split("=") for field in line.split()[1:])


@posix_only
def test_sigterm_drains_the_run_and_run_returns_normally() -> None:
    proc = _child("drain")
    _read_until(proc, "ready", 20)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc)
    assert code == 0, err
    assert "returned" in out.splitlines()
    stats = _stats(out)
    assert stats["pulled"] == stats["received"] == stats["delivered"]  # nothing pulled was lost
    assert stats["identity"] == "True"
    assert stats["handler_restored"] == "True"
    assert "Traceback" not in err


@posix_only
def test_sigterm_while_run_is_still_starting_drains_and_run_returns_normally() -> None:
    proc = _child("term_at_start")  # it signals itself from the first metrics snapshot
    code, out, err = _finish(proc)
    assert code == 0, err
    assert out.splitlines()[:2] == ["ready", "returned"]
    assert _stats(out)["identity"] == "True"
    assert "Traceback" not in err


@posix_only
@pytest.mark.parametrize(
    ("scenario", "lines"),
    [("term_before_run", ["ready", "returned"]), ("term_while_opening", ["ready", "closed"])],
)
def test_sigterm_before_any_stream_task_exists_drains_and_run_returns_normally(
    scenario: str, lines: list[str]
) -> None:
    """Before start() made the run, and while an acknowledged source opens (before the tasks
    exist): the SIGTERM was lost and run() went on forever (a Redis worker, 1 in ~40 starts)."""
    proc = _child(scenario)
    code, out, err = _finish(proc)
    assert code == 0, err
    assert out.splitlines()[:2] == lines
    assert "returned" in out.splitlines()
    assert _stats(out)["identity"] == "True"
    assert "Traceback" not in err


@posix_only
@pytest.mark.parametrize(
    ("scenario", "second"), [("double", signal.SIGTERM), ("term_then_int", signal.SIGINT)]
)
def test_a_second_signal_during_a_drain_cancels_the_run_with_keyboard_interrupt(
    scenario: str, second: int
) -> None:
    proc = _child(scenario)
    _read_until(proc, "ready", 20)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the drain of a slow consumer takes seconds
    proc.send_signal(second)
    _, out, err = _finish(proc)
    assert "KeyboardInterrupt" in out.splitlines(), (out, err)
    assert _stats(out)["handler_restored"] == "True"


@posix_only
def test_sigint_cancels_the_run_with_keyboard_interrupt() -> None:
    proc = _child("interrupt")
    _read_until(proc, "ready", 20)
    proc.send_signal(signal.SIGINT)
    _, out, err = _finish(proc)
    assert "KeyboardInterrupt" in out.splitlines(), (out, err)


def test_errors_of_a_second_inlet_name_its_step() -> None:
    workflow = Workflow()
    workflow.add_inlet()
    second = workflow.add_inlet()
    with pytest.raises(WouldBlock, match="inlet 'inlet-2'") as info:
        second.send_nowait(1)
    assert info.value.stream == "inlet-2"
    second.close()
    with pytest.raises(ClosedError, match="inlet 'inlet-2'"):
        second.send_nowait(1)


# -- issue 23: an inlet's lossy branch, stop() during start-up, plain-def sources at stop() ---


def test_an_inlet_fanned_out_to_a_lossy_branch_delivers_every_item_to_it() -> None:
    """The inlet's own fast path must not skip a ``drop_oldest`` branch (contract §10: send
    delivers like push; §2 fan-out), whatever the blocking branch's buffer holds."""
    workflow = Workflow()
    inlet = workflow.add_inlet()
    main_out, dash = workflow.add_outlet("main"), workflow.add_outlet("dash")
    inlet.pipe(main_out)
    inlet.pipe(dash, policy="drop_oldest")  # plenty of room: nothing is dropped

    async def main() -> list[Any]:
        async with workflow.running():
            for i in range(10):
                await inlet.send(i)
                if i == 1:  # the main path drains below its peak so far
                    await main_out.receive()
                    await main_out.receive()
                elif i > 1:
                    await main_out.receive()
            inlet.close()
            return await drain(dash)

    assert run_checked(main()) == list(range(10))
    stats = input_stats(workflow, "dash", "x")
    assert (stats["received"], stats["taken"], stats["dropped"]) == (10, 10, 0)
    assert_stats_identity(workflow)


async def _ticker(ins: Any, outs: Any, state: Any) -> None:
    i = 0
    while True:
        await outs.a.push(i)
        i += 1
        await asyncio.sleep(0.001)


async def _sink(ins: Any, outs: Any, state: Any) -> None:
    async for _ in ins.a:
        pass


def test_stop_that_arrives_while_start_is_setting_up_drains_and_returns() -> None:
    """stop() queued before the streams' first step (here from the first metrics snapshot,
    sent as the run starts) still stops the sources: start() returns, their status is done."""
    workflow = Workflow()
    producer = workflow.add_stream(Stream(outs=["a"], fn=_ticker, name="p"))
    producer.pipe(workflow.add_stream(Stream(["a"], fn=_sink, name="sink")))
    workflow.metrics(1.0).subscribe(lambda snapshot: workflow.stop())
    run_checked(workflow, timeout=10)
    assert {s.name: s.status for s in workflow.steps} == {"p": "done", "sink": "done"}


def test_stop_from_a_thread_while_many_sources_start_always_ends_the_run() -> None:
    for _ in range(4):
        workflow = Workflow()
        sink = workflow.add_stream(Stream(["a"], fn=_sink, name="sink"))
        for i in range(100):
            workflow.add_stream(Stream(outs=["a"], fn=_ticker, name=f"p{i}")).pipe(sink)

        begun = threading.Event()  # the first snapshot is sent as the run sets itself up
        workflow.metrics(1.0).subscribe(lambda snapshot, begun=begun: begun.set())

        def stopper(begun: threading.Event = begun, workflow: Workflow = workflow) -> None:
            begun.wait(10)
            workflow.stop()

        async def main(workflow: Workflow = workflow, stopper: Any = stopper) -> None:
            thread = threading.Thread(target=stopper)
            thread.start()
            try:
                await workflow.start()
            finally:
                await asyncio.to_thread(thread.join)

        run_checked(main(), timeout=20)
        assert {s.status for s in workflow.steps} == {"done"}


def test_stop_delivers_every_item_a_plain_def_source_had_pushed() -> None:
    """A plain-def ``push`` always accepts; stop() must not cancel the delivery of what it
    accepted (contract §1, §10)."""

    class Gen(Stream):
        OUT = ["y"]

        def run(self, ins: Any, outs: Any) -> bool:
            self.state.setdefault("accepted", 0)
            for _ in range(10):
                outs.y.push(self.state["accepted"])
                self.state["accepted"] += 1
            return True

    async def slow(ins: Any, outs: Any, state: Any) -> None:
        state["got"] = []
        async for item in ins.x:
            state["got"].append(item)
            await asyncio.sleep(0.001)

    workflow = Workflow(buffer_size=2)
    gen = workflow.add_stream(Gen(name="gen"))
    sink = workflow.add_stream(Stream(["x"], fn=slow, name="sink"))
    gen.pipe(sink)

    async def main() -> None:
        task = asyncio.ensure_future(workflow.start())
        await asyncio.sleep(0.1)
        workflow.stop()
        await task

    run_checked(main())
    accepted = gen.stream.state["accepted"]
    assert accepted > 0
    assert sink.stream.state["got"] == list(range(accepted))
    assert gen.status == "done"


def test_send_threadsafe_before_the_run_from_a_thread_running_its_own_loop_waits_and_delivers() -> (
    None
):
    """Only the run's own loop thread is refused (contract §10); a client library's loop in
    another thread waits for the run like any thread."""
    workflow, inlet, outlet = inlet_to_outlet()
    errors: list[BaseException] = []

    def client_thread() -> None:
        async def produce() -> None:
            inlet.send_threadsafe("hi", timeout=5)

        try:
            asyncio.run(produce())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=client_thread)
    thread.start()

    async def main() -> list[Any]:
        await asyncio.sleep(0.1)  # the thread is waiting before the run starts
        async with workflow.running():
            await asyncio.to_thread(thread.join)
            inlet.close()
            return await drain(outlet)

    try:
        assert run_checked(main()) == ["hi"]
    finally:
        thread.join()
    assert errors == []
