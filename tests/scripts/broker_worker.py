"""One worker process of the scale-out tests (tests/test_brokers_scale_out.py).

Usage: broker_worker.py redis|nats URL STREAM GROUP_OR_DURABLE WORKER_NAME OUT_FILE IDLE_S [HANG]

It consumes through the source's AckSource methods, as the engine does: fetch a batch, handle
each message, then ack the batch. Handling a message appends one line ``<worker> <key> <time>``
to OUT_FILE with one unbuffered ``os.write`` (a line is whole or absent even under SIGKILL), and
it happens before the ack, so a message acked is a message written. ``key`` is the Redis entry's
field ``n`` or the NATS message's payload. It runs until SIGTERM (or SIGKILL).

With HANG > 0, once it has handled HANG messages it writes ``<worker> hung 0`` and stops
working without acking the batch in hand, so that the test's SIGKILL finds it holding messages
(handled and not acked) for certain.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from mimo_rx.sources import NatsSource, RedisStreamSource


def make_source(kind: str, url: str, stream: str, group: str, name: str, idle: float) -> Any:
    if kind == "redis":
        return RedisStreamSource(url, stream, group, name, claim_idle=idle)
    return NatsSource(url, stream, group, ack_wait=idle)


def key_of(kind: str, item: Any) -> str:
    return str(item.fields["n"]) if kind == "redis" else item.data.decode()


async def main(
    kind: str, url: str, stream: str, group: str, name: str, out: str, idle: str, hang: str = "0"
) -> None:
    source = make_source(kind, url, stream, group, name, float(idle))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await source.open()
    os.write(fd, f"{name} ready 0\n".encode())
    count = 0
    try:
        while not stop.is_set():
            fetching = asyncio.ensure_future(source.fetch(100))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([fetching, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not fetching.done():
                fetching.cancel()
                break
            batch = fetching.result()
            for _token, item in batch:
                os.write(fd, f"{name} {key_of(kind, item)} {time.time():.3f}\n".encode())
                count += 1
                if count == int(hang):
                    os.write(fd, f"{name} hung 0\n".encode())
                    await asyncio.Event().wait()  # until SIGKILL
            await source.ack([token for token, _ in batch])
    finally:
        await source.close()
        os.close(fd)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:9]))
