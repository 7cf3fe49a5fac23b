"""Contract section 1: streams (construction, names, state, default forwarding, plain-def)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from harness import Collector, RecordingObserver, linear, run_checked, source

import mimo_rx
from mimo_rx import ConfigError, Stream, StreamError, Workflow

# -- construction -----------------------------------------------------------------------------


class Double(Stream):
    IN = ["x"]
    OUT = ["y"]

    async def run(self, ins, outs):
        async for item in ins.x:
            await outs.y.push(item * 2)


async def double(ins, outs, state):
    async for item in ins.x:
        await outs.y.push(item * 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Double(),
        lambda: Stream(ins=["x"], outs=["y"], fn=double),
        lambda: Stream(["x"], ["y"], fn=double),
    ],
    ids=["inheritance", "constructor", "positional"],
)
def test_both_ways_of_writing_a_stream_run_the_same(make):
    sink = Collector()
    wf, _ = linear(source([1, 2, 3]), make(), sink)
    run_checked(wf)
    assert sink.items == [2, 4, 6]


def test_ins_and_outs_override_the_class_ports():
    s = Double(ins=["a"], outs=["b", "c"])
    assert s.ins == ["a"]
    assert s.outs == ["b", "c"]
    assert Double().ins == ["x"] and Double().outs == ["y"]


def test_ins_outs_and_name_are_readable():
    s = Stream(["a", "b"], ["c"], fn=double, name="custom")
    assert s.ins == ["a", "b"]
    assert s.outs == ["c"]
    assert s.name == "custom"


def test_default_name_is_the_class_name_or_the_function_name():
    assert Double().name == "Double"
    assert Stream(["x"], ["y"], fn=double).name == "double"
    assert Stream(["x"], ["y"]).name == "Stream"
    assert Stream().ins == [] and Stream().outs == []


def test_state_defaults_to_a_fresh_dict_per_stream():
    a, b = Stream(fn=double), Stream(fn=double)
    assert a.state == {} and isinstance(a.state, dict)
    assert a.state is not b.state


def test_state_is_handed_to_fn_as_its_third_argument():
    given = {"start": 10}
    seen: list[Any] = []

    async def count(ins, outs, state):
        seen.append(state)
        state["ran"] = True

    s = Stream(fn=count, state=given)
    assert s.state is given
    empty: dict[str, Any] = {}
    assert Stream(fn=count, state=empty).state is empty  # a falsy state is still the one given
    wf = Workflow()
    wf.add_stream(s)
    run_checked(wf)
    assert seen == [given]
    assert given == {"start": 10, "ran": True}


def test_default_state_is_the_dict_fn_receives_and_it_persists_between_calls():
    def counter(ins, outs, state):  # plain def: called several times
        state["calls"] = state.get("calls", 0) + 1
        return state["calls"] < 3

    s = Stream(outs=["y"], fn=counter)
    wf = Workflow()
    wf.add_stream(s)
    run_checked(wf)
    assert s.state == {"calls": 3}


# -- port name validation ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["1x", "a-b", "", "with space", "class", "x.y"])
@pytest.mark.parametrize("side", ["ins", "outs"])
def test_a_port_name_that_is_not_an_identifier_is_a_value_error_naming_the_port(bad, side):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        Stream(**{side: ["ok", bad]})


@pytest.mark.parametrize("side", ["ins", "outs"])
def test_a_non_string_port_name_is_a_value_error(side):
    with pytest.raises(ValueError, match="3"):
        Stream(**{side: [3]})


@pytest.mark.parametrize("side", ["ins", "outs"])
def test_a_port_declared_twice_on_one_side_is_a_value_error_naming_it(side):
    with pytest.raises(ValueError, match="'dup'"):
        Stream(**{side: ["dup", "other", "dup"]})


def test_bad_port_names_in_class_attributes_are_rejected_at_construction():
    class Bad(Stream):
        IN = ["fine", "not fine"]

    with pytest.raises(ValueError, match="'not fine'"):
        Bad()


def test_an_input_and_an_output_may_share_a_name():
    s = Stream(["x"], ["x"])
    assert s.ins == ["x"] and s.outs == ["x"]
    sink = Collector()
    wf, _ = linear(source([1, 2]), s, sink)
    run_checked(wf)
    assert sink.items == [1, 2]


def test_port_name_errors_are_mimo_errors():
    with pytest.raises(mimo_rx.MimoError):
        Stream(ins=["9"])


# -- default behaviour: forward ---------------------------------------------------------------


def test_a_stream_without_fn_forwards_each_input_to_the_output_in_the_same_position():
    wf = Workflow(buffer_size=2)
    a = wf.add_stream(source(range(20), name="a"))
    b = wf.add_stream(source("xyz", name="b"))
    fwd = wf.add_stream(Stream(["p", "q"], ["r", "s"]))
    r, s = Collector(name="r"), Collector(name="s")
    a.pipe(fwd, input="p")
    b.pipe(fwd, input="q")
    fwd.pipe(wf.add_stream(r), output="r")
    fwd.pipe(wf.add_stream(s), output="s")
    run_checked(wf)
    assert r.items == list(range(20))
    assert s.items == list("xyz")


def test_a_forwarding_stream_drops_inputs_without_a_matching_output_and_never_blocks_them():
    wf = Workflow(buffer_size=2)
    a = wf.add_stream(source(range(5), name="a"))
    b = wf.add_stream(source(range(100), name="b"))
    fwd = wf.add_stream(Stream(["p", "q"], ["r"]))
    sink = Collector()
    a.pipe(fwd, input="p")
    b.pipe(fwd, input="q")
    fwd.pipe(wf.add_stream(sink))
    run_checked(wf)
    assert sink.items == list(range(5))


def test_a_stream_without_fn_and_without_inputs_emits_nothing_and_closes():
    obs = RecordingObserver()
    empty = Stream(outs=["a"])
    empty.output("a").subscribe(obs)
    sink = Collector()
    wf, _ = linear(empty, sink)
    run_checked(wf)
    assert sink.items == []
    assert obs.items == [] and obs.completed == 1


def test_a_subclass_that_overrides_run_is_not_a_forwarder():
    class Constant(Stream):
        OUT = ["y"]

        async def run(self, ins, outs):
            await outs.y.push("k")

    sink = Collector()
    wf, _ = linear(Constant(), sink)
    run_checked(wf)
    assert sink.items == ["k"]


# -- the mimo 1.0 plain-def protocol ---------------------------------------------------------


def test_plain_def_push_always_accepts_and_returns_false_once_the_input_is_full():
    results: list[bool] = []

    def produce(ins, outs, state):
        for i in range(5):  # ignores the False: every item must still arrive
            results.append(outs.y.push(i))
        return False

    sink = Collector()
    wf = Workflow()
    p = wf.add_stream(Stream(outs=["y"], fn=produce))
    p.pipe(wf.add_stream(sink), buffer_size=3)
    run_checked(wf)
    assert results == [True, True, False, False, False]
    assert sink.items == list(range(5))
    assert wf.stats()["streams"]["sink"]["inputs"]["x"]["peak_buffered"] <= 3


def test_plain_def_returning_true_is_called_again_once_downstream_has_room():
    calls = []

    def produce(ins, outs, state):
        it = state.setdefault("it", iter(range(100)))
        calls.append(1)
        for item in it:  # noqa: SIM110 - mimo 1.0 idiom
            if not outs.y.push(item):
                return True
        return False

    sink = Collector()
    wf, _ = linear(Stream(outs=["y"], fn=produce), sink, buffer_size=10)
    run_checked(wf)
    assert sink.items == list(range(100))
    assert len(calls) >= 10
    assert wf.stats()["streams"]["sink"]["inputs"]["x"]["peak_buffered"] <= 10


def test_plain_def_returning_true_is_called_again_only_when_every_fed_input_is_below_threshold():
    fast, slow = Collector(name="fast"), Collector(name="slow")
    levels: list[tuple[int, int]] = []

    def produce(ins, outs, state):
        if state.get("called"):
            levels.append((len(fast.input("x")), len(slow.input("x"))))
        state["called"] = True
        it = state.setdefault("it", iter(range(60)))
        for item in it:  # noqa: SIM110 - mimo 1.0 idiom
            if not outs.y.push(item):
                return True
        return False

    wf = Workflow()
    p = wf.add_stream(Stream(outs=["y"], fn=produce))
    p.pipe(wf.add_stream(fast), buffer_size=6)
    p.pipe(wf.add_stream(slow), buffer_size=3)
    run_checked(wf)
    assert fast.items == slow.items == list(range(60))
    assert levels
    assert all(f < 6 and s < 3 for f, s in levels), levels


def test_plain_def_without_inputs_is_done_when_it_returns_a_false_value():
    returns = iter([True, True, 0])
    calls = []

    def produce(ins, outs, state):
        calls.append(1)
        return next(returns)

    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=produce))
    run_checked(wf)
    assert len(calls) == 3


def test_plain_def_ports_support_len_peek_and_pop():
    seen: list[Any] = []

    def consume(ins, outs, state):
        while len(ins.x):
            n = len(ins.x)
            head = ins.x.peek()
            assert len(ins.x) == n  # peek leaves it
            assert ins.x.pop() == head
            assert len(ins.x) == n - 1
            seen.append(head)
        return False

    wf, _ = linear(source(range(30)), Stream(["x"], fn=consume), buffer_size=4)
    run_checked(wf)
    assert seen == list(range(30))


@pytest.mark.parametrize("method", ["pop", "peek"])
def test_plain_def_pop_and_peek_raise_index_error_when_nothing_is_buffered(method):
    raised: list[bool] = []

    def consume(ins, outs, state):
        for _ in ins.x:
            pass
        try:
            getattr(ins.x, method)()
        except IndexError:
            raised.append(True)
        else:
            raised.append(False)
        return False

    wf, _ = linear(source([1, 2]), Stream(["x"], fn=consume))
    run_checked(wf)
    assert raised and all(raised)


def test_plain_def_iteration_pops_the_items_buffered_when_the_loop_starts():
    seen: list[Any] = []
    batches: list[tuple[int, int, int]] = []

    def consume(ins, outs, state):
        before = len(ins.x)
        got = list(ins.x)
        batches.append((before, len(got), len(ins.x)))
        seen.extend(got)
        return False

    wf, _ = linear(source(range(40)), Stream(["x"], fn=consume), buffer_size=8)
    run_checked(wf)
    assert seen == list(range(40))
    assert all(before == got and after == 0 for before, got, after in batches)


def test_plain_def_sees_closed_and_is_called_after_its_inputs_close():
    closed_seen: list[bool] = []

    def consume(ins, outs, state):
        for _ in ins.x:
            pass
        closed_seen.append(ins.x.closed)
        return False

    wf, _ = linear(source([1, 2, 3]), Stream(["x"], fn=consume))
    run_checked(wf)
    assert closed_seen[-1] is True
    assert closed_seen.count(True) >= 1


def test_plain_def_is_called_until_nothing_is_left_buffered_after_its_inputs_close():
    seen: list[Any] = []

    def one_at_a_time(ins, outs, state):
        if len(ins.x):
            seen.append(ins.x.pop())
        return False

    wf, _ = linear(source(range(10)), Stream(["x"], fn=one_at_a_time))
    run_checked(wf)
    assert seen == list(range(10))


def test_plain_def_returning_false_is_called_again_when_an_input_receives_an_item():
    seen: list[Any] = []
    go = asyncio.Event()

    async def trickle(ins, outs, state):
        for i in range(3):
            await outs.y.push(i)
            await go.wait()  # the consumer sets it each time it saw something

    def consume(ins, outs, state):
        state["calls"].append(1)
        seen.extend(ins.x)
        go.set()
        return None

    consumer = Stream(["x"], fn=consume)
    calls: list[int] = []
    consumer.state["calls"] = calls
    wf, _ = linear(Stream(outs=["y"], fn=trickle), consumer)
    run_checked(wf)
    assert seen == [0, 1, 2]
    # called at start, then only on an arrival or on the close: never spinning
    assert len(calls) <= 1 + 3 + 1


def test_plain_def_stream_emits_a_summary_when_its_input_closes():
    """The mimo 1.0 idiom: accumulate, and push the total once ``closed`` is seen."""

    def summer(ins, outs, state):
        for item in ins.x:
            state["total"] = state.get("total", 0) + item
        if ins.x.closed and not state.get("sent"):
            state["sent"] = True
            outs.y.push(state.get("total", 0))
        return False

    sink = Collector()
    wf, _ = linear(source(range(1, 11)), Stream(["x"], ["y"], fn=summer), sink, buffer_size=3)
    run_checked(wf)
    assert sink.items == [55]


def test_plain_def_sees_the_close_that_happens_while_its_pushes_are_delivered():
    def summer(ins, outs, state):
        for item in ins.x:
            state["total"] = state.get("total", 0) + item
            outs.y.push(item)
        if ins.x.closed and not state.get("sent"):
            state["sent"] = True
            outs.y.push(("total", state.get("total", 0)))
        return False

    async def yielding_source(ins, outs, state):
        for i in range(1, 6):
            await outs.y.push(i)
            await asyncio.sleep(0)  # a producer that does other work between items

    class SlowSink(Collector):
        async def run(self, ins, outs):
            async for item in ins.x:
                self.items.append(item)
                for _ in range(3):
                    await asyncio.sleep(0)

    sink = SlowSink()
    wf = Workflow()
    a = wf.add_stream(Stream(outs=["y"], fn=yielding_source))
    b = wf.add_stream(Stream(["x"], ["y"], fn=summer))
    a.pipe(b)
    b.pipe(wf.add_stream(sink), buffer_size=1)
    run_checked(wf)
    assert sink.items == [1, 2, 3, 4, 5, ("total", 15)]


def test_plain_def_run_method_on_a_subclass_uses_the_mimo_1_protocol():
    class Numbers(Stream):
        IN: list[str] = []
        OUT = ["entity"]

        def __init__(self):
            super().__init__()
            self.iterator = None

        def run(self, ins, outs):
            if self.iterator is None:
                self.iterator = iter(range(25))
            for item in self.iterator:  # noqa: SIM110 - mimo 1.0 idiom
                if not outs.entity.push(item):
                    return True
            return False

    sink = Collector()
    wf, _ = linear(Numbers(), sink, buffer_size=4)
    run_checked(wf)
    assert sink.items == list(range(25))


def test_plain_def_with_two_inputs_can_zip_them():
    def zipper(ins, outs, state):
        while len(ins.a) and len(ins.b):
            outs.y.push((ins.a.pop(), ins.b.pop()))
        return False

    wf = Workflow(buffer_size=2)
    a = wf.add_stream(source(range(10), name="a"))
    b = wf.add_stream(source("abcdefghij", name="b"))
    z = wf.add_stream(Stream(["a", "b"], ["y"], fn=zipper))
    sink = Collector()
    a.pipe(z, input="a")
    b.pipe(z, input="b")
    z.pipe(wf.add_stream(sink))
    run_checked(wf)
    assert sink.items == list(zip(range(10), "abcdefghij", strict=True))


def test_plain_def_none_items_pass_through():
    def relay(ins, outs, state):
        for item in ins.x:
            outs.y.push(item)
        return False

    sink = Collector()
    wf, _ = linear(source([None, None]), Stream(["x"], ["y"], fn=relay), sink)
    run_checked(wf)
    assert sink.items == [None, None]


def test_plain_def_raising_fails_the_workflow_with_stream_error():
    def broken(ins, outs, state):
        raise ZeroDivisionError("nope")

    wf = Workflow()
    wf.add_stream(Stream(outs=["y"], fn=broken))
    with pytest.raises(StreamError, match="'broken'") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_plain_function_that_returns_a_coroutine_fails_with_a_clear_error():
    async def work(ins, outs):
        async for item in ins.x:
            await outs.y.push(item)

    wf = Workflow()
    src = wf.add_stream(Stream(outs=["y"]))
    s = wf.add_stream(Stream(["x"], ["y"], fn=lambda ins, outs, state: work(ins, outs)))
    src.pipe(s)
    with pytest.raises(StreamError, match="async def") as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, ConfigError)
