"""Contract section 6: one error tree, messages that name stream and port, nothing swallowed."""

from __future__ import annotations

import asyncio
import traceback

import pytest
from harness import Collector, RecordingObserver, linear, run_checked, source, yield_to_loop
from reactivex import operators as ops

import mimo_rx
from mimo_rx import (
    BufferOverflowError,
    ClosedError,
    DeadlockError,
    EndOfStream,
    MimoError,
    PipeError,
    Stream,
    StreamError,
    Workflow,
    WorkflowCancelled,
    WorkflowError,
)


def full_report(exc: BaseException) -> str:
    """What a user sees when the exception is printed: message, cause, context and notes."""
    return "".join(traceback.format_exception(exc))


# -- the tree ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        EndOfStream,
        ClosedError,
        PipeError,
        WorkflowError,
        StreamError,
        DeadlockError,
        WorkflowCancelled,
        BufferOverflowError,
    ],
)
def test_every_library_error_and_signal_derives_from_mimo_error(error):
    assert issubclass(error, MimoError)
    assert issubclass(MimoError, Exception)
    assert getattr(mimo_rx, error.__name__) is error


def test_pipe_error_is_also_a_value_error():
    assert issubclass(PipeError, ValueError)


def test_deadlock_error_is_not_a_stream_error():
    assert not issubclass(DeadlockError, StreamError)


def test_build_time_errors_are_mimo_errors_too():
    with pytest.raises(MimoError):
        Stream(ins=["not valid"])
    with pytest.raises(MimoError):
        Workflow(buffer_size=0)
    wf = Workflow()
    s = wf.add_stream(Stream(outs=["y"]))
    with pytest.raises(MimoError):
        wf.add_stream(s.stream)


# -- stream errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async fn", "plain fn", "async run", "plain run"])
def test_an_exception_in_user_code_reaches_the_caller_as_stream_error_with_cause(kind):
    original = ArithmeticError("the original")

    async def afn(ins, outs, state):
        raise original

    def pfn(ins, outs, state):
        raise original

    class ARun(Stream):
        async def run(self, ins, outs):
            raise original

    class PRun(Stream):
        def run(self, ins, outs):
            raise original

    stream = {
        "async fn": lambda: Stream(outs=["y"], fn=afn, name="culprit"),
        "plain fn": lambda: Stream(outs=["y"], fn=pfn, name="culprit"),
        "async run": lambda: ARun(outs=["y"], name="culprit"),
        "plain run": lambda: PRun(outs=["y"], name="culprit"),
    }[kind]()
    wf, _ = linear(stream, Collector())
    with pytest.raises(StreamError, match=r"'culprit'.*ArithmeticError.*the original") as info:
        run_checked(wf)
    assert info.value.__cause__ is original


def test_stream_error_from_run_blocking_carries_the_cause_too():
    async def boom(ins, outs, state):
        raise OSError("disk on fire")

    wf = Workflow()
    wf.add_stream(Stream(fn=boom))
    with pytest.raises(StreamError, match="'boom'") as info:
        wf.run()
    assert isinstance(info.value.__cause__, OSError)


