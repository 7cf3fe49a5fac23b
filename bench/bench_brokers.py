"""W9: consuming 100k messages from Redis Streams / NATS JetStream, with acks, paired rounds.

Each round preloads 100,000 messages into a fresh stream (not timed), then times consuming
all of them, alternating the cases (the order flips every round) against the same local
server; the ratio is taken per round (items/s of a case / items/s of the hand-written loop).

Cases, per broker:

* ``hand-written``: the loop a user writes with the client library alone. Redis:
  ``XREADGROUP COUNT 100 BLOCK`` -> process -> one ``XACK`` per batch. NATS: ``fetch(100)``
  -> process -> ``msg.ack()`` each.
* ``source``: the same loop through ``RedisStreamSource`` / ``NatsSource`` (``fetch(100)`` ->
  process -> ``ack(tokens)``): what the source itself costs, without the engine.
* ``workflow``: ``workflow.add_source(source) -> map_stream -> sink``, the engine acking what
  the graph is done with (contract §12). Measured only when ``Workflow.add_source`` takes
  acknowledged sources (``max_in_flight=``); otherwise the report says so.

"process" is the same in every case: read the message's number and add it to a total, which
is checked at the end (every message counted once).

Usage (starts its own throwaway servers unless given URLs)::

    python bench/bench_brokers.py --rounds 5
    python bench/bench_brokers.py --broker redis --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]  # mimo_rx; tests/servers.py

N = 100_000
BATCH = 100
Case = Callable[[str, str, int], Awaitable[int]]  # (url, stream, n) -> total


def expected_total(n: int) -> int:
    return n * (n - 1) // 2


def engine_takes_ack_sources() -> bool:
    from mimo_rx import Workflow

    return "max_in_flight" in inspect.signature(Workflow.add_source).parameters


# -- Redis ------------------------------------------------------------------------------------


async def redis_preload(url: str, stream: str, n: int) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        for start in range(0, n, 5000):
            async with client.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + 5000)):
                    pipe.xadd(stream, {"n": str(i)})
                await pipe.execute()
    finally:
        await client.aclose()


async def redis_hand_written(url: str, stream: str, n: int) -> int:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        await client.xgroup_create(stream, "bench", id="0", mkstream=True)
        total = seen = 0
        while seen < n:
            response = await client.xreadgroup(
                "bench", "hand", {stream: ">"}, count=BATCH, block=1000
            )
            if not response:
                continue
            entries = response[0][1]
            for _, fields in entries:
                total += int(fields["n"])
            seen += len(entries)
            await client.xack(stream, "bench", *[entry_id for entry_id, _ in entries])
        return total
    finally:
        await client.aclose()


def redis_source(url: str, stream: str) -> Any:
    from mimo_rx.sources import RedisStreamSource

    return RedisStreamSource(url, stream, "bench", "source")


def redis_number(entry: Any) -> int:
    return int(entry.fields["n"])


# -- NATS -------------------------------------------------------------------------------------


async def nats_preload(url: str, stream: str, n: int) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(name=stream, subjects=[f"{stream}.>"])
        for i in range(n - 1):
            await nc.publish(f"{stream}.x", str(i).encode())
            if i % 5000 == 4999:
                await nc.flush()
        # the last one with JetStream's ack: the stream stores one connection's messages in
        # order, so once it is stored, all are
        await nc.jetstream().publish(f"{stream}.x", str(n - 1).encode())
    finally:
        await nc.close()


async def nats_hand_written(url: str, stream: str, n: int) -> int:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(durable_name="hand", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
        await js.add_consumer(stream, config=config)
        sub = await js.pull_subscribe_bind(durable="hand", stream=stream)
        total = seen = 0
        while seen < n:
            try:
                msgs = await sub.fetch(BATCH, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                total += int(msg.data)
                await msg.ack()
            seen += len(msgs)
        await nc.flush()
        return total
    finally:
        await nc.close()


def nats_source(url: str, stream: str) -> Any:
    from mimo_rx.sources import NatsSource

    return NatsSource(url, stream, "source")


def nats_number(msg: Any) -> int:
    return int(msg.data)


# -- the cases built on the sources ----------------------------------------------------------


def source_loop(make: Callable[[str, str], Any], number: Callable[[Any], int]) -> Case:
    async def run(url: str, stream: str, n: int) -> int:
        source = make(url, stream)
        await source.open()
        try:
            total = seen = 0
            while seen < n:
                batch = await source.fetch(BATCH)
                for _, item in batch:
                    total += number(item)
                seen += len(batch)
                await source.ack([token for token, _ in batch])
            return total
        finally:
            await source.close()

    return run


def workflow_case(make: Callable[[str, str], Any], number: Callable[[Any], int]) -> Case:
    async def run(url: str, stream: str, n: int) -> int:
        from mimo_rx import Stream, Workflow, map_stream

        workflow = Workflow()
        result = {"total": 0, "seen": 0}

        async def sink(ins: Any, outs: Any, state: dict[str, Any]) -> None:
            async for x in ins.x:
                result["total"] += x
                result["seen"] += 1
                if result["seen"] == n:
                    workflow.stop()  # drains and flushes the acks before start() returns

        async def parse(item: Any) -> int:  # on the loop (a plain def would go to a thread)
            return number(item)

        source = workflow.add_source(make(url, stream), max_in_flight=1000)
        numbers = workflow.add_stream(map_stream(parse))
        source.pipe(numbers).pipe(workflow.add_stream(Stream(ins=["x"], fn=sink)))
        await workflow.start()
        return result["total"]

    return run


BROKERS: dict[str, tuple[Callable[[str, str, int], Awaitable[None]], dict[str, Case]]] = {
    "redis": (
        redis_preload,
        {
            "hand-written": redis_hand_written,
            "source": source_loop(redis_source, redis_number),
            "workflow": workflow_case(redis_source, redis_number),
        },
    ),
    "nats": (
        nats_preload,
        {
            "hand-written": nats_hand_written,
            "source": source_loop(nats_source, nats_number),
            "workflow": workflow_case(nats_source, nats_number),
        },
    ),
}


async def timed(
    preload: Callable[[str, str, int], Awaitable[None]], case: Case, url: str, n: int
) -> float:
    stream = f"W9{uuid.uuid4().hex[:8]}"
    await preload(url, stream, n)
    started = time.perf_counter()
    total = await case(url, stream, n)
    seconds = time.perf_counter() - started
    if total != expected_total(n):
        raise AssertionError(f"wrong total {total} (expected {expected_total(n)})")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--broker", choices=("redis", "nats", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=N)
    parser.add_argument("--redis", help="a server's URL (default: start a throwaway one)")
    parser.add_argument("--nats", help="a server's URL (default: start a throwaway one)")
    args = parser.parse_args()

    import servers  # tests/servers.py: the throwaway servers of the test suite

    with ExitStack() as stack:
        for broker in ("redis", "nats") if args.broker == "both" else (args.broker,):
            url = getattr(args, broker) or stack.enter_context(
                servers.start_redis() if broker == "redis" else servers.start_nats()
            )
            preload, cases = BROKERS[broker]
            labels = [label for label in cases if label != "workflow"]
            if engine_takes_ack_sources():
                labels.append("workflow")
            else:
                print(
                    f"{broker}: workflow case not measured: this mimo_rx has no add_source "
                    "for acknowledged sources"
                )
            seconds: dict[str, list[float]] = {label: [] for label in labels}
            for round_ in range(args.rounds):
                order = labels if round_ % 2 == 0 else labels[::-1]
                for label in order:
                    seconds[label].append(asyncio.run(timed(preload, cases[label], url, args.n)))
            base = seconds["hand-written"]
            for label in labels:
                mine = seconds[label]
                rate = args.n / statistics.median(mine)
                line = f"W9 {broker}, n = {args.n:,}, {args.rounds} rounds: {label}: {rate:,.0f}/s"
                if label != "hand-written":
                    ratios = sorted(b / m for m, b in zip(mine, base, strict=True))
                    line += (
                        f"; vs hand-written: median of paired ratios "
                        f"{statistics.median(ratios):.2f}x (min {ratios[0]:.2f}x, "
                        f"max {ratios[-1]:.2f}x)"
                    )
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
