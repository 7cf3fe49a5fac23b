"""Orders from a Redis stream: at-least-once, several worker processes, a dead-letter branch.

A producer writes orders to the stream ``orders``; N worker processes run the same workflow on
the consumer group ``billing``. Each order is priced (a malformed one fails), a priced order is
stored in the hash ``orders:done`` (keyed by order id: storing it again is harmless), a failed
one goes, through the pricing step's ``errors`` output, to the stream ``orders:failed``. An
entry is acked only once the graph is done with it, so a worker that is killed loses nothing:
its entries are claimed by another worker after ``claim_idle``.

    orders (RedisStreamSource) --> price (on_error="resume") --y------> store  (orders:done)
                                                             \\-errors-> failed (orders:failed)

With ``--kill-one`` the coordinator SIGKILLs one worker mid-run; the summary still accounts for
every order (done + failed == produced, nothing missing). Run it with::

    python examples/orders_from_redis.py --spawn-redis --workers 3 --kill-one
    python examples/orders_from_redis.py --redis redis://127.0.0.1:6379/0 --workers 2

(``--spawn-redis`` starts a throwaway ``redis-server`` on a free port and stops it at the end.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mimo_rx import Failure, Stream, Workflow, map_stream
from mimo_rx.sources import RedisStreamSource, StreamEntry

STREAM, GROUP = "orders", "billing"
DONE, FAILED, DEAD = "orders:done", "orders:failed", "orders:dead"
CLAIM_IDLE_S = 2.0


# -- the workflow (one per worker process) -----------------------------------------------------


def price(entry: StreamEntry) -> dict[str, str]:
    """An order with its total; a malformed order raises (and becomes a Failure)."""
    quantity, unit = int(entry.fields["quantity"]), float(entry.fields["unit_price"])
    return {"id": entry.fields["id"], "total": f"{quantity * unit:.2f}"}


class Store(Stream):
    """Stores each priced order in the hash ``orders:done``: id -> total."""

    IN = ["x"]

    def __init__(self, redis: Any) -> None:
        super().__init__(name="store")
        self.redis = redis

    async def run(self, ins: Any, outs: Any) -> None:
        async for order in ins.x:  # done (and then acked) when this asks for the next one
            await self.redis.hset(DONE, order["id"], order["total"])


class Failed(Stream):
    """Adds each failure to the stream ``orders:failed``: the order's id and the error."""

    IN = ["x"]

    def __init__(self, redis: Any) -> None:
        super().__init__(name="failed")
        self.redis = redis

    async def run(self, ins: Any, outs: Any) -> None:
        async for failure in ins.x:
            assert isinstance(failure, Failure)
            entry = failure.item
            await self.redis.xadd(FAILED, {"id": entry.fields["id"], "error": repr(failure.error)})


def worker(url: str) -> None:
    """Runs the workflow until SIGTERM: drains, acks, returns."""
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    workflow = Workflow()
    orders = workflow.add_source(
        RedisStreamSource(
            url, STREAM, GROUP, claim_idle=CLAIM_IDLE_S, max_deliveries=5, dead_letter=DEAD
        ),
        name="orders",
        max_in_flight=200,
        commit_interval=0.2,
    )
    priced = workflow.add_stream(map_stream(price, name="price", on_error="resume"))
    orders.pipe(priced).pipe(workflow.add_stream(Store(client)))
    priced.pipe(workflow.add_stream(Failed(client)), output="errors")
    workflow.run()


# -- the producer and the coordinator -------------------------------------------------------------


def produce(client: Any, start: int, stop: int) -> int:
    """Writes orders ``start`` to ``stop``, every 50th malformed; returns how many are."""
    pipe = client.pipeline(transaction=False)
    for i in range(start, stop):
        quantity = "two" if i % 50 == 49 else str(1 + i % 5)
        pipe.xadd(STREAM, {"id": str(i), "quantity": quantity, "unit_price": "9.99"})
    pipe.execute()
    return sum(1 for i in range(start, stop) if i % 50 == 49)


def failed_ids(client: Any) -> set[str]:
    """The ids of the orders that failed (the graph's errors, and the dead letters)."""
    return {fields["id"] for name in (FAILED, DEAD) for _, fields in client.xrange(name)}


@contextmanager
def spawned_redis() -> Iterator[str]:
    """A throwaway redis-server on a free port (nothing saved); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--spawn-redis needs redis-server (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        argv = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp]
        server = subprocess.Popen([*argv, "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(timeout=10)


def coordinate(
    url: str, count: int, workers: int, kill_one: bool, timeout: float
) -> dict[str, Any]:
    """Starts the workers, produces, (kills one), waits until every order is accounted for."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    client.delete(STREAM, DONE, FAILED, DEAD)
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--redis", url]
    procs = [subprocess.Popen(command) for _ in range(workers)]
    killed = second_half = False
    try:
        malformed = produce(client, 0, count // 2)
        deadline = time.monotonic() + timeout
        while True:
            done = client.hlen(DONE) + len(failed_ids(client))
            if not second_half and done >= count // 4:  # mid-run
                if kill_one:
                    procs[0].kill()  # SIGKILL: its entries in flight go to the others
                    killed = True
                malformed += produce(client, count // 2, count)
                second_half = True
            if done >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # drains, acks, returns
        for proc in procs:
            proc.wait(timeout=30)
    failed = failed_ids(client)
    done_ids = set(client.hkeys(DONE))
    missing = {str(i) for i in range(count)} - done_ids - failed
    pending = client.xpending(STREAM, GROUP)["pending"]
    client.close()
    report = {
        "produced": count,
        "malformed": malformed,
        "done": len(done_ids),
        "failed": len(failed),
        "missing": len(missing),
        "pending": pending,
        "killed": killed,
        "exit codes": [proc.returncode for proc in procs],
    }
    print(
        f"produced {count} orders ({malformed} malformed) for {workers} worker(s)"
        f"{', one killed with SIGKILL' if killed else ''}: "
        f"{report['done']} done, {report['failed']} failed, {report['missing']} missing, "
        f"{pending} still pending"
    )
    return report


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the server's URL")
    parser.add_argument("--spawn-redis", action="store_true", help="start a throwaway server")
    parser.add_argument("--workers", type=int, default=2, help="consumer processes")
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--kill-one", action="store_true", help="SIGKILL a worker mid-run")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.redis)
        return None
    if args.spawn_redis:
        with spawned_redis() as url:
            return coordinate(url, args.orders, args.workers, args.kill_one, args.timeout)
    return coordinate(args.redis, args.orders, args.workers, args.kill_one, args.timeout)


if __name__ == "__main__":
    main()
