"""An event-driven app: sensor readings from a thread, Rx windows, a slow SQLite sink.

    readings (hot Subject, fed by a sensor thread, policy="drop_oldest")
      -> windows   operator(ops.buffer_with_time(0.05))   group readings into 50 ms windows
      -> summarise operator(ops.map(...))                  one (count, max) summary per window
      -> alerts    operator(ops.filter(...))               keep windows whose max is too hot
      -> store     async stream: writes each alert to SQLite (slowly, to show back-pressure)

The sensor thread cannot be paused, so the readings source gets an explicit overflow policy:
when the first buffer is full the oldest reading is dropped and counted. At the end the
workflow statistics report how many readings were delivered and how many were dropped, and
``delivered + dropped == emitted`` always holds.

Run it: ``python examples/sensor_alerts.py``
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time

import reactivex.operators as ops
from reactivex.subject import Subject

from mimo_rx import Stream, Workflow, operator

EMITTED = 5000
HOT_LIMIT = 0.9


def sensor(subject: Subject, stop_after: int) -> None:
    """A sensor thread: emits readings as fast as it can, then completes."""
    for i in range(stop_after):
        subject.on_next(math.sin(i / 50) + (0.2 if i % 97 == 0 else 0.0))
        if i % 500 == 0:
            time.sleep(0.01)  # bursts, like a real device
    subject.on_completed()


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
    readings: Subject = Subject()

    workflow = Workflow(buffer_size=64)
    source = workflow.add_source(readings, name="readings", policy="drop_oldest")
    windows = workflow.add_stream(operator(ops.buffer_with_time(0.05), name="windows"))
    summarise = workflow.add_stream(
        operator(ops.map(lambda w: (len(w), max(w, default=0.0))), name="summarise")
    )
    alerts = workflow.add_stream(operator(ops.filter(lambda s: s[1] > HOT_LIMIT), name="alerts"))
    sink = workflow.add_stream(Stream(["x"], fn=store, name="store", state={"db": db}))
    source.pipe(windows, buffer_size=256).pipe(summarise).pipe(alerts).pipe(sink)

    run = asyncio.ensure_future(workflow.start())
    await asyncio.sleep(0)  # start() has begun: the source is subscribed
    thread = threading.Thread(target=sensor, args=(readings, EMITTED), name="sensor")
    thread.start()
    await run
    thread.join()

    first_input = workflow.stats()["streams"]["windows"]["inputs"]["x"]
    stored = db.execute("SELECT COUNT(*), SUM(readings) FROM alerts").fetchone()
    report = {
        "emitted": EMITTED,
        "delivered": first_input["taken"],
        "dropped": first_input["dropped"],
        "alerts_stored": stored[0],
    }
    print(
        f"emitted {EMITTED} readings: {report['delivered']} delivered, {report['dropped']} "
        f"dropped by policy; {report['alerts_stored']} alert windows stored in SQLite"
    )
    return report


if __name__ == "__main__":
    asyncio.run(main())
