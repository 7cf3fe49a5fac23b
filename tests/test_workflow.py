"""Contract section 3: building a workflow (steps, pipes), validating and running it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from harness import (
    Collector,
    LeakError,
    RecordingObserver,
    assert_stats_identity,
    input_stats,
    linear,
    run_checked,
    source,
    yield_to_loop,
)

import mimo_rx
from mimo_rx import PipeError, Stream, StreamError, Workflow, WorkflowCancelled, WorkflowError


async def _forever() -> None:
    await asyncio.Event().wait()


async def _forever_fn(ins: Any, outs: Any, state: Any) -> None:
    await _forever()


# -- add_stream and step names ----------------------------------------------------------------


def test_add_stream_returns_a_step_with_the_stream_and_its_name():
    wf = Workflow()
    s = Stream(outs=["y"], name="producer")
    step = wf.add_stream(s)
    assert step.stream is s
    assert step.name == "producer"


def test_repeated_stream_names_get_numbered_step_names():
    async def work(ins, outs, state):
        pass

    wf = Workflow()
    steps = [wf.add_stream(Stream(fn=work)) for _ in range(3)]
    other = wf.add_stream(Stream(name="other"))
    assert [s.name for s in steps] == ["work", "work-2", "work-3"]
    assert other.name == "other"
    assert len({s.name for s in wf.steps}) == 4


def test_adding_the_same_stream_object_twice_is_a_value_error_naming_it():
    wf = Workflow()
    s = Stream(outs=["y"], name="once")
    wf.add_stream(s)
    with pytest.raises(ValueError, match="'once'"):
        wf.add_stream(s)


def test_print_workflow_describes_streams_and_pipes():
    wf = Workflow()
    a = wf.add_stream(Stream(outs=["alpha"], name="first"))
    b = wf.add_stream(Stream(["beta"], ["gamma"], name="second"))
    a.pipe(b)
    text = str(wf)
    for word in ("first", "second", "alpha", "beta", "gamma"):
        assert word in text


# -- pipe resolution --------------------------------------------------------------------------


def tagger(outs: list[str], name: str) -> Stream:
    """Pushes, on each of its outputs, the text '<name>.<output>'."""

    async def tag(ins, outs_, state):
        for port in outs:
            await getattr(outs_, port).push(f"{name}.{port}")

    return Stream(outs=outs, fn=tag, name=name)


class Recorder(Stream):
    """Reads every input concurrently and records (input, item)."""

    def __init__(self, ins: list[str], name: str = "rec") -> None:
        super().__init__(ins=ins, name=name)
        self.seen: set[tuple[str, Any]] = set()

    async def run(self, ins, outs):
        async def read(port):
            async for item in getattr(ins, port):
                self.seen.add((item, port))

        async with asyncio.TaskGroup() as tg:
            for port in self.ins:
                tg.create_task(read(port))


def connections(wf: Workflow, rec_step: Any) -> set[tuple[str, str]]:
    """Run ``wf`` and report which '<stream>.<output>' reached which input of ``rec_step``.

    Every input of the recorder is also fed by an empty source, so that tests need not
    connect all of them.
    """
    for name in rec_step.stream.ins:
        wf.add_stream(source([], name="filler")).pipe(rec_step, output="out", input=name)
    run_checked(wf)
    return rec_step.stream.seen


def test_pipe_returns_the_step_piped_to_so_calls_chain():
    wf = Workflow()
    a, b, c = (wf.add_stream(s) for s in (source([1]), Stream(["x"], ["y"]), Collector()))
    assert a.pipe(b) is b
    assert b.pipe(c) is c
    run_checked(wf)
    assert c.stream.items == [1]


def test_pipe_connects_explicitly_named_ports():
    wf = Workflow()
    a = wf.add_stream(tagger(["o1", "o2"], "a"))
    rec = wf.add_stream(Recorder(["i1", "i2"]))
    a.pipe(rec, output="o2", input="i1")
    assert connections(wf, rec) == {("a.o2", "i1")}


def test_explicit_names_win_over_matching_names():
    wf = Workflow()
    a = wf.add_stream(tagger(["x", "y"], "a"))
    rec = wf.add_stream(Recorder(["x", "y"]))
    a.pipe(rec, output="x", input="y")
    assert connections(wf, rec) == {("a.x", "y")}


def test_pipe_connects_every_output_whose_name_equals_an_input():
    wf = Workflow()
    a = wf.add_stream(tagger(["x", "y", "z"], "a"))
    rec = wf.add_stream(Recorder(["y", "x", "w"]))
    a.pipe(rec)
    assert connections(wf, rec) == {("a.x", "x"), ("a.y", "y")}


def test_pipe_by_name_merges_into_an_input_that_already_has_an_upstream():
    wf = Workflow()
    c = wf.add_stream(tagger(["o"], "c"))
    a = wf.add_stream(tagger(["x"], "a"))
    rec = wf.add_stream(Recorder(["x", "w"]))
    c.pipe(rec, output="o", input="x")
    a.pipe(rec)  # 'w' is the only unconnected input, but the name rule comes first
    assert connections(wf, rec) == {("c.o", "x"), ("a.x", "x")}


def test_pipe_connects_the_only_output_to_the_only_unconnected_input():
    wf = Workflow()
    c = wf.add_stream(tagger(["o"], "c"))
    a = wf.add_stream(tagger(["out"], "a"))
    rec = wf.add_stream(Recorder(["p", "q"]))
    c.pipe(rec, input="p")
    a.pipe(rec)
    assert connections(wf, rec) == {("c.o", "p"), ("a.out", "q")}


def test_pipe_merges_the_only_output_into_the_only_input_when_it_is_already_connected():
    wf = Workflow()
    c = wf.add_stream(tagger(["o"], "c"))
    a = wf.add_stream(tagger(["out"], "a"))
    rec = wf.add_stream(Recorder(["p"]))
    c.pipe(rec)
    a.pipe(rec)
    assert connections(wf, rec) == {("c.o", "p"), ("a.out", "p")}


def test_pipe_with_only_the_output_named_resolves_the_input_by_the_same_rules():
    wf = Workflow()
    a = wf.add_stream(tagger(["o1", "q"], "a"))
    rec = wf.add_stream(Recorder(["p", "q"]))
    a.pipe(rec, output="q")  # same name
    a.pipe(rec, output="o1")  # the only unconnected input: p
    assert connections(wf, rec) == {("a.q", "q"), ("a.o1", "p")}


def test_pipe_with_only_the_input_named_resolves_the_output_by_the_same_rules():
    wf = Workflow()
    a = wf.add_stream(tagger(["p", "r"], "a"))
    b = wf.add_stream(tagger(["only"], "b"))
    rec = wf.add_stream(Recorder(["p", "q"]))
    a.pipe(rec, input="p")  # same name
    b.pipe(rec, input="q")  # the only output
    b2 = wf.add_stream(tagger(["solo"], "b2"))
    b2.pipe(rec, input="p")  # the only output, merged into a connected input
    assert connections(wf, rec) == {("a.p", "p"), ("b.only", "q"), ("b2.solo", "p")}


@pytest.mark.parametrize(
    ("outs", "ins", "kwargs", "names"),
    [
        (["o1", "o2"], ["i1"], {}, ["o1", "o2", "i1"]),
        (["o"], ["p", "q"], {}, ["o", "p", "q"]),
        (["o1", "o2"], ["p", "q"], {}, ["o1", "o2", "p", "q"]),
        (["o1", "o2"], ["p", "q"], {"input": "p"}, ["o1", "o2"]),
        (["o"], ["p", "q"], {"output": "o"}, ["p", "q"]),
    ],
)
def test_an_ambiguous_pipe_is_a_pipe_error_listing_the_candidate_ports(outs, ins, kwargs, names):
    wf = Workflow()
    a = wf.add_stream(Stream(outs=outs, name="from_here"))
    b = wf.add_stream(Stream(ins, name="to_there"))
    with pytest.raises(PipeError) as info:
        a.pipe(b, **kwargs)
    message = str(info.value)
    for name in [*names, "from_here", "to_there"]:
        assert repr(name) in message, (name, message)


def test_pipe_error_is_a_value_error_and_a_mimo_error():
    assert issubclass(PipeError, ValueError)
    assert issubclass(PipeError, mimo_rx.MimoError)


def test_pipe_to_an_unknown_output_is_a_pipe_error_naming_the_port_and_stream():
    wf = Workflow()
    a = wf.add_stream(Stream(outs=["y"], name="src"))
    b = wf.add_stream(Stream(["x"], name="dst"))
    with pytest.raises(PipeError, match=r"'src'.*'nope'|'nope'.*'src'"):
        a.pipe(b, output="nope")


def test_pipe_to_an_unknown_input_is_a_pipe_error_naming_the_port_and_stream():
    wf = Workflow()
    a = wf.add_stream(Stream(outs=["y"], name="src"))
    b = wf.add_stream(Stream(["x"], name="dst"))
    with pytest.raises(PipeError, match=r"'dst'.*'nope'|'nope'.*'dst'"):
        a.pipe(b, input="nope")


def test_pipe_from_a_stream_without_outputs_is_a_pipe_error():
    wf = Workflow()
    a = wf.add_stream(Stream(["x"], name="sink_only"))
    b = wf.add_stream(Stream(["x"], name="dst"))
    with pytest.raises(PipeError, match="'sink_only'"):
        a.pipe(b)


def test_pipe_into_a_stream_without_inputs_is_a_pipe_error():
    wf = Workflow()
    a = wf.add_stream(Stream(outs=["y"], name="src"))
    b = wf.add_stream(Stream(outs=["z"], name="another_source"))
    with pytest.raises(PipeError, match="'another_source'"):
        a.pipe(b)


def test_pipe_to_a_step_of_another_workflow_is_a_pipe_error():
    wf1, wf2 = Workflow(), Workflow()
    a = wf1.add_stream(Stream(outs=["y"], name="here"))
    b = wf2.add_stream(Stream(["x"], name="elsewhere"))
    with pytest.raises(PipeError, match=r"'here'.*'elsewhere'|'elsewhere'.*'here'"):
        a.pipe(b)


@pytest.mark.parametrize(
    "second", [{}, {"output": "y"}, {"input": "x"}, {"output": "y", "input": "x"}]
)
def test_piping_the_same_output_to_the_same_input_twice_is_a_pipe_error(second):
    wf = Workflow()
    a = wf.add_stream(Stream(outs=["y"], name="src"))
    b = wf.add_stream(Stream(["x"], name="dst"))
    a.pipe(b)
    with pytest.raises(PipeError, match=r"'y'.*'x'"):
        a.pipe(b, **second)


def test_a_rejected_duplicate_pipe_leaves_the_graph_unchanged():
    wf = Workflow()
    a = wf.add_stream(source([1, 2]))
    sink = Collector()
    b = wf.add_stream(sink)
    a.pipe(b)
    with pytest.raises(PipeError):
        a.pipe(b)
    run_checked(wf)
    assert sink.items == [1, 2]  # not delivered twice


# -- broadcast and merge ----------------------------------------------------------------------


def test_broadcast_gives_every_connected_input_every_item_in_push_order():
    wf = Workflow(buffer_size=3)
    a = wf.add_stream(source(range(50)))
    sinks = [Collector(name=f"s{i}") for i in range(3)]
    for sink in sinks:
        a.pipe(wf.add_stream(sink))
    run_checked(wf)
    assert all(s.items == list(range(50)) for s in sinks)


def test_merge_keeps_each_upstream_in_order_and_ends_only_when_all_upstreams_closed():
    later = asyncio.Event()
    received: list[Any] = []

    async def late(ins, outs, state):
        await later.wait()
        await outs.y.push("late")

    async def consume(ins, outs, state):
        async for item in ins.x:
            received.append(item)
            if len(received) == 20:  # everything from the quick upstream, which closed
                later.set()

    wf = Workflow(buffer_size=2)
    quick = wf.add_stream(source(range(20), name="quick"))
    slow = wf.add_stream(Stream(outs=["y"], fn=late))
    sink = wf.add_stream(Stream(["x"], fn=consume))
    quick.pipe(sink)
    slow.pipe(sink)
    run_checked(wf)
    assert received == [*range(20), "late"]


def test_merge_interleaves_several_producers_without_loss_or_reordering():
    wf = Workflow(buffer_size=2)
    sink = Collector()
    s = wf.add_stream(sink)
    for tag in "abc":
        wf.add_stream(source([(tag, i) for i in range(30)], name=tag)).pipe(s)
    run_checked(wf)
    assert sorted(sink.items) == sorted((t, i) for t in "abc" for i in range(30))
    for tag in "abc":
        assert [i for t, i in sink.items if t == tag] == list(range(30))


def test_a_stream_piped_into_itself_runs_to_the_end():
    seen: list[int] = []

    async def counter(ins, outs, state):
        await outs.out.push(0)
        async for item in ins.back:
            seen.append(item)
            if item == 5:
                outs.out.close()
            else:
                await outs.out.push(item + 1)

    wf = Workflow(buffer_size=1)
    c = wf.add_stream(Stream(["back"], ["out"], fn=counter))
    assert c.pipe(c) is c
    run_checked(wf)
    assert seen == [0, 1, 2, 3, 4, 5]


def test_a_cycle_built_on_purpose_runs_to_the_end():
    seen: list[int] = []

    async def counter(ins, outs, state):
        await outs.out.push(0)
        async for item in ins.back:
            seen.append(item)
            if item == 5:
                outs.out.close()
            else:
                await outs.out.push(item + 1)

    wf = Workflow(buffer_size=1)
    c = wf.add_stream(Stream(["back"], ["out"], fn=counter))
    relay = wf.add_stream(Stream(["y"], ["z"], name="relay"))
    c.pipe(relay)
    relay.pipe(c)
    run_checked(wf)
    assert seen == [0, 1, 2, 3, 4, 5]


# -- validation -------------------------------------------------------------------------------


def test_an_input_without_upstream_is_rejected_before_anything_runs():
    ran: list[str] = []

    async def produce(ins, outs, state):
        ran.append("produce")
        await outs.y.push(1)

    wf = Workflow()
    a = wf.add_stream(Stream(outs=["y"], fn=produce))
    needy = wf.add_stream(Stream(["x", "lonely"], name="needy"))
    a.pipe(needy, input="x")
    with pytest.raises(WorkflowError, match=r"'lonely'.*'needy'|'needy'.*'lonely'"):
        run_checked(wf)
    assert ran == []
    assert isinstance(WorkflowError("x"), mimo_rx.MimoError)


def test_run_rejects_an_input_without_upstream_too():
    wf = Workflow()
    wf.add_stream(Stream(["lonely"], name="needy"))
    with pytest.raises(WorkflowError, match=r"'lonely'.*'needy'|'needy'.*'lonely'"):
        wf.run()


def test_a_workflow_rejected_by_validation_can_be_fixed_and_run():
    wf = Workflow()
    sink = Collector()
    b = wf.add_stream(sink)
    with pytest.raises(WorkflowError):
        run_checked(wf)
    wf.add_stream(source(["fixed"])).pipe(b)
    run_checked(wf)
    assert sink.items == ["fixed"]


# -- running ----------------------------------------------------------------------------------


def test_run_blocks_until_every_stream_is_done():
    sink = Collector()
    wf, _ = linear(source(range(100)), Stream(["x"], ["y"]), sink, buffer_size=4)
    assert wf.run() is None
    assert sink.items == list(range(100))


def test_an_empty_workflow_runs_and_returns():
    run_checked(Workflow())


def test_run_inside_a_running_loop_is_a_workflow_error_pointing_to_start():
    wf, _ = linear(source([1]), Collector())

    async def main():
        with pytest.raises(WorkflowError, match=r"await workflow\.start\(\)"):
            wf.run()
        await wf.start()  # the workflow is still usable

    run_checked(main(), workflows=[wf])


def test_a_workflow_runs_once_start_again_is_a_workflow_error():
    wf, (_, sink) = linear(source([1]), Collector())
    run_checked(wf)
    with pytest.raises(WorkflowError):
        run_checked(wf)
    assert sink.stream.items == [1]


def test_a_workflow_runs_once_run_again_is_a_workflow_error():
    wf, _ = linear(source([1]), Collector())
    wf.run()
    with pytest.raises(WorkflowError):
        wf.run()


def test_start_returns_only_after_every_stream_returned_and_every_output_closed():
    obs = RecordingObserver()
    finished: list[str] = []

    async def slow_tail(ins, outs, state):
        async for _ in ins.x:
            pass
        await yield_to_loop(5)
        finished.append("tail")

    producer = source(range(5))
    producer.output("out").subscribe(obs)
    wf, _ = linear(producer, Stream(["x"], fn=slow_tail))
    run_checked(wf)
    assert finished == ["tail"]
    assert obs.completed == 1


# -- failures ---------------------------------------------------------------------------------


def test_a_failing_stream_stops_the_others_and_raises_stream_error_with_the_cause():
    cancelled: list[str] = []

    async def boom(ins, outs, state):
        await outs.y.push(1)
        raise KeyError("bad key")

    async def waits_forever(ins, outs, state):
        try:
            await _forever()
        except asyncio.CancelledError:
            cancelled.append("waiter")
            raise

    wf = Workflow()
    wf.add_stream(Stream(fn=waits_forever))
    b = wf.add_stream(Stream(outs=["y"], fn=boom))
    b.pipe(wf.add_stream(Collector()))
    with pytest.raises(StreamError, match="'boom'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, KeyError)
    assert cancelled == ["waiter"]


def test_stream_error_names_the_numbered_step_of_a_repeated_stream():
    async def work(ins, outs, state):
        if state.get("fail"):
            raise RuntimeError("second one")

    wf = Workflow()
    wf.add_stream(Stream(fn=work))
    wf.add_stream(Stream(fn=work, state={"fail": True}))
    with pytest.raises(StreamError, match="'work-2'"):
        run_checked(wf)


# -- cancellation -----------------------------------------------------------------------------


def _busy_graph() -> tuple[Workflow, asyncio.Event, list[RecordingObserver]]:
    """A graph with streams parked in push, in pop and in a foreign wait."""
    started = asyncio.Event()

    async def endless(ins, outs, state):
        i = 0
        while True:
            await outs.y.push(i)
            i += 1

    async def stuck(ins, outs, state):
        await ins.x.pop()
        started.set()
        await _forever()

    async def silent(ins, outs, state):
        await _forever()

    wf = Workflow(buffer_size=1)
    producer = wf.add_stream(Stream(outs=["y"], fn=endless))
    producer.pipe(wf.add_stream(Stream(["x"], fn=stuck)))
    quiet = wf.add_stream(Stream(outs=["y"], fn=silent))
    quiet.pipe(wf.add_stream(Collector()))
    observers = [RecordingObserver(), RecordingObserver()]
    producer.stream.output("y").subscribe(observers[0])
    quiet.stream.output("y").subscribe(observers[1])
    return wf, started, observers


def test_cancelling_start_cancels_every_stream_and_leaves_no_task():
    wf, started, _ = _busy_graph()

    async def main():
        task = asyncio.create_task(wf.start())
        await started.wait()
        await yield_to_loop(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_checked(main(), workflows=[wf])  # checks that no task is left
    statuses = {name: s["status"] for name, s in wf.stats()["streams"].items()}
    assert set(statuses.values()) == {"cancelled"}, statuses


def test_rx_subscribers_get_workflow_cancelled_when_the_run_is_cancelled():
    wf, started, observers = _busy_graph()

    async def main():
        task = asyncio.create_task(wf.start())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_checked(main(), workflows=[wf])
    for obs in observers:
        assert len(obs.errors) == 1 and obs.completed == 0
        assert isinstance(obs.errors[0], WorkflowCancelled)
        assert isinstance(obs.errors[0], mimo_rx.MimoError)


def test_a_timeout_around_start_raises_timeout_error_and_leaves_no_task():
    wf, _, _ = _busy_graph()

    async def main():
        async with asyncio.timeout(0.05):
            await wf.start()

    with pytest.raises(TimeoutError):
        run_checked(main(), workflows=[wf])


def test_harness_timeout_cancels_a_workflow_cleanly():
    wf, _, observers = _busy_graph()
    with pytest.raises(TimeoutError):
        run_checked(wf, timeout=0.05)
    assert all(isinstance(o.errors[0], WorkflowCancelled) for o in observers)


def test_cancelling_start_with_a_plain_rx_subscriber_still_raises_cancelled_error():
    wf, started, observers = _busy_graph()
    printed: list[Any] = []
    for step in wf.steps:
        for name in step.stream.outs:
            step.stream.output(name).subscribe(printed.append)  # like .subscribe(print)

    async def main():
        task = asyncio.create_task(wf.start())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_checked(main(), workflows=[wf])
    assert all(len(o.errors) == 1 for o in observers)


def test_a_failure_with_a_plain_rx_subscriber_still_terminates_every_subscriber():
    async def boom(ins, outs, state):
        raise KeyError("k")

    wf = Workflow()
    failing = wf.add_stream(Stream(outs=["y"], fn=boom))
    other = wf.add_stream(Stream(outs=["y"], fn=_forever_fn))
    failing.stream.output("y").subscribe(lambda item: None)  # no on_error
    obs = RecordingObserver()
    other.stream.output("y").subscribe(obs)
    with pytest.raises(StreamError, match="'boom'"):
        run_checked(wf)
    assert len(obs.errors) == 1


# -- consumers that stop early ----------------------------------------------------------------


def test_a_consumer_that_returns_early_does_not_block_its_producer():
    async def take_one(ins, outs, state):
        state["got"] = await ins.x.pop()

    quitter = Stream(["x"], fn=take_one, name="quitter")
    full_reader = Collector(name="reader")
    wf = Workflow(buffer_size=2)
    p = wf.add_stream(source(range(100), name="producer"))
    p.pipe(wf.add_stream(quitter))
    p.pipe(wf.add_stream(full_reader))
    run_checked(wf)
    assert quitter.state["got"] == 0
    assert full_reader.items == list(range(100))
    s = input_stats(wf, "quitter", "x")
    assert s["received"] == 100
    assert s["taken"] == 1
    assert s["discarded"] == 99
    assert s["buffered"] == 0
    assert_stats_identity(wf)


def test_a_consumer_that_returns_while_its_producer_is_paused_releases_it():
    paused = asyncio.Event()

    async def produce(ins, outs, state):
        await outs.y.push(0)  # fills the buffer of 1
        paused.set()
        for i in range(1, 10):
            await outs.y.push(i)

    async def quit_once_producer_waits(ins, outs, state):
        await paused.wait()
        await yield_to_loop(2)

    wf = Workflow(buffer_size=1)
    p = wf.add_stream(Stream(outs=["y"], fn=produce))
    p.pipe(wf.add_stream(Stream(["x"], fn=quit_once_producer_waits)))
    run_checked(wf)
    s = input_stats(wf, "quit_once_producer_waits", "x")
    assert s["received"] == 10 and s["taken"] == 0 and s["discarded"] == 10
    assert_stats_identity(wf)


# -- Rx subscribers ---------------------------------------------------------------------------


def test_rx_subscribers_get_stream_error_when_the_workflow_fails():
    async def boom(ins, outs, state):
        await outs.y.push("before")
        raise ValueError("broken")

    failing = Stream(outs=["y"], fn=boom)
    bystander = Stream(outs=["z"], fn=_forever_fn, name="bystander")
    obs_failing, obs_bystander = RecordingObserver(), RecordingObserver()
    failing.output("y").subscribe(obs_failing)
    bystander.output("z").subscribe(obs_bystander)
    wf = Workflow()
    wf.add_stream(failing)
    wf.add_stream(bystander)
    with pytest.raises(StreamError):
        run_checked(wf)
    assert obs_failing.items == ["before"]
    for obs in (obs_failing, obs_bystander):
        assert len(obs.errors) == 1 and obs.completed == 0
        assert isinstance(obs.errors[0], StreamError)
        assert "'boom'" in str(obs.errors[0])


def test_an_exception_in_a_subscribers_on_next_fails_the_stream_that_pushed():
    def explode(item):
        raise LookupError(f"subscriber rejects {item}")

    producer = source([1, 2, 3], name="pusher")
    producer.output("out").subscribe(on_next=explode, on_error=lambda e: None)
    wf, _ = linear(producer, Collector())
    with pytest.raises(StreamError, match="'pusher'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, LookupError)


def test_subscribers_of_finished_outputs_get_on_completed_even_when_another_stream_fails():
    async def boom_later(ins, outs, state):
        async for _ in ins.x:
            pass
        raise RuntimeError("late failure")

    producer = source([1, 2], name="fine")
    obs = RecordingObserver()
    producer.output("out").subscribe(obs)
    wf, _ = linear(producer, Stream(["x"], fn=boom_later))
    with pytest.raises(StreamError, match="'boom_later'"):
        run_checked(wf)
    assert obs.items == [1, 2] and obs.completed == 1 and obs.errors == []


# -- the checked runner itself ----------------------------------------------------------------


def test_the_checked_runner_reports_a_task_left_behind():
    async def leaky():
        asyncio.get_running_loop().create_task(_forever())

    with pytest.raises(LeakError, match="task left pending"):
        run_checked(leaky())


def test_the_checked_runner_reports_a_subscriber_left_subscribed():
    wf = Workflow()
    s = wf.add_stream(Stream(outs=["y"]))
    s.stream.output("y").subscribe(RecordingObserver())

    async def nothing():
        pass

    with pytest.raises(LeakError, match="observer"):
        run_checked(nothing(), workflows=[wf])


def test_the_checked_runner_reports_a_failed_task_nobody_awaited_that_only_the_collector_frees():
    """The runner freezes the heap that was there before the run and collects only what the
    run made: a failed task kept alive by a reference cycle made during the run is still
    found, and its "exception was never retrieved" reported."""

    async def fail() -> None:
        raise ValueError("nobody looks at me")

    async def careless() -> None:
        task = asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0)  # it runs and fails; nobody awaits it
        holder: dict[str, Any] = {"task": task}
        holder["self"] = holder  # a cycle: refcounting alone never frees the task

    with pytest.raises(LeakError, match=r"never retrieved.*nobody looks at me"):
        run_checked(careless())


# -- issue 23: no error is swallowed, whatever it is and however it prints --------------------


class Abort(BaseException):
    """A framework's abort signal: a BaseException that is not KeyboardInterrupt/SystemExit."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")


