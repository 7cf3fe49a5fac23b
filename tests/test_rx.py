"""Contract section 5 (Rx adapters) and the overflow policies of section 4.

Sources of every kind, hot-source policies with their accounting, thread-fed sources, time
operators (on a virtual-time event loop where Rx lets us, else short real times checked only
against generous lower bounds), the memory bound of a huge cold observable, errors from
operators and sources, early-completing operators, misbehaving sources, ``rx_stream`` and the
default step names.

No test sleeps to synchronise: threads and the loop meet on events and queues with timeouts;
the only sleeps model a slow consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import signal
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import reactivex
from harness import (
    Collector,
    RecordingObserver,
    assert_stats_identity,
    examples,
    input_stats,
    run_checked,
    yield_to_loop,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import abc as rx_abc
from reactivex import operators as ops
from reactivex.disposable import Disposable
from reactivex.scheduler import NewThreadScheduler, TimeoutScheduler
from reactivex.subject import Subject

import mimo_rx
from mimo_rx import (
    BufferOverflowError,
    Stream,
    StreamError,
    Workflow,
    operator,
    rx_stream,
)
from mimo_rx.testing._clock import VirtualLoop

POLICIES = ["buffer", "drop_newest", "drop_oldest", "latest"]

# How far a paused cold observable may run ahead of its consumer. The library hands cold items
# over in batches of about a thousand; this bound is generous yet far below any of the huge
# sources below, so a source that is drained instead of paused cannot pass.
COLD_LEAD_BOUND = 4096


# -- helpers -----------------------------------------------------------------------------------


def pipeline(
    source: Any,
    *streams: Stream,
    policy: str = "buffer",
    buffer_size: int | None = None,
    sink: Collector | None = None,
) -> tuple[Workflow, Collector]:
    """source -> streams... -> sink; ``buffer_size`` is set on every pipe."""
    wf = Workflow()
    sink = sink if sink is not None else Collector()
    step = wf.add_source(source, policy=policy)
    for stream in (*streams, sink):
        step = step.pipe(wf.add_stream(stream), buffer_size=buffer_size)
    return wf, sink


async def run_fed(workflow: Workflow, feed: Callable[[], Awaitable[None]]) -> None:
    """Start ``workflow``, call ``feed()`` once its sources are subscribed, await the run."""
    task = asyncio.ensure_future(workflow.start())
    # start() subscribes every source synchronously, before its first suspension.
    await yield_to_loop()
    try:
        await feed()
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    await task


class FeederThread(threading.Thread):
    """Runs ``fn`` on its own thread and keeps whatever it raised for the test to check."""

    def __init__(self, fn: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:
            self.error = exc


def join_new_threads(before: set[threading.Thread], timeout: float = 5) -> list[str]:
    """Wait for every thread started since ``before``; return the names of those still alive."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread not in before and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t not in before and t.is_alive()]


class GatedCollector(Collector):
    """Reads nothing until ``gate`` is set, then collects everything."""

    def __init__(self, name: str = "sink", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.gate = asyncio.Event()

    async def run(self, ins: Any, outs: Any) -> None:
        await self.gate.wait()
        await super().run(ins, outs)


class TimedCollector(Collector):
    """Collects ``(seconds since the run started, item)``, measured on the loop's clock."""

    async def run(self, ins: Any, outs: Any) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async for item in ins.x:
            self.items.append((loop.time() - start, item))


def arrival_counter(step: Any, n: int) -> asyncio.Event:
    """An event set once ``step``'s output ``out`` has pushed ``n`` items (an Rx subscriber)."""
    done = asyncio.Event()
    count = 0

    def on_next(_: Any) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    step.stream.output("out").subscribe(on_next, lambda e: None)
    return done


def model_policy(policy: str, threshold: int, n: int) -> tuple[list[int], int]:
    """What an unread input of ``threshold`` holds after items 0..n-1 arrive: (kept, dropped)."""
    kept: list[int] = []
    dropped = 0
    for i in range(n):
        if len(kept) < threshold or policy == "buffer":
            kept.append(i)
        elif policy == "drop_newest":
            dropped += 1
        elif policy == "drop_oldest":
            kept.pop(0)
            kept.append(i)
            dropped += 1
        elif policy == "latest":
            dropped += len(kept)
            kept = [i]
    return kept, dropped


def is_subsequence(sub: list[Any], seq: list[Any]) -> bool:
    it = iter(seq)
    return all(any(x == y for y in it) for x in sub)


def cause_of(error: BaseException) -> BaseException:
    """The user-level error: the cause of a StreamError, else the error itself."""
    return error.__cause__ if isinstance(error, StreamError) and error.__cause__ else error


# mimo_rx.testing's virtual-time loop: when nothing is ready it jumps its clock to the next
# timer instead of sleeping, so Rx time operators scheduled on the workflow's loop run
# deterministically and instantly. run_checked's leak checks still apply.


class _VirtualTimePolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return VirtualLoop()


def run_virtual(workflow_or_coro: Any, timeout: float = 60, **kwargs: Any) -> Any:
    """``run_checked`` on a virtual-time loop (the timeout is virtual too)."""
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_VirtualTimePolicy())
    try:
        return run_checked(workflow_or_coro, timeout, **kwargs)
    finally:
        asyncio.set_event_loop_policy(previous)


def timed_items(schedule: list[tuple[float, Any]], tail: float = 0.0) -> AsyncIterator[Any]:
    """An async generator yielding each item after its delay, then waiting ``tail``."""

    async def gen() -> AsyncIterator[Any]:
        for delay, item in schedule:
            await asyncio.sleep(delay)
            yield item
        await asyncio.sleep(tail)

    return gen()


# -- every kind of source ------------------------------------------------------------------------


class OnlyIterable:
    """An iterable that is neither a sequence nor an iterator."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


class OnlyAsyncIterable:
    """An async iterable that is not an async generator (it has no aclose)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._Iterator(iter(self.items))

    class _Iterator:
        def __init__(self, it: Iterator[Any]) -> None:
            self.it = it

        def __aiter__(self) -> OnlyAsyncIterable._Iterator:
            return self

        async def __anext__(self) -> Any:
            await asyncio.sleep(0)
            try:
                return next(self.it)
            except StopIteration:
                raise StopAsyncIteration from None


