"""Service-mode soak: a workflow fed from two threads for a long time, watched for leaks.

    two sender threads --send_threadsafe--> orders (inlet)
      -> price   operator(ops.map(price), on_error="resume"): one item in 1000 raises
      -> results (outlet), read by the application          errors -> dead (a sink)

Each thread sends ``--rate / 2`` items a second, paced against the clock (it catches up after a
pause, never sends ahead), for ``--seconds``; then the inlet closes and the graph drains.
Meanwhile a task on the loop measures its own lag (how late a 20 ms sleep wakes), the process
RSS is sampled every second, and a thread reads the Prometheus exposition every second and
counts the counters that went down (there must be none).

Printed, one line: items sent, received (results + failures), failures, dropped, lost
(sent - received: must be 0), the RSS slope after the first minute (least squares, MiB per
hour; for runs shorter than two minutes, after the first half), loop-lag percentiles, and the
scrapes. ``--json`` prints the same as a JSON object. Exit status 1 if anything was lost or a
counter went down.

Usage: ``python bench/soak.py --seconds 600 --rate 20000`` (the line of record in
docs/reliability.md), ``python bench/soak.py --seconds 20 --rate 5000`` (a quick check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import reactivex.operators as ops

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mimo_rx import Stream, Workflow, operator  # noqa: E402

FAIL_EVERY = 1000  # one item in this many makes price() raise
LAG_PERIOD_S = 0.02  # the loop-lag probe sleeps this long, then measures how late it woke
SCRAPE_PERIOD_S = 1.0


def price(order: int) -> int:
    if order % FAIL_EVERY == FAIL_EVERY - 1:
        raise ValueError(f"order {order} has no price")
    return order * 3


async def dead_letters(ins: Any, outs: Any, state: dict[str, int]) -> None:
    async for batch in ins.x.batches():
        state["failures"] = state.get("failures", 0) + len(batch)


def build() -> tuple[Workflow, Any, Any, Stream]:
    workflow = Workflow(buffer_size=1024)
    orders = workflow.add_inlet("orders")
    priced = workflow.add_stream(operator(ops.map(price), name="price", on_error="resume"))
    results = workflow.add_outlet("results")
    dead = Stream(["x"], fn=dead_letters, name="dead")
    orders.pipe(priced).pipe(results)
    priced.pipe(workflow.add_stream(dead), output="errors")
    return workflow, orders, results, dead


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per hour."""
    if len(samples) < 2:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return sxy / sxx * 3600 if sxx else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Sender(threading.Thread):
    """Sends ``rate`` items a second (every ``step``-th integer from ``first``) until
    ``seconds`` have passed, paced against the clock."""

    def __init__(self, inlet: Any, first: int, step: int, rate: float, seconds: float) -> None:
        super().__init__(name=f"sender-{first}", daemon=True)
        self.inlet, self.first, self.step = inlet, first, step
        self.rate, self.seconds = rate, seconds
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < self.seconds:
                due = int(elapsed * self.rate)
                while self.sent < due:
                    self.inlet.send_threadsafe(self.first + self.sent * self.step, timeout=60)
                    self.sent += 1
                time.sleep(0.005)
        except BaseException as exc:
            self.error = exc


class Scraper(threading.Thread):
    """Reads the exposition every ``SCRAPE_PERIOD_S`` and counts counters that went down."""

    def __init__(self, registry: Any) -> None:
        super().__init__(name="scraper", daemon=True)
        self.registry = registry
        self.stop = threading.Event()
        self.scrapes = 0
        self.decreases: list[tuple[str, float, float]] = []
        self._last: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop.wait(SCRAPE_PERIOD_S):
            self.scrape()

    def scrape(self) -> None:
        from prometheus_client import generate_latest

        self.scrapes += 1
        for line in generate_latest(self.registry).decode().splitlines():
            if line.startswith("mimo_rx_") and "_total{" in line:
                sample, raw = line.rsplit(" ", 1)
                value = float(raw)
                last = self._last.get(sample)
                if last is not None and value < last:
                    self.decreases.append((sample, last, value))
                self._last[sample] = value


