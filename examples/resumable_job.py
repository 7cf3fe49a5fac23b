"""A bulk job that survives kill -9: kill it at any moment, run it again, it resumes.

    python examples/resumable_job.py                    # 2,000 orders in ./resumable_job/
    python examples/resumable_job.py --lines 2000000    # a long one: kill -9 it, run it again
    python examples/resumable_job.py --fresh            # forget the progress, start over

The input is a generated file of orders, one per line. Each line is priced by a ``map_stream``
and the result appended to ``results.csv``. ``FileSource`` acknowledges a line once its result
has been written (the sink has come back for the next line), and keeps the progress in a
checkpoint beside the input (``orders.txt.checkpoint``), so a run started after a crash resumes
at the first line not done::

    FileSource(orders.txt) --> price (map_stream) --> append to results.csv

Delivery is at least once: none of the orders is ever missing from ``results.csv``; after a
crash a few may be there twice (at most ``--max-in-flight`` plus those done in the last
``--commit-interval`` seconds). A downstream that must count each order once deduplicates on
the order id, the first column.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from mimo_rx import Stream, Workflow, map_stream
from mimo_rx.sources import FileSource

LINE = "{:08d},{:03d},{:05d}\n"  # order id, quantity, unit price in cents: fixed width
LINE_BYTES = len(LINE.format(0, 0, 0))


def generate(path: Path, lines: int) -> None:
    """Write ``lines`` orders (a deterministic pseudo-random quantity and price each).

    Written to a temporary name and renamed: a job killed while generating leaves no half file.
    """
    temp = path.with_name(path.name + ".tmp")
    with temp.open("w", encoding="utf-8") as f:
        for start in range(0, lines, 10_000):
            stop = min(lines, start + 10_000)
            f.write(
                "".join(
                    LINE.format(i, i * 7 % 13 + 1, i * 7919 % 99_991) for i in range(start, stop)
                )
            )
    temp.replace(path)


def make_price(work_s: float) -> Any:
    async def price(line: str) -> str:
        order, quantity, cents = line.split(",")
        if work_s:
            await asyncio.sleep(work_s)  # stands for a lookup in a remote service
        return f"{order},{int(quantity) * int(cents)}\n"

    return price


def make_sink(results: Path, source: FileSource, report: dict[str, Any]) -> Stream:
    async def append(ins: Any, outs: Any, state: Any) -> None:
        with results.open("a", encoding="utf-8") as out:
            async for row in ins.x:
                if not report["processed"]:
                    at = source.resumed_from
                    where = f"line {at // LINE_BYTES + 1}" if at else "the first line"
                    print(f"resumed at {where} (byte {at})", flush=True)
                    report["resumed_at_line"] = at // LINE_BYTES + 1
                out.write(row)
                out.flush()  # written before the sink asks for the next row: then it is done
                report["processed"] += 1

    return Stream(ins=["x"], fn=append, name="append")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=2000, help="orders to generate")
    parser.add_argument("--workdir", type=Path, default=Path("resumable_job"))
    parser.add_argument("--fresh", action="store_true", help="delete the progress and results")
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--commit-interval", type=float, default=0.5)
    parser.add_argument("--work-ms", type=float, default=0.0, help="simulated work per order")
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    orders, results = args.workdir / "orders.txt", args.workdir / "results.csv"
    source = FileSource(orders)
    if args.fresh:
        for path in (orders, results, source.checkpoint):
            path.unlink(missing_ok=True)
    if not orders.exists():
        generate(orders, args.lines)

    report: dict[str, Any] = {"processed": 0, "resumed_at_line": None}
    workflow = Workflow()
    orders_step = workflow.add_source(
        source, max_in_flight=args.max_in_flight, commit_interval=args.commit_interval
    )
    price = workflow.add_stream(map_stream(make_price(args.work_ms / 1000), concurrency=8))
    orders_step.pipe(price).pipe(workflow.add_stream(make_sink(results, source, report)))
    workflow.run()  # SIGTERM drains: the lines done so far are acknowledged before it returns

    checkpoint = json.loads(source.checkpoint.read_text()) if source.checkpoint.exists() else {}
    report["checkpoint"] = checkpoint
    report["finished"] = checkpoint.get("offset") == orders.stat().st_size
    if not report["processed"]:
        print("nothing left to do: every order was done by an earlier run")
    state = "all orders done" if report["finished"] else "stopped; run again to resume"
    print(f"{report['processed']} orders priced in this run; {state}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
