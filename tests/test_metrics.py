"""CONTRACT section 7: workflow.metrics(interval) and workflow.events, watched from code."""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import json
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from harness import Collector, RecordingObserver, linear, run_checked, source
from reactivex import operators as ops

from mimo_rx import (
    ConfigError,
    DeadlockError,
    Stream,
    StreamError,
    Workflow,
    operator,
    testing,
)

pytestmark = pytest.mark.timeout(30)


def paced(n: int, delay: float, name: str = "paced") -> Stream:
    """A source that sleeps ``delay`` before each of its ``n`` items: a run of known length."""

    async def emit(ins: Any, outs: Any, state: Any) -> None:
        for i in range(n):
            await asyncio.sleep(delay)
            await outs.out.push(i)

    return Stream(outs=["out"], fn=emit, name=name)


def slow_sink(delay: float, name: str = "sink") -> Stream:
    async def consume(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            await asyncio.sleep(delay)

    return Stream(["x"], fn=consume, name=name)


def statuses(snapshot: dict[str, Any]) -> set[str]:
    return {s["status"] for s in snapshot["streams"].values()}


class ThreadRecorder(RecordingObserver):
    """Records items and the thread that delivered each of them."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def on_next(self, item: Any) -> None:
        self.threads.add(threading.get_ident())
        super().on_next(item)

    def on_completed(self) -> None:
        self.threads.add(threading.get_ident())
        super().on_completed()


async def running(wf: Workflow) -> None:
    """Return once a stream of ``wf`` is running (the run is under way)."""
    started = asyncio.Event()
    wf.events.pipe(ops.filter(lambda e: e.get("status") == "running"), ops.take(1)).subscribe(
        lambda _: started.set()
    )
    await started.wait()


# -- metrics(interval) ---------------------------------------------------------------------


def test_metrics_emits_a_snapshot_at_the_start_every_interval_and_at_the_end() -> None:
    wf, _ = linear(paced(20, 0.01), Collector())
    seen = RecordingObserver()
    wf.metrics(interval=0.02).subscribe(seen)
    testing.run(wf.start)  # virtual time: the interval is exact, whatever the machine's load

    snaps = seen.items
    assert seen.completed == 1 and not seen.errors
    assert statuses(snaps[0]) == {"pending"}  # the run is starting: no stream has run yet
    end = snaps[-1]
    assert statuses(end) == {"done"}
    assert end["streams"]["sink"]["inputs"]["x"]["taken"] == 20
    # 20 sleeps of 10 ms: one snapshot at the start, one every 20 ms, the final one at 0.2 s.
    elapsed = [s["elapsed_s"] for s in snaps]
    assert elapsed == [round(0.02 * k, 2) for k in range(11)] + [0.2]
    # The final snapshot is the run's last state: stats() plus elapsed_s.
    assert {k: v for k, v in end.items() if k != "elapsed_s"} == wf.stats()


def test_every_snapshot_is_json_serialisable_plain_data() -> None:
    wf, _ = linear(paced(10, 0.005), Collector(), buffer_size=2)
    seen = RecordingObserver()
    wf.metrics(0.01).subscribe(seen)
    run_checked(wf)
    for snap in seen.items:
        assert json.loads(json.dumps(snap)) == snap
        assert set(snap) == {"streams", "elapsed_s"}


def test_the_default_interval_is_one_second() -> None:
    wf, _ = linear(source(range(5)), Collector())
    seen = RecordingObserver()
    wf.metrics().subscribe(seen)  # a short run: the start and the end snapshot only
    run_checked(wf)
    assert len(seen.items) == 2 and seen.completed == 1


def test_metrics_sends_the_final_snapshot_when_the_run_fails() -> None:
    async def breaks(ins: Any, outs: Any, state: Any) -> None:
        await ins.x.pop()
        await asyncio.sleep(0.05)
        raise ValueError("boom")

    wf, _ = linear(source(range(100)), Stream(["x"], fn=breaks, name="breaks"), buffer_size=4)
    seen = RecordingObserver()
    wf.metrics(0.01).subscribe(seen)
    with pytest.raises(StreamError, match="breaks"):
        run_checked(wf)
    assert seen.completed == 1 and not seen.errors
    final = seen.items[-1]
    assert final["streams"]["breaks"]["status"] == "failed"
    assert final["streams"]["source"]["status"] == "cancelled"
    assert len(seen.items) >= 3  # start, at least one tick during the 50 ms, end


def test_metrics_sends_the_final_snapshot_when_the_run_is_cancelled() -> None:
    wf, _ = linear(paced(1000, 0.01), Collector())
    seen = RecordingObserver()
    wf.metrics(0.01).subscribe(seen)

    async def main() -> None:
        ticked = asyncio.Event()
        wf.metrics(0.01).pipe(ops.skip(2)).subscribe(lambda _: ticked.set())
        run = asyncio.create_task(wf.start())
        await ticked.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    run_checked(main(), workflows=[wf])
    assert seen.completed == 1 and not seen.errors
    assert len(seen.items) >= 3
    assert statuses(seen.items[-1]) == {"cancelled"}


def test_metrics_sends_the_final_snapshot_on_a_deadlock() -> None:
    async def drain_a_first(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.a:
            pass

    wf = Workflow(buffer_size=2)
    src = wf.add_stream(source(range(10), name="src"))
    join = wf.add_stream(Stream(["a", "b"], fn=drain_a_first, name="join"))
    src.pipe(join, input="a")
    src.pipe(join, input="b")
    seen = RecordingObserver()
    wf.metrics(0.05).subscribe(seen)
    with pytest.raises(DeadlockError):
        run_checked(wf)
    assert seen.completed == 1
    assert statuses(seen.items[-1]) <= {"failed", "cancelled"}


def test_metrics_subscribed_after_the_run_emits_the_final_snapshot_and_completes() -> None:
    wf, _ = linear(paced(5, 0.01), Collector())
    during = RecordingObserver()
    wf.metrics(0.01).subscribe(during)
    run_checked(wf)
    after = RecordingObserver()
    wf.metrics(0.01).subscribe(after)
    assert after.items == [during.items[-1]] and after.completed == 1


def test_metrics_subscribed_during_the_run_starts_at_once_on_the_loop() -> None:
    wf, _ = linear(paced(10, 0.01), Collector())
    seen = ThreadRecorder()
    loop_thread: list[int] = []

    async def main() -> None:
        run = asyncio.create_task(wf.start())
        await running(wf)
        loop_thread.append(threading.get_ident())
        wf.metrics(0.01).subscribe(seen)
        assert len(seen.items) == 1  # the first snapshot came at once
        # A snapshot of the run under way; elapsed_s is on the loop's clock, and uvloop's
        # (whole milliseconds, read once per loop iteration) may not have ticked yet.
        assert "running" in statuses(seen.items[0])
        assert seen.items[0]["elapsed_s"] >= 0
        await run

    run_checked(main(), workflows=[wf])
    assert seen.completed == 1 and len(seen.items) >= 3
    assert seen.threads == set(loop_thread)


def test_a_metrics_subscription_made_on_another_thread_is_served_on_the_loop() -> None:
    wf, _ = linear(paced(10, 0.01), Collector())
    seen = ThreadRecorder()
    loop_thread: list[int] = []
    subscribed_on: list[int] = []

    def subscribe() -> None:
        subscribed_on.append(threading.get_ident())
        wf.metrics(0.01).subscribe(seen)

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        run = asyncio.create_task(wf.start())
        await running(wf)
        await asyncio.to_thread(subscribe)
        await run

    run_checked(main(), workflows=[wf])
    assert subscribed_on != loop_thread
    assert seen.threads == set(loop_thread)
    assert seen.completed == 1 and len(seen.items) >= 2


@pytest.mark.parametrize("interval", [True, 0, -1, "x", None, float("nan"), float("inf")])
def test_metrics_interval_must_be_a_positive_number(interval: Any) -> None:
    with pytest.raises(ConfigError, match="interval"):
        Workflow().metrics(interval)


def test_disposing_a_metrics_subscription_stops_its_snapshots() -> None:
    wf, _ = linear(paced(20, 0.01), Collector())
    kept = RecordingObserver()
    wf.metrics(0.01).subscribe(kept)
    seen: list[Any] = []

    def on_next(snap: dict[str, Any]) -> None:
        seen.append(snap)
        if len(seen) == 2:
            subscription.dispose()

    subscription = wf.metrics(0.01).subscribe(on_next, on_completed=lambda: seen.append("end"))
    run_checked(wf)
    assert len(seen) == 2  # no more snapshots, and no completion either
    assert len(kept.items) > 4 and kept.completed == 1  # the run went on ticking


def test_the_run_leaves_no_metrics_timer_behind() -> None:
    wf, _ = linear(source(range(5)), Collector())
    wf.metrics(3600).subscribe(RecordingObserver())

    async def main() -> list[Any]:
        await wf.start()
        loop = asyncio.get_running_loop()
        scheduled = getattr(loop, "_scheduled", None)  # asyncio's pending timer handles
        if scheduled is None:  # uvloop keeps no such list: its live handles are on the heap
            scheduled = [h for h in gc.get_objects() if type(h).__name__ == "TimerHandle"]
        # Ours would be due in an hour (the harness's own timeout is due in seconds).
        return [h for h in scheduled if not h.cancelled() and h.when() > loop.time() + 600]

    assert run_checked(main(), workflows=[wf]) == []


# -- events ----------------------------------------------------------------------------------


def watch_events(wf: Workflow) -> ThreadRecorder:
    seen = ThreadRecorder()
    wf.events.subscribe(seen)
    return seen


def test_events_report_every_status_change_of_every_stream() -> None:
    wf, _ = linear(source(range(10)), Collector())
    seen = watch_events(wf)
    run_checked(wf)
    changes = defaultdict(list)
    for event in seen.items:
        if event["event"] == "status":
            assert set(event) == {"event", "stream", "status"}
            changes[event["stream"]].append(event["status"])
    assert changes == {"source": ["running", "done"], "sink": ["running", "done"]}
    assert seen.completed == 1


def test_paused_and_resumed_come_in_pairs_per_producer_once_per_buffer_full() -> None:
    n = 200
    wf, _ = linear(source(range(n), name="fast"), slow_sink(0.0005), buffer_size=8)
    seen = watch_events(wf)
    run_checked(wf)

    open_pauses: dict[tuple[str, str, str], bool] = {}
    pauses, paused_s = 0, 0.0
    for event in seen.items:
        if event["event"] not in ("paused", "resumed"):
            continue
        key = (event["stream"], event["output"], event["target"])
        assert key == ("fast", "out", "sink.x")
        if event["event"] == "paused":
            assert set(event) == {"event", "stream", "output", "target"}
            assert not open_pauses.get(key), "paused twice without resuming"
            open_pauses[key] = True
            pauses += 1
        else:
            assert set(event) == {"event", "stream", "output", "target", "paused_s"}
            assert open_pauses.get(key), "resumed without being paused"
            open_pauses[key] = False
            assert event["paused_s"] >= 0
            paused_s += event["paused_s"]
    assert not any(open_pauses.values())
    # Bounded: a producer is paused at most once per threshold - low-water mark (8 - 4) items,
    # never once per item.
    assert 1 <= pauses <= n // 4 + 1
    stats_paused = wf.stats()["streams"]["sink"]["inputs"]["x"]["paused_s"]
    assert paused_s == pytest.approx(stats_paused, abs=1e-3)


def test_a_fused_operator_chain_reports_its_pauses_under_the_stage_that_pushed() -> None:
    wf = Workflow(buffer_size=4)
    src = wf.add_source(range(100))
    first = wf.add_stream(operator(ops.map(lambda x: x + 1), name="plus"))
    second = wf.add_stream(operator(ops.map(lambda x: x * 2), name="times"))
    sink = wf.add_stream(slow_sink(0.0005))
    src.pipe(first).pipe(second).pipe(sink)
    seen = watch_events(wf)
    run_checked(wf)
    into_sink = [e for e in seen.items if e["event"] == "paused" and e["target"] == "sink.x"]
    assert into_sink and {e["stream"] for e in into_sink} == {"times"}
    times = [e["status"] for e in seen.items if e["event"] == "status" and e["stream"] == "times"]
    assert times == ["running", "done"]


def test_events_are_json_serialisable_and_emitted_on_the_loop() -> None:
    wf, _ = linear(source(range(50)), slow_sink(0.0005), buffer_size=4)
    seen = ThreadRecorder()
    loop_thread: list[int] = []

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        await wf.start()

    wf.events.subscribe(seen)  # subscribed on this thread, before the loop runs
    run_checked(main(), workflows=[wf])
    assert seen.items and seen.threads == set(loop_thread)
    for event in seen.items:
        assert json.loads(json.dumps(event)) == event
        assert event["event"] in ("status", "paused", "resumed")


def test_events_complete_after_the_final_status_events_and_nothing_comes_after() -> None:
    wf, _ = linear(source(range(10)), Collector())
    order: list[Any] = []
    wf.events.subscribe(order.append, order.append, lambda: order.append("completed"))

    async def main() -> None:
        await wf.start()
        await asyncio.sleep(0)  # give anything late a chance to arrive

    run_checked(main(), workflows=[wf])
    assert order[-1] == "completed" and order.count("completed") == 1
    assert order[-2] == {"event": "status", "stream": "sink", "status": "done"}
    assert {"event": "status", "stream": "source", "status": "done"} in order


def test_events_of_a_failed_run_end_with_the_final_statuses_and_complete() -> None:
    async def breaks(ins: Any, outs: Any, state: Any) -> None:
        await ins.x.pop()
        raise ValueError("boom")

    wf, _ = linear(source(range(100)), Stream(["x"], fn=breaks, name="breaks"), buffer_size=4)
    seen = watch_events(wf)
    with pytest.raises(StreamError):
        run_checked(wf)
    last = {e["stream"]: e["status"] for e in seen.items if e["event"] == "status"}
    assert last == {"source": "cancelled", "breaks": "failed"}
    assert seen.completed == 1 and not seen.errors


def test_events_of_a_cancelled_run_report_cancelled_streams() -> None:
    wf, _ = linear(paced(1000, 0.01), Collector())
    seen = watch_events(wf)

    async def main() -> None:
        run = asyncio.create_task(wf.start())
        await running(wf)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    run_checked(main(), workflows=[wf])
    last = {e["stream"]: e["status"] for e in seen.items if e["event"] == "status"}
    assert last == {"paced": "cancelled", "sink": "cancelled"}
    assert seen.completed == 1


def test_events_subscribed_after_the_run_complete_at_once() -> None:
    wf, _ = linear(source(range(3)), Collector())
    run_checked(wf)
    late = RecordingObserver()
    wf.events.subscribe(late)
    assert late.items == [] and late.completed == 1


def test_disposing_an_events_subscription_stops_its_events() -> None:
    wf, _ = linear(source(range(100)), slow_sink(0.0005), buffer_size=4)
    first: list[Any] = []
    everything = watch_events(wf)
    subscription = wf.events.subscribe(lambda e: (first.append(e), subscription.dispose()))
    run_checked(wf)
    assert len(first) == 1 and len(everything.items) > 10


def test_an_observer_that_raises_does_not_break_the_run_and_is_reported_to_the_loop() -> None:
    wf, (_, sink) = linear(source(range(20)), Collector(), buffer_size=2)

    def broken(event: Any) -> None:
        raise RuntimeError("dashboard down")

    wf.events.subscribe(broken)
    wf.metrics(0.01).subscribe(broken)
    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        await wf.start()

    asyncio.run(main())
    assert sink.stream.items == list(range(20))
    assert reported and all(isinstance(c["exception"], RuntimeError) for c in reported)
    assert any("workflow.events" in c["message"] for c in reported)


def test_events_are_composable_with_rx_operators_into_alerts() -> None:
    wf, _ = linear(source(range(100), name="fast"), slow_sink(0.0005), buffer_size=4)
    alerts: list[list[dict[str, Any]]] = []
    wf.events.pipe(
        ops.filter(lambda e: e["event"] == "paused"),
        ops.buffer_with_count(5),
    ).subscribe(alerts.append)
    run_checked(wf)
    assert alerts and all(e["target"] == "sink.x" for batch in alerts for e in batch)


_RESUMES = "on_error" in inspect.signature(Stream).parameters


@pytest.mark.skipif(not _RESUMES, reason="needs Stream(..., on_error='resume') (section 11)")
def test_a_failure_a_stream_resumes_from_is_an_event() -> None:
    async def picky(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            if item == 3:
                raise ValueError("three")

    wf, _ = linear(source(range(5)), Stream(["x"], fn=picky, name="picky", on_error="resume"))
    seen = watch_events(wf)
    run_checked(wf)
    failures = [e for e in seen.items if e["event"] == "failure"]
    assert failures == [{"event": "failure", "stream": "picky", "error": repr(ValueError("three"))}]
    assert wf.stats()["streams"]["picky"]["failures"] == 1


def test_a_run_ended_by_stop_sends_the_final_snapshot_and_completes_the_events() -> None:
    wf, _ = linear(paced(10_000, 0.001), Collector())
    snaps = RecordingObserver()
    events = RecordingObserver()
    wf.metrics(0.01).subscribe(snaps)
    wf.events.subscribe(events)
    # Stop gracefully once a few snapshots have been sent: the source ends, the rest drains.
    wf.metrics(0.01).pipe(ops.skip(3), ops.take(1)).subscribe(lambda _: wf.stop())
    run_checked(wf)
    assert snaps.completed == 1 and events.completed == 1
    assert statuses(snaps.items[-1]) == {"done"}
    final = snaps.items[-1]["streams"]
    assert 0 < final["sink"]["inputs"]["x"]["taken"] == final["paced"]["outputs"]["out"]["pushed"]
    assert events.items[-1] == {"event": "status", "stream": "sink", "status": "done"}


def test_an_inlet_paused_by_a_full_input_is_reported_under_its_step_name() -> None:
    wf = Workflow(buffer_size=2)
    inlet = wf.add_inlet("orders")
    inlet.pipe(wf.add_stream(slow_sink(0.001)))
    seen = watch_events(wf)

    async def main() -> None:
        async with wf.running():
            for i in range(20):
                await inlet.send(i)
            inlet.close()

    run_checked(main(), workflows=[wf])
    pauses = [e for e in seen.items if e["event"] == "paused"]
    assert pauses and all(e["stream"] == "orders" and e["target"] == "sink.x" for e in pauses)
    assert seen.completed == 1


# -- a stall is visible while it lasts; stats() from another thread -----------------------------


def test_paused_s_grows_while_a_stall_lasts_not_only_when_it_ends() -> None:
    """Issue 21, defect 2: a consumer stuck for 3 s. paused_s, read every 0.5 s on the loop
    (metrics()) and from another thread (stats()), grows by about 0.5 s each time, and never
    goes down; the final value is the whole stall."""

    async def stuck(ins: Any, outs: Any, state: Any) -> None:
        await asyncio.sleep(3.0)  # a hung consumer
        async for _ in ins.x:
            pass

    wf = Workflow(buffer_size=2)
    producer = wf.add_stream(source(range(10), name="producer"))
    producer.pipe(wf.add_stream(Stream(["x"], fn=stuck, name="stuck")))
    on_loop: list[float] = []
    wf.metrics(0.5).subscribe(
        lambda s: on_loop.append(s["streams"]["stuck"]["inputs"]["x"]["paused_s"])
    )
    from_thread: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.wait(0.5):
            from_thread.append(wf.stats()["streams"]["stuck"]["inputs"]["x"]["paused_s"])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        run_checked(wf, timeout=20)
    finally:
        done.set()
        reader.join(timeout=5)
    for values in (on_loop, from_thread):
        assert values == sorted(values)  # never goes down
        during = [v for v in values if v < 2.8]  # read while the stall lasted
        assert len(during) >= 4, values
        steps = [b - a for a, b in itertools.pairwise(during[1:])]  # every 0.5 s
        assert all(0.25 <= step <= 0.75 for step in steps), values
    assert 2.8 <= on_loop[-1] <= 4.0  # the final snapshot: the whole stall


def test_stats_from_another_thread_answers_within_about_a_second_while_the_loop_is_blocked() -> (
    None
):
    """A read from another thread is made on the loop; a loop blocked by a stream that does
    not await (a blocking wait) cannot answer, so after LOOP_READ_TIMEOUT_S the counters are read
    directly (they cannot change while the loop is blocked)."""
    started, done = threading.Event(), threading.Event()
    answered: list[tuple[float, dict[str, Any]]] = []

    async def blocker(ins: Any, outs: Any, state: Any) -> None:
        for i in range(3):
            await outs.out.push(i)
        started.set()
        # Blocking the loop is the point: until the read is answered, at most 5 s (a read
        # that waited for the loop would take those 5 s).
        done.wait(5)

    def read() -> None:
        started.wait(10)
        t0 = time.monotonic()
        snapshot = wf.stats()
        answered.append((time.monotonic() - t0, snapshot))
        done.set()

    wf = Workflow()
    wf.add_stream(Stream(outs=["out"], fn=blocker, name="blocker")).pipe(wf.add_stream(Collector()))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    run_checked(wf, timeout=20)
    reader.join(timeout=5)
    ((waited, snapshot),) = answered
    assert 0.9 <= waited <= 2.0  # LOOP_READ_TIMEOUT_S, not the whole block
    assert snapshot["streams"]["blocker"]["outputs"]["out"]["pushed"] == 3
    assert snapshot["streams"]["blocker"]["status"] == "running"


def test_ports_and_streams_named_like_counters_keep_their_stats() -> None:
    """stats() clamps its counters by key; a port called ``taken`` is a port, not a counter."""

    async def forward(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.taken:
            await outs.pushed.push(item)

    wf = Workflow()
    src = wf.add_stream(source(range(5), name="received", out="pushed"))
    mid = wf.add_stream(Stream(["taken"], ["pushed"], fn=forward, name="failures"))
    src.pipe(mid).pipe(wf.add_stream(Collector(port="pushed")))
    run_checked(wf)
    for _ in range(2):  # the second read is clamped against the first
        streams = wf.stats()["streams"]
        assert streams["failures"]["inputs"]["taken"]["taken"] == 5
        assert streams["received"]["outputs"]["pushed"] == {"pushed": 5}
