"""The peers: each workload written idiomatically with plain generators, a hand-written
`asyncio.Queue(maxsize=1024)` pipeline (one task per stage), reactivex, aiostream and streamz.

Every function takes `n` and returns the workload's result, which the runner checks.
Peer libraries are imported inside the functions, so a missing one only skips its rows.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from common import (
    ITEM_SIZE,
    Acc,
    Event,
    LatencyAcc,
    Measured,
    Pacer,
    add,
    add_pair,
    dbl,
    ev_dbl,
    ev_inc,
    ev_is_even,
    inc,
    is_even,
    item_id,
    make_item,
    tpl,
)

QUEUE_SIZE = 1024
_END = object()  # end-of-stream marker for the asyncio.Queue pipelines


class ItemAcc:
    """W4 sink: counts items, their bytes and the ids they carry. Result: (count, bytes, id sum)."""

    __slots__ = ("count", "ids", "nbytes")

    def __init__(self) -> None:
        self.count = 0
        self.nbytes = 0
        self.ids = 0

    def __call__(self, item: bytes) -> None:
        self.count += 1
        self.nbytes += len(item)
        self.ids += item_id(item)

    @property
    def result(self) -> tuple[int, int, int]:
        return (self.count, self.nbytes, self.ids)


def w4_items(n: int) -> Iterable[bytes]:
    """W4 source: `n` fresh 1 KiB items, made lazily."""
    return (make_item(i) for i in range(n))


# --- asyncio.Queue building blocks: one task per stage --------------------------------------


def _queue() -> asyncio.Queue[Any]:
    return asyncio.Queue(maxsize=QUEUE_SIZE)


async def _q_source(items: Iterable[Any], *outs: asyncio.Queue[Any]) -> None:
    for x in items:
        for q in outs:
            await q.put(x)
    for q in outs:
        await q.put(_END)


async def _q_map(
    f: Callable[[Any], Any], qin: asyncio.Queue[Any], qout: asyncio.Queue[Any]
) -> None:
    while (x := await qin.get()) is not _END:
        await qout.put(f(x))
    await qout.put(_END)


async def _q_filter(
    pred: Callable[[Any], bool], qin: asyncio.Queue[Any], qout: asyncio.Queue[Any]
) -> None:
    while (x := await qin.get()) is not _END:
        if pred(x):
            await qout.put(x)
    await qout.put(_END)


async def _q_sink(qin: asyncio.Queue[Any], acc: Callable[[Any], None], producers: int = 1) -> None:
    ended = 0
    while True:
        x = await qin.get()
        if x is _END:
            ended += 1
            if ended == producers:
                return
        else:
            acc(x)


# --- W1 linear: source -> map(x+1) -> filter(even) -> map(x*2) -> sink ----------------------


def w1_generators(n: int) -> tuple[int, int]:
    acc = Acc()
    a = (inc(x) for x in range(n))
    b = (x for x in a if is_even(x))
    for x in (dbl(x) for x in b):
        acc(x)
    return acc.result


async def w1_queue(n: int) -> tuple[int, int]:
    acc = Acc()
    q1, q2, q3, q4 = _queue(), _queue(), _queue(), _queue()
    await asyncio.gather(
        _q_source(range(n), q1),
        _q_map(inc, q1, q2),
        _q_filter(is_even, q2, q3),
        _q_map(dbl, q3, q4),
        _q_sink(q4, acc),
    )
    return acc.result


def w1_reactivex(n: int) -> tuple[int, int]:
    import reactivex
    from reactivex import operators as ops

    acc = Acc()
    reactivex.from_iterable(range(n)).pipe(
        ops.map(inc), ops.filter(is_even), ops.map(dbl)
    ).subscribe(on_next=acc)
    return acc.result


async def w1_aiostream(n: int) -> tuple[int, int]:
    from aiostream import pipe, stream

    acc = Acc()
    fns: list[Any] = [inc, dbl]  # aiostream's stubs reject one-argument map functions
    xs = stream.iterate(range(n)) | pipe.map(fns[0]) | pipe.filter(is_even) | pipe.map(fns[1])
    async with xs.stream() as items:
        async for x in items:
            acc(x)
    return acc.result


def w1_streamz(n: int) -> tuple[int, int]:
    import streamz

    acc = Acc()
    source = streamz.Stream()
    source.map(inc).filter(is_even).map(dbl).sink(acc)
    for x in range(n):
        source.emit(x)
    return acc.result


# --- W2 fan-out/fan-in: source -> (x+1 | x*2 | x*3) -> one merged input -> sink ------------


def w2_generators(n: int) -> tuple[int, int]:
    acc = Acc()
    a, b, c = itertools.tee(range(n), 3)
    branches = zip((inc(x) for x in a), (dbl(x) for x in b), (tpl(x) for x in c), strict=True)
    for x, y, z in branches:  # the merge: round-robin over the branches
        acc(x)
        acc(y)
        acc(z)
    return acc.result


async def w2_queue(n: int) -> tuple[int, int]:
    acc = Acc()
    qa, qb, qc, merged = _queue(), _queue(), _queue(), _queue()
    await asyncio.gather(
        _q_source(range(n), qa, qb, qc),
        _q_map(inc, qa, merged),
        _q_map(dbl, qb, merged),
        _q_map(tpl, qc, merged),
        _q_sink(merged, acc, producers=3),
    )
    return acc.result


def w2_reactivex(n: int) -> tuple[int, int]:
    import reactivex
    from reactivex import operators as ops

    acc = Acc()
    shared = reactivex.from_iterable(range(n)).pipe(ops.publish())
    reactivex.merge(
        shared.pipe(ops.map(inc)), shared.pipe(ops.map(dbl)), shared.pipe(ops.map(tpl))
    ).subscribe(on_next=acc)
    shared.connect()
    return acc.result


async def w2_aiostream(n: int) -> tuple[int, int]:
    from aiostream import pipe, stream

    acc = Acc()
    fns: list[Any] = [inc, dbl, tpl]  # aiostream's stubs reject one-argument map functions
    xs = stream.merge(*(stream.iterate(range(n)) | pipe.map(f) for f in fns))
    async with xs.stream() as items:
        async for x in items:
            acc(x)
    return acc.result


W2_AIOSTREAM_NOTE = (
    "aiostream has no broadcast operator: each branch iterates its own copy of the source"
)


def w2_streamz(n: int) -> tuple[int, int]:
    import streamz

    acc = Acc()
    source = streamz.Stream()
    source.map(inc).union(source.map(dbl), source.map(tpl)).sink(acc)
    for x in range(n):
        source.emit(x)
    return acc.result


# --- W3 zip: two sources -> pairwise join -> map(a+b) -> sink --------------------------------


def w3_sources(n: int) -> tuple[range, range]:
    """The two W3 sources: 0..n-1 and n..2n-1."""
    return range(n), range(n, 2 * n)


def w3_generators(n: int) -> tuple[int, int]:
    acc = Acc()
    a, b = w3_sources(n)
    pairs = ((x, y) for x, y in zip(a, b, strict=True))
    for s in (add(x, y) for x, y in pairs):
        acc(s)
    return acc.result


async def _q_zip(qa: asyncio.Queue[Any], qb: asyncio.Queue[Any], qout: asyncio.Queue[Any]) -> None:
    while True:
        a = await qa.get()
        b = await qb.get()
        if a is _END or b is _END:
            break
        await qout.put((a, b))
    await qout.put(_END)


async def w3_queue(n: int) -> tuple[int, int]:
    acc = Acc()
    a, b = w3_sources(n)
    qa, qb, pairs, sums = _queue(), _queue(), _queue(), _queue()
    await asyncio.gather(
        _q_source(a, qa),
        _q_source(b, qb),
        _q_zip(qa, qb, pairs),
        _q_map(add_pair, pairs, sums),
        _q_sink(sums, acc),
    )
    return acc.result


def w3_reactivex(n: int) -> tuple[int, int]:
    import reactivex
    from reactivex import operators as ops

    acc = Acc()
    a, b = w3_sources(n)
    reactivex.zip(reactivex.from_iterable(a), reactivex.from_iterable(b)).pipe(
        ops.starmap(add)
    ).subscribe(on_next=acc)
    return acc.result


W3_REACTIVEX_NOTE = (
    "reactivex zip of two cold sources: the first is drained into zip's buffer before the "
    "second emits (no back-pressure)"
)


async def w3_aiostream(n: int) -> tuple[int, int]:
    from aiostream import pipe, stream

    acc = Acc()
    a, b = w3_sources(n)
    join: Any = add  # aiostream's stubs reject a two-argument starmap function
    xs = stream.zip(stream.iterate(a), stream.iterate(b)) | pipe.starmap(join)
    async with xs.stream() as items:
        async for x in items:
            acc(x)
    return acc.result


def w3_streamz(n: int) -> tuple[int, int]:
    import streamz

    acc = Acc()
    a, b = w3_sources(n)
    left, right = streamz.Stream(), streamz.Stream()
    left.zip(right).starmap(add).sink(acc)
    for x, y in zip(a, b, strict=True):
        left.emit(x)
        right.emit(y)
    return acc.result


W3_STREAMZ_NOTE = (
    "streamz sources are push-only: the driver loop emits to the two sources alternately"
)


# --- W4 slow consumer: n items of 1 KiB; the consumer awaits asyncio.sleep(0) per item -------


async def w4_generators(n: int) -> tuple[int, int, int]:
    acc = ItemAcc()
    for item in w4_items(n):
        acc(item)
        await asyncio.sleep(0)
    return acc.result


async def _slow_consumer(qin: asyncio.Queue[Any], acc: ItemAcc) -> None:
    while (item := await qin.get()) is not _END:
        acc(item)
        await asyncio.sleep(0)


async def w4_queue(n: int) -> tuple[int, int, int]:
    acc = ItemAcc()
    q = _queue()
    await asyncio.gather(_q_source(w4_items(n), q), _slow_consumer(q, acc))
    return acc.result


async def w4_reactivex(n: int) -> tuple[int, int, int]:
    import reactivex

    acc = ItemAcc()
    # Rx has no back-pressure: an async consumer can only be fed through an unbounded queue.
    q: asyncio.Queue[Any] = asyncio.Queue()
    consumer = asyncio.create_task(_slow_consumer(q, acc))
    reactivex.from_iterable(w4_items(n)).subscribe(
        on_next=q.put_nowait, on_completed=lambda: q.put_nowait(_END)
    )
    await consumer
    return acc.result


W4_REACTIVEX_NOTE = (
    "reactivex feeds the async consumer through an unbounded asyncio.Queue "
    "(Rx on_next cannot await)"
)


async def w4_aiostream(n: int) -> tuple[int, int, int]:
    from aiostream import stream

    acc = ItemAcc()
    async with stream.iterate(w4_items(n)).stream() as items:
        async for item in items:
            acc(item)
            await asyncio.sleep(0)
    return acc.result


async def w4_streamz(n: int) -> tuple[int, int, int]:
    import streamz

    acc = ItemAcc()

    async def consume(item: bytes) -> None:
        acc(item)
        await asyncio.sleep(0)

    source = streamz.Stream(asynchronous=True)
    source.sink(consume)
    for item in w4_items(n):
        await source.emit(item)  # streamz waits for an async sink: its form of back-pressure
    return acc.result


assert ITEM_SIZE == 1024


# --- W6 latency at a steady rate: paced source -> map -> filter -> map -> sink ------------------
# Each function returns a `Measured`: (count, sum) is checked, the latency percentiles reported.


async def w6_queue(n: int) -> Measured:
    acc = LatencyAcc()
    pacer = Pacer()

    async def source(q: asyncio.Queue[Any]) -> None:
        for i in range(n):
            await pacer.wait(i)
            await q.put((time.perf_counter(), i))
        await q.put(_END)

    q1, q2, q3, q4 = _queue(), _queue(), _queue(), _queue()
    await asyncio.gather(
        source(q1),
        _q_map(ev_inc, q1, q2),
        _q_filter(ev_is_even, q2, q3),
        _q_map(ev_dbl, q3, q4),
        _q_sink(q4, acc),
    )
    return acc.result


async def w6_reactivex(n: int) -> Measured:
    from reactivex import operators as ops
    from reactivex.subject import Subject

    acc = LatencyAcc()
    pacer = Pacer()
    subject: Subject[Event] = Subject()
    subject.pipe(ops.map(ev_inc), ops.filter(ev_is_even), ops.map(ev_dbl)).subscribe(on_next=acc)
    for i in range(n):
        await pacer.wait(i)
        subject.on_next((time.perf_counter(), i))
    subject.on_completed()
    return acc.result


W6_REACTIVEX_NOTE = (
    "a Subject fed by a task on the loop: on_next runs the whole chain synchronously "
    "(no buffer, no back-pressure)"
)


async def w6_aiostream(n: int) -> Measured:
    from aiostream import pipe, stream

    acc = LatencyAcc()
    pacer = Pacer()

    async def events() -> AsyncIterator[Event]:
        for i in range(n):
            await pacer.wait(i)
            yield (time.perf_counter(), i)

    fns: list[Any] = [ev_inc, ev_dbl]  # aiostream's stubs reject one-argument map functions
    xs = stream.iterate(events()) | pipe.map(fns[0]) | pipe.filter(ev_is_even) | pipe.map(fns[1])
    async with xs.stream() as items:
        async for e in items:
            acc(e)
    return acc.result


W6_AIOSTREAM_NOTE = "a paced async generator pulled through map/filter/map (no buffers)"