def test_an_uncaught_end_of_stream_in_user_code_is_not_swallowed():
    async def overread(ins, outs, state):
        while True:
            await ins.x.pop()

    wf, _ = linear(source([1]), Stream(["x"], fn=overread))
    with pytest.raises(StreamError, match="'overread'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, EndOfStream)


def test_an_uncaught_closed_error_in_user_code_fails_the_workflow():
    async def closes_then_pushes(ins, outs, state):
        outs.y.close()
        await outs.y.push(1)

    wf, _ = linear(Stream(outs=["y"], fn=closes_then_pushes), Collector())
    with pytest.raises(StreamError, match="'closes_then_pushes'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, ClosedError)
    assert "'y'" in str(info.value.__cause__)


def test_an_error_in_an_rx_operator_on_an_output_fails_the_pushing_stream():
    producer = source([1, 2], name="pusher")
    producer.output("out").pipe(ops.map(lambda x: x / 0)).subscribe(lambda item: None)
    wf, _ = linear(producer, Collector())
    with pytest.raises(StreamError, match="'pusher'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_an_error_in_a_subscriber_on_completed_during_an_explicit_close_fails_the_stream():
    def bad_completed():
        raise RuntimeError("on_completed failed")

    async def closes(ins, outs, state):
        await outs.y.push(1)
        outs.y.close()

    producer = Stream(outs=["y"], fn=closes)
    producer.output("y").subscribe(
        on_next=lambda item: None, on_error=lambda e: None, on_completed=bad_completed
    )
    wf, _ = linear(producer, Collector())
    with pytest.raises(StreamError, match="'closes'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_an_error_in_a_subscriber_on_completed_at_the_implicit_close_is_not_swallowed():
    def bad_completed():
        raise RuntimeError("on_completed failed")

    producer = source([1], name="pusher")
    producer.output("out").subscribe(
        on_next=lambda item: None, on_error=lambda e: None, on_completed=bad_completed
    )
    wf, _ = linear(producer, Collector())
    with pytest.raises(StreamError, match="'pusher'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_stop_iteration_from_a_plain_def_stream_is_the_cause_of_the_stream_error():
    def exhausted(ins, outs, state):
        return next(iter([]))

    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=exhausted))
    with pytest.raises(StreamError, match="'exhausted'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, StopIteration)


def test_several_failures_are_all_reported():
    async def first(ins, outs, state):
        await yield_to_loop()
        raise KeyError("first failure")

    async def cleanup_fails(ins, outs, state):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failure") from None

    wf = Workflow()
    wf.add_stream(Stream(fn=first))
    wf.add_stream(Stream(fn=cleanup_fails))
    with pytest.raises(StreamError, match="'first'") as info:
        run_checked(wf)
    report = full_report(info.value)
    assert "first failure" in report
    assert "cleanup failure" in report and "'cleanup_fails'" in report


def test_an_error_raised_while_a_deadlock_shuts_the_graph_down_is_not_swallowed():
    async def produce(ins, outs, state):
        for i in range(10):
            await outs.out.push(i)

    async def drain_a_first(ins, outs, state):
        try:
            async for _ in ins.a:
                pass
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failure") from None

    wf = Workflow(buffer_size=2)
    p = wf.add_stream(Stream(outs=["out"], fn=produce))
    j = wf.add_stream(Stream(["a", "b"], fn=drain_a_first))
    p.pipe(j, input="a")
    p.pipe(j, input="b")
    with pytest.raises(DeadlockError) as info:
        run_checked(wf)
    assert "cleanup failure" in full_report(info.value)


def test_subscribers_see_the_same_stream_error_the_caller_gets():
    async def boom(ins, outs, state):
        raise ValueError("x")

    s = Stream(outs=["y"], fn=boom)
    obs = RecordingObserver()
    s.output("y").subscribe(obs)
    wf = Workflow()
    wf.add_stream(s)
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert obs.errors == [info.value]


# -- messages name stream and port and say what to do ----------------------------------------


def test_closed_error_message_names_stream_and_port_and_what_to_do():
    seen: list[ClosedError] = []

    async def pusher(ins, outs, state):
        outs.result.close()
        try:
            await outs.result.push(0)
        except ClosedError as exc:
            seen.append(exc)

    wf = Workflow()
    wf.add_stream(Stream(outs=["result"], fn=pusher, name="writer"))
    run_checked(wf)
    message = str(seen[0])
    assert "'writer'" in message and "'result'" in message
    assert "close" in message


def test_end_of_stream_message_names_stream_and_port():
    seen: list[EndOfStream] = []

    async def reader(ins, outs, state):
        async for _ in ins.feed:
            pass
        try:
            await ins.feed.pop()
        except EndOfStream as exc:
            seen.append(exc)

    wf, _ = linear(source([1]), Stream(["feed"], fn=reader, name="eater"))
    run_checked(wf)
    assert "'eater'" in str(seen[0]) and "'feed'" in str(seen[0])


def test_validation_error_message_says_to_pipe_an_output_into_the_input():
    wf = Workflow()
    wf.add_stream(Stream(["orphan"], name="lonely_stream"))
    with pytest.raises(WorkflowError, match=r"(?s)'orphan'.*'lonely_stream'.*pipe"):
        run_checked(wf)


def test_ambiguous_pipe_message_says_how_to_name_the_ports():
    wf = Workflow()
    a = wf.add_stream(Stream(outs=["o1", "o2"], name="a"))
    b = wf.add_stream(Stream(["i1", "i2"], name="b"))
    with pytest.raises(PipeError, match=r"output=.*input="):
        a.pipe(b)


def test_port_name_error_message_names_the_stream():
    with pytest.raises(ValueError, match=r"'bad name'.*'mystream'|'mystream'.*'bad name'"):
        Stream(ins=["bad name"], name="mystream")
