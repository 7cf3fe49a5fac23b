"""The mimo_rx implementations of each workload, written only against the public contract.

Two forms are measured:

* async streams: ``Stream(ins=..., outs=..., fn=async_fn)`` with ``async for`` and
  ``await outs.y.push(...)`` (the seed API);
* Rx operator stages: ``workflow.add_source(iterable)`` and ``operator(ops.map(...))`` steps.

`mimo_rx` is imported lazily so the peers still run while it is missing or broken; the runner
turns any exception into an error cell.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from common import (
    Acc,
    Event,
    LatencyAcc,
    Measured,
    Pacer,
    add_pair,
    dbl,
    ev_dbl,
    ev_inc,
    ev_is_even,
    inc,
    is_even,
    tpl,
)
from peers import ItemAcc, w3_sources, w4_items

# --- building blocks ----------------------------------------------------------------------


def source_stream(items: Iterable[Any]) -> Any:
    """A stream with one output `out` that pushes every item of `items`."""
    from mimo_rx import Stream

    async def source(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        for x in state["items"]:
            await outs.out.push(x)

    return Stream(outs=["out"], fn=source, state={"items": items})


def map_stream(f: Callable[[Any], Any]) -> Any:
    """A stream `x -> y` pushing `f(item)` for each item."""
    from mimo_rx import Stream

    async def stage(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        async for x in ins.x:
            await outs.y.push(f(x))

    stage.__name__ = f"map_{f.__name__}"
    return Stream(ins=["x"], outs=["y"], fn=stage)


def filter_stream(pred: Callable[[Any], bool]) -> Any:
    """A stream `x -> y` pushing the items for which `pred` is true."""
    from mimo_rx import Stream

    async def stage(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        async for x in ins.x:
            if pred(x):
                await outs.y.push(x)

    stage.__name__ = f"filter_{pred.__name__}"
    return Stream(ins=["x"], outs=["y"], fn=stage)


def sink_stream(acc: Callable[[Any], None]) -> Any:
    """A stream with one input `x` that hands every item to `acc`."""
    from mimo_rx import Stream

    async def sink(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        async for x in ins.x:
            acc(x)

    return Stream(ins=["x"], fn=sink)


def slow_sink_stream(acc: Callable[[Any], None]) -> Any:
    """W4's consumer: takes an item, then yields to the event loop once."""
    from mimo_rx import Stream

    async def slow_sink(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        async for item in ins.x:
            acc(item)
            await asyncio.sleep(0)

    return Stream(ins=["x"], fn=slow_sink)


def zip_stream() -> Any:
    """A stream with inputs `a`, `b` and output `pair` that pops one item from each in turn."""
    from mimo_rx import EndOfStream, Stream

    async def zip_pairs(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        while True:
            try:
                a = await ins.a.pop()
                b = await ins.b.pop()
            except EndOfStream:
                return
            await outs.pair.push((a, b))

    return Stream(ins=["a", "b"], outs=["pair"], fn=zip_pairs)


def chain(workflow: Any, first: Any, *streams: Any) -> Any:
    """Add `streams` to `workflow` and pipe `first -> streams[0] -> ...`; return the last step."""
    step = first
    for stream in streams:
        step = step.pipe(workflow.add_stream(stream))
    return step


# --- W1 linear ------------------------------------------------------------------------------


async def w1_streams(n: int) -> tuple[int, int]:
    """Async streams end to end, the source a stream that pushes."""
    from mimo_rx import Workflow

    acc = Acc()
    wf = Workflow()
    src = wf.add_stream(source_stream(range(n)))
    chain(wf, src, map_stream(inc), filter_stream(is_even), map_stream(dbl), sink_stream(acc))
    await wf.start()
    return acc.result


async def w1_source_streams(n: int) -> tuple[int, int]:
    """As `w1_streams`, the source added with `workflow.add_source(range(n))`."""
    from mimo_rx import Workflow

    acc = Acc()
    wf = Workflow()
    src = wf.add_source(range(n))
    chain(wf, src, map_stream(inc), filter_stream(is_even), map_stream(dbl), sink_stream(acc))
    await wf.start()
    return acc.result


async def w1_operators(n: int) -> tuple[int, int]:
    """Rx operator stages: add_source -> operator(map) -> operator(filter) -> operator(map)."""
    from reactivex import operators as ops

    from mimo_rx import Workflow, operator

    acc = Acc()
    wf = Workflow()
    src = wf.add_source(range(n))
    chain(
        wf,
        src,
        operator(ops.map(inc)),
        operator(ops.filter(is_even)),
        operator(ops.map(dbl)),
        sink_stream(acc),
    )
    await wf.start()
    return acc.result


# --- W2 fan-out / fan-in ------------------------------------------------------------------


async def w2_streams(n: int) -> tuple[int, int]:
    """One source stream broadcast to three map streams, all piped into the sink's one input."""
    from mimo_rx import Workflow

    acc = Acc()
    wf = Workflow()
    src = wf.add_stream(source_stream(range(n)))
    sink = wf.add_stream(sink_stream(acc))
    for f in (inc, dbl, tpl):
        src.pipe(wf.add_stream(map_stream(f))).pipe(sink, output="y", input="x")
    await wf.start()
    return acc.result


async def w2_operators(n: int) -> tuple[int, int]:
    """add_source broadcast to three operator(ops.map) steps merged into the sink's input."""
    from reactivex import operators as ops

    from mimo_rx import Workflow, operator

    acc = Acc()
    wf = Workflow()
    src = wf.add_source(range(n))
    sink = wf.add_stream(sink_stream(acc))
    for f in (inc, dbl, tpl):
        src.pipe(wf.add_stream(operator(ops.map(f)))).pipe(sink, output="y", input="x")
    await wf.start()
    return acc.result


# --- W3 zip -----------------------------------------------------------------------------------


async def w3_streams(n: int) -> tuple[int, int]:
    """Two source streams -> a two-input stream popping pairwise -> map stream -> sink."""
    from mimo_rx import Workflow

    acc = Acc()
    a, b = w3_sources(n)
    wf = Workflow()
    join = wf.add_stream(zip_stream())
    wf.add_stream(source_stream(a)).pipe(join, input="a")
    wf.add_stream(source_stream(b)).pipe(join, input="b")
    chain(wf, join, map_stream(add_pair), sink_stream(acc))
    await wf.start()
    return acc.result


def _rx_zip(a: Any, b: Any) -> Any:
    import reactivex

    return reactivex.zip(a, b)


async def w3_rx_zip(n: int) -> tuple[int, int]:
    """As `w3_streams`, the join an `rx_stream(reactivex.zip, ins=['a', 'b'], outs=['pair'])`."""
    from mimo_rx import Workflow, rx_stream

    acc = Acc()
    a, b = w3_sources(n)
    wf = Workflow()
    join = wf.add_stream(rx_stream(_rx_zip, ins=["a", "b"], outs=["pair"]))
    wf.add_stream(source_stream(a)).pipe(join, input="a")
    wf.add_stream(source_stream(b)).pipe(join, input="b")
    chain(wf, join, map_stream(add_pair), sink_stream(acc))
    await wf.start()
    return acc.result


# --- W4 slow consumer -------------------------------------------------------------------------


async def w4_streams(n: int) -> tuple[int, int, int]:
    """A source stream pushing 1 KiB items -> a consumer that sleeps(0) per item."""
    from mimo_rx import Workflow

    acc = ItemAcc()
    wf = Workflow()
    wf.add_stream(source_stream(w4_items(n))).pipe(wf.add_stream(slow_sink_stream(acc)))
    await wf.start()
    return acc.result


async def w4_source(n: int) -> tuple[int, int, int]:
    """`workflow.add_source(generator)` -> the slow consumer."""
    from mimo_rx import Workflow

    acc = ItemAcc()
    wf = Workflow()
    wf.add_source(w4_items(n)).pipe(wf.add_stream(slow_sink_stream(acc)))
    await wf.start()
    return acc.result


# --- W1-batch: W1 written with batches() and push_many -------------------------------------


def batch_source(items: Iterable[Any]) -> Any:
    """A stream with one output `out` that pushes all of `items` with one push_many."""
    from mimo_rx import Stream

    async def source(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        await outs.out.push_many(state["items"])

    return Stream(outs=["out"], fn=source, state={"items": items})


def batch_map(f: Callable[[Any], Any]) -> Any:
    """`x -> y` taking a batch at a time and pushing `f` of each item with one push_many."""
    from mimo_rx import Stream

    async def stage(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        push_many = outs.y.push_many
        async for batch in ins.x.batches():
            await push_many([f(x) for x in batch])

    stage.__name__ = f"map_{f.__name__}"
    return Stream(ins=["x"], outs=["y"], fn=stage)


def batch_filter(pred: Callable[[Any], bool]) -> Any:
    """`x -> y` taking a batch at a time and pushing the items for which `pred` is true."""
    from mimo_rx import Stream

    async def stage(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        push_many = outs.y.push_many
        async for batch in ins.x.batches():
            await push_many([x for x in batch if pred(x)])

    stage.__name__ = f"filter_{pred.__name__}"
    return Stream(ins=["x"], outs=["y"], fn=stage)


def batch_sink(acc: Callable[[Any], None]) -> Any:
    """A stream with one input `x` taking a batch at a time, each item handed to `acc`."""
    from mimo_rx import Stream

    async def sink(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        async for batch in ins.x.batches():
            for x in batch:
                acc(x)

    return Stream(ins=["x"], fn=sink)


async def w1_batches(n: int) -> tuple[int, int]:
    """W1 with batch ports end to end: push_many(range(n)) -> batch stages -> batch sink."""
    from mimo_rx import Workflow

    acc = Acc()
    wf = Workflow()
    src = wf.add_stream(batch_source(range(n)))
    chain(wf, src, batch_map(inc), batch_filter(is_even), batch_map(dbl), batch_sink(acc))
    await wf.start()
    return acc.result


# --- W6 latency at a steady rate -----------------------------------------------------------


def paced_source(n: int) -> Any:
    """A stream with one output `out` pushing `n` events paced at `RATE`, each stamped with
    its emission time."""
    from mimo_rx import Stream

    async def source(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        pacer = Pacer()
        push = outs.out.push
        for i in range(n):
            await pacer.wait(i)
            await push((time.perf_counter(), i))

    return Stream(outs=["out"], fn=source)


async def w6_streams(n: int) -> Measured:
    """Async streams: paced source stream -> map -> filter -> map -> sink."""
    from mimo_rx import Workflow

    acc = LatencyAcc()
    wf = Workflow()
    src = wf.add_stream(paced_source(n))
    chain(
        wf, src, map_stream(ev_inc), filter_stream(ev_is_even), map_stream(ev_dbl), sink_stream(acc)
    )
    await wf.start()
    return acc.result


async def w6_stream_operators(n: int) -> Measured:
    """The paced source stream of `w6_streams` -> operator(map) -> operator(filter) ->
    operator(map) -> sink stream: the operator stages without a hot source in front."""
    from reactivex import operators as ops

    from mimo_rx import Workflow, operator

    acc = LatencyAcc()
    wf = Workflow()
    src = wf.add_stream(paced_source(n))
    chain(
        wf,
        src,
        operator(ops.map(ev_inc)),
        operator(ops.filter(ev_is_even)),
        operator(ops.map(ev_dbl)),
        sink_stream(acc),
    )
    await wf.start()
    return acc.result


def ev_inc_int(x: int) -> int:
    return x + 1


async def hot_source_bursts(n: int, burst: int = 20) -> tuple[int, int]:
    """W6's hot source without the pacing, for instruction counts
    (``python bench/instructions.py --function hot_source_bursts``): a Subject fed on the loop
    in bursts of ``burst`` items -> operator(map) -> sink stream."""
    from reactivex import operators as ops
    from reactivex.subject import Subject

    from mimo_rx import Workflow, operator

    acc = Acc()
    subject: Subject[int] = Subject()
    wf = Workflow()
    chain(wf, wf.add_source(subject), operator(ops.map(ev_inc_int)), sink_stream(acc))
    await start_fed(wf, feed_in_bursts(subject, range(n), burst))
    return (acc.count, acc.total)


async def feed_in_bursts(subject: Any, items: Iterable[Any], burst: int) -> None:
    """Emit ``items`` on ``subject`` (once the run has subscribed), yielding to the loop
    after every ``burst`` of them; then complete it."""
    while not subject.observers:  # noqa: ASYNC110 (nothing to await: Rx has no event)
        await asyncio.sleep(0)
    on_next = subject.on_next
    for i, item in enumerate(items):
        on_next(item)
        if i % burst == burst - 1:
            await asyncio.sleep(0)
    subject.on_completed()


async def hot_source_w6_bursts(n: int, burst: int = 20) -> tuple[int, int]:
    """W6's pipeline without the pacing, for instruction counts
    (``python bench/instructions.py --function hot_source_w6_bursts``): a Subject fed on the
    loop in bursts of ``burst`` events -> operator(map) -> operator(filter) -> operator(map)
    -> sink stream."""
    from reactivex import operators as ops
    from reactivex.subject import Subject

    from mimo_rx import Workflow, operator

    acc = Acc()
    subject: Subject[Event] = Subject()
    wf = Workflow()
    chain(
        wf,
        wf.add_source(subject),
        operator(ops.map(ev_inc)),
        operator(ops.filter(ev_is_even)),
        operator(ops.map(ev_dbl)),
        sink_stream(lambda e: acc(e[1])),
    )
    await start_fed(wf, feed_in_bursts(subject, ((0.0, i) for i in range(n)), burst))
    return (acc.count, acc.total)


async def start_fed(wf: Any, feed: Any) -> None:
    """Run ``wf`` while the coroutine ``feed`` feeds its hot source (cancelled if the run
    ends first)."""
    feeder = asyncio.ensure_future(feed)
    try:
        await wf.start()
    finally:
        if not feeder.done():
            feeder.cancel()
    await feeder


async def w6_operators(n: int) -> Measured:
    """A hot source (a Subject fed by a paced task on the loop) -> operator(map) ->
    operator(filter) -> operator(map) -> sink stream."""
    from reactivex import operators as ops
    from reactivex.subject import Subject

    from mimo_rx import Workflow, operator

    acc = LatencyAcc()
    subject: Subject[Event] = Subject()

    async def feed() -> None:
        # Items emitted before the run subscribes are not seen: wait for the subscription.
        while not subject.observers:  # noqa: ASYNC110 (nothing to await: Rx has no event)
            await asyncio.sleep(0)
        pacer = Pacer()
        on_next = subject.on_next
        for i in range(n):
            await pacer.wait(i)
            on_next((time.perf_counter(), i))
        subject.on_completed()

    wf = Workflow()
    src = wf.add_source(subject)
    chain(
        wf,
        src,
        operator(ops.map(ev_inc)),
        operator(ops.filter(ev_is_even)),
        operator(ops.map(ev_dbl)),
        sink_stream(acc),
    )
    await start_fed(wf, feed())
    return acc.result


# --- supervision: on_error="resume" must cost nothing while nothing fails ---------------------
#
# Paired runs only (bench/paired.py looks them up in EXTRA_CASES): the W1 pipeline with its
# two maps as map_stream (async fn, concurrency 1) and as fused operator() stages, each
# with on_error="fail" and "resume". Usage:
#
#     python bench/paired.py W1 "mimo_rx map_stream (resume)" "mimo_rx map_stream (fail)"


async def _ainc(x: int) -> int:
    return inc(x)


async def _adbl(x: int) -> int:
    return dbl(x)


async def _w1_map_stream(n: int, on_error: str) -> tuple[int, int]:
    from mimo_rx import Workflow
    from mimo_rx import map_stream as mimo_map_stream

    acc = Acc()
    wf = Workflow()
    src = wf.add_source(range(n))
    chain(
        wf,
        src,
        mimo_map_stream(_ainc, on_error=on_error),
        filter_stream(is_even),
        mimo_map_stream(_adbl, on_error=on_error),
        sink_stream(acc),
    )
    await wf.start()
    return acc.result


async def _w1_fused_operators(n: int, on_error: str) -> tuple[int, int]:
    from reactivex import operators as ops

    from mimo_rx import Workflow, operator

    acc = Acc()
    wf = Workflow()
    src = wf.add_source(range(n))
    chain(
        wf,
        src,
        operator(ops.map(inc), on_error=on_error),
        operator(ops.filter(is_even), on_error=on_error),
        operator(ops.map(dbl), on_error=on_error),
        sink_stream(acc),
    )
    await wf.start()
    return acc.result


def _supervision_cases() -> dict[str, list[Any]]:
    from functools import partial

    from common import Case

    cases = [
        Case(f"mimo_rx {kind} ({mode})", partial(fn, on_error=mode), "mimo_rx")
        for kind, fn in (("map_stream", _w1_map_stream), ("fused operators", _w1_fused_operators))
        for mode in ("fail", "resume")
    ]
    return {"W1": cases}


EXTRA_CASES = _supervision_cases()
"""Cases that only bench/paired.py runs, by workload key."""
