"""Scale out: move one heavy stage onto other processes or a Dask cluster, with back-pressure.

    words  ->  stretch  map_stream(stretch, concurrency=8, executor=...)  ->  report
                        CPU-bound pure Python: 20 000 rounds of SHA-256 per word

The workflow is the same everywhere; only the ``executor`` handed to ``map_stream`` changes:

    python examples/scale_out.py                               # a local process pool
    python examples/scale_out.py --dask                        # a Dask LocalCluster, 2 workers
    python examples/scale_out.py --scheduler tcp://host:8786   # a running Dask cluster

At most ``concurrency`` words are in flight at once, results come back in input order, and the
report (a deliberately small buffer) paces the whole pipeline: while it is full, no new word
is sent to the workers. ``--dask`` and ``--scheduler`` need ``pip install mimo_rx[dask]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from mimo_rx import Stream, Workflow, map_stream

ROUNDS = 20_000
WORDS = [f"{animal}-{n}" for n in range(16) for animal in ("otter", "heron", "lynx", "moth")]


def stretch(word: str) -> tuple[str, str, int]:
    """Key stretching in pure Python: the kind of per-item work one event loop cannot scale."""
    digest = word.encode()
    for _ in range(ROUNDS):
        digest = hashlib.sha256(digest).digest()
    return word, digest.hex()[:16], os.getpid()


class Words(Stream):
    OUT = ("words",)

    async def run(self, ins: Any, outs: Any) -> None:
        for word in WORDS:
            await outs.words.push(word)


class Report(Stream):
    IN = ("keys",)

    def __init__(self) -> None:
        super().__init__(buffer_size=4)
        self.keys: list[tuple[str, str]] = []
        self.pids: set[int] = set()

    async def run(self, ins: Any, outs: Any) -> None:
        async for word, key, pid in ins.keys:
            self.keys.append((word, key))
            self.pids.add(pid)
            if len(self.keys) % 16 == 0:
                print(f"  {len(self.keys):3d}/{len(WORDS)}  {word:10s} -> {key}  (pid {pid})")


def run(executor: concurrent.futures.Executor, where: str) -> dict[str, Any]:
    """Build and run the workflow with ``stretch`` on ``executor``; return a summary."""
    workflow = Workflow()
    words = workflow.add_stream(Words())
    keys = workflow.add_stream(map_stream(stretch, concurrency=8, executor=executor))
    report = Report()
    words.pipe(keys).pipe(workflow.add_stream(report))
    print(f"stretching {len(WORDS)} keys on {where}")
    started = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - started
    print(f"done in {seconds:.2f} s by {len(report.pids)} worker process(es), in input order")
    return {"keys": report.keys, "workers": len(report.pids), "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--dask", action="store_true", help="start a Dask LocalCluster")
    group.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, tcp://host:port")
    args = parser.parse_args(argv)

    if not (args.dask or args.scheduler):
        with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
            return run(pool, "a local process pool (2 processes)")

    try:
        from distributed import Client, LocalCluster
    except ImportError:  # an optional dependency: say which extra brings it
        sys.exit('--dask and --scheduler need Dask: pip install -e ".[dask]"')

    if args.scheduler:
        with Client(args.scheduler) as client:
            return run(client.get_executor(), f"the Dask cluster at {args.scheduler}")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        return run(client.get_executor(), "a Dask LocalCluster (2 worker processes)")


if __name__ == "__main__":
    main()
