"""Contract section 2, "Batches": ``pop_many``, ``batches()`` and ``push_many`` keep every
guarantee of the per-item calls (FIFO per edge, exactly once, thresholds, Rx subscribers,
cancellation, statistics, deadlock detection)."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from harness import (
    Collector,
    RecordingObserver,
    assert_stats_identity,
    examples,
    input_stats,
    race_cancel,
    run_checked,
    yield_to_loop,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import mimo_rx
from mimo_rx import ClosedError, ConfigError, DeadlockError, EndOfStream, Stream, Workflow

# The property runs half the profile's examples (100 for "ci", 1000 for "deep"), with room for
# a loaded machine (60 s for "ci").
EXAMPLES = examples(2)
TIMEOUT_S = max(60, EXAMPLES * 0.3)


def as_kind(items: list[int], kind: str) -> Iterable[int]:
    """The same items as a list, a tuple or a generator (push_many takes any iterable)."""
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    return (x for x in items)


def one_push_many(items: Iterable[Any], name: str = "producer") -> Stream:
    """Pushes ``items`` with one push_many."""

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        assert await outs.y.push_many(items) is True

    return Stream(outs=["y"], fn=produce, name=name)


# -- the property: push, push_many, pop, pop_many mixed on random sizes and fan-outs ------------


@dataclass
class Consumer:
    buffer_size: int
    kind: str  # "mixed" (pop and pop_many) or "batches"
    reads: list[int | None]  # mixed: 0 = pop(), else pop_many(n) (None: all); batches: [max]
    yields: list[int]
    stop_after: int | None  # return once this many items were taken (the rest is discarded)
    got: list[Any] = field(default_factory=list)


@dataclass
class Scenario:
    pushes: list[tuple[int, str]]  # (count, kind): count 0 is one push(), else push_many
    yields: list[int]
    consumers: list[Consumer]
    subscribed: bool

    @property
    def total(self) -> int:
        return sum(max(count, 1) for count, _ in self.pushes)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    pushes = draw(
        st.lists(
            st.tuples(st.integers(0, 12), st.sampled_from(["list", "tuple", "generator"])),
            max_size=12,
        )
    )
    consumers = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["mixed", "batches"]))
        reads = draw(
            st.lists(st.none() | st.integers(0, 5), min_size=1, max_size=6)
            if kind == "mixed"
            else st.lists(st.none() | st.integers(1, 5), min_size=1, max_size=1)
        )
        consumers.append(
            Consumer(
                buffer_size=draw(st.integers(1, 8)),
                kind=kind,
                reads=reads,
                yields=draw(st.lists(st.integers(0, 2), min_size=1, max_size=4)),
                stop_after=draw(st.none() | st.integers(0, 40)),
            )
        )
    return Scenario(
        pushes=pushes,
        yields=draw(st.lists(st.integers(0, 2), min_size=1, max_size=4)),
        consumers=consumers,
        subscribed=draw(st.booleans()),
    )


def scenario_producer(scenario: Scenario) -> Stream:
    async def produce(ins: Any, outs: Any, state: Any) -> None:
        counter = iter(range(scenario.total))
        for step, (count, kind) in enumerate(scenario.pushes):
            if count == 0:
                assert await outs.y.push(next(counter)) is True
            else:
                batch = [next(counter) for _ in range(count)]
                assert await outs.y.push_many(as_kind(batch, kind)) is True
            await yield_to_loop(scenario.yields[step % len(scenario.yields)])

    return Stream(outs=["y"], fn=produce, name="producer")


def scenario_consumer(index: int, c: Consumer) -> Stream:
    async def consume(ins: Any, outs: Any, state: Any) -> None:
        port = ins.x
        step = 0

        def took(batch: list[Any], limit: int | None) -> bool:
            """Record a batch; return True when the consumer should stop."""
            assert batch, "a batch is never empty"
            assert limit is None or len(batch) <= limit
            c.got.extend(batch)
            assert len(port) <= c.buffer_size
            return c.stop_after is not None and len(c.got) >= c.stop_after

        if c.stop_after == 0:
            return
        if c.kind == "batches":
            limit = c.reads[0]
            async for batch in port.batches(limit):
                if took(batch, limit):
                    return
                await yield_to_loop(c.yields[step % len(c.yields)])
                step += 1
            return
        while True:
            read = c.reads[step % len(c.reads)]
            try:
                if read == 0:
                    batch, limit = [await port.pop()], 1
                else:
                    batch, limit = await port.pop_many(read), read
            except EndOfStream:
                assert port.exhausted
                return
            if took(batch, limit):
                return
            await yield_to_loop(c.yields[step % len(c.yields)])
            step += 1

    return Stream(["x"], fn=consume, name=f"c{index}")


@settings(max_examples=EXAMPLES, deadline=None)
@given(scenarios())
@pytest.mark.timeout(TIMEOUT_S)
def test_mixed_single_and_batch_calls_deliver_every_item_once_in_order_within_thresholds(
    scenario: Scenario,
) -> None:
    wf = Workflow()
    producer = scenario_producer(scenario)
    p = wf.add_stream(producer)
    for i, c in enumerate(scenario.consumers):
        p.pipe(wf.add_stream(scenario_consumer(i, c)), buffer_size=c.buffer_size)
    observer = RecordingObserver()
    if scenario.subscribed:
        producer.output("y").subscribe(observer)

    run_checked(wf)

    everything = list(range(scenario.total))
    for i, c in enumerate(scenario.consumers):
        stats = input_stats(wf, f"c{i}", "x")
        assert c.got == everything[: len(c.got)]  # FIFO, exactly once
        if c.stop_after is None:
            assert c.got == everything
        assert stats["received"] == scenario.total
        assert stats["taken"] == len(c.got)
        assert stats["peak_buffered"] <= stats["threshold"] == c.buffer_size
    assert_stats_identity(wf)
    assert wf.stats()["streams"]["producer"]["outputs"]["y"]["pushed"] == scenario.total
    if scenario.subscribed:
        assert observer.items == everything and observer.completed == 1


# -- pop_many and batches() ---------------------------------------------------------------------


def buffered_then_read(read: Any, items: Iterable[Any] = range(10), size: int = 16) -> Any:
    """Run producer -> consumer where the consumer calls ``read(port)`` once every item is
    buffered and the input is closed; return what ``read`` returned."""
    closed = asyncio.Event()
    result: dict[str, Any] = {}

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        await outs.y.push_many(items)
        outs.y.close()
        closed.set()

    async def consume(ins: Any, outs: Any, state: Any) -> None:
        await closed.wait()
        result["value"] = await read(ins.x)

    wf = Workflow(buffer_size=size)
    wf.add_stream(Stream(outs=["y"], fn=produce, name="producer")).pipe(
        wf.add_stream(Stream(["x"], fn=consume, name="consumer"))
    )
    run_checked(wf)
    return result["value"]


async def collect_batches(port: Any, max_items: int | None = None) -> list[list[Any]]:
    return [batch async for batch in port.batches(max_items)]


def test_batches_with_max_items_yields_lists_of_at_most_that_many_in_order_until_end_of_stream():
    got = buffered_then_read(lambda port: collect_batches(port, 3))
    assert got == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_batches_without_max_items_yields_everything_buffered_at_once():
    assert buffered_then_read(collect_batches) == [list(range(10))]


def test_pop_many_with_max_items_takes_the_oldest_and_leaves_the_rest_buffered():
    async def read(port: Any) -> Any:
        first = await port.pop_many(4)
        return first, len(port), await port.pop_many(), len(port)

    assert buffered_then_read(read) == ([0, 1, 2, 3], 6, [4, 5, 6, 7, 8, 9], 0)


def test_pop_many_returns_what_is_buffered_then_raises_end_of_stream_naming_the_port():
    async def read(port: Any) -> Any:
        batch = await port.pop_many()
        with pytest.raises(EndOfStream, match="'x'") as info:
            await port.pop_many()
        assert isinstance(info.value, mimo_rx.MimoError)
        assert port.exhausted
        return batch

    assert buffered_then_read(read, items=[None, 1]) == [None, 1]


def test_pop_many_waits_while_the_buffer_is_empty_and_wakes_for_the_next_push():
    got: list[list[int]] = []

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        for i in range(3):
            await waiting.wait()
            waiting.clear()
            await outs.y.push(i)

    async def consume(ins: Any, outs: Any, state: Any) -> None:
        for _ in range(3):
            waiting.set()  # the producer pushes only once this pop_many is waiting
            got.append(await ins.x.pop_many())

    waiting = asyncio.Event()
    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=produce)).pipe(wf.add_stream(Stream(["x"], fn=consume)))
    run_checked(wf)
    assert got == [[0], [1], [2]]


def test_leaving_a_batches_loop_early_leaves_no_async_generator_or_task_behind():
    async def consume(ins: Any, outs: Any, state: Any) -> None:
        batches = ins.x.batches(2)
        assert not inspect.isasyncgen(batches)
        tasks = len(asyncio.all_tasks())
        async for batch in batches:
            state["first"] = batch
            break
        assert len(asyncio.all_tasks()) == tasks
        state["rest"] = await ins.x.pop_many()

    consumer = Stream(["x"], fn=consume, name="consumer")
    wf = Workflow()
    wf.add_stream(one_push_many([1, 2, 3])).pipe(wf.add_stream(consumer))
    run_checked(wf)  # checks nothing was left pending or reported to the loop
    assert consumer.state == {"first": [1, 2], "rest": [3]}


def test_batches_on_an_input_closed_and_empty_ends_at_once():
    async def consume(ins: Any, outs: Any, state: Any) -> None:
        state["batches"] = [batch async for batch in ins.x.batches()]

    async def nothing(ins: Any, outs: Any, state: Any) -> None:
        return

    consumer = Stream(["x"], fn=consume, name="consumer")
    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=nothing)).pipe(wf.add_stream(consumer))
    run_checked(wf)
    assert consumer.state["batches"] == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
@pytest.mark.parametrize("method", ["pop_many", "batches"])
def test_max_items_below_one_or_not_an_int_is_a_config_error_naming_stream_and_port(bad, method):
    async def consume(ins: Any, outs: Any, state: Any) -> None:
        if method == "pop_many":
            await ins.x.pop_many(bad)
        else:
            ins.x.batches(bad)  # raised at the call, before iterating

    async def nothing(ins: Any, outs: Any, state: Any) -> None:
        return

    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=nothing)).pipe(
        wf.add_stream(Stream(["x"], fn=consume, name="needy"))
    )
    with pytest.raises(mimo_rx.StreamError) as info:
        run_checked(wf)
    cause = info.value.__cause__
    assert isinstance(cause, ConfigError) and isinstance(cause, ValueError)
    assert "input 'x' of stream 'needy'" in str(cause) and "max_items" in str(cause)


def test_a_pop_many_cancelled_while_waiting_loses_no_item():
    async def consume(ins: Any, outs: Any, state: Any) -> None:
        waiter = asyncio.ensure_future(ins.x.pop_many())
        await yield_to_loop(2)
        assert not waiter.done()
        ready.set()  # the producer pushes in the same tick as the cancellation below
        await yield_to_loop()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        state["got"] = [] if waiter.cancelled() else waiter.result()
        async for batch in ins.x.batches():
            state["got"] += batch

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        await ready.wait()
        await outs.y.push_many([1, 2, 3])

    ready = asyncio.Event()
    consumer = Stream(["x"], fn=consume, name="consumer")
    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=produce)).pipe(wf.add_stream(consumer))
    run_checked(wf)
    assert consumer.state["got"] == [1, 2, 3]


@pytest.mark.parametrize("read", ["pop_many", "batches"])
def test_taking_a_full_buffer_in_one_batch_wakes_the_paused_producer_at_once(read):
    async def produce(ins: Any, outs: Any, state: Any) -> None:
        for i in range(20):
            await outs.y.push(i)

    async def consume(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop(3)  # not a mimo_rx wait: the producer fills the buffer and pauses
        assert len(ins.x) == 3
        batches = ins.x.batches()
        got = await ins.x.pop_many() if read == "pop_many" else await anext(batches)
        assert got == [0, 1, 2] and len(ins.x) == 0
        await yield_to_loop(3)  # still no mimo_rx wait: the producer was woken by the take
        assert len(ins.x) == 3
        got += [x async for batch in batches for x in batch]
        state["got"] = got

    consumer = Stream(["x"], fn=consume, name="consumer")
    wf = Workflow(buffer_size=3)
    wf.add_stream(Stream(outs=["y"], fn=produce)).pipe(wf.add_stream(consumer))
    run_checked(wf)
    assert consumer.state["got"] == list(range(20))
    assert input_stats(wf, "consumer", "x")["peak_buffered"] == 3


# -- push_many ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "tuple", "generator"])
def test_push_many_delivers_every_item_to_every_input_within_each_threshold(kind):
    sinks = [Collector(name=f"sink{i}") for i in range(3)]

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        assert await outs.y.push_many(as_kind(list(range(50)), kind)) is True

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["y"], fn=produce, name="producer"))
    for sink, size in zip(sinks, (1, 4, 64), strict=True):
        p.pipe(wf.add_stream(sink), buffer_size=size)
    run_checked(wf)
    for sink, size in zip(sinks, (1, 4, 64), strict=True):
        assert sink.items == list(range(50))
        assert input_stats(wf, sink.name, "x")["peak_buffered"] <= size
    assert_stats_identity(wf)


def test_push_many_pulls_an_iterator_no_further_than_the_buffers_have_room_for():
    pulled: list[int] = []
    seen_at_pull: list[int] = []

    def numbers() -> Iterator[int]:
        for i in range(12):
            seen_at_pull.append(len(consumer.items))
            pulled.append(i)
            yield i

    consumer = Collector()
    wf = Workflow(buffer_size=4)
    wf.add_stream(one_push_many(numbers())).pipe(wf.add_stream(consumer))
    run_checked(wf)
    assert consumer.items == list(range(12))
    # Item i is pulled only while the buffer (pulled, not yet taken) has room for it, or as
    # the one item a loop of push() calls would be waiting to push: at most 4 + 1 ahead.
    assert all(i - taken <= 4 for i, taken in enumerate(seen_at_pull)), seen_at_pull


def test_rx_subscribers_see_each_item_of_push_many_in_order_then_completion():
    observer = RecordingObserver()
    sink = Collector()

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        await outs.y.push_many(x for x in range(30))
        await outs.y.push_many([])
        await outs.y.push_many([30, None])

    producer = Stream(outs=["y"], fn=produce, name="producer")
    wf = Workflow(buffer_size=4)
    wf.add_stream(producer).pipe(wf.add_stream(sink))
    producer.output("y").subscribe(observer)
    run_checked(wf)
    assert observer.items == [*range(31), None] == sink.items
    assert observer.completed == 1


def test_push_many_with_only_an_rx_subscriber_delivers_every_item_to_it():
    observer = RecordingObserver()

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        await outs.y.push_many(range(5))

    producer = Stream(outs=["y"], fn=produce, name="producer")
    wf = Workflow()
    wf.add_stream(producer)
    producer.output("y").subscribe(observer)
    run_checked(wf)
    assert observer.items == list(range(5)) and observer.completed == 1


@pytest.mark.timeout(20)
def test_push_many_with_no_input_pulls_an_endless_iterator_a_chunk_at_a_time():
    class Enough(Exception):
        pass

    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        while True:
            pulled += 1
            yield pulled

    def on_next(item: int) -> None:
        if item == 2500:
            raise Enough  # an exception in a subscriber fails the stream that pushed

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        await outs.y.push_many(endless())

    producer = Stream(outs=["y"], fn=produce, name="producer")
    wf = Workflow()
    wf.add_stream(producer)
    producer.output("y").subscribe(on_next=on_next, on_error=lambda error: None)
    with pytest.raises(mimo_rx.StreamError) as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, Enough)
    assert 2500 <= pulled <= 2500 + 1024  # never more than a chunk ahead of the subscriber


def test_push_many_after_close_raises_closed_error_naming_the_output():
    async def produce(ins: Any, outs: Any, state: Any) -> None:
        outs.y.close()
        await outs.y.push_many([1])

    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=produce, name="producer")).pipe(wf.add_stream(Collector()))
    with pytest.raises(mimo_rx.StreamError) as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, ClosedError)
    assert "'y'" in str(info.value.__cause__) and "'producer'" in str(info.value.__cause__)


def test_push_many_to_a_consumer_that_finished_is_discarded_and_does_not_block():
    async def take_two(ins: Any, outs: Any, state: Any) -> None:
        state["got"] = [await ins.x.pop(), await ins.x.pop()]

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        await outs.y.push_many(range(100))

    consumer = Stream(["x"], fn=take_two, name="consumer")
    wf = Workflow(buffer_size=4)
    wf.add_stream(Stream(outs=["y"], fn=produce)).pipe(wf.add_stream(consumer))
    run_checked(wf)
    assert consumer.state["got"] == [0, 1]
    stats = input_stats(wf, "consumer", "x")
    assert stats["received"] == 100 and stats["taken"] == 2 and stats["discarded"] == 98
    assert_stats_identity(wf)


# -- a cancelled push_many delivers a prefix, each item to every input, nothing twice ---------


@pytest.mark.parametrize("sizes", [(2,), (2, 5)], ids=["one consumer", "fan-out"])
def test_a_push_many_cancelled_mid_way_has_delivered_a_prefix_to_every_input(sizes):
    took_three, resume = asyncio.Event(), asyncio.Event()

    async def produce(ins: Any, outs: Any, _: Any) -> None:
        push = asyncio.ensure_future(outs.y.push_many(range(10)))
        await took_three.wait()
        await yield_to_loop(3)
        assert not push.done()  # ten items cannot fit: it is parked on a full input
        push.cancel()
        await asyncio.gather(push, return_exceptions=True)
        assert push.cancelled()
        delivered = wf.stats()["streams"]["producer"]["outputs"]["y"]["pushed"]
        assert 3 <= delivered < 10
        resume.set()
        await outs.y.push_many(range(delivered, 10))  # the rest, once

    async def first(ins: Any, outs: Any, state: Any) -> None:
        state["got"] = [await ins.x.pop() for _ in range(3)]
        took_three.set()
        await resume.wait()
        state["got"] += [x async for x in ins.x]

    async def others(ins: Any, outs: Any, state: Any) -> None:
        await resume.wait()
        state["got"] = [x async for batch in ins.x.batches() for x in batch]

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["y"], fn=produce, name="producer"))
    consumers = [
        Stream(["x"], fn=first if i == 0 else others, name=f"c{i}") for i in range(len(sizes))
    ]
    for c, size in zip(consumers, sizes, strict=True):
        p.pipe(wf.add_stream(c), buffer_size=size)
    run_checked(wf)
    for c, size in zip(consumers, sizes, strict=True):
        assert c.state["got"] == list(range(10))
        assert input_stats(wf, c.name, "x")["peak_buffered"] <= size
    assert_stats_identity(wf)


REPETITIONS = 500


def _racing_push_many_workflow(
    seed: int, fan_out: bool, outcomes: Counter[str]
) -> tuple[Workflow, list[list[Any]], int]:
    """A producer whose push_many calls often park on a full input; a consumer pops (or
    pop_many's) and cancels the parked call in the same tick. After a cancel the producer
    pushes what was not delivered (it reads ``pushed`` from the stats), so each item must
    arrive exactly once at every consumer, in order."""
    rng = random.Random(seed)
    count = rng.randint(1, 12)
    want = asyncio.Event()
    shared: dict[str, asyncio.Future[Any]] = {}
    results: list[list[Any]] = []

    def pushed() -> int:
        return int(wf.stats()["streams"]["producer"]["outputs"]["y"]["pushed"])

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        start = 0
        while start < count:
            end = min(count, start + rng.randint(1, 6))
            kind = rng.choice(["list", "generator"])
            push = asyncio.ensure_future(outs.y.push_many(as_kind(list(range(start, end)), kind)))
            shared["push"] = push
            want.set()
            await asyncio.wait([push])
            want.clear()
            if push.cancelled():
                outcomes["cancelled"] += 1
                delivered = pushed()
                assert start <= delivered <= end  # a prefix of this call, counted once
                outcomes["partial"] += start < delivered < end
                start = delivered
                continue
            if shared.get("raced") is push:
                outcomes["completed"] += 1
            start = end

    async def take(port: Any, got: list[Any]) -> None:
        if rng.random() < 0.5:
            got.append(await port.pop())
        else:
            got.extend(await port.pop_many(rng.choice([None, 1, 2])))

    def consumer(racing: bool) -> Stream:
        got: list[Any] = []
        results.append(got)

        async def consume(ins: Any, outs: Any, state: Any) -> None:
            while True:
                await yield_to_loop(rng.randint(0, 2))
                try:
                    if racing and want.is_set():
                        want.clear()
                        shared["raced"] = shared["push"]
                        await race_cancel(rng, shared["push"], lambda: take(ins.x, got))
                    else:
                        await take(ins.x, got)
                except EndOfStream:
                    return

        return Stream(["x"], fn=consume, name="racing" if racing else "plain")

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["y"], fn=produce, name="producer"))
    p.pipe(wf.add_stream(consumer(True)), buffer_size=rng.randint(1, 3))
    if fan_out:
        p.pipe(wf.add_stream(consumer(False)), buffer_size=rng.randint(1, 3))
    return wf, results, count


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fan_out", [False, True], ids=["one consumer", "fan-out"])
def test_a_push_many_cancelled_in_the_same_tick_room_appears_delivers_a_prefix_once(fan_out):
    outcomes: Counter[str] = Counter()

    async def main() -> None:
        for seed in range(REPETITIONS):
            wf, results, count = _racing_push_many_workflow(seed, fan_out, outcomes)
            await wf.start()
            for got in results:
                assert got == list(range(count)), (seed, results)
            assert asyncio.all_tasks() == {asyncio.current_task()}, seed
            assert_stats_identity(wf)

    run_checked(main(), timeout=110)
    # both sides of the race, and cancellations after part of a call went out
    assert outcomes["cancelled"] and outcomes["completed"] and outcomes["partial"], outcomes


# -- deadlock detection sees batch waits ---------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("push", "read"),
    [("push_many", "async for"), ("push", "pop_many"), ("push", "batches")],
)
def test_a_graph_stuck_in_push_many_or_pop_many_fails_with_deadlock_error(push, read):
    """src feeds join.a and join.b; join reads all of a before looking at b."""

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        if push == "push_many":
            await outs.out.push_many(range(10))
        else:
            for i in range(10):
                await outs.out.push(i)

    async def drain_a_first(ins: Any, outs: Any, state: Any) -> None:
        for port in (ins.a, ins.b):
            if read == "async for":
                async for _ in port:
                    pass
            elif read == "batches":
                async for _ in port.batches():
                    pass
            else:
                with pytest.raises(EndOfStream):
                    while True:
                        await port.pop_many()

    wf = Workflow(buffer_size=2)
    src = wf.add_stream(Stream(outs=["out"], fn=produce, name="src"))
    join = wf.add_stream(Stream(["a", "b"], fn=drain_a_first, name="join"))
    src.pipe(join, input="a")
    src.pipe(join, input="b")
    with pytest.raises(DeadlockError) as info:
        run_checked(wf, timeout=15)
    message = str(info.value)
    for fragment in ("'src'", "'out'", "'join'", "'a'", "full", "empty"):
        assert fragment in message, (fragment, message)
    if read != "async for":
        assert f"{read}()" in message
    assert f"waits in {push}()" in message  # the producer's wait is named after its call


def test_the_same_graph_with_enough_room_finishes_with_batches_and_push_many():
    async def produce(ins: Any, outs: Any, state: Any) -> None:
        await outs.out.push_many(range(10))

    async def drain_a_first(ins: Any, outs: Any, state: Any) -> None:
        state["a"] = [x async for batch in ins.a.batches() for x in batch]
        state["b"] = [x async for batch in ins.b.batches(3) for x in batch]

    join = Stream(["a", "b"], fn=drain_a_first, name="join")
    wf = Workflow(buffer_size=10)
    src = wf.add_stream(Stream(outs=["out"], fn=produce, name="src"))
    step = wf.add_stream(join)
    src.pipe(step, input="a")
    src.pipe(step, input="b")
    run_checked(wf)
    assert join.state["a"] == join.state["b"] == list(range(10))


# -- issue 23: an iterator that raises partway --------------------------------------------------


def _five_then_error() -> Iterator[int]:
    yield from range(5)
    raise LookupError("broke")


@pytest.mark.parametrize("via", ["push_many", "add_source"])
def test_what_an_iterator_yielded_before_it_raised_is_delivered_and_counted(via: str) -> None:
    """As successive pushes would: Rx subscribers see 0..4, ``pushed`` is 5, and the run
    fails with the iterator's error."""

    async def producer(ins: Any, outs: Any, state: Any) -> None:
        await outs.y.push_many(_five_then_error())

    workflow = Workflow()
    if via == "push_many":
        step = workflow.add_stream(Stream(outs=["y"], fn=producer, name="p"))
        port = "y"
    else:
        step = workflow.add_source(_five_then_error(), name="p")
        port = "out"
    sink = workflow.add_stream(Collector())
    step.pipe(sink)
    seen: list[int] = []
    step.stream.output(port).subscribe(seen.append, lambda error: None)
    with pytest.raises(mimo_rx.StreamError) as info:
        run_checked(workflow)
    assert isinstance(info.value.__cause__, LookupError)
    assert seen == [0, 1, 2, 3, 4]
    assert workflow.stats()["streams"]["p"]["outputs"][port]["pushed"] == 5
