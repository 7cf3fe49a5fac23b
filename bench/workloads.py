"""The workloads W1-W6 and W1-batch: sizes, expected results, the implementations to run, and
the targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import mimo_cases as mimo
import peers
from common import ITEM_SIZE, Case, dbl, inc, is_even

# Row labels, shared with the report.
GEN = "plain generators"
QUEUE = "asyncio.Queue"
RX = "reactivex"
AIOSTREAM = "aiostream"
STREAMZ = "streamz"
M_STREAMS = "mimo_rx async streams"
M_OPERATORS = "mimo_rx operator stages"
M_SOURCE = "mimo_rx add_source + async streams"
M_RX_ZIP = "mimo_rx rx_stream(reactivex.zip)"
M_BATCHES = "mimo_rx batches() + push_many"
M_HOT = "mimo_rx hot source + operator stages"

BASELINES = (QUEUE, RX, GEN)
"""The columns of the throughput tables: each row's items/s as a ratio to these."""


@dataclass(frozen=True)
class Target:
    """A goal from the issue, checked against one row.

    kind "throughput": row items/s / baseline items/s >= limit;
    kind "rss": row peak RSS growth in MiB <= limit;
    kind "scaling": row cost per item at the largest N / at the smallest N <= limit;
    kind "latency": row median p99 latency / baseline median p99 latency <= limit.
    """

    case: str
    kind: Literal["throughput", "rss", "scaling", "latency"]
    limit: float
    baseline: str = ""

    @property
    def text(self) -> str:
        if self.kind == "throughput":
            return f">= {self.limit:g}x {self.baseline}"
        if self.kind == "rss":
            return f"peak RSS growth <= {self.limit:g} MiB"
        if self.kind == "latency":
            return f"p99 <= {self.limit:g}x {self.baseline}'s"
        return f"cost/item at max N <= {self.limit:g}x at min N"


@dataclass(frozen=True)
class Workload:
    """One workload: what runs, on how many items, and what the answer must be."""

    key: str
    title: str
    n: int
    quick_n: int
    expected: Callable[[int], Any]
    cases: list[Case]
    targets: list[Target] = field(default_factory=list)
    fresh_process: bool = False
    latency: bool = False  # W6: report latency percentiles, not items/s

    def case(self, label: str) -> Case:
        for c in self.cases:
            if c.label == label:
                return c
        raise KeyError(f"{self.key} has no case {label!r}")


# --- expected results, computed in plain Python, written differently from any case ----------


def w1_expected(n: int) -> tuple[int, int]:
    # inc(x) is even exactly when x is odd; those become 2 * (x + 1).
    odd = range(1, n, 2)
    assert all(is_even(inc(x)) for x in odd[:3])
    return (len(odd), sum(dbl(inc(x)) for x in odd))


def w2_expected(n: int) -> tuple[int, int]:
    return (3 * n, sum(6 * x + 1 for x in range(n)))  # (x+1) + 2x + 3x


def w3_expected(n: int) -> tuple[int, int]:
    return (n, sum(range(2 * n)))  # sum of a + b over both sources is sum(0..2n-1)


