"""One worker process of the scale-out tests (tests/test_brokers_scale_out.py).

Usage: broker_worker.py redis|nats URL STREAM GROUP_OR_DURABLE WORKER_NAME OUT_FILE IDLE_S [HANG]

It runs a workflow ``source -> handle``: the source is a RedisStreamSource on the group (or a
NatsSource on the durable), ``handle`` appends one line ``<worker> <key> <time>`` per message to
OUT_FILE with one unbuffered ``os.write`` (a line is whole or absent even under SIGKILL). The
engine acks a message once ``handle`` asks for the next one, so a message acked is a message
written. ``key`` is the Redis entry's field ``n`` or the NATS message's payload. It runs until
SIGTERM (``workflow.run()`` drains, acks, returns) or SIGKILL.

With HANG > 0, once it has handled HANG messages it writes ``<worker> hung 0`` and stops
working, holding that message and every message fetched after it (unacked), so that the test's
SIGKILL finds it holding messages for certain.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from mimo_rx import Stream, Workflow
from mimo_rx.sources import NatsSource, RedisStreamSource


def make_source(kind: str, url: str, stream: str, group: str, name: str, idle: float) -> Any:
    if kind == "redis":
        return RedisStreamSource(url, stream, group, name, claim_idle=idle)
    return NatsSource(url, stream, group, ack_wait=idle)


def key_of(kind: str, item: Any) -> str:
    return str(item.fields["n"]) if kind == "redis" else item.data.decode()


def main(
    kind: str, url: str, stream: str, group: str, name: str, out: str, idle: str, hang: str = "0"
) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handle(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        count = 0
        async for item in ins.x:
            os.write(fd, f"{name} {key_of(kind, item)} {time.time():.3f}\n".encode())
            count += 1
            if count == int(hang):
                os.write(fd, f"{name} hung 0\n".encode())
                await asyncio.Event().wait()  # until SIGKILL

    workflow = Workflow()
    source = make_source(kind, url, stream, group, name, float(idle))
    messages = workflow.add_source(source, name="messages", max_in_flight=200, commit_interval=0.1)
    messages.pipe(workflow.add_stream(Stream(ins=["x"], fn=handle, name="handle")))
    os.write(fd, f"{name} ready 0\n".encode())
    try:
        workflow.run()
    finally:
        os.close(fd)


if __name__ == "__main__":
    main(*sys.argv[1:9])
