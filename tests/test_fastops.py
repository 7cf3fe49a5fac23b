"""Operator stages compiled into plain Python (``mimo_rx._fastops``): the same as Rx.

A chain of ``operator()`` stages made only of operators whose behaviour is known runs as one
compiled loop instead of the reactivex chain. These tests pin down:

* recognition: which reactivex objects are known, checked against the installed reactivex,
  so that a release that changes how ``ops.map(f)`` and friends are built fails here loudly
  (the library then falls back to the Rx chain, slower but right);
* that the fast path is taken where it should be, and not where it must not be;
* by property tests on random chains (known and unknown operators mixed, random inputs and
  random exceptions): what a mimo_rx operator chain emits, and how it fails, is exactly what
  reactivex itself emits for the same chain; with ``on_error="resume"`` it is what the
  contract (section 11) says; and the fast path and the Rx path agree on results, failures
  and stats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import reactivex
from harness import Collector, RecordingObserver, assert_stats_identity, examples, run_checked
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import operators as ops
from reactivex.subject import Subject

from mimo_rx import Failure, StreamError, Workflow, operator
from mimo_rx._fastops import (
    FILTER,
    FILTER_INDEXED,
    MAP,
    MAP_INDEXED,
    Prim,
    compile_chain,
    recognise,
)
from mimo_rx._rx import RxStream


def double(x: int) -> int:
    return x * 2


def positive(x: int) -> bool:
    return x > 0


def add_index(x: int, i: int) -> int:
    return x + i


def even_index(x: int, i: int) -> bool:
    return i % 2 == 0


# --- recognition: fails loudly when reactivex changes what it relies on ----------------------


def test_known_operators_are_recognised_in_this_reactivex() -> None:
    # If this fails after a reactivex upgrade, the fast path is off for these operators (the
    # Rx chain runs them, correctly but slower): teach _fastops the new shape, then re-run
    # the property tests below.
    assert recognise(ops.map(double)) == [Prim(MAP, double)]
    assert recognise(ops.map(mapper=double)) == [Prim(MAP, double)]
    assert recognise(ops.filter(positive)) == [Prim(FILTER, positive)]
    assert recognise(ops.filter(predicate=positive)) == [Prim(FILTER, positive)]
    assert recognise(ops.map_indexed(add_index)) == [Prim(MAP_INDEXED, add_index)]
    assert recognise(ops.filter_indexed(even_index)) == [Prim(FILTER_INDEXED, even_index)]
    starmap = recognise(ops.starmap(max))
    assert starmap is not None and [p.kind for p in starmap] == [MAP]
    assert starmap[0].fn((3, 5)) == 5  # reactivex's own ``starred``: called as Rx would
    composed = recognise(reactivex.compose(ops.map(double), ops.filter(positive)))
    assert composed == [Prim(MAP, double), Prim(FILTER, positive)]
    assert recognise(reactivex.compose()) == []


def test_default_functions_behave_as_reactivex_defaults() -> None:
    (identity,) = recognise(ops.map()) or [None]
    assert identity is not None and identity.kind == MAP and identity.fn(7) == 7
    (indexed,) = recognise(ops.map_indexed()) or [None]
    assert indexed is not None and indexed.kind == MAP_INDEXED and indexed.fn(7, 3) == 7
    assert recognise(ops.filter_indexed()) == []  # lets everything through


@pytest.mark.parametrize(
    "op",
    [
        ops.take(3),
        ops.skip(1),
        ops.scan(lambda acc, x: acc + x, 0),
        ops.buffer_with_count(2),
        ops.distinct_until_changed(),
        ops.do_action(print),
        reactivex.compose(ops.map(double), ops.take(2)),
        ops.concat_map(lambda x: reactivex.of(x)),  # compose(map(...), merge(...))
        lambda source: source,
        lambda source: source.pipe(ops.map(double)),
        print,
    ],
)
def test_unknown_operators_are_not_recognised(op: Any) -> None:
    assert recognise(op) is None


def test_one_unknown_operator_sends_the_whole_chain_to_rx() -> None:
    class Counter:
        pushed = 0

    assert compile_chain([ops.map(double), ops.filter(positive)], [Counter()]) is not None
    assert compile_chain([ops.map(double), ops.take(1)], [Counter()]) is None
    assert compile_chain([ops.take(1), ops.map(double)], [Counter()]) is None


def _chain_of(*stages: RxStream, buffer_size: int = 4) -> tuple[Workflow, list[Any]]:
    workflow = Workflow(buffer_size=buffer_size)
    src = workflow.add_source(range(20))
    steps = [workflow.add_stream(stage) for stage in stages]
    sink = workflow.add_stream(Collector())
    last = src
    for step in [*steps, sink]:
        last = last.pipe(step)
    return workflow, [*steps, sink]


def _rx(stream: Any) -> RxStream:
    assert isinstance(stream, RxStream)
    return stream


def test_known_chain_runs_compiled_and_unknown_runs_rx() -> None:
    fast = [_rx(operator(ops.map(double))), _rx(operator(ops.filter(positive)))]
    workflow, steps = _chain_of(*fast)
    run_checked(workflow)
    assert fast[0]._fast is not None  # the head ran the compiled chain
    assert steps[-1].stream.items == [x * 2 for x in range(1, 20)]

    mixed = [_rx(operator(ops.map(double))), _rx(operator(ops.take(5)))]
    workflow, steps = _chain_of(*mixed)
    run_checked(workflow)
    assert mixed[0]._fast is None
    assert steps[-1].stream.items == [0, 2, 4, 6, 8]


def test_require_rx_chain_is_the_switch() -> None:
    stages = [_rx(operator(ops.map(double))), _rx(operator(ops.filter(positive)))]
    stages[1].require_rx_chain()  # on a follower: the fused chain as a whole runs Rx
    workflow, steps = _chain_of(*stages)
    run_checked(workflow)
    assert stages[0]._fast is None
    assert steps[-1].stream.items == [x * 2 for x in range(1, 20)]


def test_rx_stream_never_runs_compiled() -> None:
    from mimo_rx import rx_stream

    stage = _rx(rx_stream(lambda x: x.pipe(ops.map(double)), ins=["x"], outs=["y"]))
    workflow, steps = _chain_of(stage)
    run_checked(workflow)
    assert stage._fast is None
    assert steps[-1].stream.items == [x * 2 for x in range(20)]


def test_output_subscribers_and_stats_on_the_fast_path() -> None:
    stages = [_rx(operator(ops.map(double))), _rx(operator(ops.filter(lambda x: x % 3 == 0)))]
    workflow, steps = _chain_of(*stages, buffer_size=3)
    seen = RecordingObserver()
    stages[1].output("y").subscribe(seen)
    run_checked(workflow)
    assert stages[0]._fast is not None
    assert seen.items == [x * 2 for x in range(20) if x % 3 == 0] and seen.completed == 1
    stats = workflow.stats()["streams"]
    assert stats[steps[0].name]["outputs"]["y"]["pushed"] == 20  # through the fused link
    assert stats[steps[1].name]["inputs"]["x"]["taken"] == 20
    assert stats[steps[1].name]["outputs"]["y"]["pushed"] == len(seen.items)
    assert_stats_identity(workflow)


# --- property tests: the same as reactivex, the same as the Rx path ---------------------------


class Boom(Exception):
    """What the random functions raise: which stage, which operator, which value."""


# An operator spec: (kind, a, bad). ``bad`` is the residue at which the function raises
# (never when None); ``a`` is a parameter. Every function maps ints to ints (or bools).


def _raises(stage: int, kind: str, value: int, bad: int | None, mod: int) -> None:
    if bad is not None and value % mod == bad:
        raise Boom(stage, kind, value)


def _build(spec: tuple[str, int, int | None], stage: int) -> Any:
    kind, a, bad = spec
    if kind == "map":

        def f_map(x: int) -> int:
            _raises(stage, kind, x, bad, 7)
            return (x * a + 1) % 101

        return ops.map(f_map)
    if kind == "filter":

        def f_filter(x: int) -> bool:
            _raises(stage, kind, x, bad, 11)
            return x % (a + 2) != 0

        return ops.filter(f_filter)
    if kind == "map_indexed":

        def f_map_indexed(x: int, i: int) -> int:
            _raises(stage, kind, x + i, bad, 13)
            return (x + a * i) % 101

        return ops.map_indexed(f_map_indexed)
    if kind == "filter_indexed":

        def f_filter_indexed(x: int, i: int) -> bool:
            _raises(stage, kind, x + i, bad, 5)
            return (x + i + a) % 3 != 0

        return ops.filter_indexed(f_filter_indexed)
    if kind == "starmap":

        def f_star(x: int, y: int) -> int:
            _raises(stage, kind, x + y, bad, 7)
            return (x + y * a) % 101

        return reactivex.compose(ops.map(lambda x: (x, x % 5)), ops.starmap(f_star))
    if kind == "identity":
        return ops.map()
    # unknown to _fastops: the chain falls back to Rx
    if kind == "scan":

        def f_scan(acc: int, x: int) -> int:
            _raises(stage, kind, acc + x, bad, 17)
            return (acc + x) % 101

        return ops.scan(f_scan, a)
    if kind == "take":
        return ops.take(a + 1)
    if kind == "skip":
        return ops.skip(a % 3)
    if kind == "distinct":
        return ops.distinct_until_changed()
    raise AssertionError(kind)


KNOWN = ["map", "filter", "map_indexed", "filter_indexed", "starmap", "identity"]
UNKNOWN = ["scan", "take", "skip", "distinct"]

op_specs = st.tuples(
    st.sampled_from(KNOWN + UNKNOWN),
    st.integers(0, 5),
    st.one_of(st.none(), st.integers(0, 4)),
)
known_specs = st.tuples(
    st.sampled_from(KNOWN), st.integers(0, 5), st.one_of(st.none(), st.integers(0, 4))
)
Stages = list[list[tuple[str, int, int | None]]]


def _stage_op(specs: Sequence[tuple[str, int, int | None]], stage: int) -> Any:
    built = [_build(spec, stage) for spec in specs]
    return built[0] if len(built) == 1 else reactivex.compose(*built)


def _reactivex(items: list[int], stages: Stages) -> tuple[list[Any], Exception | None]:
    """What reactivex itself emits for the chain (fail semantics)."""
    seen = RecordingObserver()
    reactivex.from_iterable(items).pipe(
        *[_stage_op(specs, k) for k, specs in enumerate(stages)]
    ).subscribe(seen)
    return seen.items, (seen.errors[0] if seen.errors else None)


def _resume_model(items: list[int], stages: Stages) -> tuple[list[Any], list[Any]]:
    """Contract section 11 for a fused chain of resuming operator() stages, built from
    reactivex: each stage its own Rx chain; when a stage raises, the item passed into that
    stage is a Failure of that stage, and the whole chain is subscribed anew before the
    next item."""
    n = len(stages)
    results: list[Any] = []
    failures: list[Any] = []
    pos = 0
    while True:
        current: list[Any] = [None] * n
        state: dict[str, Any] = {"failed": None, "done": False}
        subjects: list[Subject[Any]] = [Subject() for _ in range(n)]
        for k in range(n):
            _model_stage(k, n, stages[k], subjects, current, state, results)
        while pos < len(items) and not state["done"]:
            item = items[pos]
            pos += 1
            current[0] = item
            subjects[0].on_next(item)
            if state["failed"] is not None:
                k, error = state["failed"]
                failures.append((f"s{k}", _key(error), current[k], "x"))
                break
        else:
            if not state["done"]:
                subjects[0].on_completed()
            assert state["failed"] is None  # nothing here raises on completion
            return results, failures


def _counts(stats: dict[str, Any]) -> dict[str, Any]:
    """The counts of ``workflow.stats()`` (times left out: they differ from run to run)."""
    return {
        name: {
            side: {port: {k: v for k, v in c.items() if k != "paused_s"} for port, c in p.items()}
            for side, p in step.items()
            if side in ("inputs", "outputs")
        }
        | {"failures": step["failures"], "status": step["status"]}
        for name, step in stats["streams"].items()
    }


def _model_stage(
    k: int,
    n: int,
    specs: Sequence[tuple[str, int, int | None]],
    subjects: list[Subject[Any]],
    current: list[Any],
    state: dict[str, Any],
    results: list[Any],
) -> None:
    """Subscribe stage ``k`` of the resume model: what it emits goes into stage ``k + 1``
    (noting the value passed in), its error is noted, its completion passed on."""

    def on_next(value: Any) -> None:
        if k + 1 < n:
            current[k + 1] = value
            subjects[k + 1].on_next(value)
        else:
            results.append(value)

    def on_error(error: Exception) -> None:
        if state["failed"] is None:
            state["failed"] = (k, error)

    def on_completed() -> None:
        if k + 1 < n:
            subjects[k + 1].on_completed()
        else:
            state["done"] = True

    subjects[k].pipe(_stage_op(specs, k)).subscribe(on_next, on_error, on_completed)


def _key(error: BaseException | None) -> Any:
    return None if error is None else (type(error), error.args)


def _run_mimo(
    items: list[int], stages: Stages, buffer_size: int, on_error: str, rx_path: bool
) -> tuple[list[Any], Any, list[Any], dict[str, Any] | None, bool]:
    """Run the chain as fused operator() stages ``s0, s1, ...`` feeding a sink; return what
    an Rx observer of the last output saw, the run's error, the failures, the stats (of a
    run that succeeded) and whether the chain ran compiled."""
    workflow = Workflow(buffer_size=buffer_size)
    src = workflow.add_source(items)
    streams = [
        _rx(operator(_stage_op(specs, k), name=f"s{k}", on_error=on_error))
        for k, specs in enumerate(stages)
    ]
    if rx_path:
        streams[0].require_rx_chain()
    step: Any = src
    for stream in streams:
        step = step.pipe(workflow.add_stream(stream))
    step.pipe(workflow.add_stream(Collector()))
    seen = RecordingObserver()
    streams[-1].output("y").subscribe(seen)
    failures: list[Any] = []
    if on_error == "resume":
        for stream in streams:
            stream.output("errors").subscribe(
                lambda f: failures.append((f.stream, _key(f.error), f.item, f.port))
            )
    error: StreamError | None = None
    try:
        run_checked(workflow)
    except StreamError as exc:
        error = exc
    stats = _counts(workflow.stats()) if error is None else None
    if error is None:
        assert_stats_identity(workflow)
        assert seen.completed == 1
    else:
        assert len(seen.errors) == 1
    return seen.items, error, failures, stats, streams[0]._fast is not None


def _is_known(stages: Stages) -> bool:
    return all(spec[0] in KNOWN for specs in stages for spec in specs)


# Each example runs the chain four times (fast path, Rx path, the model or reactivex), 10-30
# ms: half the profile's examples (100 for "ci", 1000 for "deep") take a few seconds, and the
# timeout leaves far more than that for a loaded machine.
EXAMPLES = examples(2)
TIMEOUT_S = max(60, EXAMPLES * 1.5)

chains = st.lists(st.lists(op_specs, min_size=1, max_size=3), min_size=1, max_size=4)
known_chains = st.lists(st.lists(known_specs, min_size=1, max_size=3), min_size=1, max_size=4)
inputs = st.lists(st.integers(0, 200), max_size=40)
buffers = st.integers(1, 9)


def _check_fail(items: list[int], stages: Stages, buffer_size: int) -> None:
    expected, rx_error = _reactivex(items, stages)
    got, error, _, stats, fast = _run_mimo(items, stages, buffer_size, "fail", rx_path=False)
    assert fast == _is_known(stages)
    assert got == expected
    if rx_error is None:
        assert error is None
    else:
        assert error is not None
        assert _key(error.error) == _key(rx_error)
        assert error.stream == f"s{rx_error.args[0]}"  # the stage whose function raised
    # and exactly as the Rx path of mimo_rx itself (stats included)
    got_rx, error_rx, _, stats_rx, _ = _run_mimo(items, stages, buffer_size, "fail", rx_path=True)
    assert got_rx == got
    assert _key(error_rx and error_rx.error) == _key(error and error.error)
    assert stats_rx == stats


def _check_resume(items: list[int], stages: Stages, buffer_size: int) -> None:
    expected, expected_failures = _resume_model(items, stages)
    got, error, failures, stats, fast = _run_mimo(
        items, stages, buffer_size, "resume", rx_path=False
    )
    assert fast == _is_known(stages)
    assert error is None
    assert got == expected
    assert failures == expected_failures
    got_rx, _, failures_rx, stats_rx, _ = _run_mimo(
        items, stages, buffer_size, "resume", rx_path=True
    )
    assert (got_rx, failures_rx) == (got, failures)
    assert stats_rx == stats


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=EXAMPLES)
@given(inputs, chains, buffers)
def test_operator_chain_emits_what_reactivex_emits(
    items: list[int], stages: Stages, buffer_size: int
) -> None:
    _check_fail(items, stages, buffer_size)


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=EXAMPLES)
@given(inputs, known_chains, buffers)
def test_known_chain_emits_what_reactivex_emits(
    items: list[int], stages: Stages, buffer_size: int
) -> None:
    _check_fail(items, stages, buffer_size)


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=EXAMPLES)
@given(inputs, chains, buffers)
def test_resuming_chain_follows_the_contract(
    items: list[int], stages: Stages, buffer_size: int
) -> None:
    _check_resume(items, stages, buffer_size)


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=EXAMPLES)
@given(inputs, known_chains, buffers)
def test_resuming_known_chain_follows_the_contract(
    items: list[int], stages: Stages, buffer_size: int
) -> None:
    _check_resume(items, stages, buffer_size)


# --- the details a property test may not hit --------------------------------------------------


def test_failure_item_is_the_value_passed_into_the_failing_stage() -> None:
    def boom_on_6(x: int) -> int:
        if x == 6:
            raise ValueError(x)
        return x

    workflow = Workflow()
    src = workflow.add_source([1, 2, 3, 4])
    first = _rx(operator(ops.map(double), name="first", on_error="resume"))
    second = _rx(
        operator(
            reactivex.compose(ops.map(lambda x: x + 100), ops.map(lambda x: x - 100 + 0 * x)),
            name="second",
            on_error="resume",
        )
    )
    third = _rx(operator(ops.map(boom_on_6), name="third", on_error="resume"))
    sink = workflow.add_stream(Collector())
    src.pipe(workflow.add_stream(first)).pipe(workflow.add_stream(second)).pipe(
        workflow.add_stream(third)
    ).pipe(sink)
    failures: list[Failure] = []
    third.output("errors").subscribe(failures.append)
    run_checked(workflow)
    assert first._fast is not None
    assert sink.stream.items == [2, 4, 8]
    [failure] = failures
    assert (failure.stream, failure.item, failure.port) == ("third", 6, "x")
    assert isinstance(failure.error, ValueError)
    assert workflow.stats()["streams"]["third"]["failures"] == 1


def test_map_indexed_restarts_its_index_when_the_chain_is_subscribed_anew() -> None:
    def index_unless_3(x: int, i: int) -> tuple[int, int]:
        if x == 3:
            raise ValueError(x)
        return (x, i)

    workflow = Workflow(buffer_size=2)
    src = workflow.add_source(range(6))
    stage = _rx(operator(ops.map_indexed(index_unless_3), on_error="resume"))
    src.pipe(workflow.add_stream(stage)).pipe(sink := workflow.add_stream(Collector()))
    run_checked(workflow)
    assert stage._fast is not None
    assert sink.stream.items == [(0, 0), (1, 1), (2, 2), (4, 0), (5, 1)]


def test_cancelled_while_pushing_a_compiled_chain_leaves_nothing_running() -> None:
    workflow = Workflow(buffer_size=1)
    src = workflow.add_source(range(10_000))
    stage = _rx(operator(ops.map(double)))
    started = asyncio.Event()

    async def slow(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            started.set()
            await asyncio.sleep(3600)

    from mimo_rx import Stream, WorkflowCancelled

    src.pipe(workflow.add_stream(stage)).pipe(workflow.add_stream(Stream(["x"], fn=slow)))

    async def main() -> None:
        run = asyncio.ensure_future(workflow.start())
        await asyncio.wait_for(started.wait(), 10)
        workflow.cancel()
        with pytest.raises(WorkflowCancelled):
            await run

    run_checked(main(), workflows=[workflow])
    assert stage._fast is not None


def test_a_raw_exception_from_truthiness_fails_both_paths_alike() -> None:
    class Weird:
        def __bool__(self) -> bool:
            raise RuntimeError("no truth")

    # ops.filter tests the predicate's result outside its try, as the compiled loop does:
    # the error is not an Rx error but escapes the chain, and fails the run all the same.
    for rx_path in (False, True):
        workflow = Workflow()
        src = workflow.add_source([1, 2])
        stage = _rx(operator(ops.filter(lambda x: Weird())))
        if rx_path:
            stage.require_rx_chain()
        src.pipe(workflow.add_stream(stage)).pipe(workflow.add_stream(Collector()))
        with pytest.raises(StreamError) as info:
            run_checked(workflow)
        assert isinstance(info.value.error, RuntimeError)
        assert (stage._fast is None) == rx_path


@pytest.mark.parametrize("rx_path", [False, True])
def test_a_coroutine_emitted_fails_both_paths_alike(rx_path: bool) -> None:
    async def price(x: int) -> int:
        return x

    workflow = Workflow()
    src = workflow.add_source(range(5))
    first = _rx(operator(ops.filter(positive), name="positive", on_error="resume"))
    second = _rx(operator(ops.map(price), name="price", on_error="resume"))
    if rx_path:
        first.require_rx_chain()
    sink = workflow.add_stream(Collector())
    src.pipe(workflow.add_stream(first)).pipe(workflow.add_stream(second)).pipe(sink)
    with pytest.raises(StreamError, match=r"map_stream\(async_fn\)") as info:
        run_checked(workflow)
    assert info.value.stream == "price"
    assert (first._fast is None) == rx_path
    assert sink.stream.items == []
