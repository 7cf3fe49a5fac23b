"""Shared test harness: run a workflow in a fresh event loop and check it left nothing behind.

``run_checked`` is the one way tests run a graph. After the run (on success, failure and
cancellation alike) it asserts that

* no task other than the runner's own is still pending in the loop,
* nothing was reported to the loop's exception handler ("Task exception was never retrieved",
  exceptions in callbacks, ...),
* no Rx observer is still subscribed to any output of the workflow(s) involved: every
  subscriber got its terminal signal.

It re-raises the workflow's own exception so tests can ``pytest.raises`` it. Tests use only the
public API (``import mimo_rx``).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from hypothesis import settings

import mimo_rx
from mimo_rx import Stream, Workflow


class LeakError(AssertionError):
    """The run left a task, an unreported exception or an Rx subscriber behind."""


def _check_workflow_outputs(workflows: Iterable[Workflow]) -> list[str]:
    leaks = []
    for workflow in workflows:
        for step in workflow.steps:
            for name in step.stream.outs:
                observers = step.stream.output(name).observers
                if len(observers) != 0:
                    leaks.append(
                        f"output {name!r} of step {step.name!r} still has "
                        f"{len(observers)} Rx observer(s) subscribed"
                    )
    return leaks


def run_checked(
    workflow_or_coro: Workflow | Awaitable[Any],
    timeout: float = 10,
    *,
    workflows: Sequence[Workflow] = (),
) -> Any:
    """Run ``workflow.start()`` (or an awaitable) in a fresh loop, then check for leaks.

    Args:
        workflow_or_coro: a workflow to start, or an awaitable to run as the main task.
        timeout: seconds before the run is cancelled (raises ``TimeoutError``).
        workflows: further workflows whose outputs must have no subscriber left (the one
            passed as ``workflow_or_coro`` is always checked).

    Returns:
        What the awaitable returned.

    Raises:
        Whatever the run raised (after the leak checks passed); ``LeakError`` when a check
        failed, chained to the run's own exception if there was one.
    """
    checked = list(workflows)
    if isinstance(workflow_or_coro, Workflow):
        checked.append(workflow_or_coro)
        awaitable: Awaitable[Any] = workflow_or_coro.start()
    else:
        awaitable = workflow_or_coro

    loop = asyncio.new_event_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    leftovers: list[str] = []

    async def main() -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        finally:
            me = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            leftovers.extend(repr(t) for t in others)

    # What exists before the run is frozen: the collection after it scans only what the run
    # made (a full collection of the suite's heap takes 50 ms or more, per run, and was most of
    # the suite's time). Heap searches during the run (gc.get_referrers in the deadlock
    # monitor) skip frozen objects; what they look for, the run's asyncio.Timeout objects, the
    # run makes.
    gc.freeze()
    asyncio.set_event_loop(loop)
    error: BaseException | None = None
    result = None
    try:
        try:
            result = loop.run_until_complete(main())
        except BaseException as exc:  # re-raised below, after the checks
            error = exc
        # Clean up whatever leaked, so that one bad test does not break the next ones.
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        gc.collect()  # surfaces "Task exception was never retrieved"
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        gc.unfreeze()

    problems = [f"task left pending: {t}" for t in leftovers]
    problems += [
        f"reported to the loop: {ctx.get('message')} {ctx.get('exception')!r}" for ctx in reported
    ]
    problems += _check_workflow_outputs(checked)
    if problems:
        raise LeakError("\n".join(problems)) from error
    if error is not None:
        raise error
    return result


async def yield_to_loop(times: int = 1) -> None:
    """Let every task that is ready run one step (an explicit yield, not a timed wait)."""
    for _ in range(times):
        await asyncio.sleep(0)


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    """Polls ``await condition()`` until it is true, for state that sends no event to wait on
    (a broker's, a server's over HTTP); ``TimeoutError`` after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not await condition():  # noqa: ASYNC110 - the state has no event to wait on
            await asyncio.sleep(0.02)