async def _agen(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        await asyncio.sleep(0)
        yield item


SOURCE_KINDS: dict[str, Callable[[list[Any]], Any]] = {
    "list": list,
    "tuple": tuple,
    "generator": lambda items: (x for x in items),
    "iterable": OnlyIterable,
    "async generator": _agen,
    "async iterable": OnlyAsyncIterable,
    "from_iterable": reactivex.from_iterable,
    "of": lambda items: reactivex.of(*items),
}


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_every_kind_of_source_delivers_every_item_in_order_then_completes(kind):
    items = [*range(50), None, "end"]
    wf, sink = pipeline(SOURCE_KINDS[kind](items))
    run_checked(wf)
    assert sink.items == items
    assert wf.stats()["streams"]["source"]["status"] == "done"
    assert wf.stats()["streams"]["source"]["outputs"]["out"]["pushed"] == len(items)


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_an_empty_source_of_every_kind_ends_the_workflow(kind):
    wf, sink = pipeline(SOURCE_KINDS[kind]([]))
    run_checked(wf)
    assert sink.items == []


def test_reactivex_range_is_a_source():
    wf, sink = pipeline(reactivex.range(0, 300))
    run_checked(wf)
    assert sink.items == list(range(300))


def test_an_empty_observable_and_a_subject_completed_at_once_end_the_workflow():
    subject: Subject[int] = Subject()
    wf = Workflow()
    sinks = [Collector("a"), Collector("b")]
    wf.add_source(reactivex.empty()).pipe(wf.add_stream(sinks[0]))
    wf.add_source(subject).pipe(wf.add_stream(sinks[1]))

    async def feed() -> None:
        subject.on_completed()

    run_checked(run_fed(wf, feed), workflows=[wf])
    assert sinks[0].items == sinks[1].items == []


def test_a_source_step_has_one_output_named_out():
    wf = Workflow()
    step = wf.add_source([1, 2])
    assert step.stream.outs == ["out"]
    assert step.stream.ins == []


def test_a_source_broadcast_to_two_consumers_gives_both_every_item():
    wf = Workflow()
    src = wf.add_source(reactivex.range(0, 100))
    a, b = Collector("a"), Collector("b")
    src.pipe(wf.add_stream(a), buffer_size=3)
    src.pipe(wf.add_stream(b), buffer_size=50)
    run_checked(wf)
    assert a.items == b.items == list(range(100))


def test_a_source_with_only_an_rx_subscriber_emits_every_item():
    wf = Workflow()
    step = wf.add_source(x for x in range(5))
    seen = RecordingObserver()
    step.stream.output("out").subscribe(seen)
    run_checked(wf)
    assert seen.items == [0, 1, 2, 3, 4]
    assert seen.completed == 1


# -- back-pressure on pullable sources ---------------------------------------------------------


class SlowReader(Stream):
    """Reads ``limit`` items (or all), sleeping now and then; records the producer's lead."""

    IN = ("x",)

    def __init__(
        self,
        produced: Callable[[], int],
        limit: int | None = None,
        nap_every: int = 1,
        nap: float = 0.001,
        first_nap: float = 0.0,
    ) -> None:
        super().__init__(name="reader")
        self.produced = produced
        self.limit = limit
        self.nap_every = nap_every
        self.nap = nap
        self.first_nap = first_nap
        self.taken = 0
        self.max_lead = 0

    async def run(self, ins: Any, outs: Any) -> None:
        async for _ in ins.x:
            self.taken += 1
            self.max_lead = max(self.max_lead, self.produced() - self.taken)
            if self.taken == 1 and self.first_nap:
                await asyncio.sleep(self.first_nap)  # a slow consumer
                self.max_lead = max(self.max_lead, self.produced() - self.taken)
            elif self.taken % self.nap_every == 0:
                await asyncio.sleep(self.nap)  # a slow consumer
            if self.taken == self.limit:
                return


def test_a_generator_source_is_pulled_only_as_fast_as_downstream_takes():
    pulled = 0

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield i

    reader = SlowReader(lambda: pulled, nap_every=10)
    wf, _ = pipeline(numbers(), sink=reader, buffer_size=4)  # type: ignore[arg-type]
    run_checked(wf)
    assert reader.taken == 200
    assert reader.max_lead <= 4 + 1  # the buffer, plus the item waiting in push


def test_an_async_generator_source_is_pulled_only_as_fast_as_downstream_takes():
    pulled = 0

    async def numbers() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield i

    reader = SlowReader(lambda: pulled, nap_every=10)
    wf, _ = pipeline(numbers(), sink=reader, buffer_size=4)  # type: ignore[arg-type]
    run_checked(wf)
    assert reader.taken == 200
    assert reader.max_lead <= 4 + 1


def test_a_huge_cold_observable_is_paused_and_never_drained_into_memory():
    produced = 0

    def numbers() -> Iterator[int]:
        nonlocal produced
        for i in range(10**6):
            produced += 1
            yield i

    # The reader naps after its first item: a drained source would run far ahead meanwhile.
    reader = SlowReader(lambda: produced, limit=3000, nap_every=500, first_nap=0.3)
    wf, _ = pipeline(reactivex.from_iterable(numbers()), sink=reader, buffer_size=16)  # type: ignore[arg-type]
    before = set(threading.enumerate())
    tracemalloc.start()
    try:
        run_checked(wf, timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.taken == 3000
    assert reader.max_lead <= COLD_LEAD_BOUND, "the cold observable was not paused"
    # Draining 10**6 ints into a buffer would take tens of MB.
    assert peak < 4_000_000, f"peak traced memory {peak} bytes"
    # The source stops once its consumer has finished: its thread ends, nothing more is pulled.
    assert join_new_threads(before) == []
    assert produced <= 3000 + COLD_LEAD_BOUND


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_cold_observable_is_subscribed_on_a_thread_that_leaves_ctrl_c_to_the_loop():
    # The kernel may deliver SIGINT to any thread that does not block it; Python would then
    # only flag it, and an idle loop would never run the handler.
    seen: list[set[int]] = []

    def subscribe(observer: rx_abc.ObserverBase[int], scheduler: Any = None) -> Disposable:
        seen.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        observer.on_next(1)
        observer.on_completed()
        return Disposable()

    wf, sink = pipeline(reactivex.create(subscribe))
    run_checked(wf)
    assert sink.items == [1]
    assert signal.SIGINT in seen[0]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # ours untouched


def test_reactivex_range_is_paused_while_a_slow_consumer_catches_up():
    emitted = 0

    def count(_: Any) -> None:
        nonlocal emitted
        emitted += 1

    reader = SlowReader(lambda: emitted, limit=2000, nap_every=400, first_nap=0.3)
    source = reactivex.range(0, 10**5).pipe(ops.do_action(count))
    wf, _ = pipeline(source, sink=reader, buffer_size=8)  # type: ignore[arg-type]
    before = set(threading.enumerate())
    run_checked(wf, timeout=30)
    assert reader.taken == 2000
    assert reader.max_lead <= COLD_LEAD_BOUND
    assert join_new_threads(before) == []
    assert emitted <= 2000 + COLD_LEAD_BOUND


@pytest.mark.parametrize(
    "source",
    [lambda: list(range(500)), lambda: reactivex.range(0, 500)],
    ids=["list", "cold observable"],
)
def test_a_pausable_source_never_overflows_even_with_the_error_policy(source):
    wf, sink = pipeline(source(), policy="error", buffer_size=1)
    run_checked(wf)
    assert sink.items == list(range(500))
    assert input_stats(wf, "sink", "x")["dropped"] == 0
    assert input_stats(wf, "sink", "x")["peak_buffered"] <= 1


def test_each_item_of_a_slow_cold_observable_reaches_the_consumer_without_waiting_for_more():
    seen: queue.Queue[int] = queue.Queue()
    missed: list[int] = []

    class Acknowledge(Collector):
        async def run(self, ins: Any, outs: Any) -> None:
            async for item in ins.x:
                self.items.append(item)
                seen.put(item)

    def slow() -> Iterator[int]:
        for i in range(3):
            yield i
            try:  # the next reading comes once this one has been processed
                seen.get(timeout=2)
            except queue.Empty:
                missed.append(i)
                return

    wf, sink = pipeline(reactivex.from_iterable(slow()), sink=Acknowledge())
    run_checked(wf)
    assert sink.items == [0, 1, 2]
    assert missed == [], f"items {missed} sat in the hand-off for 2 s"


# -- policies of hot sources -------------------------------------------------------------------


def run_policy_case(policy: str, threshold: int, n: int, feeder: str) -> tuple[Workflow, Any]:
    """Feed 0..n-1 to a hot Subject while its consumer reads nothing, then let it read."""
    subject: Subject[int] = Subject()
    wf = Workflow()
    src = wf.add_source(subject, policy=policy)
    sink = GatedCollector()
    src.pipe(wf.add_stream(sink), buffer_size=threshold)

    async def feed() -> None:
        arrived = arrival_counter(src, n)
        assert subject.observers, "the source was not subscribed when start() began"
        if feeder == "loop":
            for i in range(n):
                subject.on_next(i)
        else:
            thread = FeederThread(lambda: [subject.on_next(i) for i in range(n)])
            thread.start()
        if n:
            await arrived.wait()
        if feeder == "thread":
            thread.join(5)
            assert thread.error is None
        sink.gate.set()
        subject.on_completed()

    run_checked(run_fed(wf, feed), workflows=[wf])
    return wf, sink


@pytest.mark.parametrize("feeder", ["loop", "thread"])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_hot_source_applies_its_policy_at_a_full_input_and_counts_every_drop(policy, feeder):
    n, threshold = 20, 4
    wf, sink = run_policy_case(policy, threshold, n, feeder)
    kept, dropped = model_policy(policy, threshold, n)
    assert sink.items == kept
    stats = input_stats(wf, "sink", "x")
    assert stats["dropped"] == dropped
    # dropped + delivered == emitted
    assert stats["dropped"] + len(sink.items) == n
    assert wf.stats()["streams"]["source"]["outputs"]["out"]["pushed"] == n
    assert (
        stats["received"]
        == stats["taken"] + stats["dropped"] + stats["discarded"] + stats["buffered"]
    )
    assert_stats_identity(wf)


def test_the_policies_drop_exactly_what_the_contract_says():
    # drop_newest keeps the first items, drop_oldest the last ones, latest the arriving one.
    assert model_policy("drop_newest", 3, 6) == ([0, 1, 2], 3)
    assert model_policy("drop_oldest", 3, 6) == ([3, 4, 5], 3)
    assert model_policy("latest", 3, 6) == ([3, 4, 5], 3)
    assert model_policy("latest", 3, 5) == ([3, 4], 3)
    assert model_policy("buffer", 3, 6) == ([0, 1, 2, 3, 4, 5], 0)
    for policy in ("drop_newest", "drop_oldest", "latest"):
        wf, sink = run_policy_case(policy, 3, 5, "loop")
        assert (sink.items, input_stats(wf, "sink", "x")["dropped"]) == model_policy(policy, 3, 5)


@settings(max_examples=examples(5))  # 40 for "ci", 400 for "deep"
@given(
    policy=st.sampled_from(POLICIES),
    threshold=st.integers(min_value=1, max_value=6),
    n=st.integers(min_value=0, max_value=25),
)
def test_any_burst_into_an_unread_input_keeps_what_the_policy_model_keeps(policy, threshold, n):
    wf, sink = run_policy_case(policy, threshold, n, "loop")
    kept, dropped = model_policy(policy, threshold, n)
    assert sink.items == kept
    assert input_stats(wf, "sink", "x")["dropped"] == dropped
    assert_stats_identity(wf)


def test_the_policy_applies_separately_at_each_input_the_source_feeds():
    subject: Subject[int] = Subject()
    wf = Workflow()
    src = wf.add_source(subject, policy="drop_newest")
    small, roomy = GatedCollector("small"), GatedCollector("roomy")
    src.pipe(wf.add_stream(small), buffer_size=2)
    src.pipe(wf.add_stream(roomy), buffer_size=100)

    async def feed() -> None:
        arrived = arrival_counter(src, 10)
        for i in range(10):
            subject.on_next(i)
        await arrived.wait()
        small.gate.set()
        roomy.gate.set()
        subject.on_completed()

    run_checked(run_fed(wf, feed), workflows=[wf])
    assert small.items == [0, 1]
    assert roomy.items == list(range(10))
    assert input_stats(wf, "small", "x")["dropped"] == 8
    assert input_stats(wf, "roomy", "x")["dropped"] == 0
    assert_stats_identity(wf)


@pytest.mark.parametrize("feeder", ["loop", "thread"])
def test_the_error_policy_fails_the_workflow_with_buffer_overflow_error_naming_the_input(feeder):
    subject: Subject[int] = Subject()
    wf = Workflow()
    src = wf.add_source(subject, name="ticks", policy="error")
    sink = GatedCollector("slow")
    src.pipe(wf.add_stream(sink), buffer_size=4)
    thread = FeederThread(lambda: [subject.on_next(i) for i in range(5)])

    async def feed() -> None:
        if feeder == "loop":
            for i in range(5):
                subject.on_next(i)
        else:
            thread.start()

    with pytest.raises(StreamError) as info:
        run_checked(run_fed(wf, feed), workflows=[wf])
    if feeder == "thread":
        thread.join(5)
        assert thread.error is None  # the failure is the workflow's, not the feeding thread's
    err = info.value
    assert isinstance(err, BufferOverflowError)
    assert isinstance(err.__cause__, BufferOverflowError)
    assert err.stream == "ticks"
    assert "'x'" in str(err.__cause__) and "'slow'" in str(err.__cause__)
    assert wf.stats()["streams"]["ticks"]["status"] == "failed"


@pytest.mark.parametrize("policy", POLICIES)
def test_a_fast_thread_fed_source_and_a_slow_consumer_keep_the_accounting_identity(policy):
    n = 3000
    subject: Subject[int] = Subject()
    wf = Workflow()
    src = wf.add_source(subject, policy=policy)

    class Recording(Collector):
        async def run(self, ins: Any, outs: Any) -> None:
            async for item in ins.x:
                self.items.append(item)
                if len(self.items) % 100 == 0:
                    await asyncio.sleep(0.001)  # a slow consumer

    reader = Recording("reader")
    src.pipe(wf.add_stream(reader), buffer_size=8)

    def emit() -> None:
        for i in range(n):
            subject.on_next(i)
        subject.on_completed()

    thread = FeederThread(emit)

    async def feed() -> None:
        thread.start()

    run_checked(run_fed(wf, feed), workflows=[wf])
    thread.join(5)
    assert thread.error is None
    delivered = reader.items
    stats = input_stats(wf, "reader", "x")
    assert stats["dropped"] + len(delivered) == n
    assert stats["received"] == n
    assert_stats_identity(wf)
    assert delivered == sorted(delivered) and len(set(delivered)) == len(delivered)
    if policy == "buffer":
        assert delivered == list(range(n))
    if policy == "drop_newest":
        assert delivered[0] == 0
    if policy in ("drop_oldest", "latest"):
        assert delivered[-1] == n - 1


def test_an_unknown_policy_is_a_value_error_naming_it():
    wf = Workflow()
    with pytest.raises(ValueError, match="drop_everything") as info:
        wf.add_source(Subject(), policy="drop_everything")
    for known in ("buffer", "drop_newest", "drop_oldest", "latest", "error"):
        assert known in str(info.value)
    assert wf.steps == []


# -- thread-fed sources ------------------------------------------------------------------------


def test_items_a_subject_gets_from_another_thread_reach_the_loop_in_emission_order():
    n = 20000
    subject: Subject[int] = Subject()
    wf, sink = pipeline(subject)

    def emit() -> None:
        for i in range(n):
            subject.on_next(i)
        subject.on_completed()

    thread = FeederThread(emit)

    async def feed() -> None:
        thread.start()

    run_checked(run_fed(wf, feed), workflows=[wf])
    thread.join(5)
    assert thread.error is None
    assert sink.items == list(range(n))


def test_items_from_several_threads_keep_the_order_in_which_they_were_emitted():
    threads_n, per_thread = 4, 2000
    subject: Subject[int] = Subject()
    wf, sink = pipeline(subject)
    lock = threading.Lock()
    counter = itertools.count()

    def emit() -> None:
        for _ in range(per_thread):
            with lock:  # defines one emission order across the threads
                subject.on_next(next(counter))

    feeders = [FeederThread(emit) for _ in range(threads_n)]

    def close() -> None:
        for t in feeders:
            t.join()
        subject.on_completed()

    closer = FeederThread(close)

    async def feed() -> None:
        for t in feeders:
            t.start()
        closer.start()

    run_checked(run_fed(wf, feed), workflows=[wf])
    closer.join(5)
    assert [t.error for t in (*feeders, closer)] == [None] * (threads_n + 1)
    assert sink.items == list(range(threads_n * per_thread))


def test_a_thread_that_waits_for_each_item_to_arrive_is_never_left_waiting():
    # Ping-pong: every item is emitted while the loop is idle, so each one needs a wake-up.
    rounds = 300
    subject: Subject[int] = Subject()
    arrived: queue.Queue[int] = queue.Queue()

    class Echo(Collector):
        async def run(self, ins: Any, outs: Any) -> None:
            async for item in ins.x:
                self.items.append(item)
                arrived.put(item)

    wf, sink = pipeline(subject, sink=Echo())

    def emit() -> None:
        for i in range(rounds):
            subject.on_next(i)
            got = arrived.get(timeout=5)  # raises queue.Empty on a lost wake-up
            assert got == i
        subject.on_completed()

    thread = FeederThread(emit)

    async def feed() -> None:
        thread.start()

    run_checked(run_fed(wf, feed), workflows=[wf], timeout=30)
    thread.join(5)
    assert thread.error is None
    assert sink.items == list(range(rounds))


def test_cold_items_and_later_hot_items_of_one_observable_arrive_in_emission_order():
    subject: Subject[int] = Subject()
    wf, sink = pipeline(subject.pipe(ops.start_with(-3, -2, -1)))

    def emit() -> None:
        for i in range(100):
            subject.on_next(i)
        subject.on_completed()

    thread = FeederThread(emit)

    async def feed() -> None:
        thread.start()

    run_checked(run_fed(wf, feed), workflows=[wf])
    thread.join(5)
    assert thread.error is None
    assert sink.items == list(range(-3, 100))


def test_a_timer_observable_is_a_hot_source_whose_ticks_arrive_in_order():
    wf, sink = pipeline(reactivex.interval(0.002).pipe(ops.take(20)))
    run_checked(wf)
    assert sink.items == list(range(20))


def test_a_subjects_items_emitted_before_start_are_not_seen():
    subject: Subject[str] = Subject()
    wf, sink = pipeline(subject)
    subject.on_next("too early")

    async def feed() -> None:
        subject.on_next("seen")
        subject.on_completed()

    subject.on_next("still too early")
    run_checked(run_fed(wf, feed), workflows=[wf])
    assert sink.items == ["seen"]


def test_a_hot_source_keeps_the_workflow_running_until_it_completes():
    subject: Subject[int] = Subject()
    wf, sink = pipeline(subject)
    states: list[str] = []

    async def feed() -> None:
        subject.on_next(1)
        await yield_to_loop(20)
        states.append(wf.stats()["streams"]["sink"]["status"])
        subject.on_next(2)
        subject.on_completed()

    run_checked(run_fed(wf, feed), workflows=[wf])
    assert states == ["running"]
    assert sink.items == [1, 2]


# -- errors from operators and sources ---------------------------------------------------------


def test_an_error_raised_in_ops_map_reaches_the_caller_as_stream_error_with_the_original_cause():
    boom = ZeroDivisionError("boom")

    def f(x: int) -> int:
        if x == 3:
            raise boom
        return x

    wf, _ = pipeline(range(10), operator(ops.map(f)))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert info.value.__cause__ is boom
    assert info.value.stream == "operator"
    assert "'operator'" in str(info.value)
    assert wf.stats()["streams"]["operator"]["status"] == "failed"


def test_an_observables_on_error_fails_the_workflow_with_the_original_cause():
    boom = ValueError("source broke")
    wf, _ = pipeline(reactivex.concat(reactivex.of(1, 2), reactivex.throw(boom)))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert info.value.__cause__ is boom
    assert info.value.stream == "source"


def test_a_hot_observables_on_error_from_another_thread_fails_the_workflow():
    boom = OSError("sensor unplugged")
    subject: Subject[int] = Subject()
    wf, _ = pipeline(subject)

    def emit() -> None:
        subject.on_next(1)
        subject.on_error(boom)

    thread = FeederThread(emit)

    async def feed() -> None:
        thread.start()

    with pytest.raises(StreamError) as info:
        run_checked(run_fed(wf, feed), workflows=[wf])
    thread.join(5)
    assert thread.error is None
    assert info.value.__cause__ is boom


def test_a_generator_that_raises_fails_the_workflow_with_the_original_cause():
    boom = KeyError("missing row")

    def rows() -> Iterator[int]:
        yield 1
        yield 2
        raise boom

    wf, _ = pipeline(rows())
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert info.value.__cause__ is boom
    assert info.value.stream == "source"


def test_an_async_generator_that_raises_fails_the_workflow_with_the_original_cause():
    boom = ConnectionError("socket closed")

    async def rows() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0)
        raise boom

    wf, _ = pipeline(rows())
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert info.value.__cause__ is boom


class Scripted(rx_abc.ObservableBase[Any]):
    """An observable that plays raw signals on the observer it is given, without Rx's
    safety wrappers, so it can misbehave (signals after a terminal one, two terminals)."""

    def __init__(self, script: list[tuple[str, Any]], thread: bool = False) -> None:
        self.script = script
        self.thread = thread
        self.feeder: FeederThread | None = None

    def subscribe(  # type: ignore[override]
        self, on_next: Any = None, on_error: Any = None, on_completed: Any = None, *, scheduler=None
    ) -> rx_abc.DisposableBase:
        observer = on_next

        def play() -> None:
            for kind, value in self.script:
                if kind == "wait":
                    assert value.wait(5)
                elif kind == "on_completed":
                    observer.on_completed()
                else:
                    getattr(observer, kind)(value)

        if self.thread:
            self.feeder = FeederThread(play)
            self.feeder.start()
        else:
            play()
        return Disposable()


def test_subscribe_itself_raising_fails_the_workflow_with_the_original_cause():
    boom = PermissionError("no access")

    class Broken(rx_abc.ObservableBase[Any]):
        def subscribe(self, *args: Any, **kwargs: Any) -> rx_abc.DisposableBase:  # type: ignore[override]
            raise boom

    wf, _ = pipeline(Broken())
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert info.value.__cause__ is boom


# -- misbehaving sources -----------------------------------------------------------------------


def test_signals_after_on_completed_cannot_corrupt_the_workflow():
    script = [
        ("on_next", 1),
        ("on_completed", None),
        ("on_next", 2),
        ("on_completed", None),
        ("on_error", ValueError("late")),
    ]
    wf, sink = pipeline(Scripted(script))
    run_checked(wf)
    assert sink.items == [1]
    assert wf.stats()["streams"]["source"]["status"] == "done"
    assert wf.stats()["streams"]["source"]["outputs"]["out"]["pushed"] == 1
    assert_stats_identity(wf)


def test_signals_after_on_error_cannot_hide_the_error():
    boom = ValueError("first")
    script = [("on_next", 1), ("on_error", boom), ("on_next", 2), ("on_completed", None)]
    wf, _ = pipeline(Scripted(script))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert info.value.__cause__ is boom
    assert info.value.errors == [info.value]


def test_a_thread_signalling_after_completion_and_after_the_run_cannot_corrupt_anything():
    run_over = threading.Event()
    script = [
        ("on_next", 1),
        ("on_completed", None),
        ("on_next", 2),
        ("on_error", ValueError("during")),
        ("wait", run_over),
        ("on_next", 3),
        ("on_completed", None),
        ("on_error", ValueError("after")),
    ]
    source = Scripted(script, thread=True)
    wf, sink = pipeline(source)
    run_checked(wf)
    run_over.set()
    assert source.feeder is not None
    source.feeder.join(5)
    assert not source.feeder.is_alive()
    assert source.feeder.error is None  # the late signals were ignored, not raised at the thread
    assert sink.items == [1]
    assert wf.stats()["streams"]["source"]["outputs"]["out"]["pushed"] == 1


# -- early-completing operators ----------------------------------------------------------------


def test_take_on_an_infinite_generator_source_ends_the_workflow_and_stops_pulling():
    pulled = 0

    def naturals() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    wf, sink = pipeline(naturals(), operator(ops.take(5)), buffer_size=8)
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3, 4]
    assert pulled <= 5 + 8 + 2
    assert wf.stats()["streams"]["source"]["status"] == "done"
    assert_stats_identity(wf)


