"""Property: random DAGs deliver every item exactly once per path, in order per edge, within
their thresholds, and leave no task behind.

Every item carries its path: a source emits ``(source, seq)`` and every stream that pushes an
item on output ``o`` appends the hop ``(stream, o)``. So the last hop of an item tells which
edge brought it, and all items are distinct. Each stream logs, per output, what it pushed in
push order; each input records what it popped in pop order. Then, for every edge
``u.o -> v.i``, the items that came over it are exactly ``u``'s log for ``o``, in that order,
and by induction from the sources every item travels every path exactly once.

Streams come in three kinds: ``async`` (one ``async for`` per input, in one task when there is
one input, else one task each under a lock that keeps push and log together), ``sync`` (the
mimo 1.0 plain-def protocol) and, for sources, both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from harness import assert_stats_identity, copies_received, examples, run_checked
from hypothesis import given, settings
from hypothesis import strategies as st

from mimo_rx import Stream, Workflow

MAX_DELIVERIES = 1500  # keeps one example fast: fan-out multiplies items along paths
# Half the profile's examples (100 for "ci", 1000 for "deep"); one takes 10-40 ms, and the
# timeout leaves ten times that for a loaded machine (60 s for "ci").
EXAMPLES = examples(2)
TIMEOUT_S = max(60, EXAMPLES * 0.3)


@dataclass
class Node:
    index: int
    kind: str  # "async" or "sync"
    outs: list[str]
    ins: list[str]
    items: int  # for sources
    yields: list[int]  # awaits of sleep(0) after the n-th item: yields[n % len(yields)]
    buffer_size: int | None
    received: dict[str, list[Any]] = field(default_factory=dict)
    log: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"n{self.index}"


@dataclass
class Edge:
    source: int
    output: str
    target: int
    input: str
    buffer_size: int | None


@st.composite
def graphs(draw: st.DrawFn) -> tuple[int, list[Node], list[Edge]]:
    count = draw(st.integers(1, 10))
    workflow_size = draw(st.integers(1, 8))
    nodes: list[Node] = []
    edges: list[Edge] = []
    for j in range(count):
        n_outs = draw(st.integers(1, 2))
        outs = [f"o{k}" for k in range(n_outs)]
        n_ins = 0 if j == 0 else draw(st.integers(0, 2))
        ins = [f"i{k}" for k in range(n_ins)]
        for name in ins:
            n_up = draw(st.integers(1, 2))
            ups = draw(
                st.lists(
                    st.tuples(st.integers(0, j - 1), st.integers(0, 1)),
                    min_size=n_up,
                    max_size=n_up,
                    unique=True,
                )
            )
            for u, o in ups:
                output = nodes[u].outs[min(o, len(nodes[u].outs) - 1)]
                if any(
                    e.source == u and e.output == output and e.target == j and e.input == name
                    for e in edges
                ):
                    continue
                size = draw(st.none() | st.integers(1, 8))
                edges.append(Edge(u, output, j, name, size))
        nodes.append(
            Node(
                index=j,
                kind=draw(st.sampled_from(["async", "sync"])),
                outs=outs,
                ins=ins,
                items=draw(st.integers(0, 12)),
                yields=draw(st.lists(st.integers(0, 2), min_size=1, max_size=5)),
                buffer_size=draw(st.none() | st.integers(1, 8)),
            )
        )
    _limit_items(nodes, edges)
    return workflow_size, nodes, edges


def _limit_items(nodes: list[Node], edges: list[Edge]) -> None:
    """Scale source item counts down so that the total number of deliveries stays small."""
    reach = copies_received(nodes, edges)
    per_source: dict[int, int] = {}
    for v, copies in enumerate(reach):
        fanout = sum(1 for e in edges if e.target == v) or 1
        for s, n in copies.items():
            per_source[s] = per_source.get(s, 0) + n * fanout
    total = sum(per_source.values()) or 1
    for node in nodes:
        if not node.ins and per_source.get(node.index):
            budget = MAX_DELIVERIES * per_source[node.index] // total
            node.items = min(node.items, budget // per_source[node.index])


def make_stream(node: Node) -> Stream:
    node.received = {name: [] for name in node.ins}
    node.log = {name: [] for name in node.outs}

    def tag(item: tuple[Any, ...], out: str) -> tuple[Any, ...]:
        return (*item, (node.index, out))

    if node.kind == "sync":
        if not node.ins:

            def sync_source(ins: Any, outs: Any, state: Any) -> bool:
                seq = state.setdefault("seq", 0)
                while seq < node.items:
                    more = True
                    for out in node.outs:
                        item = (node.index, seq)
                        node.log[out].append(item)
                        more = getattr(outs, out).push(tag(item, out)) and more
                    seq += 1
                    state["seq"] = seq
                    if not more:
                        return True
                return False

            return Stream(
                outs=node.outs, fn=sync_source, name=node.name, buffer_size=node.buffer_size
            )

        def sync_forward(ins: Any, outs: Any, state: Any) -> bool:
            more = False
            for name in node.ins:
                for item in getattr(ins, name):
                    node.received[name].append(item)
                    for out in node.outs:
                        node.log[out].append(item)
                        if not getattr(outs, out).push(tag(item, out)):
                            more = True
            return more

        return Stream(
            node.ins, node.outs, fn=sync_forward, name=node.name, buffer_size=node.buffer_size
        )

    async def pause(n: int) -> None:
        for _ in range(node.yields[n % len(node.yields)]):
            await asyncio.sleep(0)

    if not node.ins:

        async def async_source(ins: Any, outs: Any, state: Any) -> None:
            for seq in range(node.items):
                for out in node.outs:
                    item = (node.index, seq)
                    node.log[out].append(item)
                    await getattr(outs, out).push(tag(item, out))
                await pause(seq)

        return Stream(outs=node.outs, fn=async_source, name=node.name, buffer_size=node.buffer_size)

    async def async_forward(ins: Any, outs: Any, state: Any) -> None:
        lock = asyncio.Lock()

        async def read(name: str) -> None:
            n = 0
            async for item in getattr(ins, name):
                node.received[name].append(item)
                for out in node.outs:
                    async with lock:  # the log order is the push order
                        node.log[out].append(item)
                        await getattr(outs, out).push(tag(item, out))
                await pause(n)
                n += 1

        if len(node.ins) == 1:
            await read(node.ins[0])  # in the stream's own task: deadlock monitor active
        else:
            async with asyncio.TaskGroup() as tg:
                for name in node.ins:
                    tg.create_task(read(name))

    return Stream(
        node.ins, node.outs, fn=async_forward, name=node.name, buffer_size=node.buffer_size
    )


def expected_threshold(node: Node, edges: list[Edge], port: str, workflow_size: int) -> int:
    sizes = [
        e.buffer_size
        for e in edges
        if e.target == node.index and e.input == port and e.buffer_size is not None
    ]
    if sizes:
        return min(sizes)
    if node.buffer_size is not None:
        return node.buffer_size
    return workflow_size


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=EXAMPLES)
@given(graphs())
def test_random_dags_deliver_every_item_once_per_path_in_order_within_thresholds(graph):
    workflow_size, nodes, edges = graph
    wf = Workflow(buffer_size=workflow_size)
    steps = [wf.add_stream(make_stream(node)) for node in nodes]
    for e in edges:
        steps[e.source].pipe(
            steps[e.target], output=e.output, input=e.input, buffer_size=e.buffer_size
        )

    run_checked(wf, timeout=20)

    stats = wf.stats()["streams"]
    for node in nodes:
        # what each stream logged on an output is everything it emitted, exactly once
        if node.ins:
            emitted = sorted(item for items in node.received.values() for item in items)
        else:
            emitted = [(node.index, seq) for seq in range(node.items)]
        for out in node.outs:
            assert sorted(node.log[out]) == emitted, (node.name, out)
            assert stats[node.name]["outputs"][out]["pushed"] == len(emitted)
        # every input received exactly what its edges carried, in push order per edge
        for port in node.ins:
            received = node.received[port]
            upstream = [e for e in edges if e.target == node.index and e.input == port]
            hops = {(e.source, e.output) for e in upstream}
            assert all(item[-1] in hops for item in received), (node.name, port)
            for e in upstream:
                over_edge = [item[:-1] for item in received if item[-1] == (e.source, e.output)]
                assert over_edge == nodes[e.source].log[e.output], (node.name, port, e)
            s = stats[node.name]["inputs"][port]
            assert s["received"] == s["taken"] == len(received)
            assert s["dropped"] == s["discarded"] == s["buffered"] == 0
            threshold = expected_threshold(node, edges, port, workflow_size)
            assert s["peak_buffered"] <= threshold, (node.name, port, s, threshold)
        assert stats[node.name]["status"] == "done"
    assert_stats_identity(wf)
