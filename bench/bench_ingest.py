"""W7: ingestion from application code into a running workflow, against the queues people use.

Two measurements, each alternated round by round (the order flips every round) and reported as
the median of per-round ratios (items/s of mimo_rx over the peer's), with their range:

* **threads**: 2 threads x N items each, sent from plain threads into an async consumer on the
  loop that counts and sums them. mimo_rx: ``inlet.send_threadsafe(x)`` -> outlet read with
  ``async for``. Peers: ``janus.Queue(1024)`` and ``culsans.Queue(1024)`` (``sync_q.put`` in the
  threads, ``async_q.get`` on the loop), and the hand-written
  ``asyncio.run_coroutine_threadsafe(q.put(x), loop).result()`` into ``asyncio.Queue(1024)``.
  Every case is bounded at 1024 items in flight (mimo_rx: ``buffer_size=1024``). Threads are
  involved, so the clock is wall time. Peak RSS growth of a mimo_rx run is measured in a fresh
  interpreter per run (imports first, then the kernel's peak counter is reset).
* **coroutine**: one coroutine sending N items with ``await inlet.send(x)``, read by another
  coroutine from an outlet, against ``await q.put(x)`` / ``await q.get()`` on
  ``asyncio.Queue(1024)``. Single-threaded: the clock is process CPU time.

Every run checks the count and the sum of what arrived. Usage::

    python bench/bench_ingest.py                 # N = 100,000 per thread, 7 rounds
    python bench/bench_ingest.py --n 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # mimo_rx from the repo, bench modules by name

from rss import _proc_status_kib, _reset_peak  # noqa: E402

from mimo_rx import Workflow  # noqa: E402

THREADS = 2
CAPACITY = 1024


# -- the thread cases: each returns (count, sum) of what the consumer got ---------------------


async def mimo_threads(n: int) -> tuple[int, int]:
    workflow = Workflow(buffer_size=CAPACITY)
    inlet = workflow.add_inlet()
    outlet = workflow.add_outlet()
    inlet.pipe(outlet)
    count = total = 0
    async with workflow.running():

        def produce() -> None:
            send = inlet.send_threadsafe
            for i in range(n):
                send(i)

        threads = [threading.Thread(target=produce) for _ in range(THREADS)]
        for t in threads:
            t.start()
        async for item in outlet:
            count += 1
            total += item
            if count == THREADS * n:
                break
        for t in threads:
            t.join()
    return count, total


async def _queue_threads(n: int, make: Callable[[], Any]) -> tuple[int, int]:
    queue = make()
    put = queue.sync_q.put

    def produce() -> None:
        for i in range(n):
            put(i)

    threads = [threading.Thread(target=produce) for _ in range(THREADS)]
    for t in threads:
        t.start()
    get = queue.async_q.get
    count = total = 0
    while count < THREADS * n:
        total += await get()
        count += 1
    for t in threads:
        t.join()
    queue.close()
    await queue.wait_closed()
    return count, total


async def janus_threads(n: int) -> tuple[int, int]:
    import janus

    return await _queue_threads(n, lambda: janus.Queue(CAPACITY))


async def culsans_threads(n: int) -> tuple[int, int]:
    import culsans

    return await _queue_threads(n, lambda: culsans.Queue(CAPACITY))


async def run_coroutine_threadsafe_threads(n: int) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int] = asyncio.Queue(CAPACITY)

    def produce() -> None:
        for i in range(n):
            asyncio.run_coroutine_threadsafe(queue.put(i), loop).result()

    threads = [threading.Thread(target=produce) for _ in range(THREADS)]
    for t in threads:
        t.start()
    count = total = 0
    while count < THREADS * n:
        total += await queue.get()
        count += 1
    for t in threads:
        await asyncio.to_thread(t.join)
    return count, total


# -- the coroutine cases ------------------------------------------------------------------------


async def mimo_coroutine(n: int) -> tuple[int, int]:
    workflow = Workflow(buffer_size=CAPACITY)
    inlet = workflow.add_inlet()
    outlet = workflow.add_outlet()
    inlet.pipe(outlet)
    count = total = 0
    async with workflow.running():

        async def produce() -> None:
            send = inlet.send
            for i in range(n):
                await send(i)
            inlet.close()

        producer = asyncio.create_task(produce())
        async for item in outlet:
            count += 1
            total += item
        await producer
    return count, total


async def queue_coroutine(n: int) -> tuple[int, int]:
    queue: asyncio.Queue[int | None] = asyncio.Queue(CAPACITY)

    async def produce() -> None:
        put = queue.put
        for i in range(n):
            await put(i)
        await put(None)

    producer = asyncio.create_task(produce())
    count = total = 0
    get = queue.get
    while (item := await get()) is not None:
        count += 1
        total += item
    await producer
    return count, total


# -- timing -------------------------------------------------------------------------------------


def timed(case: Callable[[int], Any], n: int, expected: tuple[int, int], clock: str) -> float:
    gc.collect()
    now = time.perf_counter if clock == "wall" else time.process_time
    started = now()
    result = asyncio.run(case(n))
    elapsed = now() - started
    if result != expected:
        raise AssertionError(f"{case.__name__}: got {result}, expected {expected}")
    return elapsed


def paired(
    mine: Callable[[int], Any],
    peer: Callable[[int], Any],
    n: int,
    expected: tuple[int, int],
    rounds: int,
    clock: str,
) -> list[float]:
    timed(mine, n, expected, clock)  # warm-up
    timed(peer, n, expected, clock)
    ratios = []
    for r in range(rounds):
        order = (mine, peer) if r % 2 == 0 else (peer, mine)
        times = {case: timed(case, n, expected, clock) for case in order}
        ratios.append(times[peer] / times[mine])  # items/s of mine over the peer's
    return sorted(ratios)


def report(title: str, ratios: list[float], target: float | None = None) -> None:
    line = (
        f"  {title}: median {statistics.median(ratios):.2f}x "
        f"(min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)"
    )
    if target is not None:
        met = sum(r >= target for r in ratios)
        line += f"; rounds >= {target}x: {met} of {len(ratios)}"
    print(line, flush=True)


def _rss_child(n: int) -> None:
    """In a fresh interpreter: reset the peak-RSS counter, run the mimo_rx thread case once,
    print the peak growth in MiB (what the run itself added, imports excluded)."""
    gc.collect()
    _reset_peak()
    baseline = _proc_status_kib("VmRSS")
    timed(mimo_threads, n, (THREADS * n, THREADS * n * (n - 1) // 2), "wall")
    peak = _proc_status_kib("VmHWM")
    print("nan" if baseline is None or peak is None else (peak - baseline) / 1024)


def _fresh_rss_growth(n: int) -> float | None:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", "--n", str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.strip()
    return None if out == "nan" else float(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="items per thread")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n
    if args.rss_child:
        _rss_child(n)
        return 0
    threads_expected = (THREADS * n, THREADS * n * (n - 1) // 2)
    print(
        f"W7 threads: {THREADS} threads x {n:,} items, {args.rounds} rounds, wall time; "
        "ratio = items/s of mimo_rx send_threadsafe over the peer's",
        flush=True,
    )
    peers = {
        "culsans.Queue(1024)": culsans_threads,
        "janus.Queue(1024)": janus_threads,
        "run_coroutine_threadsafe + asyncio.Queue(1024)": run_coroutine_threadsafe_threads,
    }
    for title, peer in peers.items():
        try:
            ratios = paired(mimo_threads, peer, n, threads_expected, args.rounds, "wall")
        except ImportError as exc:
            print(f"  {title}: skipped ({exc.name} not installed)")
            continue
        report(title, ratios, target=1.0)

    growth = [_fresh_rss_growth(n) for _ in range(3)]
    known = [g for g in growth if g is not None]
    if known:
        print(
            f"  mimo_rx peak RSS growth, fresh process per run: max {max(known):.1f} MiB "
            "(target <= 32 MiB)"
        )

    coroutine_expected = (THREADS * n, THREADS * n * (THREADS * n - 1) // 2)
    print(
        f"W7 coroutine: {THREADS * n:,} items, {args.rounds} rounds, CPU time; "
        "ratio = items/s of mimo_rx await inlet.send over asyncio.Queue.put",
        flush=True,
    )
    ratios = paired(
        mimo_coroutine, queue_coroutine, THREADS * n, coroutine_expected, args.rounds, "cpu"
    )
    report("asyncio.Queue(1024)", ratios, target=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
