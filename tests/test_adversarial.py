"""Adversarial cases: faults at every position, simultaneous failures, code that will not
stop, and cancellation racing with item arrival.

Every run goes through ``run_checked``: no task is left, nothing reaches the loop's exception
handler ("exception was never retrieved"), and every Rx subscriber got its terminal signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import reactivex
from harness import (
    Collector,
    RecordingObserver,
    assert_stats_identity,
    broadcast_then_drain_one_input_first,
    race_cancel,
    run_checked,
    source,
    yield_to_loop,
)
from reactivex import operators as ops
from reactivex.disposable import Disposable

import mimo_rx
from mimo_rx import (
    DeadlockError,
    Stream,
    StreamError,
    Workflow,
    WorkflowCancelled,
    WorkflowError,
    operator,
    rx_stream,
)

ITEMS = list(range(10))
# first item, a middle one, the last one
POSITIONS = {"first": 0, "middle": 5, "last": 9}


class Boom(Exception):
    """The injected fault; each test checks it gets back exactly this instance."""


def is_prefix(got: list[Any], full: list[Any]) -> bool:
    return got == full[: len(got)]


def assert_only_error(error: StreamError, stream: str, cause: BaseException) -> None:
    """``error`` is the one failure of the run: it names ``stream`` and carries ``cause``."""
    assert error.stream == stream, error
    assert error.__cause__ is cause
    assert error.errors == [error]
    assert not getattr(error, "__notes__", None), error.__notes__


# -- a fault at the first, a middle and the last item, and after close -------------------------


def faulty_stream(kind: str, at: int | None, boom: Boom, closed: asyncio.Event) -> Stream:
    """x -> y forwarding stream that raises ``boom`` on item ``at``. With ``at=None`` it closes
    its output after the last item, then raises: the async kind once the downstream has seen
    end of stream, the plain-def kind on the call after the one that closed."""
    if kind == "async":

        async def faulty(ins: Any, outs: Any, state: Any) -> None:
            async for item in ins.x:
                if item == at:
                    raise boom
                await outs.y.push(item)
            outs.y.close()
            await closed.wait()
            raise boom

        return Stream(["x"], ["y"], fn=faulty)

    def faulty_sync(ins: Any, outs: Any, state: Any) -> bool:
        if state.get("closed"):
            raise boom  # called again after the close was delivered
        for item in ins.x:
            if item == at:
                raise boom
            outs.y.push(item)
        if ins.x.exhausted:
            outs.y.close()
            state["closed"] = True
            return True
        return False

    return Stream(["x"], ["y"], fn=faulty_sync, name="faulty")


class SignallingCollector(Collector):
    """A Collector that sets an event once it has seen end of stream."""

    def __init__(self, done: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done = done

    async def run(self, ins: Any, outs: Any) -> None:
        await super().run(ins, outs)
        self.done.set()


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("position", [*POSITIONS, "after_close"])
def test_a_stream_failing_at_any_item_or_after_close_fails_the_run_with_exactly_that_error(
    kind, position
):
    boom = Boom(position)
    done = asyncio.Event()
    at = POSITIONS.get(position)
    wf = Workflow(buffer_size=3)
    src = wf.add_stream(source(ITEMS))
    mid = wf.add_stream(faulty_stream(kind, at, boom, done))
    sink = SignallingCollector(done)
    src.pipe(mid).pipe(wf.add_stream(sink))
    watcher = RecordingObserver()
    mid.stream.output("y").subscribe(watcher)

    with pytest.raises(StreamError) as info:
        run_checked(wf)

    assert_only_error(info.value, "faulty", boom)
    if at is None:  # closed first: the subscriber saw the close, not the failure
        if kind == "async":  # it failed only once the downstream had seen everything
            assert sink.items == ITEMS
        assert is_prefix(sink.items, ITEMS)
        assert (watcher.items, watcher.completed, watcher.errors) == (ITEMS, 1, [])
    else:
        assert is_prefix(sink.items, ITEMS[:at])
        assert watcher.completed == 0 and watcher.errors == [info.value]
        assert watcher.items == sink.items or is_prefix(sink.items, watcher.items)
    assert wf.stats()["streams"]["faulty"]["status"] == "failed"
    assert_stats_identity(wf)


def _raise_at(at: int, boom: Boom) -> Any:
    def check(item: int) -> int:
        if item == at:
            raise boom
        return item

    return check


@pytest.mark.parametrize("position", list(POSITIONS))
def test_an_rx_operator_failing_at_any_item_fails_the_run_naming_its_stage(position):
    """Three adjacent operator stages (fused into one chain): the middle one fails."""
    boom = Boom(position)
    at = POSITIONS[position]
    wf = Workflow(buffer_size=3)
    steps = [
        wf.add_stream(source(ITEMS)),
        wf.add_stream(operator(ops.map(lambda x: x), name="before")),
        wf.add_stream(operator(ops.map(_raise_at(at, boom)), name="failing")),
        wf.add_stream(operator(ops.filter(lambda x: True), name="after")),
    ]
    sink = Collector()
    steps.append(wf.add_stream(sink))
    for a, b in itertools.pairwise(steps):
        a.pipe(b)

    with pytest.raises(StreamError) as info:
        run_checked(wf)

    assert_only_error(info.value, "failing", boom)
    assert is_prefix(sink.items, ITEMS[:at])
    assert_stats_identity(wf)


@pytest.mark.parametrize("position", list(POSITIONS))
def test_an_rx_stream_failing_at_any_item_fails_the_run_with_that_error(position):
    boom = Boom(position)
    at = POSITIONS[position]
    wf = Workflow(buffer_size=3)
    src = wf.add_stream(source(ITEMS))
    rx = wf.add_stream(
        rx_stream(lambda x: x.pipe(ops.map(_raise_at(at, boom))), ["x"], ["y"], name="rx")
    )
    sink = Collector()
    src.pipe(rx).pipe(wf.add_stream(sink))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert_only_error(info.value, "rx", boom)
    assert is_prefix(sink.items, ITEMS[:at])


def test_an_rx_operator_failing_when_its_input_closes_fails_the_run_with_that_error():
    boom = Boom("on close")

    def fail() -> None:
        raise boom

    wf = Workflow(buffer_size=3)
    src = wf.add_stream(source(ITEMS))
    op = wf.add_stream(operator(ops.do_action(on_completed=fail), name="closing"))
    sink = Collector()
    src.pipe(op).pipe(wf.add_stream(sink))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert_only_error(info.value, "closing", boom)
    assert is_prefix(sink.items, ITEMS)


def _generator(at: int | None, boom: Boom) -> Iterator[int]:
    for item in ITEMS:
        if item == at:
            raise boom
        yield item


async def _async_generator(at: int | None, boom: Boom) -> AsyncIterator[int]:
    for item in ITEMS:
        if item == at:
            raise boom
        yield item
        await asyncio.sleep(0)


def _observable(at: int | None, boom: Boom) -> reactivex.Observable[int]:
    def subscribe(observer: Any, scheduler: Any = None) -> Disposable:
        for item in ITEMS:
            if item == at:
                observer.on_error(boom)
                return Disposable()
            observer.on_next(item)
        observer.on_completed()
        return Disposable()

    return reactivex.create(subscribe)


SOURCE_KINDS = {
    "generator": _generator,
    "async generator": _async_generator,
    "observable": _observable,
}


@pytest.mark.parametrize("kind", list(SOURCE_KINDS))
@pytest.mark.parametrize("position", list(POSITIONS))
def test_a_source_failing_at_any_item_fails_the_run_with_exactly_that_error(kind, position):
    boom = Boom(position)
    at = POSITIONS[position]
    wf = Workflow(buffer_size=3)
    src = wf.add_source(SOURCE_KINDS[kind](at, boom), name="src")
    sink = Collector()
    src.pipe(wf.add_stream(sink))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert_only_error(info.value, "src", boom)
    assert is_prefix(sink.items, ITEMS[:at])


def _generator_failing_on_close(boom: Boom) -> Iterator[int]:
    try:
        yield from ITEMS
    finally:
        raise boom


async def _async_generator_failing_on_close(boom: Boom) -> AsyncIterator[int]:
    try:
        for item in ITEMS:
            yield item
    finally:
        raise boom


def _observable_failing_on_dispose(boom: Boom) -> reactivex.Observable[int]:
    def subscribe(observer: Any, scheduler: Any = None) -> Disposable:
        for item in ITEMS:
            observer.on_next(item)
        observer.on_completed()

        def dispose() -> None:
            raise boom

        return Disposable(dispose)

    return reactivex.create(subscribe)


CLOSING_SOURCES = {
    "generator": _generator_failing_on_close,
    "async generator": _async_generator_failing_on_close,
}


@pytest.mark.parametrize("kind", list(CLOSING_SOURCES))
def test_a_source_failing_when_it_is_closed_early_fails_the_run_with_that_error(kind):
    """The consumer stops after two items; closing the generator runs its failing finally."""
    boom = Boom("on close")
    wf = Workflow(buffer_size=3)
    src = wf.add_source(CLOSING_SOURCES[kind](boom), name="src")
    first_two = wf.add_stream(operator(ops.take(2)))
    sink = Collector()
    src.pipe(first_two).pipe(wf.add_stream(sink))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert_only_error(info.value, "src", boom)
    assert is_prefix(sink.items, [0, 1])


@pytest.mark.parametrize("kind", list(CLOSING_SOURCES))
def test_a_source_failing_when_it_is_closed_at_its_end_fails_the_run_with_that_error(kind):
    boom = Boom("on close")
    wf = Workflow(buffer_size=3)
    src = wf.add_source(CLOSING_SOURCES[kind](boom), name="src")
    sink = Collector()
    src.pipe(wf.add_stream(sink))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert_only_error(info.value, "src", boom)
    assert is_prefix(sink.items, ITEMS)


def test_an_observable_whose_disposal_fails_after_completion_fails_the_run_with_that_error():
    boom = Boom("on dispose")
    wf = Workflow(buffer_size=3)
    src = wf.add_source(_observable_failing_on_dispose(boom), name="src")
    sink = Collector()
    src.pipe(wf.add_stream(sink))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert_only_error(info.value, "src", boom)
    assert is_prefix(sink.items, ITEMS)


# -- several streams failing in the same tick ---------------------------------------------------


def _assert_all_reported(error: StreamError, causes: dict[str, BaseException]) -> None:
    """Every failure is in ``errors`` (the raised one first) and the others in the notes."""
    assert {e.stream: e.__cause__ for e in error.errors} == causes
    assert len(error.errors) == len(causes)
    assert error.errors[0] is error
    notes = getattr(error, "__notes__", [])
    for other in error.errors[1:]:
        assert sum(other.stream in note and str(other.__cause__) in note for note in notes) == 1


@pytest.mark.parametrize("count", [2, 3, 10])
def test_streams_failing_in_the_same_tick_are_all_reported_to_the_caller(count):
    go = asyncio.Event()
    causes = {f"fails{i}": Boom(f"failure {i}") for i in range(count)}

    def failing(cause: Boom) -> Any:
        async def fail(ins: Any, outs: Any, state: Any) -> None:
            await go.wait()  # every waiter resumes in the same loop iteration
            raise cause

        return fail

    async def trigger(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop(2)
        go.set()

    wf = Workflow()
    for name, cause in causes.items():
        wf.add_stream(Stream(fn=failing(cause), name=name))
    wf.add_stream(Stream(fn=trigger))
    with pytest.raises(StreamError) as info:
        run_checked(wf)  # also: no "exception was never retrieved"
    _assert_all_reported(info.value, causes)


def test_plain_def_streams_failing_on_the_same_broadcast_item_are_all_reported():
    causes = {"left": Boom("left"), "right": Boom("right")}

    def failing(cause: Boom) -> Any:
        def fail(ins: Any, outs: Any, state: Any) -> bool:
            for item in ins.x:
                if item == 3:
                    raise cause
            return False

        return fail

    wf = Workflow(buffer_size=2)
    src = wf.add_stream(source(ITEMS))
    for name, cause in causes.items():
        src.pipe(wf.add_stream(Stream(["x"], fn=failing(cause), name=name)))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    _assert_all_reported(info.value, causes)


def test_rx_operators_failing_on_the_same_broadcast_item_are_all_reported():
    causes = {"left": Boom("left"), "right": Boom("right")}
    wf = Workflow(buffer_size=2)
    src = wf.add_stream(source(ITEMS))
    for name, cause in causes.items():
        op = wf.add_stream(operator(ops.map(_raise_at(3, cause)), name=name))
        src.pipe(op).pipe(wf.add_stream(Collector(name=f"{name}_sink")))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    _assert_all_reported(info.value, causes)


def test_a_source_and_a_stream_failing_in_the_same_tick_are_both_reported():
    go = asyncio.Event()
    causes = {"src": Boom("source"), "fails": Boom("stream")}

    async def items() -> AsyncIterator[int]:
        yield 1
        await go.wait()
        raise causes["src"]

    async def fail(ins: Any, outs: Any, state: Any) -> None:
        await go.wait()
        raise causes["fails"]

    async def trigger(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop(3)
        go.set()

    wf = Workflow()
    wf.add_source(items(), name="src").pipe(wf.add_stream(Collector()))
    wf.add_stream(Stream(fn=fail, name="fails"))
    wf.add_stream(Stream(fn=trigger))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    _assert_all_reported(info.value, causes)


def test_subscribers_see_one_terminal_error_when_several_streams_fail_together():
    go = asyncio.Event()
    observers = [RecordingObserver(), RecordingObserver()]

    async def fail(ins: Any, outs: Any, state: Any) -> None:
        await outs.y.push(state["name"])
        await go.wait()
        raise Boom(state["name"])

    async def trigger(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop(3)
        go.set()

    wf = Workflow()
    for name, obs in zip(["a", "b"], observers, strict=True):
        step = wf.add_stream(Stream(outs=["y"], fn=fail, name=name, state={"name": name}))
        step.stream.output("y").subscribe(obs)
    wf.add_stream(Stream(fn=trigger))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert len(info.value.errors) == 2
    for name, obs in zip(["a", "b"], observers, strict=True):
        assert obs.items == [name] and obs.completed == 0
        assert len(obs.errors) == 1 and isinstance(obs.errors[0], StreamError)


# -- code that swallows CancelledError ----------------------------------------------------------

GRACE_S = 0.2  # cancel_timeout given to the workflows below
SLACK_S = 1.5  # how much later than the grace period the run may end, on a slow machine
# uvloop times a timer from the loop's cached clock (whole milliseconds, read once per loop
# iteration), so it may fire a little before time.monotonic() says it is due.
CLOCK_S = 0.02


class Stubborn:
    """Stream code that swallows every cancellation until the test releases it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.swallowed = 0
        self.stopped = asyncio.Event()

    async def hold(self) -> None:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.swallowed += 1  # and carries on: the bug this guards against

    def stream(self, name: str = "stubborn", **kwargs: Any) -> Stream:
        async def body(ins: Any, outs: Any, state: Any) -> None:
            try:
                await self.hold()
            finally:
                self.stopped.set()

        return Stream(fn=body, name=name, **kwargs)


