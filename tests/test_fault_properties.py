"""Property: random DAGs, with a fault injected at a random item or a cancellation at a random
tick, either deliver every item exactly once per path in order per edge, or end with exactly
the injected error (or the cancellation), once; in every case no task is left behind.

The graphs mix every kind of stream: ``async`` (per-node delays: yields to the loop and
short timers), ``sync`` (the mimo 1.0 plain-def protocol), ``rx`` (an ``rx_stream`` merging its
inputs) and, for sources, generators added with ``add_source``. Every item carries its path,
as in ``test_properties.py``: a source emits ``(source, seq)`` and every stream that pushes an
item on output ``o`` appends the hop ``(stream, o)``. Each stream logs, per output, what it
handed to ``push`` in order; each input records what it took.

* The run completed: for every edge ``u.o -> v.i`` the items that came over it are exactly
  ``u``'s log for ``o``, in order (so, from the sources on, exactly once per path).
* The run failed or was cancelled: over every edge, what arrived is a prefix of that log (in
  order, nothing duplicated or invented), and the run raised exactly the injected fault (as
  the cause of the one ``StreamError``, naming the node) or ``CancelledError``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import reactivex
from harness import (
    assert_stats_identity,
    copies_received,
    examples,
    run_checked,
    yield_to_loop,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable

from mimo_rx import Stream, StreamError, Workflow, rx_stream

MAX_DELIVERIES = 600  # keeps one example fast
# Half the profile's examples (100 for "ci", 1000 for "deep"), with room for a loaded machine.
EXAMPLES = examples(2)
TIMEOUT_S = max(60, EXAMPLES * 0.5)


class InjectedFault(Exception):
    """The fault a node raises at its chosen item."""


@dataclass
class Node:
    index: int
    kind: str  # "async", "sync", "rx" or, for sources, "generator" too
    outs: list[str]
    ins: list[str]
    items: int  # for sources
    delays: list[int]  # after the n-th item: delays[n % len]: 0-2 yields, 3 a short timer
    buffer_size: int | None
    fault_at: int | None = None  # raise at this item (counted over all inputs, or emitted)
    fault: InjectedFault | None = None
    raised: int = 0
    seen: int = 0
    received: dict[str, list[Any]] = field(default_factory=dict)
    log: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"n{self.index}"

    def step(self) -> None:
        """Count one item; raise the injected fault at the chosen one."""
        n = self.seen
        self.seen += 1
        if n == self.fault_at:
            assert self.fault is not None
            self.raised += 1
            raise self.fault


@dataclass
class Edge:
    source: int
    output: str
    target: int
    input: str
    buffer_size: int | None


@dataclass
class Scenario:
    workflow_size: int
    nodes: list[Node]
    edges: list[Edge]
    mode: str  # "none", "fault" or "cancel"
    cancel_after: int  # loop iterations before the cancellation


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(1, 8))
    nodes: list[Node] = []
    edges: list[Edge] = []
    for j in range(count):
        n_ins = 0 if j == 0 else draw(st.integers(0, 2))
        ins = [f"i{k}" for k in range(n_ins)]
        if n_ins:
            kind = draw(st.sampled_from(["async", "sync", "rx"]))
        else:
            kind = draw(st.sampled_from(["async", "sync", "generator"]))
        if kind == "generator":
            outs = ["out"]
        else:
            low = 1 if (kind == "rx" or not n_ins) else 0
            outs = [f"o{k}" for k in range(draw(st.integers(low, 2)))]
        for name in ins:
            ups = draw(
                st.lists(
                    st.tuples(st.integers(0, j - 1), st.integers(0, 1)),
                    min_size=1,
                    max_size=2,
                    unique=True,
                )
            )
            for u, o in ups:
                if not nodes[u].outs:
                    continue
                output = nodes[u].outs[min(o, len(nodes[u].outs) - 1)]
                if any(
                    e.source == u and e.output == output and e.target == j and e.input == name
                    for e in edges
                ):
                    continue
                edges.append(Edge(u, output, j, name, draw(st.none() | st.integers(1, 6))))
        nodes.append(
            Node(
                index=j,
                kind=kind,
                outs=outs,
                ins=ins,
                items=draw(st.integers(0, 15)),
                delays=draw(st.lists(st.sampled_from([0, 0, 1, 2, 3]), min_size=1, max_size=4)),
                buffer_size=draw(st.none() | st.integers(1, 6)),
            )
        )
    # Inputs left without an upstream (their candidates had no outputs) are dropped.
    for node in nodes:
        node.ins = [
            name
            for name in node.ins
            if any(e.target == node.index and e.input == name for e in edges)
        ]
        if node.kind == "rx" and not node.ins:
            node.kind = "async"
    _limit_items(nodes, edges)
    mode = draw(st.sampled_from(["none", "fault", "cancel"]))
    if mode == "fault":
        victim = nodes[draw(st.integers(0, count - 1))]
        victim.fault_at = draw(st.integers(0, 20))
        victim.fault = InjectedFault(f"injected in {victim.name} at item {victim.fault_at}")
    return Scenario(
        workflow_size=draw(st.integers(1, 8)),
        nodes=nodes,
        edges=edges,
        mode=mode,
        cancel_after=draw(st.integers(0, 300)),
    )


def _limit_items(nodes: list[Node], edges: list[Edge]) -> None:
    """Scale source item counts down so that the total number of deliveries stays small."""
    reach = copies_received(nodes, edges)
    per_source: dict[int, int] = {}
    for copies in reach:
        for s, n in copies.items():
            per_source[s] = per_source.get(s, 0) + n
    for node in nodes:
        if not node.ins and per_source.get(node.index):
            node.items = min(node.items, MAX_DELIVERIES // per_source[node.index] // 2)


# -- the streams -------------------------------------------------------------------------------


def _tag(node: Node, item: tuple[Any, ...], out: str) -> tuple[Any, ...]:
    return (*item, (node.index, out))


async def _delay(node: Node, n: int) -> None:
    delay = node.delays[n % len(node.delays)]
    if delay == 3:
        await asyncio.sleep(0.0002)
    else:
        await yield_to_loop(delay)


def make_stream(node: Node) -> Stream | Any:
    """The node's stream, or for a generator source the iterable to add with add_source."""
    node.received = {name: [] for name in node.ins}
    node.log = {name: [] for name in node.outs}
    if node.kind == "generator":

        def generate() -> Any:
            for seq in range(node.items):
                node.step()
                item = (node.index, seq)
                node.log["out"].append(item)
                yield _tag(node, item, "out")

        return generate()
    if node.kind == "sync":
        return _sync_stream(node)
    if node.kind == "rx":
        return _rx_stream(node)
    return _async_stream(node)


