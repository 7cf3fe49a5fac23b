"""An event-driven app: sensor readings from a thread, Rx windows, a slow SQLite sink.

    readings (inlet, fed by a sensor thread with send_threadsafe)
      -> windows   operator(ops.buffer_with_time(0.05))   group readings into 50 ms windows
      -> summarise operator(ops.map(...))                  one (count, max) summary per window
      -> alerts    operator(ops.filter(...))               keep windows whose max is too hot
      -> store     async stream: writes each alert to SQLite (slowly, to show back-pressure)

The workflow runs inside the application with ``async with workflow.running():``, and the
sensor thread feeds its inlet with ``readings.send_threadsafe(value)``, which blocks that thread
while the first buffer is full: back-pressure reaches the device loop, so no reading is lost
and memory stays bounded. At the end the workflow statistics report how many readings were
delivered (all of them), how many were dropped (none) and how long the sensor was held back.

A device that must never wait would pass ``timeout=`` to ``send_threadsafe`` (it raises
``TimeoutError`` having delivered nothing, so the device can count what it skipped), or feed a
hot ``Subject`` added with ``workflow.add_source(subject, policy="drop_oldest")``, whose drops
``stats()`` counts per input.

Run it: ``python examples/sensor_alerts.py``
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from typing import Any

import reactivex.operators as ops

from mimo_rx import Stream, Workflow, operator

EMITTED = 5000
HOT_LIMIT = 0.9


def sensor(readings: Any, count: int) -> None:
    """A sensor thread: sends readings as fast as the graph takes them, then closes the inlet."""
    try:
        for i in range(count):
            readings.send_threadsafe(math.sin(i / 50) + (0.2 if i % 97 == 0 else 0.0))
            if i % 500 == 0:
                time.sleep(0.01)  # bursts, like a real device
    finally:
        readings.close()  # thread-safe: the graph ends once every reading has flowed through


async def store(ins, outs, state):
    """The slow sink: one SQLite insert and a short pause per alert."""
    db = state["db"]
    async for count, peak in ins.x:
        db.execute("INSERT INTO alerts (readings, peak) VALUES (?, ?)", (count, peak))
        await asyncio.sleep(0.002)  # a slow disk or network; back-pressure holds upstream
    db.commit()


async def main() -> dict:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE alerts (readings INTEGER, peak REAL)")
    workflow = Workflow(buffer_size=64)
    readings = workflow.add_inlet("readings")
    windows = workflow.add_stream(operator(ops.buffer_with_time(0.05), name="windows"))
    summarise = workflow.add_stream(
        operator(ops.map(lambda w: (len(w), max(w, default=0.0))), name="summarise")
    )
    alerts = workflow.add_stream(operator(ops.filter(lambda s: s[1] > HOT_LIMIT), name="alerts"))
    sink = workflow.add_stream(Stream(["x"], fn=store, name="store", state={"db": db}))
    readings.pipe(windows).pipe(summarise).pipe(alerts).pipe(sink)

    async with workflow.running():  # the run has started: the inlet takes readings
        await asyncio.to_thread(sensor, readings, EMITTED)  # the loop runs the graph meanwhile

    first_input = workflow.stats()["streams"]["windows"]["inputs"]["x"]
    stored = db.execute("SELECT COUNT(*), SUM(readings) FROM alerts").fetchone()
    report = {
        "emitted": EMITTED,
        "delivered": first_input["taken"],
        "dropped": first_input["dropped"],
        "alerts_stored": stored[0],
        "sensor_held_s": first_input["paused_s"],
    }
    print(
        f"emitted {EMITTED} readings: {report['delivered']} delivered, {report['dropped']} "
        f"dropped; the sensor thread was held back {report['sensor_held_s']:.3f} s; "
        f"{report['alerts_stored']} alert windows stored in SQLite"
    )
    return report


if __name__ == "__main__":
    asyncio.run(main())