def test_an_infinite_generator_source_stopped_early_is_closed():
    closed: list[bool] = []

    def naturals() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            closed.append(True)

    wf, sink = pipeline(naturals(), operator(ops.take(5)))
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3, 4]
    assert closed == [True]


def test_take_on_an_infinite_async_generator_ends_the_workflow_and_closes_the_generator():
    closed: list[bool] = []

    async def naturals() -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                await asyncio.sleep(0)
                yield i
        finally:
            closed.append(True)

    wf, sink = pipeline(naturals(), operator(ops.take(5)), buffer_size=8)
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3, 4]
    assert closed == [True]


def test_take_on_an_infinite_cold_observable_ends_the_workflow_and_stops_its_thread():
    emitted = 0

    def count(_: Any) -> None:
        nonlocal emitted
        emitted += 1

    source = reactivex.from_iterable(itertools.count()).pipe(ops.do_action(count))
    wf, sink = pipeline(source, operator(ops.take(5)))
    before = set(threading.enumerate())
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3, 4]
    assert join_new_threads(before) == []
    assert emitted <= 5 + 1024 + COLD_LEAD_BOUND


def test_take_on_an_infinite_hot_observable_ends_the_workflow_and_disposes_the_subscription():
    disposed = threading.Event()
    source = reactivex.interval(0.002).pipe(ops.finally_action(disposed.set))
    wf, sink = pipeline(source, operator(ops.take(5)))
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3, 4]
    assert disposed.wait(5)