def _sync_stream(node: Node) -> Stream:
    if not node.ins:

        def sync_source(ins: Any, outs: Any, state: Any) -> bool:
            while state.get("seq", 0) < node.items:
                seq = state.get("seq", 0)
                node.step()
                more = True
                for out in node.outs:
                    item = (node.index, seq)
                    node.log[out].append(item)
                    more = getattr(outs, out).push(_tag(node, item, out)) and more
                state["seq"] = seq + 1
                if not more:
                    return True
            return False

        return Stream(outs=node.outs, fn=sync_source, name=node.name, buffer_size=node.buffer_size)

    def sync_forward(ins: Any, outs: Any, state: Any) -> bool:
        more = False
        for name in node.ins:
            for item in getattr(ins, name):
                node.received[name].append(item)
                node.step()
                for out in node.outs:
                    node.log[out].append(item)
                    if not getattr(outs, out).push(_tag(node, item, out)):
                        more = True
        return more

    return Stream(
        node.ins, node.outs, fn=sync_forward, name=node.name, buffer_size=node.buffer_size
    )


def _async_stream(node: Node) -> Stream:
    if not node.ins:

        async def async_source(ins: Any, outs: Any, state: Any) -> None:
            for seq in range(node.items):
                node.step()
                for out in node.outs:
                    item = (node.index, seq)
                    node.log[out].append(item)
                    await getattr(outs, out).push(_tag(node, item, out))
                await _delay(node, seq)

        return Stream(outs=node.outs, fn=async_source, name=node.name, buffer_size=node.buffer_size)

    async def async_forward(ins: Any, outs: Any, state: Any) -> None:
        lock = asyncio.Lock()

        async def read(name: str) -> None:
            n = 0
            async for item in getattr(ins, name):
                node.received[name].append(item)
                node.step()
                for out in node.outs:
                    async with lock:  # the log order is the push order
                        node.log[out].append(item)
                        await getattr(outs, out).push(_tag(node, item, out))
                await _delay(node, n)
                n += 1

        if len(node.ins) == 1:
            await read(node.ins[0])
            return
        try:
            async with asyncio.TaskGroup() as tg:
                for name in node.ins:
                    tg.create_task(read(name))
        except ExceptionGroup as group:  # surface the fault itself, as user code would
            raise group.exceptions[0] from None

    return Stream(
        node.ins, node.outs, fn=async_forward, name=node.name, buffer_size=node.buffer_size
    )


