"""Cost of watching a run: ``workflow.events`` and ``workflow.metrics()`` subscribers.

The graph is W1's async form (source -> map -> filter -> map -> sink) with small buffers
(``--buffer``, default 8), so producers are paused about once every ``buffer / 2`` items: the
worst case for ``paused``/``resumed`` events, which come once per buffer-full. Three cases
run alternately, round by round, in fresh event loops: nobody watching, an ``events``
subscriber that counts what it gets, and a ``metrics(0.1)`` subscriber. The report gives, per
watched case, the median over rounds of (its CPU time / the unwatched run's CPU time of the
same round), their range, and how many events one run produced per item.

Usage::

    python bench/bench_events.py --rounds 10 --n 100000 --buffer 8
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # mimo_rx from this repo

from mimo_rx import Stream, Workflow


def build(n: int, buffer: int) -> tuple[Workflow, list[int]]:
    total = [0]

    async def source(ins: Any, outs: Any, state: Any) -> None:
        for i in range(n):
            await outs.out.push(i)

    async def plus(ins: Any, outs: Any, state: Any) -> None:
        async for x in ins.x:
            await outs.y.push(x + 1)

    async def even(ins: Any, outs: Any, state: Any) -> None:
        async for x in ins.x:
            if x % 2 == 0:
                await outs.y.push(x)

    async def twice(ins: Any, outs: Any, state: Any) -> None:
        async for x in ins.x:
            await outs.y.push(x * 2)

    async def sink(ins: Any, outs: Any, state: Any) -> None:
        async for x in ins.x:
            total[0] += x

    wf = Workflow(buffer_size=buffer)
    steps = [wf.add_stream(Stream(outs=["out"], fn=source))]
    for fn in (plus, even, twice):
        steps.append(wf.add_stream(Stream(["x"], ["y"], fn=fn)))
    steps.append(wf.add_stream(Stream(["x"], fn=sink)))
    for a, b in itertools.pairwise(steps):
        a.pipe(b)
    return wf, total


def run_once(n: int, buffer: int, watch: str) -> tuple[float, int]:
    wf, total = build(n, buffer)
    seen = [0]
    if watch == "events":
        wf.events.subscribe(lambda _: seen.__setitem__(0, seen[0] + 1))
    elif watch == "metrics":
        wf.metrics(0.1).subscribe(lambda _: seen.__setitem__(0, seen[0] + 1))
    loop = asyncio.new_event_loop()
    try:
        started = time.process_time()
        loop.run_until_complete(wf.start())
        elapsed = time.process_time() - started
    finally:
        loop.close()
    assert total[0] == sum((i + 1) * 2 for i in range(n) if (i + 1) % 2 == 0)
    return elapsed, seen[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--buffer", type=int, default=8)
    args = parser.parse_args()
    cases = ("none", "events", "metrics")
    run_once(args.n // 10, args.buffer, "none")  # warm-up
    times: dict[str, list[float]] = {c: [] for c in cases}
    counts: dict[str, int] = {}
    for r in range(args.rounds):
        order = cases if r % 2 == 0 else cases[::-1]
        for case in order:
            seconds, count = run_once(args.n, args.buffer, case)
            times[case].append(seconds)
            counts[case] = count
    base = times["none"]
    print(
        f"n = {args.n:,}, buffer {args.buffer}, {args.rounds} rounds, CPU time; "
        f"unwatched median {statistics.median(base):.3f} s"
    )
    for case in cases[1:]:
        ratios = sorted(t / b for t, b in zip(times[case], base, strict=True))
        print(
            f"{case}: median {statistics.median(ratios):.3f}x the unwatched time "
            f"(min {ratios[0]:.3f}x, max {ratios[-1]:.3f}x); "
            f"{counts[case]:,} emitted to the subscriber ({counts[case] / args.n:.3f} per item)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
