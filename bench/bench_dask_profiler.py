"""Does Dask's worker profiler slow a CPU-bound pure-Python stage? Serial vs Dask, both ways.

Usage::

    python bench/bench_dask_profiler.py                 # 4000 items x 3000 rounds, 5 rounds
    python bench/bench_dask_profiler.py --items 10000 --repeat 3

Every Dask worker samples its threads' stacks every 10 ms by default
(``distributed.worker.profile``); each sample takes the GIL from the task computing. This runs
``source -> buffer_with_count(batch) -> map_stream(work_batch, executor=dask) -> flat_map ->
sink`` (the recipe of ``bench_scale_out.py``) on a fresh 2-worker LocalCluster per run, with the
profiler on (Dask's default) and off, interleaved round by round with the stage run serially on
the loop, and prints the speed-ups over serial (medians). Each run starts its own cluster, so
the two configurations never share the CPUs; cluster start-up is not timed.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reactivex.operators as ops
from bench_scale_out import log, run_graph, serial, start_dask, work, work_batch

from mimo_rx import map_stream, operator


def dask_run(profile: bool, n: int, rounds: int, batch: int, workers: int) -> tuple[float, Any]:
    import dask
    import distributed  # noqa: F401 - loads its config, which the set() below must not replace

    with dask.config.set({"distributed.worker.profile.enabled": profile}):
        cluster, client, _ = start_dask(workers)
    try:
        job = map_stream(
            functools.partial(work_batch, rounds=rounds),
            concurrency=2 * workers,
            executor=client.get_executor(pure=False),
        )
        stages = [operator(ops.buffer_with_count(batch)), job, operator(ops.flat_map(list))]
        return run_graph(stages, n)
    finally:
        client.close()
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3000, help="SHA-256 rounds per item")
    parser.add_argument("--batch", type=int, default=200, help="items per Dask job")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    expected = [work(i, args.rounds) for i in range(args.items)]
    times: dict[str, list[float]] = {"serial": [], "profiler on": [], "profiler off": []}
    for round_ in range(args.repeat + 1):  # round 0 is the warm-up
        runs = [
            (
                "serial",
                lambda: run_graph(
                    [serial(functools.partial(work, rounds=args.rounds))], args.items
                ),
            ),
            (
                "profiler on",
                lambda: dask_run(True, args.items, args.rounds, args.batch, args.workers),
            ),
            (
                "profiler off",
                lambda: dask_run(False, args.items, args.rounds, args.batch, args.workers),
            ),
        ]
        shift = round_ % len(runs)
        for label, run in runs[shift:] + runs[:shift]:
            seconds, items = run()
            if items != expected:
                raise SystemExit(f"{label}: wrong result")
            if round_:
                times[label].append(seconds)
        log(f"  round {round_}/{args.repeat} done" if round_ else "  warm-up done")
    base = statistics.median(times["serial"])
    print(
        f"{args.items:,} items x {args.rounds} SHA-256 rounds, Dask batches of {args.batch}, "
        f"{args.workers} workers; median of {args.repeat} interleaved runs\n"
    )
    print("| stage runs on | median s | speed-up vs serial | run spread |")
    print("|---|---:|---:|---:|")
    for label, ts in times.items():
        med = statistics.median(ts)
        print(f"| {label} | {med:.2f} | **{base / med:.2f}x** | {(max(ts) - min(ts)) / med:.0%} |")


if __name__ == "__main__":
    main()
