"""Contract section 2: input and output ports inside an ``async def run``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import reactivex
from harness import (
    Collector,
    RecordingObserver,
    linear,
    run_checked,
    source,
    yield_to_loop,
)
from reactivex import operators as ops
from reactivex.subject import Subject

import mimo_rx
from mimo_rx import ClosedError, EndOfStream, Stream, Workflow

# -- input ports ------------------------------------------------------------------------------


def test_pop_returns_items_in_push_order_and_removes_them():
    seen: list[Any] = []

    async def consume(ins, outs, state):
        seen.append(await ins.x.pop())
        seen.append(await ins.x.pop())
        seen.append(len(ins.x))

    wf, _ = linear(source(["a", "b"]), Stream(["x"], fn=consume))
    run_checked(wf)
    assert seen == ["a", "b", 0]


def test_peek_returns_the_next_item_and_leaves_it_buffered():
    seen: list[Any] = []

    async def consume(ins, outs, state):
        seen.append(await ins.x.peek())
        seen.append(await ins.x.peek())
        seen.append(len(ins.x) >= 1)
        seen.append(await ins.x.pop())
        seen.append(await ins.x.pop())

    wf, _ = linear(source([1, 2]), Stream(["x"], fn=consume))
    run_checked(wf)
    assert seen == [1, 1, True, 1, 2]


@pytest.mark.parametrize("method", ["pop", "peek"])
def test_pop_and_peek_wait_while_the_buffer_is_empty_and_upstream_is_open(method):
    go = asyncio.Event()
    seen: list[Any] = []

    async def produce(ins, outs, state):
        await go.wait()
        await outs.y.push("late")

    async def consume(ins, outs, state):
        waiting = asyncio.ensure_future(getattr(ins.x, method)())
        await yield_to_loop(3)
        seen.append(waiting.done())
        go.set()
        seen.append(await waiting)

    wf, _ = linear(Stream(outs=["y"], fn=produce), Stream(["x"], fn=consume))
    run_checked(wf)
    assert seen == [False, "late"]


@pytest.mark.parametrize("method", ["pop", "peek"])
def test_pop_and_peek_raise_end_of_stream_once_closed_and_drained(method):
    seen: list[Any] = []

    async def consume(ins, outs, state):
        seen.append(await ins.x.pop())
        with pytest.raises(EndOfStream, match=r"'x'.*'consume'") as info:
            await getattr(ins.x, method)()
        seen.append(info.value)
        # and again: end of stream is permanent
        with pytest.raises(EndOfStream):
            await getattr(ins.x, method)()

    wf, _ = linear(source([7]), Stream(["x"], fn=consume))
    run_checked(wf)
    assert seen[0] == 7
    assert isinstance(seen[1], mimo_rx.MimoError)


def test_end_of_stream_is_an_exception_but_not_a_stop_iteration():
    assert issubclass(EndOfStream, Exception)
    assert issubclass(EndOfStream, mimo_rx.MimoError)
    assert not issubclass(EndOfStream, StopIteration)
    assert not issubclass(EndOfStream, StopAsyncIteration)


def test_pop_waiting_on_an_empty_input_raises_end_of_stream_when_upstream_closes():
    seen: list[Any] = []

    waiting = asyncio.Event()

    async def produce(ins, outs, state):
        await waiting.wait()  # returning closes the output

    async def consume(ins, outs, state):
        pop = asyncio.ensure_future(ins.x.pop())
        await yield_to_loop()
        seen.append(pop.done())
        waiting.set()
        try:
            await pop
        except EndOfStream:
            seen.append("end")

    wf, _ = linear(Stream(outs=["y"], fn=produce), Stream(["x"], fn=consume))
    run_checked(wf)
    assert seen == [False, "end"]


def test_async_for_iterates_every_item_until_end_of_stream():
    sink = Collector()
    wf, _ = linear(source(range(50)), sink, buffer_size=4)
    run_checked(wf)
    assert sink.items == list(range(50))


def test_len_counts_buffered_items_and_exhausted_turns_true_once_closed_and_empty():
    seen: list[Any] = []
    pushed = asyncio.Event()
    go = asyncio.Event()

    async def produce(ins, outs, state):
        await outs.y.push(1)
        await outs.y.push(2)
        pushed.set()
        await go.wait()

    async def consume(ins, outs, state):
        await pushed.wait()
        seen.append((len(ins.x), ins.x.exhausted))
        go.set()
        await ins.x.pop()
        await ins.x.pop()
        seen.append((len(ins.x), ins.x.exhausted))  # empty, upstream maybe still open
        with pytest.raises(EndOfStream):
            await ins.x.peek()
        seen.append((len(ins.x), ins.x.exhausted))

    wf, _ = linear(Stream(outs=["y"], fn=produce), Stream(["x"], fn=consume))
    run_checked(wf)
    assert seen[0] == (2, False)
    assert seen[1][0] == 0
    assert seen[2] == (0, True)


def test_an_input_is_not_exhausted_while_items_remain_after_close():
    seen: list[Any] = []

    async def produce(ins, outs, state):
        for i in range(3):
            await outs.y.push(i)
        outs.y.close()
        closed.set()

    closed = asyncio.Event()
    producer = Stream(outs=["y"], fn=produce)

    async def consume(ins, outs, state):
        await closed.wait()  # read nothing before the producer closed
        seen.append((len(ins.x), ins.x.exhausted))
        seen.append([item async for item in ins.x])
        seen.append(ins.x.exhausted)

    wf, _ = linear(producer, Stream(["x"], fn=consume))
    run_checked(wf)
    assert seen == [(3, False), [0, 1, 2], True]


def test_input_and_output_ports_are_reachable_from_outside_a_run():
    s = Stream(["a", "b"], ["c"])
    assert isinstance(s.input("a"), mimo_rx.Input)
    assert isinstance(s.output("c"), mimo_rx.Output)
    assert s.input("a") is not s.input("b")
    assert len(s.input("a")) == 0


def test_concurrent_pops_on_one_input_all_end_at_end_of_stream():
    """Two tasks of one stream reading the same input (a worker pool) both see the end."""
    got: list[tuple[str, int]] = []

    async def trickle(ins, outs, state):
        for i in range(6):
            await yield_to_loop(2)
            await outs.y.push(i)

    async def two_workers(ins, outs, state):
        async def worker(tag: str) -> None:
            async for item in ins.x:
                got.append((tag, item))

        await asyncio.gather(worker("a"), worker("b"))

    wf, _ = linear(Stream(outs=["y"], fn=trickle), Stream(["x"], fn=two_workers))
    run_checked(wf, timeout=2)
    assert sorted(item for _, item in got) == list(range(6))


def test_a_reader_that_starts_waiting_while_another_is_being_woken_is_woken_too():
    """Reader A is woken by an item that someone else takes; reader C starts waiting before
    A resumes. A must not forget C's wait: later items reach both."""

    async def loop_back(ins, outs, state):
        first = asyncio.ensure_future(ins.x.pop())  # A
        await yield_to_loop()  # A waits on the empty input
        second = asyncio.ensure_future(ins.x.pop())  # C: its first step is scheduled now
        await outs.y.push("one")  # wakes A (its resumption is scheduled after C's start)
        state["mine"] = await ins.x.pop()  # but "one" is taken here, without suspending
        await yield_to_loop(3)  # C waits on the empty input; A resumes and waits again
        await outs.y.push("two")
        await outs.y.push("three")
        state["got"] = await asyncio.wait_for(asyncio.gather(first, second), 2)

    stream = Stream(["x"], ["y"], fn=loop_back)
    wf = Workflow()
    step = wf.add_stream(stream)
    step.pipe(step)  # a cycle on purpose: the stream feeds itself
    run_checked(wf, timeout=5)
    assert stream.state["mine"] == "one"
    assert sorted(stream.state["got"]) == ["three", "two"]


