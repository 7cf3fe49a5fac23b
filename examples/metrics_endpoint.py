"""A service-like workflow with a Prometheus ``/metrics`` endpoint and an Rx alert on pauses.

    orders (a paced async source: one order every 5 ms, for --seconds)
      -> enrich  map_stream(async lookup, 20 ms each, concurrency=2)   the slow stage
      -> store   keeps a running total

``mimo_rx.prometheus.instrument`` exposes the workflow's statistics, read at each scrape, on
``http://127.0.0.1:PORT/metrics`` (prometheus_client's own HTTP server, on a thread of its
own). ``enrich`` is slower than the orders arrive, so its input fills up and the source is
paused: ``mimo_rx_input_paused_seconds_total{stream="enrich"}`` grows, and ``workflow.events``,
grouped into one-second windows with Rx, prints how often it happened. After ``--seconds``
the source ends, the run drains, and a final stats line is printed.

The endpoint then keeps serving the final counts, and every stream's ``done`` status, for
``--linger`` seconds (default 15, Prometheus's usual scrape interval; 0 stops at once), so the
last scrape sees how the run ended: a server that stops with the run leaves Prometheus with
the counts of up to one interval before the end. SIGTERM drains the run (the source stops,
what it produced flows on) and still prints the final line and lingers; a SIGTERM or Ctrl-C
during the linger ends it at once. Ctrl-C during the run cancels it, prints the final line
(``final (interrupted)``) and exits with status 130 without lingering.

Run it: ``python examples/metrics_endpoint.py --port 8000 --seconds 30`` and, meanwhile,
``curl -s 127.0.0.1:8000/metrics | grep mimo_rx_input``. Needs ``mimo_rx[prometheus]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any

import reactivex.operators as ops

try:
    from prometheus_client import CollectorRegistry, start_http_server
except ImportError:  # an optional dependency: say which extra brings it
    sys.exit('metrics_endpoint.py needs prometheus_client: pip install -e ".[prometheus]"')

import mimo_rx.prometheus
from mimo_rx import Stream, Workflow, map_stream


async def orders(seconds: float) -> AsyncIterator[dict[str, Any]]:
    """One order every 5 ms until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    number = 0
    while time.monotonic() < deadline:
        number += 1
        yield {"id": number, "amount": number % 17}
        await asyncio.sleep(0.005)


async def enrich(order: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.02)  # a remote lookup, slower than the orders arrive
    return {**order, "total": order["amount"] * 1.2}


async def store(ins: Any, outs: Any, state: dict[str, Any]) -> None:
    async for order in ins.x:
        state["count"] = state.get("count", 0) + 1
        state["total"] = state.get("total", 0.0) + order["total"]


def build(seconds: float) -> Workflow:
    workflow = Workflow(buffer_size=16)
    source = workflow.add_source(orders(seconds), name="orders")
    enriched = workflow.add_stream(map_stream(enrich, concurrency=2, name="enrich"))
    source.pipe(enriched).pipe(workflow.add_stream(Stream(["x"], fn=store, name="store")))
    return workflow


class _Terminated(Exception):
    """SIGTERM arrived while the endpoint lingered."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def linger(seconds: float) -> None:
    """Keep the endpoint up (it serves from its own thread) for ``seconds``, or until SIGTERM
    (see ``sigterm_ends_linger``) or Ctrl-C."""
    if seconds <= 0:
        return
    # On stderr: the final line stays the last line of the output.
    print(
        f"serving the final counts for {seconds:g} s more (SIGTERM or Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    deadline = time.monotonic() + seconds
    with contextlib.suppress(KeyboardInterrupt):
        # In slices: a SIGTERM the kernel hands to another thread (the HTTP server's) has its
        # handler run only once this thread runs Python code again, not when a sleep ends.
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))


@contextlib.contextmanager
def sigterm_ends_linger() -> Iterator[None]:
    """From the final line on, SIGTERM ends the process normally: installed before that line
    is printed, since whoever reads it may answer with SIGTERM at once."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long orders arrive")
    parser.add_argument(
        "--linger",
        type=float,
        default=15.0,
        help="seconds to keep serving the final counts after the run (a scrape interval)",
    )
    args = parser.parse_args(argv)

    workflow = build(args.seconds)
    registry = CollectorRegistry()  # the default REGISTRY would also show Python's own metrics
    mimo_rx.prometheus.instrument(workflow, name="orders", registry=registry)
    try:
        server, thread = start_http_server(args.port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        sys.exit(f"port {args.port} is busy: choose another, or --port 0 for a free one")
    print(f"serving http://127.0.0.1:{server.server_port}/metrics", flush=True)

    # An alert with Rx: how many times per second a producer was paused by a full input.
    workflow.events.pipe(
        ops.filter(lambda event: event["event"] == "paused"),
        ops.buffer_with_time(1.0),
        ops.filter(len),
    ).subscribe(lambda pauses: print(f"alert: {len(pauses)} pauses into {pauses[0]['target']}"))
    interrupted = False
    try:
        try:
            workflow.run()  # SIGTERM drains the run and it returns; Ctrl-C cancels it
        except KeyboardInterrupt:
            interrupted = True
        stats = workflow.stats()["streams"]
        report = {
            "orders": stats["orders"]["outputs"]["out"]["pushed"],
            "stored": stats["store"]["inputs"]["x"]["taken"],
            "paused_s": stats["enrich"]["inputs"]["x"]["paused_s"],
        }
        label = "final (interrupted)" if interrupted else "final"
        with contextlib.nullcontext() if interrupted else sigterm_ends_linger():
            print(
                f"{label}: {report['orders']} orders, {report['stored']} stored, source "
                f"paused {report['paused_s']:.2f} s by the slow enrich stage",
                flush=True,
            )
            if not interrupted:
                linger(args.linger)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    if interrupted:
        sys.exit(130)  # the shell's code for Ctrl-C
    return report


if __name__ == "__main__":
    main()