def examples(share: int, floor: int = 20) -> int:
    """``max_examples`` for a heavy property, one whose every example runs whole workflows:
    the active hypothesis profile's count (tests/conftest.py: 200 for "ci", 2000 for "deep")
    divided by ``share``, and never fewer than ``floor``. Write it as
    ``@settings(max_examples=examples(8))``; size the test's timeout from the result."""
    return max(floor, settings.default.max_examples // share)


# The orders in which race_cancel() cancels a pending call and does the action that would
# satisfy it, all within one tick of the loop.
CANCEL_ORDERS = ["act_then_cancel", "cancel_then_act", "cancel_soon_then_act", "act_yield_cancel"]


async def race_cancel(
    rng: random.Random, pending: asyncio.Future[Any], act: Callable[[], Awaitable[Any]]
) -> None:
    """Cancel ``pending`` and do ``act()`` in the same tick, in an order ``rng`` picks."""
    order = rng.choice(CANCEL_ORDERS)
    if order == "act_then_cancel":
        await act()
        pending.cancel()
    elif order == "cancel_then_act":
        pending.cancel()
        await act()
    elif order == "cancel_soon_then_act":
        asyncio.get_running_loop().call_soon(pending.cancel)
        await act()
    else:
        await act()
        await yield_to_loop(rng.randint(0, 2))
        pending.cancel()


# -- graph building helpers ------------------------------------------------------------------


def source(items: Iterable[Any], name: str = "source", out: str = "out", **kwargs: Any) -> Stream:
    """A stream with one output ``out`` that pushes ``items`` in order, then returns."""
    items = list(items)

    async def push_all(ins: Any, outs: Any, state: Any) -> None:
        port = getattr(outs, out)
        for item in items:
            await port.push(item)

    return Stream(outs=[out], fn=push_all, name=name, **kwargs)


class Collector(Stream):
    """A sink with one input ``x`` (by default) that records every item it pops."""

    def __init__(self, name: str = "sink", port: str = "x", **kwargs: Any) -> None:
        super().__init__(ins=[port], outs=[], name=name, **kwargs)
        self.port = port
        self.items: list[Any] = []

    async def run(self, ins: Any, outs: Any) -> None:
        async for item in getattr(ins, self.port):
            self.items.append(item)


def mapper(fn: Callable[[Any], Any], name: str = "mapper") -> Stream:
    """A stream ``x -> y`` that pushes ``fn(item)`` for every item."""

    async def apply(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            await outs.y.push(fn(item))

    return Stream(["x"], ["y"], fn=apply, name=name)


def linear(*streams: Stream, buffer_size: int | None = None) -> tuple[Workflow, list[Any]]:
    """Build a workflow that pipes ``streams`` one after the other; returns it and its steps."""
    workflow = Workflow() if buffer_size is None else Workflow(buffer_size=buffer_size)
    steps = [workflow.add_stream(s) for s in streams]
    for a, b in itertools.pairwise(steps):
        a.pipe(b)
    return workflow, steps


def broadcast_then_drain_one_input_first(buffer_size: int = 2) -> Workflow:
    """The smallest deadlock: ``src.out`` (10 items) feeds ``join.a`` and ``join.b``, and
    ``join`` reads all of ``a`` before it looks at ``b``; ``b`` fills up and ``src`` waits on
    it while ``join`` waits for more of ``a``. With ``buffer_size >= 10`` it completes."""

    async def produce(ins: Any, outs: Any, state: Any) -> None:
        for i in range(10):
            await outs.out.push(i)

    async def drain_a_first(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.a:
            pass
        async for _ in ins.b:
            pass

    workflow = Workflow(buffer_size=buffer_size)
    src = workflow.add_stream(Stream(outs=["out"], fn=produce, name="src"))
    join = workflow.add_stream(Stream(["a", "b"], fn=drain_a_first, name="join"))
    src.pipe(join, input="a")
    src.pipe(join, input="b")
    return workflow


def input_stats(workflow: Workflow, step: str, port: str) -> dict[str, Any]:
    return workflow.stats()["streams"][step]["inputs"][port]


def copies_received(nodes: Sequence[Any], edges: Sequence[Any]) -> list[dict[int, int]]:
    """For a DAG listed in topological order: ``result[v][s]`` is how many copies of one item
    of source ``s`` node ``v`` receives (one per path). Nodes have ``index`` and ``ins``
    (empty for a source), edges ``source`` and ``target`` indices."""
    reach: list[dict[int, int]] = []
    for node in nodes:
        copies: dict[int, int] = {}
        if not node.ins:
            copies[node.index] = 1
        for e in edges:
            if e.target == node.index:
                for s, n in reach[e.source].items():
                    copies[s] = copies.get(s, 0) + n
        reach.append(copies)
    return reach


def assert_stats_identity(workflow: Workflow) -> None:
    """received == taken + dropped + discarded + buffered at every input."""
    for step, data in workflow.stats()["streams"].items():
        for port, s in data["inputs"].items():
            assert s["received"] == s["taken"] + s["dropped"] + s["discarded"] + s["buffered"], (
                step,
                port,
                s,
            )


class RecordingObserver:
    """An Rx observer that records what it sees (subscribe it with ``.subscribe(obs)``)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.completed = 0
        self.errors: list[Exception] = []

    def on_next(self, item: Any) -> None:
        self.items.append(item)

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)

    def on_completed(self) -> None:
        self.completed += 1


__all__ = [
    "Collector",
    "LeakError",
    "RecordingObserver",
    "assert_stats_identity",
    "broadcast_then_drain_one_input_first",
    "examples",
    "input_stats",
    "linear",
    "mapper",
    "mimo_rx",
    "race_cancel",
    "run_checked",
    "source",
    "until",
    "yield_to_loop",
]
