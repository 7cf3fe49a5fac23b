"""Mistakes that used to lose items silently now fail the run, naming stream and port.

* A forgotten ``await`` on push, push_many or an inlet's send: the call only makes a coroutine,
  nothing is delivered, and the run used to end normally with items missing. mimo_rx hears of
  the dropped coroutine through CPython's ``warnings._warn_unawaited_coroutine`` hook (private:
  the first test pins it down).
* ``operator(ops.map(async_fn))`` used to send coroutine objects downstream.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import warnings
from typing import Any

import pytest
import reactivex.operators as ops
from harness import Collector, run_checked, source

import mimo_rx
from mimo_rx import (
    ConfigError,
    MissingAwaitError,
    Stream,
    StreamError,
    Workflow,
    operator,
    rx_stream,
)


def test_cpython_reports_a_dropped_coroutine_to_warnings_hook_with_its_frame() -> None:
    # mimo_rx relies on this private CPython interface; if a release changes it, this fails.
    class Port:
        async def push(self, item: Any) -> bool:
            return True

    seen: list[tuple[Any, Any, Any]] = []
    previous = warnings._warn_unawaited_coroutine  # type: ignore[attr-defined]
    warnings._warn_unawaited_coroutine = lambda coro: seen.append(  # type: ignore[attr-defined]
        (coro.cr_code, coro.cr_frame.f_locals.get("self"), coro.cr_frame.f_locals.get("item"))
    )
    try:
        port = Port()
        port.push(7)  # dropped at once by reference counting
    finally:
        warnings._warn_unawaited_coroutine = previous  # type: ignore[attr-defined]
    assert seen == [(Port.push.__code__, port, 7)]


def _forgetful(body: str) -> Stream:
    """A stream ``forgetful`` (input x, outputs y) whose loop runs ``body`` per item."""

    async def forgetful(ins: Any, outs: Any, state: Any) -> Any:
        async for item in ins.x:
            if body == "push":
                outs.y.push(item)  # type: ignore[unused-coroutine]
            elif body == "push_many":
                outs.y.push_many([item, item])  # type: ignore[unused-coroutine]
            elif body == "mimo1" and not outs.y.push(item):  # mimo 1.0, half ported
                return True
        return None

    return Stream(["x"], ["y"], fn=forgetful)


def _run_forgetful(body: str, policy: str = "block") -> tuple[Workflow, BaseException]:
    workflow = Workflow()
    src = workflow.add_stream(source(range(5)))
    step = workflow.add_stream(_forgetful(body))
    sink = Collector()
    step.pipe(workflow.add_stream(sink), policy=policy)
    src.pipe(step)
    with pytest.raises(StreamError) as info:
        run_checked(workflow)
    assert sink.items == []
    return workflow, info.value


@pytest.mark.parametrize(
    ("body", "method"), [("push", "push"), ("push_many", "push_many"), ("mimo1", "push")]
)
@pytest.mark.parametrize("warnings_are", ["errors", "default"])
def test_a_push_without_await_fails_the_run_naming_stream_and_port(
    body: str, method: str, warnings_are: str
) -> None:
    # pytest runs with filterwarnings=error; a user's program usually does not: both fail the
    # same way, and the RuntimeWarning does not turn into anything else first.
    with warnings.catch_warnings():
        if warnings_are == "default":
            warnings.simplefilter("default")
        workflow, error = _run_forgetful(body)
    assert error.stream == "forgetful"
    cause = error.__cause__
    assert isinstance(cause, MissingAwaitError)
    assert (cause.stream, cause.port) == ("forgetful", "y")
    message = str(error)
    assert "'forgetful'" in message and "'y'" in message and "add `await`" in message
    assert f"`await outs.y.{method}(" in message
    assert workflow.steps[1].status == "failed"


def test_a_push_without_await_on_a_lossy_pipe_fails_the_run() -> None:
    _, error = _run_forgetful("push", policy="drop_oldest")
    assert isinstance(error.__cause__, MissingAwaitError)


def test_a_push_without_await_from_another_thread_fails_the_run() -> None:
    async def threaded(ins: Any, outs: Any, state: Any) -> None:
        await asyncio.to_thread(lambda: outs.y.push(1))
        await asyncio.sleep(5)  # the failure cancels this

    workflow = Workflow()
    workflow.add_stream(Stream([], ["y"], fn=threaded)).pipe(workflow.add_stream(Collector()))
    with pytest.raises(StreamError, match="add `await`") as info:
        run_checked(workflow)
    assert info.value.stream == "threaded"


def test_an_inlet_send_without_await_fails_the_run() -> None:
    workflow = Workflow()
    orders = workflow.add_inlet("orders")
    results = workflow.add_outlet("results")
    orders.pipe(results)

    async def main() -> None:
        async with workflow.running():
            orders.send("lost")  # type: ignore[unused-coroutine]
            orders.close()

    with pytest.raises(StreamError, match="add `await`") as info:
        run_checked(main(), workflows=[workflow])
    assert info.value.stream == "orders"
    assert "await inlet.send(item)" in str(info.value)


def test_other_unawaited_coroutines_still_warn_during_a_run_and_the_hook_is_restored() -> None:
    before = warnings._warn_unawaited_coroutine  # type: ignore[attr-defined]

    async def unrelated() -> None:
        pass

    async def careless(ins: Any, outs: Any, state: Any) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            unrelated()  # type: ignore[unused-coroutine]
            gc.collect()
        assert [str(w.message) for w in caught] == [
            f"coroutine '{unrelated.__qualname__}' was never awaited"
        ]
        await outs.y.push(1)

    workflow = Workflow()
    sink = Collector()
    workflow.add_stream(Stream([], ["y"], fn=careless)).pipe(workflow.add_stream(sink))
    run_checked(workflow)
    assert sink.items == [1]
    assert warnings._warn_unawaited_coroutine is before  # type: ignore[attr-defined]


def test_a_dropped_push_coroutine_outside_any_run_is_an_ordinary_warning() -> None:
    output = Stream(outs=["y"]).output("y")
    with pytest.warns(RuntimeWarning, match="was never awaited"):
        output.push(1)  # type: ignore[unused-coroutine]
        gc.collect()


def test_missing_await_error_is_public() -> None:
    assert mimo_rx.MissingAwaitError is MissingAwaitError
    assert issubclass(MissingAwaitError, mimo_rx.MimoError)


# -- an async function inside an Rx operator -------------------------------------------------


async def _price(item: int) -> int:
    return item * 10


def _operator_workflow(*stages: Stream) -> tuple[Workflow, Collector]:
    workflow = Workflow()
    steps = [workflow.add_stream(source(range(5))), *map(workflow.add_stream, stages)]
    sink = Collector()
    steps.append(workflow.add_stream(sink))
    for a, b in itertools.pairwise(steps):
        a.pipe(b)
    return workflow, sink


@pytest.mark.parametrize("on_error", ["fail", "resume"])
def test_an_operator_stage_emitting_coroutines_fails_saying_to_use_map_stream(
    on_error: str,
) -> None:
    workflow, sink = _operator_workflow(operator(ops.map(_price), name="price", on_error=on_error))
    with pytest.raises(StreamError) as info:
        run_checked(workflow)
    assert info.value.stream == "price"
    assert isinstance(info.value.__cause__, ConfigError)
    message = str(info.value)
    assert "'price'" in message and "'y'" in message and "map_stream(async_fn)" in message
    assert sink.items == []


def test_a_fused_chain_names_the_stage_that_emitted_coroutines() -> None:
    workflow, _ = _operator_workflow(
        operator(ops.filter(lambda x: x > 0), name="positive"),
        operator(ops.map(_price), name="price"),
    )
    with pytest.raises(StreamError, match=r"map_stream\(async_fn\)") as info:
        run_checked(workflow)
    assert info.value.stream == "price"


def test_an_rx_stream_emitting_coroutines_from_a_timer_fails_too() -> None:
    # emitted on the loop but outside the stream's own feeding (a timer): the other path
    stage = rx_stream(
        lambda x: x.pipe(ops.delay(0.001), ops.map(_price)), ins=["x"], outs=["y"], name="late"
    )
    workflow, _ = _operator_workflow(stage)
    with pytest.raises(StreamError, match=r"map_stream\(async_fn\)") as info:
        run_checked(workflow)
    assert info.value.stream == "late"


def test_operator_stages_emitting_plain_values_are_untouched() -> None:
    workflow, sink = _operator_workflow(operator(ops.map(lambda x: x * 10)))
    run_checked(workflow)
    assert sink.items == [0, 10, 20, 30, 40]