def test_stopping_a_partly_cold_observable_early_disposes_what_it_subscribed():
    disposed = threading.Event()
    hot = reactivex.never().pipe(ops.finally_action(disposed.set))
    wf, sink = pipeline(reactivex.merge(hot, reactivex.range(0, 10**5)), operator(ops.take(5)))
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3, 4]
    assert disposed.wait(2)


def test_a_replay_subject_stopped_mid_replay_stops_its_thread_and_leaves_the_subject_clean():
    # A Subject is subscribed without take_until (its items would pass two more observers):
    # what a ReplaySubject replays inside subscribe() is cold, and is still broken off.
    from reactivex.subject import ReplaySubject

    replay: ReplaySubject[int] = ReplaySubject()
    for i in range(10**4):  # far more than the hand-off holds
        replay.on_next(i)
    wf, sink = pipeline(replay, operator(ops.take(5)))
    before = set(threading.enumerate())
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3, 4]
    assert join_new_threads(before) == []
    assert replay.observers == []  # nothing of the run stays subscribed


def test_a_subject_source_is_unsubscribed_when_the_run_ends_and_later_items_are_not_seen():
    subject: Subject[int] = Subject()
    wf, sink = pipeline(subject, operator(ops.map(lambda x: x * 2)))

    async def main() -> None:
        run = asyncio.ensure_future(wf.start())
        while not subject.observers:  # noqa: ASYNC110 (Rx has no event to await)
            await asyncio.sleep(0)
        for i in range(3):
            subject.on_next(i)
        await asyncio.sleep(0.01)
        wf.stop()
        await asyncio.wait_for(run, 5)
        subject.on_next(99)  # after the run: nobody listens, nothing fails

    run_checked(main())
    assert sink.items == [0, 2, 4]
    assert subject.observers == []


