"""W8 with FileSource: what at-least-once costs, paired against the same graph without it.

    FileSource(200k lines) -> map -> filter -> sink      tracking on (add_source(AckSource))
    in-memory AckSource    -> map -> filter -> sink      tracking on, a source that costs nothing
    [the same 200k lines]  -> map -> filter -> sink      a plain iterable: nothing tracked

Both graphs are the async streams of W1 (``async for`` + ``await push``); the map parses the
line's number, the filter keeps the even ones, the sink sums them (checked). The FileSource case
starts from no checkpoint each round, so it reads, decodes, tracks and checkpoints every line
(default ``max_in_flight=1000``, ``commit_interval=0.5``). The in-memory source hands out slices
of a list and its ack does nothing: FileSource against it is the cost of the file and its
checkpoint, it against the iterable the cost of tracking. The cases alternate (the order
rotates every round) and the ratios are taken per round (items/s over items/s): median and
range; the target for FileSource/iterable is >= 0.85.

Usage::

    python bench/bench_ack.py                      # 200k lines, 9 rounds
    python bench/bench_ack.py --lines 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # mimo_rx from the repo, bench modules by name

from mimo_cases import filter_stream, map_stream, sink_stream  # noqa: E402

from mimo_rx import Workflow  # noqa: E402
from mimo_rx.sources import FileSource  # noqa: E402


class MemorySource:
    """An AckSource over a list: tokens are indexes, acks and nacks are free."""

    def __init__(self, items: list[str]) -> None:
        self.items = items
        self.at = 0

    async def open(self) -> None:
        self.at = 0

    async def fetch(self, max_items: int) -> list[tuple[int, str]] | None:
        i = self.at
        if i >= len(self.items):
            return None
        j = self.at = min(i + max_items, len(self.items))
        return list(zip(range(i, j), self.items[i:j], strict=True))

    async def ack(self, tokens: Any) -> None:
        pass

    async def nack(self, tokens: Any) -> None:
        pass

    async def close(self) -> None:
        pass


def number(line: str) -> int:
    return int(line[5:])  # "line 123"


def is_even(n: int) -> bool:
    return n % 2 == 0


def run_graph(feed: Callable[[Workflow], Any], expected: int) -> float:
    """Seconds for one run of source -> map -> filter -> sink; checks the sum."""
    total = [0]

    def acc(n: int) -> None:
        total[0] += n

    workflow = Workflow()
    source = feed(workflow)
    source.pipe(workflow.add_stream(map_stream(number))).pipe(
        workflow.add_stream(filter_stream(is_even))
    ).pipe(workflow.add_stream(sink_stream(acc)))
    began = time.perf_counter()
    asyncio.run(workflow.start())
    elapsed = time.perf_counter() - began
    assert total[0] == expected, (total[0], expected)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--target", type=float, default=0.85)
    args = parser.parse_args()

    n = args.lines
    lines = [f"line {i}" for i in range(n)]
    expected = sum(i for i in range(n) if i % 2 == 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lines.txt"
        path.write_text("".join(f"{line}\n" for line in lines))

        def tracked(workflow: Workflow) -> Any:
            source = FileSource(path)
            source.checkpoint.unlink(missing_ok=True)  # every round reads every line
            return workflow.add_source(source)

        def plain(workflow: Workflow) -> Any:
            return workflow.add_source(list(lines))

        def memory(workflow: Workflow) -> Any:
            return workflow.add_source(MemorySource(lines))

        pairs = [("FileSource", "iterable"), ("memory", "iterable"), ("FileSource", "memory")]
        ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
        cases = [("FileSource", tracked), ("memory", memory), ("iterable", plain)]
        for round_ in range(args.rounds):
            order = cases[round_ % 3 :] + cases[: round_ % 3]
            seconds = {label: run_graph(feed, expected) for label, feed in order}
            for a, b in pairs:
                ratios[a, b].append(seconds[b] / seconds[a])  # items/s of a over items/s of b
            rates = ", ".join(f"{label} {n / s:,.0f}/s" for label, s in seconds.items())
            print(f"round {round_ + 1}: {rates}", file=sys.stderr)
    print(f"W8 ({n} lines, {args.rounds} rounds, wall clock):")
    for (a, b), values in ratios.items():
        met = sum(r >= args.target for r in values)
        target = f"; {met}/{len(values)} rounds >= {args.target}" if (a, b) == pairs[0] else ""
        print(
            f"  {a}/{b}: median {statistics.median(values):.3f} "
            f"(range {min(values):.3f}-{max(values):.3f}){target}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