async def soak(seconds: float, rate: float) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    import mimo_rx.prometheus

    workflow, orders, results, dead = build()
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(workflow, name="soak", registry=registry)
    scraper = Scraper(registry)
    senders = [Sender(orders, first, 2, rate / 2, seconds) for first in (0, 1)]
    # Every lag sample, in memory touched up front: a list growing through the run would
    # itself show as an RSS slope (30,000 floats in ten minutes is about 1 MiB).
    lags = array("d", [0.0]) * (math.ceil(seconds / LAG_PERIOD_S) + 10_000)
    measured = 0
    rss: list[tuple[float, float]] = []
    received = 0
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def probe() -> None:
        nonlocal measured
        next_rss = 0.0
        while measured < len(lags):
            before = loop.time()
            await asyncio.sleep(LAG_PERIOD_S)
            lags[measured] = loop.time() - before - LAG_PERIOD_S
            measured += 1
            if before - t0 >= next_rss:
                rss.append((before - t0, rss_mib()))
                next_rss += 1.0

    def close_when_sent() -> None:
        for sender in senders:
            sender.join()
        orders.close()

    async with workflow.running():
        for thread in (*senders, scraper):
            thread.start()
        probing = asyncio.create_task(probe())
        closer = threading.Thread(target=close_when_sent, name="closer", daemon=True)
        closer.start()
        try:
            async for _ in results:
                received += 1
        finally:
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)
    scraper.stop.set()
    scraper.join()
    closer.join()
    scraper.scrape()  # the final counts
    errors = [s.error for s in senders if s.error is not None]
    if errors:
        raise errors[0]
    stats = workflow.stats()["streams"]
    failures = dead.state.get("failures", 0)
    sent = sum(s.sent for s in senders)
    warm = min(60.0, seconds / 2)
    lag = list(lags[:measured])
    return {
        "seconds": seconds,
        "rate": rate,
        "sent": sent,
        "received": received + failures,
        "results": received,
        "failures": failures,
        "dropped": sum(p["dropped"] for s in stats.values() for p in s["inputs"].values()),
        "lost": sent - received - failures,
        "rss_mib": round(rss[-1][1], 1) if rss else 0.0,
        "rss_slope_mib_per_h": round(slope_per_hour([s for s in rss if s[0] >= warm]), 2),
        "rss_after_s": warm,
        "lag_ms": {
            "p50": round(percentile(lag, 0.5) * 1e3, 2),
            "p99": round(percentile(lag, 0.99) * 1e3, 2),
            "max": round(max(lag, default=0.0) * 1e3, 2),
        },
        "scrapes": scraper.scrapes,
        "counter_decreases": len(scraper.decreases),
    }


def line(report: dict[str, Any]) -> str:
    lag = report["lag_ms"]
    return (
        f"soak {report['seconds']:g} s at {report['rate']:g} items/s from 2 threads: "
        f"sent {report['sent']:,}, received {report['received']:,} "
        f"(failures {report['failures']:,}), dropped {report['dropped']:,}, "
        f"lost {report['lost']:,}; RSS {report['rss_mib']} MiB, "
        f"{report['rss_slope_mib_per_h']:+} MiB/h after the first {report['rss_after_s']:g} s; "
        f"loop lag p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms; "
        f"{report['scrapes']} scrapes, {report['counter_decreases']} counter decreases"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to send")
    parser.add_argument("--rate", type=float, default=20_000.0, help="items per second, total")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
    args = parser.parse_args(argv)
    report = asyncio.run(soak(args.seconds, args.rate))
    print(json.dumps(report) if args.json else line(report), flush=True)
    return 0 if report["lost"] == 0 and report["counter_decreases"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