def test_the_reactivex_subject_internals_a_subject_source_relies_on_are_unchanged():
    # mimo_rx/_sources._subscribe subscribes a plain Subject through Subject._subscribe_core,
    # without the AutoDetachObserver of subscribe(). If this fails, a reactivex release changed
    # that method: make _subscribe take the general path (take_until + subscribe) again.
    def subscribed(subject: Subject[int]) -> tuple[RecordingObserver, rx_abc.DisposableBase]:
        recorder = RecordingObserver()
        return recorder, subject._subscribe_core(recorder, None)  # type: ignore[arg-type]

    subject: Subject[int] = Subject()
    recorder, subscription = subscribed(subject)
    assert subject.observers == [recorder] and subject.observers[0] is recorder, (
        "Subject._subscribe_core no longer adds the observer itself to Subject.observers"
    )
    subject.on_next(1)
    subscription.dispose()
    subject.on_next(2)
    assert recorder.items == [1] and subject.observers == []

    done: Subject[int] = Subject()  # completed, or failed, before it is subscribed
    done.on_completed()
    assert subscribed(done)[0].completed == 1
    boom = ValueError("sensor unplugged")
    failed: Subject[int] = Subject()
    failed.on_error(boom)
    assert subscribed(failed)[0].errors == [boom]


