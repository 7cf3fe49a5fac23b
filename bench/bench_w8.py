"""W8: what at-least-once costs. 200k lines -> map -> filter -> sink, fed by an acknowledged
source (lineage tracked, acks batched) against the same graph fed by a plain iterable.

Usage::

    python bench/bench_w8.py                      # 200k lines, 9 paired rounds
    python bench/bench_w8.py --n 20000 --rounds 3  # quick
    python bench/bench_w8.py --case "in-memory AckSource"
    python bench/bench_w8.py --case FileSource --clock wall

The cases (``CASES``):

* ``in-memory AckSource``: hands out slices of a list, its acks only count: against the
  iterable, the cost of tracking.
* ``FileSource``: the lines in a file, from no checkpoint every run, so each run reads,
  decodes, tracks and checkpoints every line: the cost of the file and its checkpoint too.
  Its checkpoint writes wait for the disk (fsync), which CPU time leaves out: ``--clock wall``
  counts them.

Method: the cases alternate round by round (the order flips every round), each run on a fresh
event loop, CPU time (``--clock cpu``, the default) or elapsed time (``--clock wall``) of the
awaited ``start()`` only (the run is single-threaded, so CPU time is elapsed time minus what
other processes took and what the run waited for). Each round gives one ratio, plain iterable
time / case time (items/s of the case over the iterable's, higher is better); the median of
those is reported with their range. Every run's result (count and sum) is checked. Target:
>= 0.85x.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # mimo_rx from the repo, bench modules by name

from mimo_cases import chain, filter_stream, map_stream, sink_stream  # noqa: E402

TARGET = 0.85
MAX_IN_FLIGHT = 1000  # --max-in-flight
BASELINE = "plain iterable"


def lines(n: int) -> list[str]:
    return [f"line {i}" for i in range(n)]


def parse(line: str) -> int:
    return int(line[5:])


def keep(value: int) -> bool:
    return value % 3 != 0


def expected(n: int) -> tuple[int, int]:
    kept = [v for v in range(n) if v % 3]
    return (len(kept), sum(kept))


class Acc:
    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def __call__(self, value: int) -> None:
        self.count += 1
        self.total += value


class MemorySource:
    """An in-memory AckSource: the tokens are the line numbers; acks are counted."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.next = 0
        self.acked = 0

    async def open(self) -> None:
        pass

    async def fetch(self, max_items: int) -> Sequence[tuple[Hashable, Any]] | None:
        start = self.next
        if start >= len(self.items):
            return None
        end = min(start + max_items, len(self.items))
        self.next = end
        return list(zip(range(start, end), self.items[start:end], strict=True))

    async def ack(self, tokens: Sequence[Hashable]) -> None:
        self.acked += len(tokens)

    async def nack(self, tokens: Sequence[Hashable]) -> None:
        raise AssertionError("nothing fails in W8")

    async def close(self) -> None:
        pass


async def run_graph(source: Any, **options: Any) -> tuple[int, int]:
    from mimo_rx import Workflow

    acc = Acc()
    wf = Workflow()
    step = wf.add_source(source, **options)
    chain(wf, step, map_stream(parse), filter_stream(keep), sink_stream(acc))
    await wf.start()
    return (acc.count, acc.total)


async def iterable_case(n: int) -> tuple[int, int]:
    return await run_graph(lines(n))


async def memory_case(n: int) -> tuple[int, int]:
    source = MemorySource(lines(n))
    result = await run_graph(source, max_in_flight=MAX_IN_FLIGHT, commit_interval=0.5)
    assert source.acked == n, f"{source.acked} of {n} lines acked"
    return result


def ident(value: Any) -> Any:
    return value


async def hops_case(n: int, hops: int, tracked: bool) -> tuple[int, int]:
    """Where the cost of tracking goes (``instructions.py --hops``): source -> ``hops`` map
    stages -> sink, from the in-memory AckSource (``tracked``) or the plain iterable. With no
    hop the difference is what a message costs at the source, the ledger and the sink; each
    hop adds what carrying a tag through one more stream costs."""
    from mimo_rx import Workflow

    acc = Acc()
    wf = Workflow()
    values = list(range(n))
    if tracked:
        step = wf.add_source(MemorySource(values), max_in_flight=MAX_IN_FLIGHT, commit_interval=0.5)
    else:
        step = wf.add_source(values)
    chain(wf, step, *[map_stream(ident) for _ in range(hops)], sink_stream(acc))
    await wf.start()
    if (acc.count, acc.total) != (n, sum(values)):
        raise AssertionError(f"wrong result {(acc.count, acc.total)}")
    return (acc.count, acc.total)


_FILES: dict[int, Path] = {}


def lines_file(n: int) -> Path:
    """A file of ``lines(n)``, written once per process (outside the timed runs) and removed
    at exit."""
    if n not in _FILES:
        folder = tempfile.mkdtemp(prefix="mimo-w8-")
        atexit.register(shutil.rmtree, folder, True)
        path = Path(folder) / "lines.txt"
        path.write_text("".join(f"{line}\n" for line in lines(n)))
        _FILES[n] = path
    return _FILES[n]


async def file_case(n: int) -> tuple[int, int]:
    from mimo_rx.sources import FileSource

    source = FileSource(lines_file(n))
    source.checkpoint.unlink(missing_ok=True)  # every run reads every line
    return await run_graph(source, max_in_flight=MAX_IN_FLIGHT, commit_interval=0.5)


CASES: dict[str, Callable[[int], Awaitable[tuple[int, int]]]] = {
    BASELINE: iterable_case,
    "in-memory AckSource": memory_case,
    "FileSource": file_case,
}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def timed(case: Callable[[int], Awaitable[tuple[int, int]]], n: int, clock: str = "cpu") -> float:
    now = CLOCKS[clock]
    loop = asyncio.new_event_loop()
    try:
        start = now()
        result = loop.run_until_complete(case(n))
        elapsed = now() - start
    finally:
        loop.close()
    if result != expected(n):
        raise AssertionError(f"wrong result {result}, expected {expected(n)}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--case", default="in-memory AckSource", choices=sorted(CASES))
    parser.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT)
    parser.add_argument("--clock", default="cpu", choices=sorted(CLOCKS))
    args = parser.parse_args()
    globals()["MAX_IN_FLIGHT"] = args.max_in_flight
    case, baseline = CASES[args.case], CASES[BASELINE]
    if case is file_case:
        lines_file(args.n)  # written before the first timed run
    timed(case, min(args.n, 10_000))  # warm-up
    timed(baseline, min(args.n, 10_000))
    ratios = []
    for round_ in range(args.rounds):
        pair = [(baseline, "b"), (case, "c")]
        if round_ % 2:
            pair.reverse()
        times = {tag: timed(fn, args.n, args.clock) for fn, tag in pair}
        ratios.append(times["b"] / times["c"])
        print(
            f"round {round_ + 1}: {BASELINE} {args.n / times['b']:,.0f} items/s, "
            f"{args.case} {args.n / times['c']:,.0f} items/s, ratio {ratios[-1]:.3f}",
            file=sys.stderr,
        )
    median = statistics.median(ratios)
    met = sum(r >= TARGET for r in ratios)
    print(
        f"W8 {args.case} (max_in_flight={args.max_in_flight}) vs {BASELINE}, n={args.n}, "
        f"{args.rounds} paired rounds ({'CPU' if args.clock == 'cpu' else 'elapsed'} time): "
        f"median {median:.3f}x (range {min(ratios):.3f}-{max(ratios):.3f}); "
        f"target >= {TARGET}x met in {met}/{args.rounds} rounds"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