def _merge_now(sources: list[Any]) -> reactivex.Observable[Any]:
    """Merge observables, subscribing to each at once (``reactivex.merge`` defers that
    through the scheduler, and loses items: see the xfail test in test_adversarial.py)."""

    def subscribe(observer: Any, scheduler: Any = None) -> CompositeDisposable:
        open_sources = [len(sources)]

        def completed() -> None:
            open_sources[0] -= 1
            if open_sources[0] == 0:
                observer.on_completed()

        return CompositeDisposable(
            *[
                source.subscribe(observer.on_next, observer.on_error, completed)
                for source in sources
            ]
        )

    return reactivex.create(subscribe)


def _rx_stream(node: Node) -> Stream:
    def record(name: str) -> Any:
        def on_next(item: Any) -> None:
            node.received[name].append(item)
            node.step()

        return on_next

    def log_and_tag(out: str) -> Any:
        def apply(item: Any) -> Any:
            node.log[out].append(item)
            return _tag(node, item, out)

        return apply

    def build(*inputs: Any) -> Any:
        recorded = [
            obs.pipe(ops.do_action(record(name)))
            for obs, name in zip(inputs, node.ins, strict=True)
        ]
        merged = _merge_now(recorded).pipe(ops.share())
        return tuple(merged.pipe(ops.map(log_and_tag(out))) for out in node.outs)

    return rx_stream(build, ins=node.ins, outs=node.outs, name=node.name)


# -- the property ------------------------------------------------------------------------------


def _build(scenario: Scenario) -> Workflow:
    wf = Workflow(buffer_size=scenario.workflow_size)
    steps = []
    for node in scenario.nodes:
        made = make_stream(node)
        if isinstance(made, Stream):
            steps.append(wf.add_stream(made))
        else:
            steps.append(wf.add_source(made, name=node.name))
    for e in scenario.edges:
        steps[e.source].pipe(
            steps[e.target], output=e.output, input=e.input, buffer_size=e.buffer_size
        )
    return wf


async def _run(wf: Workflow, scenario: Scenario) -> str:
    """Run, cancelling after ``cancel_after`` loop iterations in "cancel" mode; say how it
    ended: "completed", "cancelled" or "failed" (the StreamError is re-raised)."""
    task = asyncio.ensure_future(wf.start())
    if scenario.mode == "cancel":
        for _ in range(scenario.cancel_after):
            if task.done():
                break
            await asyncio.sleep(0)
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if scenario.mode != "cancel":
            raise
        return "cancelled"
    return "completed"


@pytest.mark.timeout(TIMEOUT_S)
@settings(max_examples=EXAMPLES)
@given(scenarios())
def test_random_dags_with_a_fault_or_a_cancellation_deliver_exactly_once_or_fail_exactly_once(
    scenario,
):
    nodes, edges = scenario.nodes, scenario.edges
    wf = _build(scenario)
    failure: StreamError | None = None
    try:
        outcome = run_checked(_run(wf, scenario), timeout=20, workflows=[wf])
    except StreamError as error:
        failure = error
        outcome = "failed"

    victims = [node for node in nodes if node.raised]
    event(f"mode {scenario.mode}: {outcome}")
    event(f"kinds: {' '.join(sorted({node.kind for node in nodes}))}")
    assert sum(node.raised for node in nodes) <= 1  # a fault is raised once, at its item
    if victims:
        (victim,) = victims
        assert failure is not None, "the injected fault was swallowed"
        assert failure.__cause__ is victim.fault
        assert failure.stream == victim.name
        assert failure.errors == [failure]
        assert not getattr(failure, "__notes__", None)
    else:
        assert failure is None, failure
        assert outcome in ("completed", "cancelled")

    stats = wf.stats()["streams"]
    for node in nodes:
        for port in node.ins:
            received = node.received[port]
            upstream = [e for e in edges if e.target == node.index and e.input == port]
            hops = {(e.source, e.output) for e in upstream}
            assert all(item[-1] in hops for item in received), (node.name, port)
            for e in upstream:
                over_edge = [item[:-1] for item in received if item[-1] == (e.source, e.output)]
                logged = nodes[e.source].log[e.output]
                if outcome == "completed":
                    assert over_edge == logged, (node.name, port, e)
                else:
                    assert over_edge == logged[: len(over_edge)], (node.name, port, e)
        status = stats[node.name]["status"]
        if outcome == "completed":
            assert status == "done", (node.name, status)
            for out in node.outs:
                expected = (
                    sorted(i for items in node.received.values() for i in items)
                    if node.ins
                    else [(node.index, seq) for seq in range(node.items)]
                )
                assert sorted(node.log[out]) == expected, (node.name, out)
        elif node.raised:
            assert status == "failed"
        else:  # ("pending": cancelled before start() ran at all)
            assert status in ("done", "cancelled", "pending"), (node.name, status)
    assert_stats_identity(wf)