def test_a_subject_source_subscribes_the_workflows_own_observer_and_it_gets_every_signal():
    subject: Subject[int] = Subject()
    wf, sink = pipeline(subject, operator(ops.map(lambda x: x + 1)))
    seen: list[str] = []

    async def feed() -> None:
        seen.extend(type(observer).__module__ for observer in subject.observers)
        for i in range(5):
            subject.on_next(i)
        subject.on_completed()

    run_checked(run_fed(wf, feed), workflows=[wf])
    assert seen == ["mimo_rx._sources"]  # not wrapped in reactivex's AutoDetachObserver
    assert sink.items == [1, 2, 3, 4, 5]
    assert subject.observers == []


def test_a_subject_that_failed_before_the_run_fails_the_workflow_with_its_error():
    boom = OSError("sensor unplugged")
    subject: Subject[int] = Subject()
    subject.on_error(boom)
    wf, sink = pipeline(subject)
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert info.value.__cause__ is boom
    assert sink.items == []


def test_a_naive_create_loop_that_ignores_disposal_is_still_stopped_when_no_longer_wanted():
    emitted = 0

    def naive(observer: Any, scheduler: Any) -> None:
        nonlocal emitted
        for i in itertools.count():  # never looks at its disposal
            emitted += 1
            observer.on_next(i)

    wf, sink = pipeline(reactivex.create(naive), operator(ops.take(5)))
    before = set(threading.enumerate())
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3, 4]
    assert join_new_threads(before) == []
    assert emitted <= 5 + 1024 + COLD_LEAD_BOUND


def test_cancelling_the_workflow_stops_a_paused_cold_observables_thread():
    emitted = 0

    def count(_: Any) -> None:
        nonlocal emitted
        emitted += 1

    reading = asyncio.Event()

    class Stuck(Collector):
        async def run(self, ins: Any, outs: Any) -> None:
            self.items.append(await ins.x.pop())
            reading.set()
            await asyncio.Event().wait()  # never reads again

    source = reactivex.from_iterable(itertools.count()).pipe(ops.do_action(count))
    wf, sink = pipeline(source, sink=Stuck(), buffer_size=4)
    before = set(threading.enumerate())

    async def main() -> None:
        task = asyncio.ensure_future(wf.start())
        await reading.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_checked(main(), workflows=[wf])
    assert sink.items == [0]
    assert join_new_threads(before) == []
    assert emitted <= 1 + 4 + COLD_LEAD_BOUND


def test_a_failing_consumer_stops_a_paused_cold_observables_thread():
    class Fails(Collector):
        async def run(self, ins: Any, outs: Any) -> None:
            await ins.x.pop()
            raise RuntimeError("consumer broke")

    wf, _ = pipeline(reactivex.from_iterable(itertools.count()), sink=Fails(), buffer_size=4)
    before = set(threading.enumerate())
    with pytest.raises(StreamError, match="consumer broke"):
        run_checked(wf)
    assert join_new_threads(before) == []


# -- operator() and rx_stream() ----------------------------------------------------------------


def test_operator_applies_an_rx_operator_between_its_x_input_and_y_output():
    op = operator(ops.map(lambda v: v * v))
    assert (op.ins, op.outs) == (["x"], ["y"])
    wf, sink = pipeline(range(6), op)
    run_checked(wf)
    assert sink.items == [0, 1, 4, 9, 16, 25]


def test_operator_buffer_with_count_emits_the_last_partial_buffer_at_the_end():
    wf, sink = pipeline(range(7), operator(ops.buffer_with_count(3)))
    run_checked(wf)
    assert sink.items == [[0, 1, 2], [3, 4, 5], [6]]


def test_operator_output_is_pushed_with_back_pressure():
    expand = ops.flat_map(lambda v: reactivex.from_iterable(range(v * 100, v * 100 + 100)))
    reader_sink = Collector()
    wf, sink = pipeline(range(5), operator(expand), sink=reader_sink, buffer_size=4)
    run_checked(wf)
    assert sink.items == list(range(500))
    assert input_stats(wf, "sink", "x")["peak_buffered"] <= 4


def test_an_operator_that_emits_from_another_thread_delivers_in_order():
    wf, sink = pipeline(range(200), operator(ops.observe_on(NewThreadScheduler())))
    run_checked(wf)
    assert sink.items == list(range(200))


def test_a_fused_chain_with_a_thread_hop_in_the_middle_keeps_order_and_counts_each_link():
    # Items leave the middle stage on another thread while the stream may be feeding the
    # chain on the loop: they must still be handed over to the loop, in order.
    stages = [
        operator(ops.map(lambda v: v + 1)),
        operator(ops.observe_on(NewThreadScheduler())),
        operator(ops.map(lambda v: v * 2)),
    ]
    wf, sink = pipeline(range(3000), *stages, buffer_size=4)
    run_checked(wf)
    assert sink.items == [(v + 1) * 2 for v in range(3000)]
    assert_stats_identity(wf)
    for name in ("operator-2", "operator-3"):
        assert input_stats(wf, name, "x")["taken"] == 3000


@settings(max_examples=examples(4), deadline=None)  # 50 for "ci", 500 for "deep"
@given(
    routes=st.lists(st.integers(0, 2), max_size=300),
    sizes=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
)
def test_rx_stream_outputs_emitted_in_any_interleaving_each_keep_their_order(routes, sizes):
    """Runs of consecutive items for one output are pushed together; any interleaving of
    outputs, with any buffer sizes, must reach each output's consumer in emission order."""

    def route(x: Any) -> Any:
        return tuple(x.pipe(ops.filter(lambda p, k=k: p[1] == k)) for k in range(3))

    wf = Workflow()
    rx = wf.add_stream(rx_stream(route, ins=["x"], outs=["a", "b", "c"]))
    wf.add_source(list(enumerate(routes))).pipe(rx, buffer_size=sizes[0])
    sinks = [Collector(f"sink_{k}") for k in range(3)]
    for k, (out, sink) in enumerate(zip(["a", "b", "c"], sinks, strict=True)):
        rx.pipe(wf.add_stream(sink), output=out, buffer_size=sizes[k])
    run_checked(wf)
    for k, sink in enumerate(sinks):
        assert sink.items == [(i, r) for i, r in enumerate(routes) if r == k]
    assert_stats_identity(wf)


def test_operator_of_a_non_callable_is_a_clear_error():
    with pytest.raises(ValueError, match=r"ops\.map"):
        operator(42)  # type: ignore[arg-type]


def two_sources(a: list[Any], b: list[Any], stream: Stream) -> tuple[Workflow, Any]:
    wf = Workflow()
    rx = wf.add_stream(stream)
    wf.add_source(a, name="a").pipe(rx, input=stream.ins[0])
    wf.add_source(b, name="b").pipe(rx, input=stream.ins[1])
    return wf, rx


def test_rx_stream_with_zip_pairs_its_two_inputs():
    def pairs(a: Any, b: Any) -> Any:
        return reactivex.zip(a, b)

    wf, rx = two_sources(
        [1, 2, 3], ["x", "y", "z"], rx_stream(pairs, ins=["a", "b"], outs=["pair"])
    )
    sink = Collector()
    rx.pipe(wf.add_stream(sink))
    run_checked(wf)
    assert sink.items == [(1, "x"), (2, "y"), (3, "z")]
    assert rx.name == "pairs"