# -- output ports -----------------------------------------------------------------------------


def test_push_returns_true_once_the_item_is_accepted():
    results: list[Any] = []

    async def produce(ins, outs, state):
        for i in range(5):
            results.append(await outs.y.push(i))

    sink = Collector()
    wf, _ = linear(Stream(outs=["y"], fn=produce), sink, buffer_size=1)
    run_checked(wf)
    assert results == [True] * 5
    assert sink.items == list(range(5))


@pytest.mark.parametrize("drained", [False, True], ids=["buffer-holds-items", "buffer-drained"])
def test_push_after_close_raises_closed_error_naming_stream_and_port(drained):
    """Also when the input has room below its peak so far (the push fast path): closing turns
    that path off."""
    seen: list[Any] = []

    async def produce(ins, outs, state):
        for i in range(3):
            await outs.y.push(i)
        if drained:
            await yield_to_loop(5)  # the sink drains: the buffer is empty, its peak is 3
        outs.y.close()
        try:
            await outs.y.push(3)
        except ClosedError as exc:
            seen.append(exc)

    sink = Collector()
    wf, _ = linear(Stream(outs=["y"], fn=produce, name="early"), sink)
    run_checked(wf)
    assert sink.items == [0, 1, 2]
    assert len(seen) == 1
    assert isinstance(seen[0], mimo_rx.MimoError)
    with pytest.raises(ClosedError, match=r"'y'.*'early'"):
        raise seen[0]


