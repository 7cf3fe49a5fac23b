"""Contract section 4, "Per-branch isolation": pipe(..., policy=...) applies at that pipe alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import reactivex
from harness import (
    Collector,
    assert_stats_identity,
    input_stats,
    run_checked,
    source,
    yield_to_loop,
)

from mimo_rx import BufferOverflowError, ConfigError, Stream, StreamError, Workflow

pytestmark = pytest.mark.timeout(30)

N = 10


class LateReader(Stream):
    """Reads nothing until ``gate`` is set, then everything (a slow branch: a dashboard)."""

    IN = ["x"]

    def __init__(self, gate: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(name="late", **kwargs)
        self.gate = gate
        self.items: list[Any] = []

    async def run(self, ins: Any, outs: Any) -> None:
        await self.gate.wait()
        async for item in ins.x:
            self.items.append(item)


class GateOpener(Stream):
    """The main path's sink: records everything, then opens the gate of the slow branch."""

    IN = ["x"]

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__(name="main")
        self.gate = gate
        self.items: list[Any] = []

    async def run(self, ins: Any, outs: Any) -> None:
        async for item in ins.x:
            self.items.append(item)
        self.gate.set()


def broadcast(policy: str, items: list[Any], late_size: int = 2) -> tuple[Workflow, Any, Any]:
    """source -> main (block) and -> late (``policy``, buffer ``late_size``)."""
    gate = asyncio.Event()
    workflow = Workflow(buffer_size=4)
    src = workflow.add_stream(source(items, name="src"))
    main, late = GateOpener(gate), LateReader(gate)
    src.pipe(workflow.add_stream(main))
    src.pipe(workflow.add_stream(late), buffer_size=late_size, policy=policy)
    return workflow, main, late


@pytest.mark.parametrize(
    ("policy", "late_items", "dropped"),
    [
        ("drop_newest", [0, 1], N - 2),
        ("drop_oldest", [N - 2, N - 1], N - 2),
        ("latest", [N - 2, N - 1], N - 2),  # full: drop everything, keep the arrival
        ("buffer", list(range(N)), 0),
    ],
)
def test_a_slow_branch_with_a_policy_does_not_stall_the_main_path(
    policy: str, late_items: list[int], dropped: int
) -> None:
    workflow, main, late = broadcast(policy, list(range(N)))
    run_checked(workflow)
    assert main.items == list(range(N))  # the main path finished before the branch read
    assert late.items == late_items
    stats = input_stats(workflow, "late", "x")
    assert stats["dropped"] == dropped
    assert stats["received"] == N
    assert_stats_identity(workflow)


def test_a_buffer_policy_lets_the_branch_hold_more_than_its_threshold() -> None:
    workflow, _, _ = broadcast("buffer", list(range(N)))
    run_checked(workflow)
    assert input_stats(workflow, "late", "x")["peak_buffered"] == N


def test_an_error_policy_fails_the_run_with_a_buffer_overflow_error_of_the_pusher() -> None:
    workflow, _, _ = broadcast("error", list(range(N)))
    with pytest.raises(StreamError) as info:
        run_checked(workflow)
    assert isinstance(info.value, BufferOverflowError)
    assert info.value.stream == "src"  # the pushing stream failed
    assert isinstance(info.value.__cause__, BufferOverflowError)
    assert "'late'" in str(info.value.__cause__) and "'error'" in str(info.value.__cause__)


def test_the_other_pipes_of_the_output_keep_back_pressure() -> None:
    gate = asyncio.Event()
    workflow = Workflow(buffer_size=2)
    src = workflow.add_stream(source(range(50), name="src"))
    late = LateReader(gate)
    blocked = Collector("blocked")
    src.pipe(workflow.add_stream(blocked))
    src.pipe(workflow.add_stream(late), policy="drop_oldest")

    async def main() -> None:
        task = asyncio.ensure_future(workflow.start())
        for _ in range(100):
            await asyncio.sleep(0)
            assert input_stats(workflow, "blocked", "x")["buffered"] <= 2
        gate.set()
        await task

    run_checked(main())
    assert blocked.items == list(range(50))
    assert input_stats(workflow, "late", "x")["dropped"] > 0


def test_a_hot_source_pipe_policy_overrides_the_sources_policy_at_that_input() -> None:
    subject: reactivex.subject.Subject[int] = reactivex.subject.Subject()
    gate = asyncio.Event()
    workflow = Workflow(buffer_size=2)
    src = workflow.add_source(subject, policy="buffer")
    late, main = LateReader(gate), GateOpener(gate)
    src.pipe(workflow.add_stream(main))
    src.pipe(workflow.add_stream(late), policy="drop_newest")

    async def run() -> None:
        task = asyncio.ensure_future(workflow.start())
        await yield_to_loop()  # start() has subscribed the source before its first await
        for i in range(6):
            subject.on_next(i)
        subject.on_completed()
        await task

    run_checked(run())
    assert main.items == list(range(6))  # the source's own "buffer" policy
    assert late.items == [0, 1]  # the pipe's "drop_newest"
    assert input_stats(workflow, "late", "x")["dropped"] == 4