def test_rx_stream_with_merge_passes_every_item_of_both_inputs_keeping_each_ones_order():
    a, b = list(range(0, 100)), list(range(1000, 1100))
    stream = rx_stream(lambda x, y: reactivex.merge(x, y), ins=["x", "y"], outs=["z"])
    wf, rx = two_sources(a, b, stream)
    sink = Collector()
    rx.pipe(wf.add_stream(sink))
    run_checked(wf)
    assert sorted(sink.items) == a + b
    assert [v for v in sink.items if v < 1000] == a
    assert [v for v in sink.items if v >= 1000] == b


def test_rx_stream_with_combine_latest_ends_with_the_two_last_values():
    a, b = [1, 2, 3], ["x", "y", "z"]
    stream = rx_stream(lambda x, y: reactivex.combine_latest(x, y), ins=["x", "y"], outs=["z"])
    wf, rx = two_sources(a, b, stream)
    sink = Collector()
    rx.pipe(wf.add_stream(sink))
    run_checked(wf)
    assert sink.items, "combine_latest emitted nothing"
    assert sink.items[-1] == (3, "z")
    firsts = [a.index(p[0]) for p in sink.items]
    seconds = [b.index(p[1]) for p in sink.items]
    assert firsts == sorted(firsts) and seconds == sorted(seconds)
    assert len(sink.items) == len(set(sink.items))


def test_rx_stream_with_partition_feeds_a_tuple_of_two_outputs():
    def split(x: Any) -> Any:
        return tuple(x.pipe(ops.partition(lambda v: v % 2 == 0)))

    wf = Workflow()
    rx = wf.add_stream(rx_stream(split, ins=["x"], outs=["even", "odd"]))
    wf.add_source(range(10)).pipe(rx)
    evens, odds = Collector("evens"), Collector("odds")
    rx.pipe(wf.add_stream(evens), output="even")
    rx.pipe(wf.add_stream(odds), output="odd")
    run_checked(wf)
    assert evens.items == [0, 2, 4, 6, 8]
    assert odds.items == [1, 3, 5, 7, 9]


def test_rx_stream_returning_a_dict_feeds_each_output_by_name_not_by_position():
    def sizes(x: Any) -> Any:
        return {
            "big": x.pipe(ops.filter(lambda v: v >= 5)),
            "small": x.pipe(ops.filter(lambda v: v < 5)),
        }

    wf = Workflow()
    rx = wf.add_stream(rx_stream(sizes, ins=["x"], outs=["small", "big"]))
    wf.add_source(range(8)).pipe(rx)
    small, big = Collector("small"), Collector("big")
    rx.pipe(wf.add_stream(small), output="small")
    rx.pipe(wf.add_stream(big), output="big")
    run_checked(wf)
    assert small.items == [0, 1, 2, 3, 4]
    assert big.items == [5, 6, 7]


def test_an_rx_stream_ends_when_its_result_completes_even_if_inputs_go_on():
    wf = Workflow()
    rx = wf.add_stream(rx_stream(lambda x: x.pipe(ops.take(3)), ins=["x"], outs=["y"]))
    wf.add_source(itertools.count()).pipe(rx)
    sink = Collector()
    rx.pipe(wf.add_stream(sink))
    run_checked(wf)
    assert sink.items == [0, 1, 2]


@pytest.mark.parametrize(
    ("fn", "outs", "words"),
    [
        (lambda x: x, ["a", "b"], ["1", "2"]),
        (lambda x: (x, x, x), ["a", "b"], ["3", "2"]),
        (lambda x: [x], ["a", "b"], ["1", "2"]),
        (lambda x: {"a": x}, ["a", "b"], ["'b'"]),
        (lambda x: {"a": x, "b": x, "c": x}, ["a", "b"], ["'c'"]),
        (lambda x: 42, ["a"], ["int"]),
        (lambda x: (x, 42), ["a", "b"], ["int"]),
    ],
    ids=[
        "one-for-two",
        "three-for-two",
        "list-of-one",
        "dict-missing",
        "dict-extra",
        "not-observable",
        "tuple-with-int",
    ],
)
def test_rx_stream_returning_the_wrong_observables_is_a_clear_error_naming_it(fn, outs, words):
    wf = Workflow()
    rx = wf.add_stream(rx_stream(fn, ins=["x"], outs=outs, name="shaper"))
    wf.add_source(range(3)).pipe(rx)
    with pytest.raises(mimo_rx.MimoError) as info:
        run_checked(wf)
    error = cause_of(info.value)
    assert isinstance(error, ValueError), repr(error)
    message = str(error)
    assert "'shaper'" in message
    for word in words:
        assert word in message


def test_an_exception_raised_by_the_rx_stream_function_itself_is_the_cause():
    boom = TypeError("bad wiring")

    def wiring(x: Any) -> Any:
        raise boom

    wf = Workflow()
    rx = wf.add_stream(rx_stream(wiring, ins=["x"], outs=["y"]))
    wf.add_source(range(3)).pipe(rx)
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert info.value.__cause__ is boom
    assert info.value.stream == "wiring"


def test_rx_stream_of_a_non_callable_is_a_clear_error():
    with pytest.raises(ValueError, match="function"):
        rx_stream("zip", ins=["a"], outs=["b"])  # type: ignore[arg-type]


def test_an_outputs_rx_subscriber_sees_every_item_and_on_completed():
    wf = Workflow()
    op = wf.add_stream(operator(ops.map(lambda v: v * 10)))
    wf.add_source(range(5)).pipe(op)
    sink = Collector()
    op.pipe(wf.add_stream(sink))
    seen = RecordingObserver()
    op.stream.output("y").pipe(ops.map(str)).subscribe(seen)
    run_checked(wf)
    assert seen.items == ["0", "10", "20", "30", "40"]
    assert seen.completed == 1
    assert seen.errors == []
    assert sink.items == [0, 10, 20, 30, 40]


def test_an_unpiped_outputs_rx_subscriber_sees_every_item_and_on_completed():
    wf = Workflow()
    op = wf.add_stream(operator(ops.filter(lambda v: v % 2)))
    wf.add_source(reactivex.range(0, 6)).pipe(op)
    seen = RecordingObserver()
    op.stream.output("y").pipe(ops.map(str)).subscribe(seen)
    run_checked(wf)
    assert seen.items == ["1", "3", "5"]
    assert seen.completed == 1


# -- default step names and construction errors ------------------------------------------------