def test_push_after_the_run_ended_raises_closed_error():
    producer = source([1], name="done")
    wf, _ = linear(producer, Collector())
    run_checked(wf)

    async def late_push():
        await producer.output("out").push(2)

    with pytest.raises(ClosedError, match=r"'out'.*'done'"):
        run_checked(late_push())


def test_closing_an_output_twice_is_harmless():
    async def produce(ins, outs, state):
        await outs.y.push(1)
        outs.y.close()
        outs.y.close()

    sink = Collector()
    obs = RecordingObserver()
    producer = Stream(outs=["y"], fn=produce)
    producer.output("y").subscribe(obs)
    wf, _ = linear(producer, sink)
    run_checked(wf)
    assert sink.items == [1]
    assert obs.completed == 1
    assert obs.errors == []


def test_close_ends_the_downstream_input_after_the_items_already_pushed_while_the_stream_goes_on():
    events: list[Any] = []
    consumer_done = asyncio.Event()

    async def produce(ins, outs, state):
        await outs.y.push("a")
        await outs.y.push("b")
        outs.y.close()
        await consumer_done.wait()  # the stream is still running when the consumer ends
        events.append("producer returns")

    async def consume(ins, outs, state):
        async for item in ins.x:
            events.append(item)
        events.append("end")
        consumer_done.set()

    wf, _ = linear(Stream(outs=["y"], fn=produce), Stream(["x"], fn=consume))
    run_checked(wf)
    assert events == ["a", "b", "end", "producer returns"]


def test_every_open_output_is_closed_when_run_returns():
    sinks = [Collector(name="s1"), Collector(name="s2")]

    async def produce(ins, outs, state):
        await outs.a.push(1)

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["a", "b"], fn=produce))
    p.pipe(wf.add_stream(sinks[0]), output="a")
    p.pipe(wf.add_stream(sinks[1]), output="b")
    run_checked(wf)
    assert [s.items for s in sinks] == [[1], []]


def test_none_is_a_legal_item_everywhere():
    obs = RecordingObserver()
    producer = source([None, 0, None])
    producer.output("out").subscribe(obs)
    popped: list[Any] = []

    async def relay(ins, outs, state):
        popped.append(await ins.x.peek())
        popped.append(await ins.x.pop())
        async for item in ins.x:
            await outs.y.push(item)

    sink = Collector()
    wf, _ = linear(producer, Stream(["x"], ["y"], fn=relay), sink)
    run_checked(wf)
    assert popped == [None, None]
    assert sink.items == [0, None]
    assert obs.items == [None, 0, None]
    assert obs.completed == 1


# -- outputs are Rx subjects -------------------------------------------------------------------


def test_every_output_is_an_rx_subject():
    s = Stream(outs=["y"])
    assert isinstance(s.output("y"), Subject)
    assert isinstance(s.output("y"), reactivex.Observable)


def test_rx_subscribers_receive_every_pushed_item_and_on_completed():
    producer = source(range(10))
    obs = RecordingObserver()
    mapped = RecordingObserver()
    producer.output("out").subscribe(obs)
    producer.output("out").pipe(ops.map(str), ops.filter(lambda s: s != "3")).subscribe(mapped)
    wf, _ = linear(producer, Collector(), buffer_size=2)
    run_checked(wf)
    assert obs.items == list(range(10))
    assert obs.completed == 1 and obs.errors == []
    assert mapped.items == [str(i) for i in range(10) if i != 3]
    assert mapped.completed == 1


def test_an_output_with_only_an_rx_subscriber_delivers_to_it():
    producer = source(["a", "b"])
    seen: list[Any] = []
    producer.output("out").subscribe(on_next=seen.append)
    wf = Workflow()
    wf.add_stream(producer)
    run_checked(wf)
    assert seen == ["a", "b"]


def test_an_rx_observer_that_subscribes_mid_run_sees_every_later_push():
    """Subscribing while the stream runs (after pushes already took the fast path to the
    one connected input) makes every later push reach the observer too."""
    late = RecordingObserver()

    async def produce(ins, outs, state):
        for i in range(5):
            await outs.y.push(i)
        await yield_to_loop(5)  # the sink drains: the next pushes would take the fast path
        outs.y.subscribe(late)
        for i in range(5, 10):
            await outs.y.push(i)

    sink = Collector()
    wf, _ = linear(Stream(outs=["y"], fn=produce), sink)
    run_checked(wf)
    assert sink.items == list(range(10))
    assert late.items == list(range(5, 10))
    assert late.completed == 1


def test_rx_subscribers_see_items_in_push_order_while_downstream_applies_back_pressure():
    producer = source(range(30))
    obs = RecordingObserver()
    producer.output("out").subscribe(obs)
    sink = Collector()
    wf, _ = linear(producer, sink, buffer_size=1)
    run_checked(wf)
    assert obs.items == sink.items == list(range(30))
