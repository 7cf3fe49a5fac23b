"""Child process of test_service.py: ``workflow.run()`` and the termination signals.

Usage: ``python service_child.py SCENARIO``. The workflow pulls an endless async generator
into a slow consumer through a small buffer. The child prints ``ready`` once items flow (the
parent then signals it), ``draining`` when the consumer first sees that the source stopped
(drain scenarios), and at the end one of ``returned`` / ``KeyboardInterrupt``, then a line
``stats pulled=N delivered=M identity=True|False handler_restored=True|False``.

Scenarios: ``drain`` (a SIGTERM drains: run() returns), ``double`` (a second SIGTERM during
the drain), ``term_then_int`` (SIGINT during the drain), ``interrupt`` (SIGINT at once),
``term_at_start`` (the child sends itself SIGTERM from the first metrics snapshot, while run()
is still setting up: an ``async def`` source that was never started must still stop).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from mimo_rx import Stream, Workflow

SLOW_DRAIN = {"double", "term_then_int"}  # the drain takes long enough to signal again


def say(line: str) -> None:
    print(line, flush=True)


def main(scenario: str) -> None:
    pulled = 0
    delivered = 0

    async def endless() -> Any:
        nonlocal pulled
        n = 0
        while True:
            await asyncio.sleep(0.001)
            pulled += 1
            yield n
            n += 1

    async def consume(ins: Any, outs: Any, state: Any) -> None:
        nonlocal delivered
        async for _ in ins.x:
            delivered += 1
            if delivered == 20 and scenario != "term_at_start":
                say("ready")
            await asyncio.sleep(0.05 if scenario in SLOW_DRAIN else 0.002)

    async def ticker(ins: Any, outs: Any, state: Any) -> None:
        nonlocal pulled
        while True:
            pulled += 1
            await outs.out.push(pulled)
            await asyncio.sleep(0.001)

    workflow = Workflow(buffer_size=32)
    if scenario == "term_at_start":
        source = workflow.add_stream(Stream(outs=["out"], fn=ticker, name="endless"))
        sent: list[bool] = []

        def terminate(snapshot: Any) -> None:
            if not sent:
                sent.append(True)
                say("ready")
                os.kill(os.getpid(), signal.SIGTERM)

        workflow.metrics(1.0).subscribe(terminate)
    else:
        source = workflow.add_source(endless(), name="endless")
    sink = workflow.add_stream(Stream(["x"], fn=consume, name="consume"))
    source.pipe(sink)

    previous = signal.getsignal(signal.SIGTERM)
    outcome = "returned"
    try:
        workflow.run()
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    say(outcome)
    inputs = workflow.stats()["streams"]["consume"]["inputs"]["x"]
    identity = inputs["received"] == (
        inputs["taken"] + inputs["dropped"] + inputs["discarded"] + inputs["buffered"]
    )
    restored = signal.getsignal(signal.SIGTERM) is previous
    say(
        f"stats pulled={pulled} delivered={delivered} received={inputs['received']} "
        f"identity={identity} handler_restored={restored}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
