"""Child process of test_service.py: ``workflow.run()`` and the termination signals.

Usage: ``python service_child.py SCENARIO``. The workflow pulls an endless async generator
into a slow consumer through a small buffer. The child prints ``ready`` once items flow (the
parent then signals it), ``draining`` when the consumer first sees that the source stopped
(drain scenarios), and at the end one of ``returned`` / ``KeyboardInterrupt``, then a line
``stats pulled=N delivered=M identity=True|False handler_restored=True|False``.

Scenarios: ``drain`` (a SIGTERM drains: run() returns), ``double`` (a second SIGTERM during
the drain), ``term_then_int`` (SIGINT during the drain), ``interrupt`` (SIGINT at once),
``term_at_start`` (the child sends itself SIGTERM from the first metrics snapshot, while run()
is still setting up: an ``async def`` source that was never started must still stop),
``term_before_run`` (SIGTERM once run() has installed its handler, before start() has made the
run) and ``term_while_opening`` (SIGTERM while an acknowledged source opens, before any stream
task exists; the source prints ``closed`` when closed): both lost the SIGTERM and ran forever.
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

    class Opening:
        """An endless acknowledged source that sends SIGTERM to its process from open()."""

        def __init__(self) -> None:
            self.next = 0

        async def open(self) -> None:
            say("ready")
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)  # the signal arrives while the run is set up

        async def fetch(self, max_items: int) -> Any:
            nonlocal pulled
            await asyncio.sleep(0.001)
            pulled += 1
            self.next += 1
            return [(self.next, self.next)]

        async def ack(self, tokens: Any) -> None:
            pass

        async def nack(self, tokens: Any) -> None:
            pass

        async def close(self) -> None:
            say("closed")

    workflow = Workflow(buffer_size=32)
    if scenario == "term_before_run":
        source = workflow.add_stream(Stream(outs=["out"], fn=ticker, name="endless"))
        validate = workflow._validate

        def terminate_then_validate() -> None:  # start()'s first call, before the run exists
            say("ready")
            os.kill(os.getpid(), signal.SIGTERM)
            validate()

        workflow._validate = terminate_then_validate  # type: ignore[method-assign]
    elif scenario == "term_while_opening":
        source = workflow.add_source(Opening(), name="endless")
    elif scenario == "term_at_start":
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
