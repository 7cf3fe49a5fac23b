"""Scrape a running workflow over HTTP as Prometheus does; check what it gets.

    numbers (an endless source) -> double -> sink          blocking, the sink yields per item
                                        \\-> lagging       drop_oldest, buffer 8

``mimo_rx.prometheus.instrument`` exposes the workflow on prometheus_client's HTTP server
(its own thread). A scrape thread GETs ``/metrics`` as fast as it can for ``--seconds`` while
the run goes on, then once more after it ended (threads switching every ``--switch-interval``
seconds, 10 microseconds by default, so that every interleaving gets its chance), and checks
that:

* no counter sample (``..._total``) is ever lower than in the scrape before (Prometheus reads a
  decrease as a counter reset, and ``rate()`` spikes by the whole value);
* the exposition passes ``promtool check metrics`` (Prometheus's own linter), during the run
  and after it, when ``promtool`` is installed (Debian/Ubuntu: the package ``prometheus``).

Printed, one line: scrapes, counter samples compared, decreases, promtool's verdict. Exit
status 1 if a counter went down or promtool complained.

Usage: ``python bench/scrape.py --seconds 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from prometheus_client import CollectorRegistry, start_http_server  # noqa: E402

import mimo_rx.prometheus  # noqa: E402
from mimo_rx import Stream, Workflow  # noqa: E402


async def lagging(ins: Any, outs: Any, state: Any) -> None:
    async for _ in ins.x:
        await asyncio.sleep(0)


async def double(ins: Any, outs: Any, state: Any) -> None:
    async for batch in ins.x.batches():
        await outs.y.push_many([2 * n for n in batch])


def build() -> Workflow:
    workflow = Workflow(buffer_size=64)
    numbers = workflow.add_source(itertools.count(), name="numbers")
    doubled = numbers.pipe(workflow.add_stream(Stream(["x"], ["y"], fn=double, name="double")))
    doubled.pipe(workflow.add_stream(Stream(["x"], fn=lagging, name="sink")), buffer_size=16)
    doubled.pipe(
        workflow.add_stream(Stream(["x"], fn=lagging, name="lagging")),
        policy="drop_oldest",
        buffer_size=8,
    )
    return workflow


class ScrapeLoop(threading.Thread):
    """GETs ``url`` until ``stop`` is set, comparing every counter sample with the last one."""

    def __init__(self, url: str) -> None:
        super().__init__(name="scraper", daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.scrapes = 0
        self.compared = 0
        self.decreases: list[tuple[str, float, float]] = []
        self.first = ""  # the first exposition, and the latest
        self.latest = ""
        self.error: BaseException | None = None
        self._last: dict[str, float] = {}

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.scrape()
        except BaseException as exc:
            self.error = exc

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text: str = response.read().decode()
        self.scrapes += 1
        self.first = self.first or text
        self.latest = text
        for line in text.splitlines():
            if line.startswith("mimo_rx_") and "_total{" in line:
                sample, raw = line.rsplit(" ", 1)
                value = float(raw)
                last = self._last.get(sample)
                if last is not None:
                    self.compared += 1
                    if value < last:
                        self.decreases.append((sample, last, value))
                self._last[sample] = value
        return text


def promtool_check(text: str) -> str | None:
    """promtool's complaints about ``text`` ("" when it passes); None without promtool."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    return "" if result.returncode == 0 else (result.stdout + result.stderr).strip()


async def scrape_during_run(seconds: float) -> dict[str, Any]:
    workflow = build()
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(workflow, name="scrape", registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    loop = ScrapeLoop(f"http://127.0.0.1:{server.server_port}/metrics")
    try:
        running = asyncio.create_task(workflow.start())
        await asyncio.sleep(0.1)  # the run has begun
        loop.start()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        loop.stop.set()
        await asyncio.to_thread(loop.join)
        elapsed = time.monotonic() - started
        workflow.stop()
        await running
        final = loop.scrape()  # after the run: every stream done
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    if loop.error is not None:
        raise loop.error
    verdicts = [promtool_check(text) for text in (loop.first, loop.latest, final)]
    return {
        "seconds": round(elapsed, 1),
        "scrapes": loop.scrapes,
        "compared": loop.compared,
        "decreases": loop.decreases,
        "promtool": None if verdicts[0] is None else "\n".join(v for v in verdicts if v),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to scrape")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=1e-5,
        help="sys.setswitchinterval: how often threads may interleave (Python's default is "
        "0.005; small values make a race between the scrape and the run far more likely)",
    )
    args = parser.parse_args(argv)
    sys.setswitchinterval(args.switch_interval)
    report = asyncio.run(scrape_during_run(args.seconds))
    promtool = report["promtool"]
    verdict = (
        "skipped (promtool not installed)"
        if promtool is None
        else "ok"
        if promtool == ""
        else f"FAILED:\n{promtool}"
    )
    print(
        f"scrape: {report['scrapes']} scrapes over HTTP in {report['seconds']} s during a run, "
        f"{report['compared']:,} counter samples compared, {len(report['decreases'])} "
        f"decreases; promtool check metrics: {verdict}",
        flush=True,
    )
    for sample, last, value in report["decreases"][:10]:
        print(f"  decrease: {sample} {last:g} -> {value:g}")
    return 0 if not report["decreases"] and promtool in (None, "") else 1


if __name__ == "__main__":
    sys.exit(main())