def _endless() -> Any:
    i = 0
    while True:
        yield i
        i += 1


def _raises_at_three(error: BaseException) -> Stream:
    async def sink(ins: Any, outs: Any, state: Any) -> None:
        async for x in ins.a:
            if x == 3:
                raise error

    return Stream(["a"], fn=sink, name="sink")


@pytest.mark.parametrize("error", [Abort(), GeneratorExit(), Unprintable()], ids=type)
@pytest.mark.parametrize("items", [range(10), None], ids=["finite", "endless"])
def test_a_stream_raising_any_exception_fails_the_run_with_a_stream_error_caused_by_it(
    error: BaseException, items: Any
) -> None:
    workflow = Workflow()
    workflow.add_source(_endless() if items is None else items).pipe(
        workflow.add_stream(_raises_at_three(error))
    )
    with pytest.raises(StreamError) as info:
        run_checked(workflow, timeout=10)
    assert info.value.__cause__ is error and info.value.stream == "sink"
    assert "sink" in str(info.value) and type(error).__name__ in str(info.value)
    statuses = {s.name: s.status for s in workflow.steps}
    assert statuses["sink"] == "failed" and "running" not in statuses.values()


def test_a_resuming_map_stream_whose_job_raises_a_base_exception_fails_the_run() -> None:
    error = Abort()

    async def job(x: int) -> int:
        if x == 3:
            raise error
        return x

    workflow = Workflow()
    mapped = workflow.add_stream(mimo_rx.map_stream(job, on_error="resume", name="job"))
    workflow.add_source(_endless()).pipe(mapped).pipe(workflow.add_stream(Collector()))
    with pytest.raises(StreamError) as info:
        run_checked(workflow, timeout=10)
    assert info.value.__cause__ is error