def w4_expected(n: int) -> tuple[int, int, int]:
    return (n, n * ITEM_SIZE, n * (n - 1) // 2)


# --- the workloads ----------------------------------------------------------------------------

W1 = Workload(
    key="W1",
    title="linear: source -> map(x+1) -> filter(even) -> map(x*2) -> sink",
    n=200_000,
    quick_n=10_000,
    expected=w1_expected,
    cases=[
        Case(GEN, peers.w1_generators),
        Case(QUEUE, peers.w1_queue),
        Case(RX, peers.w1_reactivex, "reactivex"),
        Case(AIOSTREAM, peers.w1_aiostream, "aiostream"),
        Case(STREAMZ, peers.w1_streamz, "streamz"),
        Case(M_STREAMS, mimo.w1_streams, "mimo_rx"),
        Case(M_OPERATORS, mimo.w1_operators, "mimo_rx"),
        Case(M_SOURCE, mimo.w1_source_streams, "mimo_rx"),
    ],
    targets=[
        Target(M_STREAMS, "throughput", 1.5, QUEUE),
        Target(M_OPERATORS, "throughput", 0.5, RX),
    ],
)

W2 = Workload(
    key="W2",
    title="fan-out/fan-in: source -> 3 branches (x+1, x*2, x*3) -> one merged input -> sink",
    n=200_000,
    quick_n=10_000,
    expected=w2_expected,
    cases=[
        Case(GEN, peers.w2_generators, note="itertools.tee for the fan-out, zip for the merge"),
        Case(QUEUE, peers.w2_queue),
        Case(RX, peers.w2_reactivex, "reactivex", note="publish() + merge()"),
        Case(AIOSTREAM, peers.w2_aiostream, "aiostream", note=peers.W2_AIOSTREAM_NOTE),
        Case(STREAMZ, peers.w2_streamz, "streamz"),
        Case(M_STREAMS, mimo.w2_streams, "mimo_rx"),
        Case(M_OPERATORS, mimo.w2_operators, "mimo_rx"),
    ],
    targets=[
        Target(M_STREAMS, "throughput", 1.0, RX),
        Target(M_STREAMS, "throughput", 1.5, QUEUE),
    ],
)

W3 = Workload(
    key="W3",
    title="zip: two sources -> pairwise join -> map(a+b) -> sink",
    n=200_000,
    quick_n=10_000,
    expected=w3_expected,
    cases=[
        Case(GEN, peers.w3_generators),
        Case(QUEUE, peers.w3_queue),
        Case(RX, peers.w3_reactivex, "reactivex", note=peers.W3_REACTIVEX_NOTE),
        Case(AIOSTREAM, peers.w3_aiostream, "aiostream"),
        Case(STREAMZ, peers.w3_streamz, "streamz", note=peers.W3_STREAMZ_NOTE),
        Case(
            M_STREAMS, mimo.w3_streams, "mimo_rx", note="a stream with inputs a, b popping pairwise"
        ),
        Case(M_RX_ZIP, mimo.w3_rx_zip, "mimo_rx"),
    ],
    targets=[
        Target(M_STREAMS, "throughput", 2.0, RX),
        Target(M_STREAMS, "throughput", 1.5, QUEUE),
    ],
)

W4 = Workload(
    key="W4",
    title="slow consumer: 1 KiB items, the consumer awaits asyncio.sleep(0) once per item",
    n=1_000_000,
    quick_n=30_000,
    expected=w4_expected,
    cases=[
        Case(GEN, peers.w4_generators, note="an async consumer pulling from a generator"),
        Case(QUEUE, peers.w4_queue),
        Case(RX, peers.w4_reactivex, "reactivex", note=peers.W4_REACTIVEX_NOTE),
        Case(AIOSTREAM, peers.w4_aiostream, "aiostream"),
        Case(STREAMZ, peers.w4_streamz, "streamz", note="Stream(asynchronous=True), async sink"),
        Case(M_STREAMS, mimo.w4_streams, "mimo_rx"),
        Case(M_SOURCE, mimo.w4_source, "mimo_rx", note="add_source(generator) -> consumer"),
    ],
    targets=[
        Target(M_STREAMS, "rss", 32),
        Target(M_STREAMS, "throughput", 1.0, QUEUE),
        Target(M_SOURCE, "rss", 32),
        Target(M_SOURCE, "throughput", 1.0, QUEUE),
    ],
    fresh_process=True,
)

W1_BATCH = Workload(
    key="W1-batch",
    title="W1 with batch ports: batches() in, push_many out, at every stage",
    n=200_000,
    quick_n=10_000,
    expected=w1_expected,
    cases=[
        Case(GEN, peers.w1_generators),
        Case(QUEUE, peers.w1_queue),
        Case(RX, peers.w1_reactivex, "reactivex"),
        Case(M_STREAMS, mimo.w1_streams, "mimo_rx", note="per item, as in W1 (for comparison)"),
        Case(
            M_BATCHES,
            mimo.w1_batches,
            "mimo_rx",
            note="source: one push_many(range(n)); each stage: async for batch in "
            "ins.x.batches(): await outs.y.push_many([f(x) for x in batch])",
        ),
    ],
    targets=[
        Target(M_BATCHES, "throughput", 0.5, GEN),
        Target(M_BATCHES, "throughput", 3.0, RX),
    ],
)

W6 = Workload(
    key="W6",
    title="latency at a steady rate: 20,000 events/s, source -> map -> filter -> map -> sink",
    n=20_000,
    quick_n=2_000,
    expected=w1_expected,  # values 0..n-1 through the W1 stages
    cases=[
        Case(QUEUE, peers.w6_queue, note="asyncio.Queue(1024) per stage, one task per stage"),
        Case(RX, peers.w6_reactivex, "reactivex", note=peers.W6_REACTIVEX_NOTE),
        Case(AIOSTREAM, peers.w6_aiostream, "aiostream", note=peers.W6_AIOSTREAM_NOTE),
        Case(M_STREAMS, mimo.w6_streams, "mimo_rx", note="a paced source stream, async stages"),
        Case(
            M_OPERATORS,
            mimo.w6_stream_operators,
            "mimo_rx",
            note="the paced source stream -> operator() stages (no hot source in front)",
        ),
        Case(
            M_HOT,
            mimo.w6_operators,
            "mimo_rx",
            note="add_source(Subject) fed by a paced task on the loop, operator() stages",
        ),
    ],
    targets=[
        Target(M_STREAMS, "latency", 0.8, QUEUE),
        Target(M_HOT, "latency", 0.8, QUEUE),
    ],
    latency=True,
)

W5_SIZES = (10_000, 100_000, 1_000_000)
W5_QUICK_SIZES = (1_000, 10_000, 50_000)
W5_CASES = (GEN, QUEUE, RX, M_STREAMS, M_OPERATORS)
"""W5 reruns W1 at several sizes. aiostream and streamz are left out to keep the run short."""
W5_TARGETS = [Target(M_STREAMS, "scaling", 1.2), Target(M_OPERATORS, "scaling", 1.2)]

WORKLOADS = {w.key: w for w in (W1, W1_BATCH, W2, W3, W4, W6)}
ALL_KEYS = ("W1", "W1-batch", "W2", "W3", "W4", "W5", "W6")