async def _start_then_release(wf: Workflow, stubborn: Stubborn, started: list[float]) -> None:
    """Run ``wf``; whatever it raises, then release the stubborn stream and let it end, so
    the checked runner sees no task left once the workflow has given up on it."""
    started.append(time.monotonic())
    try:
        await wf.start()
    finally:
        started.append(time.monotonic())
        stubborn.release.set()
        await stubborn.stopped.wait()
        await yield_to_loop()  # its task ends in the step after its code returned


def test_a_stream_that_swallows_cancellation_after_a_failure_is_named_once_the_grace_ends():
    boom = Boom("first failure")
    stubborn = Stubborn()

    async def fails(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop()
        raise boom

    wf = Workflow(cancel_timeout=GRACE_S)
    wf.add_stream(stubborn.stream())
    wf.add_stream(Stream(fn=fails))
    times: list[float] = []
    with pytest.raises(WorkflowError, match="'stubborn'") as info:
        run_checked(_start_then_release(wf, stubborn, times), workflows=[wf])
    assert GRACE_S - CLOCK_S <= times[1] - times[0] < GRACE_S + SLACK_S
    assert "'fails'" not in str(info.value)
    assert "CancelledError" in str(info.value)  # says what to do
    cause = info.value.__cause__
    assert isinstance(cause, StreamError) and cause.__cause__ is boom  # the failure is kept
    assert stubborn.swallowed >= 1 and stubborn.stopped.is_set()


@pytest.mark.parametrize("how", ["a failure", "cancel()"])
def test_a_stream_that_swallows_one_cancellation_is_cancelled_again_and_the_run_ends_at_once(
    how: str,
) -> None:
    """One swallowed CancelledError costs a second cancel(), not the whole grace period nor a
    WorkflowError: the run ends with its own outcome (issue 23's decision, docs: failures)."""
    grace_s = 5.0
    swallowed: list[int] = []

    async def swallows_once(ins: Any, outs: Any, state: Any) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.append(1)  # and carries on
        await asyncio.sleep(60)  # the second cancellation ends it here

    async def fails(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop()
        raise Boom("first failure")

    wf = Workflow(cancel_timeout=grace_s)
    wf.add_stream(Stream(fn=swallows_once, name="swallows"))
    if how == "a failure":
        wf.add_stream(Stream(fn=fails))
        expected: type[Exception] = StreamError
        run: Any = wf
    else:

        async def cancel_soon() -> None:
            task = asyncio.ensure_future(wf.start())
            await yield_to_loop(5)
            wf.cancel()
            await task

        expected = WorkflowCancelled
        run = cancel_soon()
    started = time.monotonic()
    with pytest.raises(expected):
        run_checked(run, workflows=[wf])
    assert time.monotonic() - started < grace_s / 2
    assert swallowed == [1]
    assert wf.steps[0].status == "cancelled"


def test_cancelling_start_with_a_stream_that_swallows_cancellation_names_it_after_the_grace():
    stubborn = Stubborn()
    times: list[float] = []
    wf = Workflow(cancel_timeout=GRACE_S)
    wf.add_stream(stubborn.stream())
    wf.add_stream(source(ITEMS)).pipe(wf.add_stream(Collector()))

    async def main() -> None:
        task = asyncio.ensure_future(_start_then_release(wf, stubborn, times))
        await yield_to_loop(5)
        task.cancel()
        await task

    with pytest.raises(WorkflowError, match="'stubborn'") as info:
        run_checked(main(), workflows=[wf])
    assert GRACE_S - CLOCK_S <= times[1] - times[0] < GRACE_S + SLACK_S
    assert isinstance(info.value.__cause__, WorkflowCancelled)


def test_a_deadlock_with_a_stream_that_swallows_cancellation_names_it_after_the_grace():
    stubborn = Stubborn()

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        for i in range(10):
            await outs.out.push(i)

    async def drain_a_first(ins: Any, outs: Any, state: Any) -> None:
        try:
            async for _ in ins.a:
                pass
            async for _ in ins.b:
                pass
        except asyncio.CancelledError:
            stubborn.swallowed += 1
            await stubborn.hold()
        finally:
            stubborn.stopped.set()

    wf = Workflow(buffer_size=2, cancel_timeout=GRACE_S)
    p = wf.add_stream(Stream(outs=["out"], fn=produce))
    j = wf.add_stream(Stream(["a", "b"], fn=drain_a_first, name="join"))
    p.pipe(j, input="a")
    p.pipe(j, input="b")
    with pytest.raises(WorkflowError, match="'join'") as info:
        run_checked(_start_then_release(wf, stubborn, []), workflows=[wf])
    assert isinstance(info.value.__cause__, DeadlockError)


def test_subscribers_still_get_a_terminal_signal_when_a_stream_will_not_stop():
    stubborn = Stubborn()
    observers = {"stubborn": RecordingObserver(), "fails": RecordingObserver()}

    async def fails(ins: Any, outs: Any, state: Any) -> None:
        await outs.y.push(1)
        raise Boom("fails")

    wf = Workflow(cancel_timeout=GRACE_S)
    s = wf.add_stream(stubborn.stream(outs=["y"]))
    f = wf.add_stream(Stream(outs=["y"], fn=fails))
    s.stream.output("y").subscribe(observers["stubborn"])
    f.stream.output("y").subscribe(observers["fails"])
    with pytest.raises(WorkflowError):
        run_checked(_start_then_release(wf, stubborn, []), workflows=[wf])
    for obs in observers.values():
        assert obs.completed + len(obs.errors) == 1


def test_run_blocking_gives_up_on_a_stream_that_swallows_cancellation_after_the_grace():
    hold_s = GRACE_S + SLACK_S + 1  # how long the stream refuses to stop (bounded, for the test)

    async def stubborn(ins: Any, outs: Any, state: Any) -> None:
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    async def fails(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop()
        raise Boom("first failure")

    wf = Workflow(cancel_timeout=GRACE_S)
    wf.add_stream(Stream(fn=stubborn))
    wf.add_stream(Stream(fn=fails))
    started = time.monotonic()
    with pytest.raises(WorkflowError, match="'stubborn'"):
        wf.run()
    assert time.monotonic() - started < GRACE_S + SLACK_S
    # The run gave up on the stream's task, still pending on the closed loop: freed here, its
    # "Task was destroyed but it is pending!" goes to this test's log, not to a later one's
    # (run_checked collects only what its own run made) or to the end of the session.
    del wf
    gc.collect()


def test_a_stream_that_swallows_one_cancellation_and_returns_does_not_hide_the_failure():
    boom = Boom("first failure")
    swallowed: list[str] = []

    async def returns_on_cancel(ins: Any, outs: Any, state: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.append("once")  # returns normally instead of re-raising

    async def fails(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop()
        raise boom

    wf = Workflow(cancel_timeout=GRACE_S)
    wf.add_stream(Stream(fn=returns_on_cancel))
    wf.add_stream(Stream(fn=fails))
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert_only_error(info.value, "fails", boom)
    assert swallowed == ["once"]


def test_cancelling_start_stays_a_cancellation_when_a_stream_swallows_it_once_and_returns():
    async def returns_on_cancel(ins: Any, outs: Any, state: Any) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    wf = Workflow(cancel_timeout=GRACE_S)
    wf.add_stream(Stream(fn=returns_on_cancel))

    async def main() -> None:
        task = asyncio.ensure_future(wf.start())
        await yield_to_loop(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_checked(main(), workflows=[wf])


def test_a_stream_pushing_a_last_item_while_being_cancelled_does_not_hang_the_shutdown():
    boom = Boom("first failure")
    final: list[str] = []

    async def flushes_on_cancel(ins: Any, outs: Any, state: Any) -> None:
        i = 0
        try:
            while True:
                await outs.y.push(i)
                i += 1
        except asyncio.CancelledError:
            # into a full input whose consumer is being cancelled too
            await outs.y.push("last")
            final.append("pushed")
            raise

    async def slow(ins: Any, outs: Any, state: Any) -> None:
        await ins.x.pop()
        await asyncio.Event().wait()

    async def fails(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop(5)
        raise boom

    wf = Workflow(buffer_size=2, cancel_timeout=5)
    producer = wf.add_stream(Stream(outs=["y"], fn=flushes_on_cancel))
    producer.pipe(wf.add_stream(Stream(["x"], fn=slow)))
    wf.add_stream(Stream(fn=fails))
    started = time.monotonic()
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert time.monotonic() - started < SLACK_S  # never waited for the grace period
    assert_only_error(info.value, "fails", boom)
    assert final == ["pushed"]


# -- a plain-def stream that keeps asking to be called again -------------------------------------


def test_a_plain_def_stream_that_keeps_asking_to_be_called_again_lets_the_others_run():
    budget = 20_000  # the test's own bound: without it the run would never end
    calls: list[int] = []
    ran: list[int] = []

    def poll(ins: Any, outs: Any, state: Any) -> bool:
        calls.append(1)
        return not ran and len(calls) < budget  # "call me again" until the other one ran

    async def other(ins: Any, outs: Any, state: Any) -> None:
        await yield_to_loop()
        ran.append(len(calls))

    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=poll)).pipe(wf.add_stream(Collector()))
    wf.add_stream(Stream(fn=other))
    run_checked(wf)
    assert ran and ran[0] < budget


# -- cancelling while everything waits ----------------------------------------------------------


async def _until(condition: Any, limit: int = 10_000) -> None:
    """Yield to the loop until ``condition()`` holds (bounded: fails instead of hanging)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the graph never reached the expected state")


def test_cancelling_while_every_producer_is_paused_and_every_consumer_starved_loses_nothing():
    """Producers of every kind are paused on full inputs whose consumers wait on something
    else; consumers of every kind are starved on empty inputs whose producers wait on
    something else. Cancelling then ends every stream, and every item pushed is accounted
    for at the input it was pushed to."""
    never = asyncio.Event()  # what the gated consumers and the quiet producers wait for

    async def endless(ins: Any, outs: Any, state: Any) -> None:
        i = 0
        while True:
            await outs.y.push(i)
            i += 1

    def endless_sync(ins: Any, outs: Any, state: Any) -> bool:
        state["i"] = state.get("i", 0) + 1
        outs.y.push(state["i"])
        return True

    async def endless_async_gen() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    async def gated(ins: Any, outs: Any, state: Any) -> None:
        await never.wait()

    async def quiet(ins: Any, outs: Any, state: Any) -> None:
        await never.wait()

    async def pops(ins: Any, outs: Any, state: Any) -> None:
        await ins.x.pop()

    async def peeks(ins: Any, outs: Any, state: Any) -> None:
        await ins.x.peek()

    async def iterates(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            pass

    def waits_sync(ins: Any, outs: Any, state: Any) -> bool:
        for _ in ins.x:
            pass
        return False

    wf = Workflow(buffer_size=2)
    paused = {
        "endless": wf.add_stream(Stream(outs=["y"], fn=endless)),
        "endless_sync": wf.add_stream(Stream(outs=["y"], fn=endless_sync)),
        "generator": wf.add_source(itertools.count(), name="generator"),
        "async_generator": wf.add_source(endless_async_gen(), name="async_generator"),
        "observable": wf.add_source(reactivex.from_iterable(itertools.count()), name="observable"),
    }
    full_inputs = []
    for name, step in paused.items():
        for k in range(2):  # fan-out: paused on two full inputs
            consumer = wf.add_stream(Stream(["x"], fn=gated, name=f"gated_{name}_{k}"))
            step.pipe(consumer)
            full_inputs.append(consumer.stream.input("x"))
    starved = [
        Stream(["x"], fn=pops),
        Stream(["x"], fn=peeks),
        Stream(["x"], fn=iterates),
        Stream(["x"], fn=waits_sync),
        operator(ops.map(str)),
    ]
    feeders = [wf.add_stream(Stream(outs=["y"], fn=quiet, name=f"quiet{k}")) for k in range(2)]
    empty_inputs = []
    for stream in starved:
        step = wf.add_stream(stream)
        for feeder in feeders:  # merge: two open upstreams, nothing buffered
            feeder.pipe(step)
        empty_inputs.append(stream.input("x"))
        if stream.outs:
            step.pipe(wf.add_stream(Collector(name=f"after_{step.name}")))
    observers = {}
    for step in wf.steps:
        for name in step.stream.outs:
            observers[step.name, name] = RecordingObserver()
            step.stream.output(name).subscribe(observers[step.name, name])

    async def main() -> None:
        task = asyncio.ensure_future(wf.start())
        await _until(lambda: all(len(port) == 2 for port in full_inputs))
        await yield_to_loop(3)
        assert all(len(port) == 0 for port in empty_inputs)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_checked(main(), workflows=[wf])
    stats = wf.stats()["streams"]
    assert {s["status"] for s in stats.values()} == {"cancelled"}
    for (step, out), obs in observers.items():
        assert obs.completed == 0 and len(obs.errors) == 1, (step, out)
        assert isinstance(obs.errors[0], WorkflowCancelled)
        start = 1 if step == "endless_sync" else 0
        assert obs.items == list(range(start, start + len(obs.items))), (step, obs.items)
    for pipe in wf.pipes:  # nothing lost on the way: each edge received what was pushed
        pushed = stats[pipe.source.name]["outputs"][pipe.output]["pushed"]
        inp = stats[pipe.target.name]["inputs"][pipe.input]
        if sum(p.target is pipe.target for p in wf.pipes) == 1:
            assert inp["received"] == pushed, (pipe, inp)
        assert inp["peak_buffered"] <= 2
    assert_stats_identity(wf)


def test_cancelling_a_deadlocked_graph_before_the_verdict_is_a_plain_cancellation():
    wf = broadcast_then_drain_one_input_first(buffer_size=2)
    b = wf.steps[-1].stream.input("b")

    async def main() -> None:
        task = asyncio.ensure_future(wf.start())
        await _until(lambda: len(b) == 2)  # everything waits now: a deadlock, not yet reported
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_checked(main(), workflows=[wf])
    assert {s["status"] for s in wf.stats()["streams"].values()} == {"cancelled"}


# -- cancelling a pending pop or push in the same tick an item arrives ------------------------

REPETITIONS = 1000


def _racing_pop_workflow(
    seed: int, method: str, outcomes: Counter[str]
) -> tuple[Workflow, list[Any], int]:
    """A producer that, whenever the consumer has a pending read, pushes the next item and
    cancels that read in the same tick. The consumer keeps what completed reads returned."""
    rng = random.Random(seed)
    count = rng.randint(1, 8)
    threshold = rng.randint(1, 4)
    want = asyncio.Event()
    shared: dict[str, asyncio.Future[Any]] = {}
    got: list[Any] = []

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        for i in range(count):
            if want.is_set():
                want.clear()
                shared["raced"] = shared["read"]
                await race_cancel(rng, shared["read"], lambda i=i: outs.y.push(i))
            else:
                await outs.y.push(i)
            await yield_to_loop(rng.randint(0, 2))

    async def consume(ins: Any, outs: Any, state: Any) -> None:
        iterator = aiter(ins.x)
        while True:
            if rng.random() < 0.6:
                if method == "pop":
                    read = asyncio.ensure_future(ins.x.pop())
                elif method == "peek":
                    read = asyncio.ensure_future(ins.x.peek())
                else:
                    read = asyncio.ensure_future(anext(iterator))
                shared["read"] = read
                await yield_to_loop(rng.randint(0, 1))
                want.set()
                await asyncio.wait([read])
                want.clear()
                if read.cancelled():
                    outcomes["cancelled"] += 1
                    continue
                if shared.get("raced") is read:
                    outcomes["completed"] += 1
                error = read.exception()
                if error is not None:  # the end of the stream
                    break
                if method != "peek":
                    got.append(read.result())
                continue
            try:
                got.append(await ins.x.pop())
            except mimo_rx.EndOfStream:
                break

    wf = Workflow(buffer_size=threshold)
    wf.add_stream(Stream(outs=["y"], fn=produce)).pipe(wf.add_stream(Stream(["x"], fn=consume)))
    return wf, got, count


@pytest.mark.parametrize("method", ["pop", "peek", "async for"])
def test_a_read_cancelled_in_the_same_tick_an_item_arrives_loses_and_duplicates_nothing(method):
    outcomes: Counter[str] = Counter()

    async def main() -> None:
        for seed in range(REPETITIONS):
            wf, got, count = _racing_pop_workflow(seed, method, outcomes)
            await wf.start()
            assert got == list(range(count)), (seed, got)
            assert asyncio.all_tasks() == {asyncio.current_task()}, seed
            assert_stats_identity(wf)

    run_checked(main(), timeout=60)
    assert outcomes["cancelled"] and outcomes["completed"], outcomes  # both sides of the race


def _racing_push_workflow(
    seed: int, fan_out: bool, outcomes: Counter[str]
) -> tuple[Workflow, list[list[Any]], int]:
    """A producer whose pushes often park on a full input; the consumer pops and cancels the
    parked push in the same tick. A cancelled push is pushed again, so each item must arrive
    exactly once at every consumer, in order."""
    rng = random.Random(seed)
    count = rng.randint(1, 10)
    want = asyncio.Event()
    shared: dict[str, asyncio.Future[Any]] = {}
    results: list[list[Any]] = []

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        for i in range(count):
            while True:
                push = asyncio.ensure_future(outs.y.push(i))
                shared["push"] = push
                want.set()
                await asyncio.wait([push])
                want.clear()
                if not push.cancelled():
                    if shared.get("raced") is push:
                        outcomes["completed"] += 1
                    break  # accepted; a cancelled push delivered nothing: push it again
                outcomes["cancelled"] += 1

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
                        await race_cancel(rng, shared["push"], lambda: _pop_into(ins.x, got))
                    else:
                        await _pop_into(ins.x, got)
                except mimo_rx.EndOfStream:
                    return

        return Stream(["x"], fn=consume, name="racing" if racing else "plain")

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["y"], fn=produce))
    p.pipe(wf.add_stream(consumer(True)), buffer_size=rng.randint(1, 3))
    if fan_out:
        p.pipe(wf.add_stream(consumer(False)), buffer_size=rng.randint(1, 3))
    return wf, results, count


async def _pop_into(port: Any, got: list[Any]) -> None:
    got.append(await port.pop())


@pytest.mark.parametrize("fan_out", [False, True], ids=["one consumer", "fan-out"])
def test_a_push_cancelled_in_the_same_tick_room_appears_delivers_once_or_not_at_all(fan_out):
    outcomes: Counter[str] = Counter()

    async def main() -> None:
        for seed in range(REPETITIONS):
            wf, results, count = _racing_push_workflow(seed, fan_out, outcomes)
            await wf.start()
            for got in results:
                assert got == list(range(count)), (seed, results)
            assert asyncio.all_tasks() == {asyncio.current_task()}, seed
            assert_stats_identity(wf)

    run_checked(main(), timeout=60)
    assert outcomes["cancelled"] and outcomes["completed"], outcomes  # both sides of the race


# -- Rx chains that subscribe through the scheduler ------------------------------------------------


def test_an_operator_start_with_passes_every_item_after_the_first():
    wf = Workflow()
    src = wf.add_stream(source([1, 2, 3]))
    sink = Collector()
    src.pipe(wf.add_stream(operator(ops.start_with(0)))).pipe(wf.add_stream(sink))
    run_checked(wf)
    assert sink.items == [0, 1, 2, 3]


def test_an_rx_stream_merging_inputs_that_already_hold_items_loses_none_of_them():
    wf = Workflow()
    s1 = wf.add_stream(source([1, 2, 3], name="s1"))  # added first: their tasks fill the
    s2 = wf.add_stream(source([10, 20, 30], name="s2"))  # inputs before the merge runs
    merge = wf.add_stream(rx_stream(lambda a, b: reactivex.merge(a, b), ["a", "b"], ["y"]))
    s1.pipe(merge, input="a")
    s2.pipe(merge, input="b")
    sink = Collector()
    merge.pipe(wf.add_stream(sink))
    run_checked(wf)
    assert sorted(sink.items) == [1, 2, 3, 10, 20, 30]
