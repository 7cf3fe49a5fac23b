"""Contract section 11: failing items without failing the run (on_error="resume", Failure,
the errors output, retries, backoff and timeouts)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import reactivex
from harness import Collector, RecordingObserver, examples, run_checked, source, yield_to_loop
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import operators as ops

import mimo_rx
from mimo_rx import (
    ConfigError,
    Failure,
    PipeError,
    Stream,
    StreamError,
    Workflow,
    map_stream,
    operator,
    rx_stream,
    testing,
)

pytestmark = pytest.mark.timeout(30)


def bad_on_three(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"bad item {x}")
    return x * 10


async def async_bad_on_three(x: int) -> int:
    await asyncio.sleep(0)
    return bad_on_three(x)


def with_dead_letters(
    stage: Stream, items: list[Any], buffer_size: int | None = None
) -> tuple[Workflow, Collector, Collector, Any]:
    """source -> stage -> sink, and stage.errors -> dead letters."""
    workflow = Workflow() if buffer_size is None else Workflow(buffer_size=buffer_size)
    sink, dead = Collector("sink"), Collector("dead")
    step = workflow.add_stream(stage)
    workflow.add_stream(source(items)).pipe(step).pipe(workflow.add_stream(sink))
    step.pipe(workflow.add_stream(dead), output="errors")
    return workflow, sink, dead, step


def failures_of(workflow: Workflow, step: str) -> int:
    count: int = workflow.stats()["streams"][step]["failures"]
    return count


# -- the keyword -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda v: Stream(["x"], ["y"], fn=lambda i, o, s: None, on_error=v),
        lambda v: map_stream(bad_on_three, on_error=v),
        lambda v: operator(ops.map(bad_on_three), on_error=v),
        lambda v: rx_stream(lambda x: x, ins=["x"], outs=["y"], on_error=v),
    ],
    ids=["Stream", "map_stream", "operator", "rx_stream"],
)
def test_an_unknown_on_error_is_a_config_error_at_construction(make: Callable[[Any], Any]) -> None:
    with pytest.raises(ConfigError, match="on_error"):
        make("ignore")


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: map_stream(bad_on_three, **kw),
        lambda **kw: operator(ops.map(bad_on_three), **kw),
    ],
    ids=["map_stream", "operator"],
)
@pytest.mark.parametrize("kwargs", [{}, {"on_error": "fail"}], ids=["default", "fail"])
def test_on_error_fail_is_the_default_and_fails_the_run(
    make: Callable[..., Stream], kwargs: dict[str, str]
) -> None:
    workflow, _, _ = _linear(make(**kwargs), list(range(1, 6)))
    with pytest.raises(StreamError) as info:
        run_checked(workflow)
    assert isinstance(info.value.__cause__, ValueError)


def _linear(stage: Stream, items: list[Any]) -> tuple[Workflow, Collector, Any]:
    workflow = Workflow()
    sink = Collector()
    step = workflow.add_stream(stage)
    workflow.add_stream(source(items)).pipe(step).pipe(workflow.add_stream(sink))
    return workflow, sink, step


def test_a_stream_that_does_not_resume_has_no_errors_output() -> None:
    with pytest.raises(ConfigError):
        map_stream(bad_on_three).output("errors")
    workflow = Workflow()
    step = workflow.add_stream(map_stream(bad_on_three))
    with pytest.raises(PipeError, match="on_error='resume'"):
        step.pipe(workflow.add_stream(Collector()), output="errors")


# -- map_stream and operator(): item-level skip ------------------------------------------------


@pytest.mark.parametrize("fn", [bad_on_three, async_bad_on_three], ids=["plain", "async"])
def test_a_resuming_map_stream_skips_the_item_that_raised_and_goes_on(fn: Any) -> None:
    workflow, sink, dead, _ = with_dead_letters(
        map_stream(fn, on_error="resume", name="m"), list(range(10))
    )
    run_checked(workflow)
    assert sink.items == [10, 20, 40, 50, 70, 80]
    assert [(f.stream, f.item, f.port) for f in dead.items] == [
        ("m", 0, "x"),
        ("m", 3, "x"),
        ("m", 6, "x"),
        ("m", 9, "x"),
    ]
    assert all(isinstance(f.error, ValueError) for f in dead.items)
    assert failures_of(workflow, "m") == 4


def test_a_resuming_operator_skips_the_item_that_raised_and_goes_on() -> None:
    workflow, sink, dead, _ = with_dead_letters(
        operator(ops.map(bad_on_three), on_error="resume"), list(range(10))
    )
    run_checked(workflow)
    assert sink.items == [10, 20, 40, 50, 70, 80]
    assert [f.item for f in dead.items] == [0, 3, 6, 9]
    assert {f.stream for f in dead.items} == {"operator"}
    assert failures_of(workflow, "operator") == 4


def test_a_resuming_operator_subscribes_its_chain_anew_and_loses_what_it_held() -> None:
    def check(x: int) -> int:
        if x == 4:
            raise ValueError("four")
        return x

    # Windows of 3: [0, 1, 2] goes out; 4 fails while [3] is held: that window is lost and
    # the new chain starts its windows at 5.
    workflow, sink, dead, _ = with_dead_letters(
        operator(reactivex.compose(ops.map(check), ops.buffer_with_count(3)), on_error="resume"),
        list(range(9)),
    )
    run_checked(workflow)
    assert sink.items == [[0, 1, 2], [5, 6, 7], [8]]
    assert [(f.item, f.port) for f in dead.items] == [(4, "x")]


def test_a_failure_in_a_fused_chain_names_the_stage_and_the_value_passed_into_it() -> None:
    workflow = Workflow()
    sink, dead_a, dead_b = Collector(), Collector("dead_a"), Collector("dead_b")
    a = workflow.add_stream(operator(ops.map(lambda x: x + 1), name="a", on_error="resume"))
    b = workflow.add_stream(operator(ops.map(bad_on_three), name="b", on_error="resume"))
    workflow.add_stream(source(range(8))).pipe(a).pipe(b).pipe(workflow.add_stream(sink))
    a.pipe(workflow.add_stream(dead_a), output="errors")
    b.pipe(workflow.add_stream(dead_b), output="errors")
    run_checked(workflow)
    assert sink.items == [10, 20, 40, 50, 70, 80]
    assert dead_a.items == []
    assert [(f.stream, f.item, f.port) for f in dead_b.items] == [("b", 3, "x"), ("b", 6, "x")]
    stats = workflow.stats()["streams"]
    assert (stats["a"]["failures"], stats["b"]["failures"]) == (0, 2)
    assert stats["b"]["inputs"]["x"]["taken"] == 8  # the link still counts what passed


def test_a_failure_in_the_first_stage_of_a_fused_chain_names_the_first_stage() -> None:
    workflow = Workflow()
    sink, dead = Collector(), Collector("dead")
    a = workflow.add_stream(operator(ops.map(bad_on_three), name="a", on_error="resume"))
    b = workflow.add_stream(operator(ops.map(lambda x: x + 1), name="b", on_error="resume"))
    workflow.add_stream(source(range(1, 5))).pipe(a).pipe(b).pipe(workflow.add_stream(sink))
    a.pipe(workflow.add_stream(dead), output="errors")
    run_checked(workflow)
    assert sink.items == [11, 21, 41]
    assert [(f.stream, f.item) for f in dead.items] == [("a", 3)]


def test_stages_with_different_on_error_are_not_fused_so_only_the_resuming_one_resumes() -> None:
    workflow = Workflow()
    a = workflow.add_stream(operator(ops.map(lambda x: x), name="a", on_error="resume"))
    b = workflow.add_stream(operator(ops.map(bad_on_three), name="b"))
    workflow.add_stream(source([1, 2, 3])).pipe(a).pipe(b).pipe(workflow.add_stream(Collector()))
    with pytest.raises(StreamError) as info:
        run_checked(workflow)
    assert info.value.stream == "b"
    assert workflow.stats()["streams"]["b"]["status"] == "failed"


# -- every other stream: called again ------------------------------------------------------


class Remembering(Stream):
    """An async subclass that fails on item 4 once; keeps a count across calls."""

    IN = ["x"]
    OUT = ["y"]

    def __init__(self) -> None:
        super().__init__(on_error="resume")
        self.calls = 0
        self.failed = False

    async def run(self, ins: Any, outs: Any) -> None:
        self.calls += 1
        async for item in ins.x:
            if item == 4 and not self.failed:
                self.failed = True
                raise RuntimeError("four")
            await outs.y.push((self.calls, item))


def test_a_resuming_subclass_is_called_again_with_its_object_kept() -> None:
    workflow, sink, dead, _ = with_dead_letters(Remembering(), list(range(7)))
    run_checked(workflow)
    assert sink.items == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 5), (2, 6)]
    assert [(f.stream, f.item, f.port) for f in dead.items] == [("Remembering", 4, "x")]
    assert isinstance(dead.items[0].error, RuntimeError)


async def async_fn_failing_on_four(ins: Any, outs: Any, state: dict[str, Any]) -> None:
    state["calls"] = state.get("calls", 0) + 1
    async for item in ins.x:
        if item == 4:
            raise RuntimeError("four")
        await outs.y.push(item)


def plain_fn_failing_on_four(ins: Any, outs: Any, state: dict[str, Any]) -> bool:
    state["calls"] = state.get("calls", 0) + 1
    for item in ins.x:
        if item == 4:
            raise RuntimeError("four")
        outs.y.push(item)
    return False


@pytest.mark.parametrize(
    "fn", [async_fn_failing_on_four, plain_fn_failing_on_four], ids=["async", "plain"]
)
def test_a_resuming_fn_stream_is_called_again_with_its_state_and_buffered_items_kept(
    fn: Any,
) -> None:
    state: dict[str, Any] = {}
    stream = Stream(["x"], ["y"], fn=fn, name="f", state=state, on_error="resume")
    workflow, sink, dead, _ = with_dead_letters(stream, list(range(8)), buffer_size=64)
    run_checked(workflow)
    assert sink.items == [0, 1, 2, 3, 5, 6, 7]  # nothing buffered was lost by the failure
    assert [(f.item, f.port) for f in dead.items] == [(4, "x")]
    assert stream.state is state and state["calls"] >= 2
    assert failures_of(workflow, "f") == 1


def test_a_resuming_plain_stream_delivers_what_it_pushed_before_raising() -> None:
    def fn(ins: Any, outs: Any, state: Any) -> bool:
        for item in ins.x:
            outs.y.push(item)
            if item == 2:
                raise RuntimeError("after the push")
        return False

    stream = Stream(["x"], ["y"], fn=fn, name="f", on_error="resume")
    workflow, sink, dead, _ = with_dead_letters(stream, [1, 2, 3])
    run_checked(workflow)
    assert sink.items == [1, 2, 3]
    assert [f.item for f in dead.items] == [2]


def test_a_resuming_rx_stream_rebuilds_its_observables_and_keeps_unfed_items() -> None:
    builds = []

    def fn(x: Any) -> Any:
        builds.append(1)
        return x.pipe(ops.map(bad_on_three), ops.map(lambda v: (len(builds), v)))

    stage = rx_stream(fn, ins=["x"], outs=["y"], on_error="resume", name="rx")
    workflow, sink, dead, _ = with_dead_letters(stage, [1, 2, 3, 4, 5], buffer_size=64)
    run_checked(workflow)
    assert len(builds) == 2  # fn called again once, after the failure
    assert sink.items == [(1, 10), (1, 20), (2, 40), (2, 50)]  # 4 and 5 stayed buffered
    assert [(f.stream, f.item, f.port) for f in dead.items] == [("rx", 3, "x")]


def test_a_resuming_rx_stream_names_the_input_of_the_last_item_it_took() -> None:
    def fn(a: Any, b: Any) -> Any:
        return reactivex.merge(a, b.pipe(ops.map(lambda v: 1 // v)))

    workflow = Workflow()
    sink, dead = Collector(), Collector("dead")
    step = workflow.add_stream(rx_stream(fn, ins=["a", "b"], outs=["y"], on_error="resume"))
    workflow.add_stream(source([7], name="sa")).pipe(step, input="a")
    workflow.add_stream(source([1, 0, 1], name="sb")).pipe(step, input="b")
    step.pipe(workflow.add_stream(sink))
    step.pipe(workflow.add_stream(dead), output="errors")
    run_checked(workflow)
    assert sorted(sink.items) == [1, 1, 7]
    assert [(type(f.error), f.item, f.port) for f in dead.items] == [(ZeroDivisionError, 0, "b")]


@pytest.mark.parametrize("kind", ["async", "plain", "source"])
def test_a_stream_that_raises_before_taking_any_item_since_it_was_called_fails_the_run(
    kind: str,
) -> None:
    async def async_fn(ins: Any, outs: Any, state: Any) -> None:
        raise RuntimeError("at once")

    def plain_fn(ins: Any, outs: Any, state: Any) -> bool:
        raise RuntimeError("at once")

    workflow = Workflow()
    if kind == "source":
        stream = Stream(outs=["y"], fn=async_fn, name="s", on_error="resume")
        workflow.add_stream(stream).pipe(workflow.add_stream(Collector()))
    else:
        fn = async_fn if kind == "async" else plain_fn
        stream = Stream(["x"], ["y"], fn=fn, name="s", on_error="resume")
        step = workflow.add_stream(stream)
        workflow.add_stream(source([1, 2])).pipe(step).pipe(workflow.add_stream(Collector()))
    with pytest.raises(StreamError, match="at once") as info:
        run_checked(workflow)
    assert info.value.stream == "s"
    assert failures_of(workflow, "s") == 0


def test_a_resuming_rx_stream_whose_chain_fails_before_any_item_fails_the_run() -> None:
    stage = rx_stream(
        lambda x: reactivex.throw(ValueError("broken chain")),
        ins=["x"],
        outs=["y"],
        name="rx",
        on_error="resume",
    )
    workflow, _, _ = _linear(stage, [1, 2])
    with pytest.raises(StreamError, match="broken chain") as info:
        run_checked(workflow)
    assert info.value.stream == "rx"


def test_a_resuming_operator_that_fails_on_every_item_counts_every_failure_and_ends() -> None:
    def always(x: int) -> int:
        raise ValueError(x)

    workflow, sink, dead, _ = with_dead_letters(
        operator(ops.map(always), on_error="resume", name="op"), list(range(100)), buffer_size=4
    )
    run_checked(workflow)
    assert sink.items == []
    assert [f.item for f in dead.items] == list(range(100))
    assert failures_of(workflow, "op") == 100


def test_a_resuming_stream_that_fails_on_every_item_counts_every_failure_and_ends() -> None:
    async def always(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            raise ValueError(item)

    items = list(range(200))
    stream = Stream(["x"], ["y"], fn=always, name="always", on_error="resume")
    workflow, sink, dead, _ = with_dead_letters(stream, items, buffer_size=4)
    run_checked(workflow)
    assert sink.items == []
    assert [f.item for f in dead.items] == items
    assert failures_of(workflow, "always") == 200


def test_a_map_stream_that_fails_on_every_item_counts_every_failure_and_ends() -> None:
    def always(x: int) -> int:
        raise ValueError(x)

    workflow, sink, dead, _ = with_dead_letters(
        map_stream(always, on_error="resume", concurrency=3), list(range(100)), buffer_size=2
    )
    run_checked(workflow)
    assert sink.items == []
    assert sorted(f.item for f in dead.items) == list(range(100))
    assert failures_of(workflow, "always") == 100


# -- the errors output ---------------------------------------------------------------------


def test_the_errors_output_is_not_listed_in_outs_but_is_a_real_output() -> None:
    stream = map_stream(bad_on_three, on_error="resume")
    assert stream.outs == ["y"]
    assert isinstance(stream.output("errors"), mimo_rx.Output)
    assert isinstance(stream.output("errors"), reactivex.subject.Subject)


def test_declaring_an_output_named_errors_on_a_resuming_stream_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="errors"):
        Stream(["x"], ["errors"], on_error="resume")
    Stream(["x"], ["errors"])  # fine when it does not resume


def test_pipes_automatic_rules_never_pick_the_errors_output() -> None:
    workflow = Workflow()
    resuming = workflow.add_stream(Stream(["x"], [], name="r", on_error="resume"))
    sink = workflow.add_stream(Collector(port="errors"))
    with pytest.raises(PipeError):
        resuming.pipe(sink)  # no output of its own, although an input is named "errors"
    m = workflow.add_stream(map_stream(bad_on_three, on_error="resume"))
    m.pipe(sink)
    assert [(p.output, p.input) for p in workflow.pipes] == [("y", "errors")]


def test_rx_subscribers_of_the_errors_output_receive_the_failures() -> None:
    stage = map_stream(bad_on_three, on_error="resume", name="m")
    observer = RecordingObserver()
    stage.output("errors").subscribe(observer)
    workflow, sink, _ = _linear(stage, [1, 2, 3, 4])
    run_checked(workflow)
    assert [f.item for f in observer.items] == [3]
    assert observer.completed == 1  # it closes when the stream ends
    assert sink.items == [10, 20, 40]


def test_unwatched_failures_are_logged_on_the_mimo_rx_logger_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workflow, sink, _ = _linear(map_stream(bad_on_three, on_error="resume", name="parse"), [2, 3])
    with caplog.at_level(logging.WARNING, logger="mimo_rx"):
        run_checked(workflow)
    records = [r for r in caplog.records if r.name == "mimo_rx"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "'parse'" in records[0].getMessage()
    assert "ValueError('bad item 3')" in records[0].getMessage()
    assert failures_of(workflow, "parse") == 1
    assert sink.items == [20]


def test_piped_failures_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    workflow, _, dead, _ = with_dead_letters(map_stream(bad_on_three, on_error="resume"), [3])
    with caplog.at_level(logging.WARNING, logger="mimo_rx"):
        run_checked(workflow)
    assert len(dead.items) == 1
    assert not [r for r in caplog.records if r.name == "mimo_rx"]


def test_every_stream_reports_failures_in_stats_zero_when_it_does_not_resume() -> None:
    workflow, _, _, _ = with_dead_letters(map_stream(bad_on_three, on_error="resume"), [1])
    assert all(s["failures"] == 0 for s in workflow.stats()["streams"].values())


def test_a_full_errors_sink_pauses_the_stream_and_loses_no_failure() -> None:
    gate = asyncio.Event()
    seen: list[Failure] = []

    class GatedSink(Stream):
        IN = ["x"]

        async def run(self, ins: Any, outs: Any) -> None:
            await gate.wait()
            async for failure in ins.x:
                seen.append(failure)

    async def main_sink(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            state.setdefault("items", []).append(item)

    workflow = Workflow(buffer_size=2)
    step = workflow.add_stream(map_stream(async_bad_on_three, on_error="resume", name="m"))
    main = Stream(["x"], fn=main_sink, name="main")
    workflow.add_stream(source(range(30))).pipe(step).pipe(workflow.add_stream(main))
    step.pipe(workflow.add_stream(GatedSink()), output="errors")

    async def run() -> None:
        task = asyncio.ensure_future(workflow.start())
        await yield_to_loop(200)  # everything that can move has moved
        stats = workflow.stats()["streams"]
        assert stats["GatedSink"]["inputs"]["x"]["buffered"] == 2  # never above its threshold
        assert stats["m"]["inputs"]["x"]["taken"] < 30  # paused by back-pressure
        gate.set()
        await task

    run_checked(run())
    assert [f.item for f in seen] == list(range(0, 30, 3))
    assert main.state["items"] == [x * 10 for x in range(30) if x % 3]


# -- retries, backoff, timeouts ------------------------------------------------------------


def test_a_failing_call_is_retried_up_to_retries_times_after_doubling_backoff() -> None:
    attempts: list[float] = []

    async def flaky(x: int) -> int:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 4:
            raise OSError(f"attempt {len(attempts)}")
        return x

    # Virtual time: the backoff is not what the real clock could check, and the gaps are exact.
    workflow, sink, _ = _linear(map_stream(flaky, retries=3, backoff=30), [7])
    testing.run(workflow.start)
    assert sink.items == [7]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps == [30, 60, 120]  # the backoff, then twice that, ...


def test_a_call_that_keeps_failing_counts_as_one_failure_with_the_last_attempts_error() -> None:
    calls = []

    def flaky(x: int) -> int:
        calls.append(x)
        raise OSError(f"attempt {len(calls)}")

    workflow, _, dead, _ = with_dead_letters(
        map_stream(flaky, retries=2, backoff=0, on_error="resume", name="m"), [5]
    )
    run_checked(workflow)
    assert calls == [5, 5, 5]
    assert len(dead.items) == 1
    assert str(dead.items[0].error) == "attempt 3"
    assert failures_of(workflow, "m") == 1


def test_with_on_error_fail_retries_end_in_a_stream_error_caused_by_the_last_exception() -> None:
    calls = []

    async def flaky(x: int) -> int:
        calls.append(x)
        raise OSError(f"attempt {len(calls)}")

    workflow, _, _ = _linear(map_stream(flaky, retries=1, backoff=0), [5])
    with pytest.raises(StreamError) as info:
        run_checked(workflow)
    assert isinstance(info.value.__cause__, OSError)
    assert str(info.value.__cause__) == "attempt 2"


def test_a_timed_out_async_call_is_cancelled_and_raises_timeout_error() -> None:
    cancelled = []

    async def slow(x: int) -> int:
        if x == 2:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(x)
                raise
        return x

    workflow, sink, dead, _ = with_dead_letters(
        map_stream(slow, timeout=0.05, on_error="resume"), [1, 2, 3]
    )
    run_checked(workflow)
    assert sink.items == [1, 3]
    assert cancelled == [2]
    assert [(type(f.error), f.item) for f in dead.items] == [(TimeoutError, 2)]


def test_a_timeout_is_retried_like_any_exception() -> None:
    attempts = []

    async def slow_once(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            await asyncio.Event().wait()
        return x

    workflow, sink, _ = _linear(map_stream(slow_once, timeout=0.05, retries=1, backoff=0), [9])
    run_checked(workflow)
    assert sink.items == [9]
    assert attempts == [9, 9]


def test_an_abandoned_executor_call_never_holds_up_the_run() -> None:
    release = threading.Event()

    def stuck(x: int) -> int:
        if x == 2:
            release.wait(120)  # far longer than the test may take
        return x

    workflow = Workflow()
    sink, dead = Collector(), Collector("dead")
    step = workflow.add_stream(map_stream(stuck, timeout=0.1, on_error="resume"))
    workflow.add_stream(source([1, 2, 3])).pipe(step).pipe(workflow.add_stream(sink))
    step.pipe(workflow.add_stream(dead), output="errors")
    started = time.monotonic()
    workflow.run()  # closes the loop's default executor: must not wait for the thread
    elapsed = time.monotonic() - started
    release.set()
    assert sink.items == [1, 3]
    assert [(type(f.error), f.item) for f in dead.items] == [(TimeoutError, 2)]
    assert elapsed < 60  # a hang guard, not a speed target


def test_an_abandoned_call_on_a_given_executor_raises_timeout_error() -> None:
    import concurrent.futures

    release = threading.Event()

    def stuck(x: int) -> int:
        if x == 2:
            release.wait(120)
        return x

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        workflow, sink, dead, _ = with_dead_letters(
            map_stream(stuck, timeout=0.1, executor=pool, on_error="resume"), [1, 2, 3]
        )
        try:
            run_checked(workflow)
        finally:
            release.set()
    assert sink.items == [1, 3]
    assert [type(f.error) for f in dead.items] == [TimeoutError]


@pytest.mark.parametrize("ordered", [True, False])
def test_retries_keep_order_when_ordered_and_never_exceed_concurrency(ordered: bool) -> None:
    in_flight = 0
    peak = 0
    tries: dict[int, int] = {}

    async def flaky(x: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            tries[x] = tries.get(x, 0) + 1
            await asyncio.sleep(0.001 * (x % 3))
            if x % 4 == 0 and tries[x] < 3:
                raise OSError(x)
            return x
        finally:
            in_flight -= 1

    stage = map_stream(flaky, concurrency=3, retries=2, backoff=0.001, ordered=ordered)
    workflow, sink, _ = _linear(stage, list(range(20)))
    run_checked(workflow)
    assert peak <= 3
    if ordered:
        assert sink.items == list(range(20))
    else:
        assert sorted(sink.items) == list(range(20))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retries": True}, "retries"),
        ({"backoff": -0.1}, "backoff"),
        ({"backoff": "1"}, "backoff"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "1"}, "timeout"),
    ],
)
def test_invalid_retry_options_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        map_stream(bad_on_three, **kwargs)


def test_cancelling_during_a_backoff_wait_returns_promptly_and_leaves_no_task() -> None:
    called = asyncio.Event()

    async def always(x: int) -> int:
        called.set()
        raise OSError("down")

    workflow, _, _ = _linear(map_stream(always, retries=5, backoff=60), [1])

    async def main() -> None:
        task = asyncio.ensure_future(workflow.start())
        await called.wait()
        await yield_to_loop(3)  # now in its 60 s backoff wait
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    run_checked(main())  # asserts that no task is left
    assert time.monotonic() - started < 30  # a hang guard: the backoff is 60 s
    assert workflow.stats()["streams"]["always"]["status"] == "cancelled"


def test_cancelling_during_a_timed_out_executor_call_returns_promptly_and_leaves_no_task() -> None:
    release = threading.Event()
    started: list[Callable[[], None]] = []

    def stuck(x: int) -> int:
        started[0]()
        release.wait(120)
        return x

    workflow, _, _ = _linear(map_stream(stuck, timeout=0.05, retries=3, backoff=60), [1])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        in_call = asyncio.Event()
        started.append(lambda: loop.call_soon_threadsafe(in_call.set))
        task = asyncio.ensure_future(workflow.start())
        await in_call.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    began = time.monotonic()
    try:
        run_checked(main())
    finally:
        release.set()
    assert time.monotonic() - began < 30


# -- nothing is lost (a property) ------------------------------------------------------------


# Half the profile's examples (100 for "ci", 1000 for "deep"): a few seconds for "ci".
@pytest.mark.timeout(max(60, examples(2) * 0.5))
@settings(max_examples=examples(2))
@given(
    n=st.integers(0, 40),
    bad=st.sets(st.integers(0, 39)),
    concurrency=st.integers(1, 4),
    ordered=st.booleans(),
    kind=st.sampled_from(["async", "plain", "operator"]),
    buffer_size=st.integers(1, 8),
)
def test_every_item_taken_produces_its_result_or_exactly_one_failure_with_its_item(
    n: int, bad: set[int], concurrency: int, ordered: bool, kind: str, buffer_size: int
) -> None:
    def fn(x: int) -> int:
        if x in bad:
            raise ValueError(x)
        return -x

    async def afn(x: int) -> int:
        await asyncio.sleep(0)
        return fn(x)

    stage: Stream
    if kind == "operator":
        stage = operator(ops.map(fn), on_error="resume", name="m")
    else:
        f = afn if kind == "async" else fn
        stage = map_stream(f, on_error="resume", concurrency=concurrency, ordered=ordered, name="m")
    items = list(range(n))
    workflow, sink, dead, _ = with_dead_letters(stage, items, buffer_size=buffer_size)
    run_checked(workflow)
    taken = workflow.stats()["streams"]["m"]["inputs"]["x"]["taken"]
    assert taken == n
    assert len(sink.items) + len(dead.items) == taken
    assert sorted(f.item for f in dead.items) == [x for x in items if x in bad]
    assert all(isinstance(f.error, ValueError) and f.error.args[0] == f.item for f in dead.items)
    good = [-x for x in items if x not in bad]
    if ordered or kind == "operator":
        assert sink.items == good
    else:
        assert sorted(sink.items) == sorted(good)
    assert workflow.stats()["streams"]["m"]["failures"] == len(dead.items)


def test_failure_has_a_readable_repr_and_compares_by_value() -> None:
    error = ValueError("bad")
    failure = Failure("parse", error, {"id": 1}, "x")
    assert repr(failure) == (
        "Failure(stream='parse', error=ValueError('bad'), item={'id': 1}, port='x')"
    )
    assert failure == Failure("parse", error, {"id": 1}, "x")
    assert "Failure" in mimo_rx.__all__ and mimo_rx.Failure is Failure


@pytest.mark.parametrize("fused", [False, True], ids=["map_stream", "fused operator"])
def test_each_failure_is_a_failure_event_on_workflow_events(fused: bool) -> None:
    workflow = Workflow()
    events: list[dict[str, Any]] = []
    workflow.events.subscribe(events.append)
    head = workflow.add_source([1, 2, 3])
    if fused:
        a = workflow.add_stream(operator(ops.map(lambda x: x), name="a", on_error="resume"))
        head = head.pipe(a)
        stage = operator(ops.map(lambda x: 1 // (x - 2)), name="b", on_error="resume")
    else:
        stage = map_stream(lambda x: 1 // (x - 2), name="b", on_error="resume")
    head.pipe(workflow.add_stream(stage)).pipe(workflow.add_stream(Collector()))
    run_checked(workflow)
    failures = [e for e in events if e["event"] == "failure"]
    assert failures == [
        {
            "event": "failure",
            "stream": "b",
            "error": "ZeroDivisionError('integer division or modulo by zero')",
        }
    ]


def test_a_failure_swallowed_by_an_operator_that_catches_downstream_errors_still_resumes() -> None:
    # reactivex's do_after_next wraps the downstream on_next in try/except: the failure of
    # the stage after it must still be seen, and the run must not hang.
    from reactivex.operators._do import do_after_next

    workflow = Workflow()
    sink, dead = Collector(), Collector("dead")
    a = workflow.add_stream(
        operator(lambda src: do_after_next(src, lambda x: None), name="a", on_error="resume")
    )
    b = workflow.add_stream(operator(ops.map(bad_on_three), name="b", on_error="resume"))
    workflow.add_stream(source([1, 2, 3, 4])).pipe(a).pipe(b).pipe(workflow.add_stream(sink))
    b.pipe(workflow.add_stream(dead), output="errors")
    run_checked(workflow)
    assert [f.stream for f in dead.items] == ["b"]
    assert sink.items[:2] == [10, 20]


def test_a_stream_paused_on_a_full_errors_input_that_never_drains_is_a_deadlock() -> None:
    class DrainsYFirst(Stream):
        IN = ["good", "bad"]

        async def run(self, ins: Any, outs: Any) -> None:
            async for _ in ins.good:
                pass
            async for _ in ins.bad:
                pass

    workflow = Workflow(buffer_size=1)
    step = workflow.add_stream(map_stream(async_bad_on_three, on_error="resume", name="m"))
    sink = workflow.add_stream(DrainsYFirst())
    workflow.add_stream(source(range(30))).pipe(step).pipe(sink, input="good")
    step.pipe(sink, output="errors", input="bad")
    with pytest.raises(mimo_rx.DeadlockError, match="'errors'"):
        run_checked(workflow)


def test_a_resuming_time_operator_that_fails_on_a_timer_resumes() -> None:
    def check(window: list[int]) -> list[int]:
        if 2 in window:
            raise ValueError("window with 2")
        return window

    # buffer_with_time emits on the loop's timer, outside any item's feeding.
    stage = operator(
        reactivex.compose(ops.buffer_with_time(0.05), ops.map(check)), on_error="resume", name="t"
    )
    workflow, _, dead, _ = with_dead_letters(stage, [1, 2, 3])
    run_checked(workflow)
    assert [type(f.error) for f in dead.items] == [ValueError]
    assert dead.items[0].stream == "t"
    assert failures_of(workflow, "t") == 1


def test_stop_while_an_item_is_being_retried_lets_the_retries_finish_and_returns_normally() -> None:
    attempts: dict[int, int] = {}
    retrying = asyncio.Event()

    async def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if x == 0 and attempts[x] < 3:
            retrying.set()
            raise OSError("not yet")
        return x

    workflow = Workflow()
    inlet = workflow.add_inlet()
    step = workflow.add_stream(map_stream(flaky, retries=3, backoff=0.05, on_error="resume"))
    sink = workflow.add_stream(Collector())
    inlet.pipe(step).pipe(sink)

    async def main() -> None:
        run = asyncio.ensure_future(workflow.start())
        await inlet.send(0)
        await inlet.send(1)
        await retrying.wait()
        workflow.stop()  # the item in its backoff wait is inside the graph: it flows on
        await asyncio.wait_for(run, 10)

    run_checked(main())
    assert sink.stream.items == [0, 1]
    assert attempts[0] == 3
    assert workflow.stats()["streams"]["flaky"]["failures"] == 0


def test_cancel_while_an_item_is_being_retried_returns_promptly_and_leaves_no_task() -> None:
    retrying = asyncio.Event()

    async def always(x: int) -> int:
        retrying.set()
        raise OSError("down")

    workflow, _, _ = _linear(map_stream(always, retries=5, backoff=60, on_error="resume"), [1])

    async def main() -> None:
        run = asyncio.ensure_future(workflow.start())
        await retrying.wait()
        await yield_to_loop(3)  # in its 60 s backoff wait
        workflow.cancel()
        with pytest.raises(mimo_rx.WorkflowCancelled):
            await asyncio.wait_for(run, 10)

    run_checked(main())  # asserts that no task is left
    assert workflow.stats()["streams"]["always"]["status"] == "cancelled"


# -- issue 23: resuming covers the stream's code, not the graph's verdicts --------------------


def test_a_resuming_async_stream_fails_the_run_when_a_pipe_with_policy_error_overflows() -> None:
    """The overflow is raised inside the body's ``push`` but by the pipe's policy: it fails
    the run (contract §4) as it does for map_stream, operator() and plain-def streams."""

    async def forward(ins: Any, outs: Any, state: Any) -> None:
        async for x in ins.x:
            await outs.y.push(x)

    async def slow(ins: Any, outs: Any, state: Any) -> None:
        await asyncio.sleep(0.3)
        async for _ in ins.x:
            pass

    workflow = Workflow()
    stage = workflow.add_stream(Stream(["x"], ["y"], fn=forward, on_error="resume", name="stage"))
    workflow.add_source(range(50)).pipe(stage)
    stage.pipe(
        workflow.add_stream(Stream(["x"], fn=slow, name="slow")), policy="error", buffer_size=2
    )
    with pytest.raises(mimo_rx.SourceOverflowError) as info:
        run_checked(workflow)
    assert info.value.stream == "stage" and info.value.input_stream == "slow"
    assert isinstance(info.value, mimo_rx.BufferOverflowError)
    assert workflow.stats()["streams"]["stage"]["failures"] == 0