def test_an_unknown_policy_is_a_config_error() -> None:
    workflow = Workflow()
    a = workflow.add_stream(source([1]))
    b = workflow.add_stream(Collector())
    with pytest.raises(ConfigError, match="policy 'drop'"):
        a.pipe(b, policy="drop")
    assert workflow.pipes == []


def test_block_is_the_default_policy() -> None:
    workflow = Workflow()
    workflow.add_stream(source([1])).pipe(workflow.add_stream(Collector()))
    assert [p.policy for p in workflow.pipes] == ["block"]


def test_a_source_feeding_only_a_finished_lossy_consumer_stops_pulling() -> None:
    pulled = []

    def numbers() -> Any:
        for i in range(10_000):
            pulled.append(i)
            yield i

    class TakeOne(Stream):
        IN = ["x"]

        async def run(self, ins: Any, outs: Any) -> None:
            await ins.x.pop()

    workflow = Workflow(buffer_size=4)
    workflow.add_source(numbers()).pipe(workflow.add_stream(TakeOne()), policy="drop_oldest")
    run_checked(workflow)
    assert len(pulled) < 10_000
    assert_stats_identity(workflow)


@pytest.mark.parametrize("cached", [False, True], ids=["push", "push looked up once"])
def test_switching_a_pipe_to_discard_during_a_run_releases_its_paused_producer(
    cached: bool,
) -> None:
    """The internal hook behind outlets (section 10): once the application stops reading,
    an outlet's input discards what arrives while it is full instead of pausing producers.
    It holds also for a producer that looked ``push`` up before the switch."""

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        push = outs.out.push
        for item in range(10):
            await (push(item) if cached else outs.out.push(item))

    gate = asyncio.Event()
    workflow = Workflow(buffer_size=2)
    src = workflow.add_stream(Stream(outs=["out"], fn=produce, name="src"))
    late = LateReader(gate)
    src.pipe(workflow.add_stream(late))

    async def run() -> None:
        task = asyncio.ensure_future(workflow.start())
        await yield_to_loop(20)
        assert workflow.stats()["streams"]["src"]["status"] == "running"  # paused: full
        src.stream.output("out")._set_policy(late.input("x"), "discard")
        await yield_to_loop(20)
        assert workflow.stats()["streams"]["src"]["status"] == "done"
        gate.set()
        await task

    run_checked(run())
    assert late.items == [0, 1]
    stats = input_stats(workflow, "late", "x")
    assert (stats["discarded"], stats["dropped"], stats["taken"]) == (8, 0, 2)
    assert_stats_identity(workflow)


def test_an_input_merging_a_lossy_and_a_blocking_pipe_applies_each_pipes_policy() -> None:
    gate = asyncio.Event()
    workflow = Workflow(buffer_size=2)
    late = workflow.add_stream(LateReader(gate))
    fast = workflow.add_stream(source(range(10), name="fast"))
    slow = workflow.add_stream(source(range(100, 103), name="slow"))
    fast.pipe(late, policy="drop_newest")
    slow.pipe(late)  # blocking: waits for the reader, loses nothing

    async def run() -> None:
        task = asyncio.ensure_future(workflow.start())
        await yield_to_loop(50)
        stats = workflow.stats()["streams"]
        assert stats["fast"]["status"] == "done"  # never paused by the full input
        assert stats["slow"]["status"] == "running"  # paused by back-pressure
        gate.set()
        await task

    late_stream = late.stream
    run_checked(run())
    assert [x for x in late_stream.items if x >= 100] == [100, 101, 102]
    stats = input_stats(workflow, "late", "x")
    assert stats["dropped"] == 10 - len([x for x in late_stream.items if x < 100])
    assert_stats_identity(workflow)


def test_switching_a_lossy_pipe_back_to_block_restores_back_pressure() -> None:
    workflow = Workflow(buffer_size=2)
    sink = Collector()
    outputs = []

    class Switch(Stream):
        """Switches the pipe back to "block" as the run starts (the internal hook)."""

        async def run(self, ins: Any, outs: Any) -> None:
            outputs[0]._set_policy(sink.input("x"), "block")

    workflow.add_stream(Switch())  # its task runs first
    src = workflow.add_stream(source(range(20), name="src"))
    outputs.append(src.stream.output("out"))
    src.pipe(workflow.add_stream(sink), policy="drop_oldest")
    run_checked(workflow)
    assert sink.items == list(range(20))  # nothing dropped: the producer was paused instead
    assert input_stats(workflow, "sink", "x")["dropped"] == 0
    assert input_stats(workflow, "sink", "x")["peak_buffered"] <= 2


def test_an_error_pipe_fed_by_a_hot_source_fails_the_run_not_the_emitter() -> None:
    subject: reactivex.subject.Subject[int] = reactivex.subject.Subject()
    gate = asyncio.Event()
    workflow = Workflow(buffer_size=2)
    src = workflow.add_source(subject, name="hot")
    src.pipe(workflow.add_stream(LateReader(gate)), policy="error")

    async def run() -> None:
        task = asyncio.ensure_future(workflow.start())
        await yield_to_loop()  # start() has subscribed the source before its first await
        for i in range(5):
            subject.on_next(i)  # application code on the loop: must not raise here
            await yield_to_loop()
        with pytest.raises(BufferOverflowError) as info:
            await task
        assert isinstance(info.value, StreamError) and info.value.stream == "hot"

    run_checked(run())
