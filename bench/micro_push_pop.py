"""Micro-benchmark: the cost of one item through one edge, `await push` -> `pop`.

A producer stream pushes `n` ints, a consumer stream takes them with ``await ins.x.pop()``
(or ``async for``); the same two tasks written with ``asyncio.Queue(maxsize=buffer_size)``
are the reference. Printed: ns per item (median of the runs) and the ratio to the queue.

Usage: ``python bench/micro_push_pop.py [--n 200000] [--repeat 5] [--sizes 1,16,1024]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from common import Acc, Case, Outcome  # noqa: E402
from timing import run_cases, timeout_for  # noqa: E402

AsyncFn = Callable[[int], Awaitable[tuple[int, int]]]


def mimo_edge(buffer_size: int, *, use_async_for: bool) -> AsyncFn:
    """producer --(one edge, threshold `buffer_size`)--> consumer, with mimo_rx streams."""

    async def run(n: int) -> tuple[int, int]:
        from mimo_rx import EndOfStream, Stream, Workflow

        acc = Acc()

        async def produce(ins: Any, outs: Any, state: Any) -> None:
            push = outs.y.push
            for i in range(n):
                await push(i)

        async def consume_pop(ins: Any, outs: Any, state: Any) -> None:
            pop = ins.x.pop
            while True:
                try:
                    acc(await pop())
                except EndOfStream:
                    return

        async def consume_for(ins: Any, outs: Any, state: Any) -> None:
            async for item in ins.x:
                acc(item)

        wf = Workflow(buffer_size=buffer_size)
        producer = wf.add_stream(Stream(outs=["y"], fn=produce))
        consumer = Stream(ins=["x"], fn=consume_for if use_async_for else consume_pop)
        producer.pipe(wf.add_stream(consumer))
        await wf.start()
        return acc.result

    return run


def queue_edge(buffer_size: int) -> AsyncFn:
    """The same two tasks joined by an `asyncio.Queue(maxsize=buffer_size)`."""

    async def run(n: int) -> tuple[int, int]:
        acc = Acc()
        q: asyncio.Queue[int | None] = asyncio.Queue(maxsize=buffer_size)

        async def produce() -> None:
            put = q.put
            for i in range(n):
                await put(i)
            await put(None)

        async def consume() -> None:
            get = q.get
            while (item := await get()) is not None:
                acc(item)

        await asyncio.gather(produce(), consume())
        return acc.result

    return run


def ns_per_item(out: Outcome) -> float | None:
    return statistics.median(out.seconds) / out.items * 1e9 if out.ok else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="1,16,1024", help="buffer sizes (thresholds) to try")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    labels = ("mimo_rx pop()", "mimo_rx async for", "asyncio.Queue")
    print(f"n = {args.n:,} ints through one edge; median of {args.repeat} runs after 1 warm-up\n")
    print(
        "| buffer_size | "
        + " | ".join(f"{label} ns/item" for label in labels)
        + " | pop() vs Queue | async for vs Queue |"
    )
    print("|--:|" + "--:|" * (len(labels) + 2))
    for size in sizes:
        cases = [
            Case(labels[0], mimo_edge(size, use_async_for=False), "mimo_rx"),
            Case(labels[1], mimo_edge(size, use_async_for=True), "mimo_rx"),
            Case(labels[2], queue_edge(size)),
        ]
        expected = (args.n, args.n * (args.n - 1) // 2)
        outcomes = run_cases(cases, args.n, expected, args.repeat, timeout=timeout_for(args.n))
        ns = [ns_per_item(outcomes[label]) for label in labels]
        cells = [
            f"{v:.0f}" if v is not None else f"error: {outcomes[label].error}"
            for v, label in zip(ns, labels, strict=True)
        ]
        # Cost ratio: below 1 means mimo_rx spends less time per item than the queue.
        for v in ns[:2]:
            cells.append("-" if v is None or ns[2] is None else f"{v / ns[2]:.2f}x")
        print(f"| {size} | " + " | ".join(cells) + " |")
    print("\nratios are time per item relative to asyncio.Queue: below 1 is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