def test_default_step_names_follow_the_contract_and_repeats_are_numbered():
    def pairs(a: Any, b: Any) -> Any:
        return reactivex.zip(a, b)

    wf = Workflow()
    names = [
        wf.add_source([1]).name,
        wf.add_source(reactivex.of(1)).name,
        wf.add_source([1], name="numbers").name,
        wf.add_stream(operator(ops.map(str))).name,
        wf.add_stream(operator(ops.map(str))).name,
        wf.add_stream(operator(ops.map(str), name="stringify")).name,
        wf.add_stream(rx_stream(pairs, ins=["a", "b"], outs=["p"])).name,
        wf.add_stream(rx_stream(pairs, ins=["a", "b"], outs=["p"])).name,
        wf.add_stream(rx_stream(lambda a: a, ins=["a"], outs=["b"])).name,
        wf.add_stream(rx_stream(lambda a: a, ins=["a"], outs=["b"])).name,
        wf.add_stream(rx_stream(lambda a: a, ins=["a"], outs=["b"], name="ident")).name,
    ]
    assert names == [
        "source",
        "source-2",
        "numbers",
        "operator",
        "operator-2",
        "stringify",
        "pairs",
        "pairs-2",
        "rx_stream",
        "rx_stream-2",
        "ident",
    ]


def test_streams_made_by_the_adapters_carry_their_default_names():
    def pairs(a: Any, b: Any) -> Any:
        return reactivex.zip(a, b)

    assert operator(ops.map(str)).name == "operator"
    assert rx_stream(pairs, ins=["a", "b"], outs=["p"]).name == "pairs"
    assert rx_stream(lambda a: a, ins=["a"], outs=["b"]).name == "rx_stream"


@pytest.mark.parametrize("bad", [42, None, object(), 3.5], ids=["int", "None", "object", "float"])
def test_add_source_of_something_not_iterable_is_a_clear_error(bad):
    wf = Workflow()
    with pytest.raises((TypeError, ValueError)) as info:
        wf.add_source(bad)
    message = str(info.value)
    assert type(bad).__name__ in message
    assert "Observable" in message and "iterable" in message
    assert wf.steps == []


def test_add_source_of_an_uncalled_async_generator_function_is_a_clear_error():
    async def readings() -> AsyncIterator[int]:
        yield 1

    wf = Workflow()
    with pytest.raises((TypeError, ValueError), match="iterable"):
        wf.add_source(readings)


# -- time operators --------------------------------------------------------------------------------


def test_debounce_emits_the_last_item_of_each_burst_after_the_quiet_period():
    schedule = [(0.0, 1), (0.01, 2), (0.01, 3), (0.48, 4), (0.01, 5)]
    sink = TimedCollector()
    threads: set[int] = set()

    def debounce_on_the_loop(obs: Any) -> Any:
        return obs.pipe(
            ops.debounce(0.1), ops.do_action(lambda _: threads.add(threading.get_ident()))
        )

    wf, _ = pipeline(timed_items(schedule, tail=0.5), operator(debounce_on_the_loop), sink=sink)
    run_virtual(wf)
    assert [item for _, item in sink.items] == [3, 5]
    assert [t for t, _ in sink.items] == [pytest.approx(0.12), pytest.approx(0.61)]
    assert threads == {threading.get_ident()}  # emitted on the workflow's loop


def test_sample_emits_the_latest_item_at_each_tick():
    schedule = [(0.0 if i == 0 else 0.03, i) for i in range(10)]  # item i at 0.03 * i
    sink = TimedCollector()
    wf, _ = pipeline(timed_items(schedule, tail=0.25), operator(ops.sample(0.1)), sink=sink)
    run_virtual(wf)
    assert [item for _, item in sink.items] == [3, 6, 9]
    # interval() corrects its period against the scheduler's clock: the loop's, so exact.
    assert [t for t, _ in sink.items] == [0.1, 0.2, 0.3]


def test_buffer_with_time_groups_the_items_of_each_window():
    schedule = [(0.0 if i == 0 else 0.03, i) for i in range(10)]
    sink = TimedCollector()
    wf, _ = pipeline(
        timed_items(schedule, tail=0.05), operator(ops.buffer_with_time(0.1)), sink=sink
    )
    run_virtual(wf)
    buffers = [items for _, items in sink.items]
    assert [b for b in buffers if b] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [t for t, b in sink.items][:3] == [
        pytest.approx(0.1),
        pytest.approx(0.2),
        pytest.approx(0.3),
    ]


def test_delay_holds_every_item_back_by_the_delay_and_keeps_order():
    # The workflow's scheduler reads the loop's clock, so in virtual time the delay is exact.
    schedule = [(0.0, 0), (0.01, 1), (0.02, 2)]
    sink = TimedCollector()
    wf, _ = pipeline(timed_items(schedule), operator(ops.delay(0.05)), sink=sink)
    run_virtual(wf)
    assert sink.items == [(0.05, 0), (0.06, 1), (0.08, 2)]


class Pinger(Stream):
    """Pushes 0, 1, 2, each time waiting for it to come back on ``back`` (a feedback loop)."""

    IN = ("back",)
    OUT = ("out",)

    def __init__(self) -> None:
        super().__init__()
        self.echoes: list[tuple[float, int]] = []

    async def run(self, ins: Any, outs: Any) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(3):
            await outs.out.push(i)
            echo = await ins.back.pop()
            self.echoes.append((loop.time() - start, echo))


def feedback_loop(op: Callable[[Any], Any]) -> tuple[Workflow, Pinger]:
    """pinger -> operator(op) -> back to pinger."""
    wf = Workflow()
    pinger = Pinger()
    p = wf.add_stream(pinger)
    d = wf.add_stream(operator(op))
    p.pipe(d)
    d.pipe(p)
    return wf, pinger


def test_a_pending_rx_timer_is_not_mistaken_for_a_deadlock():
    # While the debounce timer is pending every stream waits on a port, yet the timer will
    # move things on.
    wf, pinger = feedback_loop(ops.debounce(0.05))
    run_virtual(wf)
    assert [item for _, item in pinger.echoes] == [0, 1, 2]
    assert [t for t, _ in pinger.echoes] == [
        pytest.approx(0.05),
        pytest.approx(0.10),
        pytest.approx(0.15),
    ]


@pytest.mark.parametrize(
    "op",
    [
        lambda: ops.delay(0.02, scheduler=TimeoutScheduler.singleton()),
        lambda: ops.observe_on(NewThreadScheduler()),
    ],
    ids=["delay-on-timeout-scheduler", "observe_on-new-thread"],
)
def test_an_rx_operator_working_on_its_own_thread_is_not_mistaken_for_a_deadlock(op):
    wf, pinger = feedback_loop(op())
    run_checked(wf)
    assert [item for _, item in pinger.echoes] == [0, 1, 2]


def test_a_time_operator_feeding_a_slow_consumer_loses_nothing_and_respects_its_buffer():
    async def numbers() -> AsyncIterator[int]:
        for i in range(100):
            await asyncio.sleep(0.001)
            yield i

    class Slow(Collector):
        async def run(self, ins: Any, outs: Any) -> None:
            async for batch in ins.x:
                self.items.append(batch)
                await asyncio.sleep(0.05)  # a slow consumer (virtual time)

    sink = Slow()
    wf, _ = pipeline(numbers(), operator(ops.buffer_with_time(0.01)), sink=sink, buffer_size=2)
    # Virtual seconds. The window timer is hot: it emits every 10 ms whatever the sink does,
    # so its (mostly empty) windows queue up behind the 50 ms sink and the run needs ~15 s.
    run_virtual(wf, timeout=60)
    assert [v for batch in sink.items for v in batch] == list(range(100))
    assert input_stats(wf, "sink", "x")["peak_buffered"] <= 2
    assert_stats_identity(wf)
