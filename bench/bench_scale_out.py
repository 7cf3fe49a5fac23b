"""Scale-out benchmark: one CPU-bound stage, serial on the loop vs map_stream on executors.

Usage::

    python bench/bench_scale_out.py              # 1e4 items x 3000 SHA-256 rounds, 3 runs (~6 min)
    python bench/bench_scale_out.py --quick      # 2000 items x 1000 rounds, 3 runs (~1 min)
    python bench/bench_scale_out.py --items 10000 --rounds 3000 --batch 50 --repeat 5

The graph is ``source -> stage -> sink`` and only the stage changes:

* serial on the loop: a Stream that computes ``work(item)`` inline (``async for`` + ``push``);
* ``map_stream(work, concurrency=C, executor=E)`` with E a 2-thread pool, a 2-process pool,
  or a Dask ``LocalCluster`` (2 worker processes, 1 thread each) via ``client.get_executor()``;
* the same executors with *batches*, one job per ``--batch`` items, which divides the per-job
  overhead by the batch size: ``operator(ops.buffer_with_count(50)) ->
  map_stream(work_batch) -> operator(ops.flat_map(list))``; Dask also with ``--dask-batch``
  items per job (200): by the README's rule a job should cost ~10x the executor's per-job
  overhead, which is ~4 ms for a LocalCluster on 2 cores;
* a ceiling row: ``ProcessPoolExecutor.map(work, chunksize=50)`` alone, no graph. It shows what
  the machine allows at that moment (other load on a shared machine takes cores away): judge
  the other rows against it, not only against 2x.

Each case runs once as warm-up, then ``--repeat`` timed runs, interleaved round by round so that
background load hits all cases alike; the table shows the median and speed-up over serial. A
second table gives the per-item overhead of each executor, measured with a trivial function:
(median time - serial time) / items. Every result is checked against ``work`` run in-process.
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import hashlib
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # mimo_rx from the repo

import reactivex.operators as ops

from mimo_rx import Stream, Workflow, map_stream, operator

# -- the per-item work (module level: process pools pickle it by reference) -----------------


def work(item: int, rounds: int) -> int:
    """Pure-Python CPU work holding the GIL: ``rounds`` SHA-256 of 8 bytes (~0.45 us each)."""
    digest = item.to_bytes(8, "little")
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest[0]


def work_batch(batch: list[int], rounds: int) -> list[int]:
    return [work(item, rounds) for item in batch]


def noop(item: int) -> int:
    return item


def noop_batch(batch: list[int]) -> list[int]:
    return batch


# -- the graph -------------------------------------------------------------------------------


def source(n: int) -> Stream:
    async def numbers(ins: Any, outs: Any, state: Any) -> None:
        for i in range(n):
            await outs.y.push(i)

    return Stream(outs=["y"], fn=numbers, name="source")


def serial(fn: Callable[[int], int]) -> Stream:
    async def inline(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            await outs.y.push(fn(item))

    return Stream(["x"], ["y"], fn=inline, name="serial")


class Sink(Stream):
    IN = ("x",)

    def __init__(self) -> None:
        super().__init__(name="sink")
        self.items: list[int] = []

    async def run(self, ins: Any, outs: Any) -> None:
        async for item in ins.x:
            self.items.append(item)


def run_graph(stages: Iterable[Stream], n: int) -> tuple[float, list[int]]:
    """Run ``source(n) -> stages -> sink`` in a fresh loop; return (seconds, results)."""
    workflow = Workflow()
    sink = Sink()
    steps = [workflow.add_stream(s) for s in (source(n), *stages, sink)]
    for a, b in itertools.pairwise(steps):
        a.pipe(b)
    started = time.perf_counter()
    asyncio.run(workflow.start())
    return time.perf_counter() - started, sink.items


# -- cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    # "loop" (inline), "tasks" (async fn on the loop), "ceiling" (plain pool.map, no graph)
    # or an executor's key
    runs_on: str
    concurrency: int = 1
    batch: int = 0  # 0: one job per item
    times: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class Work:
    """What one table measures: the per-item function, its batched and its async forms."""

    fn: Callable[[int], int]
    fn_batch: Callable[[list[int]], list[int]]
    fn_async: Callable[[int], Awaitable[int]]


def stages(case: Case, executors: dict[str, Any], w: Work) -> list[Stream]:
    if case.runs_on == "loop":
        return [serial(w.fn)]
    if case.runs_on == "tasks":
        return [map_stream(w.fn_async, concurrency=case.concurrency)]
    executor = executors[case.runs_on]
    if case.batch:
        # The README's recipe for cheap items: one job per batch of items.
        job = map_stream(w.fn_batch, concurrency=case.concurrency, executor=executor)
        return [operator(ops.buffer_with_count(case.batch)), job, operator(ops.flat_map(list))]
    return [map_stream(w.fn, concurrency=case.concurrency, executor=executor)]


def run_plain_pool(
    pool: concurrent.futures.Executor, fn: Callable[[int], int], n: int, chunk: int
) -> tuple[float, list[int]]:
    """The machine's ceiling: the same work on the same pool, no mimo_rx, no back-pressure."""
    started = time.perf_counter()
    items = list(pool.map(fn, range(n), chunksize=chunk))
    return time.perf_counter() - started, items


