"""Child process of test_interrupt.py: runs a workflow until SIGINT (Ctrl-C) arrives.

Usage: ``python interrupt_child.py SCENARIO``. Prints ``ready`` once the scenario's state is
reached (the parent then sends SIGINT), and ``finally NAME`` from each user ``finally`` block
as it runs. Scenarios:

* ``paused``: a producer paused on a full input, a consumer waiting on something else.
* ``flowing``: items moving through three stages as fast as they can.
* ``executor``: a ``map_stream`` with a job running in a thread of the loop's executor.
* ``cold``: a cold observable whose thread is paused on a full hand-off.
* ``start``: the user's own ``asyncio.run(main())`` awaiting ``workflow.start()``.
* ``stray``: as ``paused``, but the child interrupts itself with a SIGINT delivered to a thread
  other than the main one (the kernel may pick any thread that does not block it), while the
  loop has nothing scheduled.
* ``slow_cleanup``: a stream whose ``finally`` awaits something long; ``cleanup`` is printed
  once it waits (a second SIGINT then interrupts it).
* ``blocking_cleanup``: the same with a ``finally`` that blocks in plain code, where the
  second SIGINT's ``KeyboardInterrupt`` is raised inside the stream itself.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import threading
import time
from typing import Any

import reactivex

from mimo_rx import Stream, Workflow, map_stream

BUFFER = 4  # every input's threshold


def say(line: str) -> None:
    print(line, flush=True)


def guarded(name: str, body: Any) -> Any:
    """Wrap a stream function so that its ``finally`` block reports that it ran."""

    async def fn(ins: Any, outs: Any, state: Any) -> None:
        try:
            await body(ins, outs, state)
        finally:
            say(f"finally {name}")

    fn.__name__ = name
    return fn


async def endless(ins: Any, outs: Any, state: Any) -> None:
    for i in itertools.count():
        await outs.y.push(i)


async def forward(ins: Any, outs: Any, state: Any) -> None:
    async for item in ins.x:
        await outs.y.push(item)


async def count_then_announce(ins: Any, outs: Any, state: Any) -> None:
    seen = 0
    async for _ in ins.x:
        seen += 1
        if seen == state["ready_after"]:
            say("ready")


async def take_one_then_wait(ins: Any, outs: Any, state: Any) -> None:
    await ins.x.pop()
    state["got"] = True
    await asyncio.Event().wait()


def watch_until_paused(wf: Workflow, consumer: Stream) -> Any:
    """A stream body that says ``ready`` once the consumer took an item and its producer has
    filled the input (so it is paused now), then waits on something that never happens."""

    def received() -> int:
        (step,) = (step for step in wf.steps if step.stream is consumer)
        return int(wf.stats()["streams"][step.name]["inputs"]["x"]["received"])

    async def watch(ins: Any, outs: Any, state: Any) -> None:
        # Polling the stats is the point: nothing else tells that the producer is paused.
        for _ in itertools.count():
            if consumer.state.get("got") and received() >= BUFFER:
                break
            await asyncio.sleep(0.001)
        say("ready")
        if consumer.state.get("stray"):
            interrupt_from_another_thread()
        await asyncio.Event().wait()

    return watch


def interrupt_from_another_thread() -> None:
    def deliver() -> None:
        time.sleep(0.2)  # the loop is idle by now
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    threading.Thread(target=deliver, daemon=True).start()


def build(scenario: str) -> Workflow:
    wf = Workflow(buffer_size=BUFFER)
    if scenario in ("paused", "start", "stray"):
        consumer = Stream(
            ["x"], fn=guarded("consumer", take_one_then_wait), state={"stray": scenario == "stray"}
        )
        producer = wf.add_stream(Stream(outs=["y"], fn=guarded("producer", endless)))
        producer.pipe(wf.add_stream(consumer))
        wf.add_stream(Stream(fn=guarded("watcher", watch_until_paused(wf, consumer))))
    elif scenario == "flowing":
        producer = wf.add_stream(Stream(outs=["y"], fn=guarded("producer", endless)))
        middle = wf.add_stream(Stream(["x"], ["y"], fn=guarded("middle", forward)))
        counter = guarded("consumer", count_then_announce)
        sink = Stream(["x"], fn=counter, state={"ready_after": 2_000})
        producer.pipe(middle).pipe(wf.add_stream(sink))
    elif scenario == "executor":

        def slow(item: int) -> int:
            time.sleep(0.05)  # a job the thread cannot be interrupted in
            return item

        producer = wf.add_stream(Stream(outs=["y"], fn=guarded("producer", endless)))
        stage = wf.add_stream(map_stream(slow, concurrency=2))
        sink = Stream(["x"], fn=guarded("consumer", count_then_announce), state={"ready_after": 3})
        producer.pipe(stage).pipe(wf.add_stream(sink))
    elif scenario == "cold":
        source = wf.add_source(reactivex.from_iterable(itertools.count()), name="cold")
        consumer = Stream(["x"], fn=guarded("consumer", take_one_then_wait))
        source.pipe(wf.add_stream(consumer))
        wf.add_stream(Stream(fn=guarded("watcher", watch_until_paused(wf, consumer))))
    elif scenario in ("slow_cleanup", "blocking_cleanup"):

        async def slow(ins: Any, outs: Any, state: Any) -> None:
            try:
                say("ready")
                await asyncio.Event().wait()
            finally:
                # the impatient user presses Ctrl-C again while this runs
                if scenario == "slow_cleanup":
                    asyncio.get_running_loop().call_soon(say, "cleanup")  # once suspended
                    await asyncio.sleep(30)
                else:
                    say("cleanup")
                    time.sleep(30)  # noqa: ASYNC251 - blocking on purpose

        wf.add_stream(Stream(fn=guarded("slow", slow)))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    return wf


def main() -> None:
    scenario = sys.argv[1]
    wf = build(scenario)
    try:
        if scenario == "start":

            async def user_main() -> None:
                try:
                    await wf.start()
                finally:
                    say("finally user_main")

            asyncio.run(user_main())
        else:
            wf.run()
    finally:
        say("finally main")


if __name__ == "__main__":
    main()