def measure(cases: list[Case], executors: dict[str, Any], n: int, repeat: int, w: Work) -> None:
    expected = [w.fn(i) for i in range(n)]
    for round_ in range(repeat + 1):  # round 0 is the warm-up
        order = cases[round_ % len(cases) :] + cases[: round_ % len(cases)]
        for case in order:
            if case.error:
                continue
            try:
                if case.runs_on == "ceiling":
                    seconds, items = run_plain_pool(executors["processes"], w.fn, n, case.batch)
                else:
                    seconds, items = run_graph(stages(case, executors, w), n)
            except Exception as exc:  # reported in the table, never as a number
                case.error = f"{type(exc).__name__}: {exc}"[:80]
                continue
            if items != expected:
                case.error = "wrong result"
            elif round_:
                case.times.append(seconds)
        log(f"  round {round_}/{repeat} done" if round_ else "  warm-up done")


def shown(case: Case) -> str:
    return "-" if case.runs_on == "ceiling" else str(case.concurrency)


def median(case: Case) -> float:
    return statistics.median(case.times)


def spread(case: Case) -> float:
    return (max(case.times) - min(case.times)) / median(case)


# -- main ------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_dask(workers: int) -> tuple[Any, Any, float]:
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not 8787, which may be taken
    )
    client = Client(cluster)
    return cluster, client, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3000, help="SHA-256 rounds per item")
    parser.add_argument("--batch", type=int, default=50, help="items per job in batched rows")
    parser.add_argument(
        "--dask-batch",
        type=int,
        default=200,
        help="items per job in the batched Dask row (its per-job cost is ~20x a process pool's)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (>= 3)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overhead-items", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="2000 items x 1000 rounds")
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.rounds, args.overhead_items = 2000, 1000, 500
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    w = args.workers
    rounds = args.rounds

    async def work_async(item: int) -> int:
        return work(item, rounds)

    async def noop_async(item: int) -> int:
        return item

    cpu_work = Work(
        functools.partial(work, rounds=rounds),
        functools.partial(work_batch, rounds=rounds),
        work_async,
    )
    cheap_work = Work(noop, noop_batch, noop_async)

    executors: dict[str, Any] = {
        "threads": concurrent.futures.ThreadPoolExecutor(max_workers=w),
        "processes": concurrent.futures.ProcessPoolExecutor(max_workers=w),
    }
    executors["processes"].submit(noop, 0).result()  # fork the workers before Dask's threads
    dask_note = "Dask not measured (--no-dask)"
    clusters: list[tuple[Any, Any]] = []
    if not args.no_dask:
        try:
            import dask
            import distributed  # noqa: F401 - load its config before set() below
        except ImportError:
            dask_note = "Dask not installed: pip install mimo_rx[dask]"
        else:
            cluster, client, startup = start_dask(w)
            # A second cluster whose workers do not sample their threads' stacks every 10 ms
            # (distributed.worker.profile): see bench_dask_profiler.py.
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                quiet_cluster, quiet_client, _ = start_dask(w)
            clusters += [(cluster, client), (quiet_cluster, quiet_client)]
            # pure=False: items are not hashed into task keys (less client work per job).
            executors["dask"] = client.get_executor(pure=False)
            executors["dask-quiet"] = quiet_client.get_executor(pure=False)
            dask_note = (
                f"Dask LocalCluster start-up (not timed): {startup:.1f} s; two clusters stay up "
                "for the whole run (default config, and worker profiler off)"
            )

    cpu = [
        Case("serial on the loop", "loop"),
        Case(f"thread pool ({w} threads)", "threads", concurrency=2 * w),
        Case(f"process pool ({w} processes)", "processes", concurrency=4 * w),
        Case(f"process pool, batches of {args.batch}", "processes", 2 * w, args.batch),
        Case(
            f"ceiling: ProcessPoolExecutor.map(chunksize={args.batch}), no mimo_rx",
            "ceiling",
            batch=args.batch,
        ),
    ]
    cheap = [
        Case("serial on the loop", "loop"),
        Case("async def, tasks on the loop", "tasks", concurrency=8),
        Case(f"thread pool ({w} threads)", "threads", concurrency=2 * w),
        Case(f"process pool ({w} processes)", "processes", concurrency=4 * w),
    ]
    if "dask" in executors:
        cpu += [
            Case(f"Dask LocalCluster ({w} workers)", "dask", concurrency=8 * w),
            Case(f"Dask LocalCluster, batches of {args.batch}", "dask", 2 * w, args.batch),
            Case(
                f"Dask LocalCluster, batches of {args.dask_batch}", "dask", 2 * w, args.dask_batch
            ),
            Case(
                f"Dask LocalCluster, batches of {args.dask_batch}, worker profiler off",
                "dask-quiet",
                2 * w,
                args.dask_batch,
            ),
        ]
        cheap.append(Case(f"Dask LocalCluster ({w} workers)", "dask", concurrency=8 * w))

    load_before = os.getloadavg()[0]
    log(f"CPU stage: {args.items:,} items x {rounds} rounds (~{0.45e-3 * rounds:.2f} ms/item)")
    measure(cpu, executors, args.items, args.repeat, cpu_work)
    log(f"overhead: {args.overhead_items:,} items of a trivial function")
    measure(cheap, executors, args.overhead_items, args.repeat, cheap_work)

    cmd = "python bench/bench_scale_out.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"### Scale-out: `{cmd.strip()}`\n")
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}; median of {args.repeat} runs after a "
        f"warm-up, interleaved; {dask_note}. Load average when it started: {load_before:.1f} "
        "(work of other processes competing for the same CPUs).\n"
    )
    print(f"CPU-bound stage: {args.items:,} items x {rounds} SHA-256 rounds each.\n")
    print("| stage runs on | concurrency | median s | speed-up vs serial | run spread |")
    print("|---|---:|---:|---:|---:|")
    base = median(cpu[0]) if cpu[0].times else float("nan")
    for case in cpu:
        if case.error:
            print(f"| {case.label} | {shown(case)} | error: {case.error} | | |")
            continue
        print(
            f"| {case.label} | {shown(case)} | {median(case):.2f} | "
            f"**{base / median(case):.2f}x** | {spread(case):.0%} |"
        )
    print(f"\nPer-item overhead: {args.overhead_items:,} items of a function that does nothing.\n")
    print("| stage runs on | concurrency | us per item | overhead vs serial, us/item |")
    print("|---|---:|---:|---:|")
    base_us = median(cheap[0]) / args.overhead_items * 1e6 if cheap[0].times else float("nan")
    for case in cheap:
        if case.error:
            print(f"| {case.label} | {case.concurrency} | error: {case.error} | |")
            continue
        us = median(case) / args.overhead_items * 1e6
        print(f"| {case.label} | {case.concurrency} | {us:,.1f} | {us - base_us:,.1f} |")

    for name in ("threads", "processes"):
        executors[name].shutdown()
    for cluster, client in clusters:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
