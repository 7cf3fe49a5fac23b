"""mimo_rx.testing (contract section 13): virtual time, exact deadlocks, traces and feed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import reactivex.operators as ops
from harness import broadcast_then_drain_one_input_first

from mimo_rx import ConfigError, DeadlockError, Stream, Workflow, map_stream, operator, testing
from mimo_rx.testing import Stalled

ROOT = Path(__file__).resolve().parent.parent


# -- the contract's example, verbatim -----------------------------------------------------------


def test_debounce_under_pressure():
    workflow = Workflow(buffer_size=2)
    src = workflow.add_inlet("src")
    quiet = workflow.add_stream(operator(ops.debounce(300.0), name="quiet"))
    out = workflow.add_outlet("out")
    src.pipe(quiet).pipe(out)
    trace = testing.record(workflow)

    async def scenario():
        async with workflow.running():
            await testing.feed(src, "a-b--------c|", frame=60.0)
            assert [item async for item in out] == ["b", "c"]
        assert testing.now() == 720.0  # virtual seconds since the loop started

    testing.run(scenario)  # returns in milliseconds of real time
    assert trace.marbles("quiet.y", frame=60.0) == "-------b----(c|)"
    trace.assert_never_paused("quiet.y")


# -- the clock ----------------------------------------------------------------------------------


def test_hours_of_sleeps_take_well_under_a_second():
    async def main():
        for _ in range(5):
            await asyncio.sleep(3600)
        await asyncio.gather(*(asyncio.sleep(60 * k) for k in range(100)))
        return testing.now()

    started = time.perf_counter()
    assert testing.run(main) == 5 * 3600 + 99 * 60
    assert time.perf_counter() - started < 0.5


def test_the_clock_counts_integer_nanoseconds_so_sums_are_exact():
    async def main():
        for _ in range(10):
            await asyncio.sleep(0.1)
        assert testing.now() == 1.0
        for _ in range(1000):
            await asyncio.sleep(0.001)
        assert testing.now() == 2.0
        await asyncio.sleep(10**7)  # days later, still exact
        assert testing.now() == 10**7 + 2.0

    testing.run(main)


def test_time_stands_still_while_a_task_is_ready():
    async def busy():
        for _ in range(1000):
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(busy(), busy())
        assert testing.now() == 0.0
        await asyncio.sleep(1.5)
        assert testing.now() == 1.5

    testing.run(main)


def test_run_accepts_a_coroutine_and_returns_its_result():
    async def main():
        await asyncio.sleep(3)
        return "done"

    assert testing.run(main()) == "done"


def test_asyncio_timeout_fires_in_virtual_time():
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.Event().wait()
        return testing.now()

    assert testing.run(main) == 30.0


def test_run_cancels_the_tasks_left_when_main_returns():
    cancelled = []

    async def forever():
        try:
            await asyncio.sleep(10**9)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(1)

    testing.run(main)
    assert cancelled == [True]


def test_now_and_advance_outside_run_raise():
    with pytest.raises(RuntimeError, match=r"testing\.run"):
        testing.now()

    async def real_loop():
        with pytest.raises(RuntimeError, match=r"testing\.run"):
            await testing.advance(1)

    asyncio.run(real_loop())


def test_without_autojump_time_moves_only_by_advance():
    fired: list[float] = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(5, lambda: fired.append(testing.now()))
        loop.call_later(12, lambda: fired.append(testing.now()))
        await asyncio.sleep(0)
        assert testing.now() == 0.0 and fired == []
        await testing.advance(4)
        assert fired == [] and testing.now() == 4.0
        await testing.advance(10)
        assert fired == [5.0, 12.0] and testing.now() == 14.0

    testing.run(main, autojump=False)


def test_without_autojump_a_pending_timer_does_not_prevent_stalled():
    async def main():
        await asyncio.sleep(5)  # nobody advances the clock

    with pytest.raises(Stalled, match="autojump=False"):
        testing.run(main, autojump=False)


def test_advance_rejects_a_negative_duration():
    async def main():
        await testing.advance(-1)

    with pytest.raises(ValueError, match=">= 0"):
        testing.run(main)


def test_stalled_names_the_waiting_tasks():
    async def wait_for_nobody():
        await asyncio.get_running_loop().create_future()

    async def main():
        helper = asyncio.get_running_loop().create_task(wait_for_nobody(), name="the-helper")
        await helper

    started = time.perf_counter()
    with pytest.raises(Stalled) as info:
        testing.run(main)
    assert time.perf_counter() - started < 1.0
    message = str(info.value)
    assert "the-helper" in message and "wait_for_nobody" in message and "main" in message


# -- sockets and threads ------------------------------------------------------------------------


def test_sockets_work_inside_run():
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readline()
        await asyncio.sleep(60)  # a minute of virtual time between request and answer
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        await writer.drain()
        answer = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return answer, testing.now()

    started = time.perf_counter()
    answer, now = testing.run(main)
    assert answer == b"HELLO\n"
    assert 60.0 <= now < 61.0
    assert time.perf_counter() - started < 5.0


def test_thread_work_holds_the_clock_to_real_speed():
    async def main():
        far = asyncio.get_running_loop().create_task(asyncio.sleep(1000))
        await asyncio.to_thread(time.sleep, 0.1)
        at = testing.now()
        assert not far.done()  # the clock did not jump past the thread
        await far
        return at

    at = testing.run(main)
    assert 0.09 <= at < 5.0


def test_a_timeout_on_thread_work_still_fires():
    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(time.sleep, 0.5), 0.05)
        return testing.now()

    assert 0.05 <= testing.run(main) < 0.5


def test_map_stream_timeout_on_a_thread_in_virtual_time():
    def slow(item):
        time.sleep(0.3 if item == "slow" else 0)
        return item

    workflow = Workflow()
    src = workflow.add_inlet("src")
    work = workflow.add_stream(map_stream(slow, timeout=0.1, on_error="resume", name="work"))
    out = workflow.add_outlet("out")
    src.pipe(work).pipe(out)

    async def main():
        async with workflow.running():
            await testing.feed(src, "(ab)-(slow)|".replace("(slow)", "s"), values={"s": "slow"})
            return [item async for item in out], workflow.stats()

    items, stats = testing.run(main)
    assert items == ["a", "b"]
    assert stats["streams"]["work"]["failures"] == 1


# -- Rx time operators, against hand-computed virtual times --------------------------------------


def run_operator(op, marbles: str, frame: float = 1.0) -> testing.Trace:
    workflow = Workflow()
    src = workflow.add_inlet("src")
    stage = workflow.add_stream(operator(op, name="op"))
    out = workflow.add_outlet("out")
    src.pipe(stage).pipe(out)
    trace = testing.record(workflow)

    async def main():
        async with workflow.running():
            await testing.feed(src, marbles, frame=frame)
            async for _ in out:
                pass

    testing.run(main)
    return trace


def test_debounce_emits_after_the_quiet_time():
    trace = run_operator(ops.debounce(2.5), "ab---c-d-----|")
    assert trace.items("op.y") == [(3.5, "b"), (9.5, "d")]
    assert trace.completed("op.y") == 13.0


def test_delay_shifts_every_item():
    trace = run_operator(ops.delay(5.0), "a-b|")
    assert trace.items("op.y") == [(5.0, "a"), (7.0, "b")]


def test_buffer_with_time_cuts_windows_on_the_clock():
    trace = run_operator(ops.buffer_with_time(10.0), "a-b----------c|")
    assert trace.items("op.y") == [(10.0, ["a", "b"]), (14.0, ["c"])]
    assert trace.marbles("op.y", frame=1.0) == "----------*---(*|)"


def test_throttle_first_lets_one_item_per_window():
    trace = run_operator(ops.throttle_first(5.0), "abc---d-e|")
    assert trace.items("op.y") == [(0.0, "a"), (6.0, "d")]


def test_timestamp_reads_the_virtual_clock():
    trace = run_operator(ops.timestamp(), "a--b-----c|", frame=10.0)
    stamps = [stamped.timestamp for _, stamped in trace.items("op.y")]
    assert [(s - stamps[0]).total_seconds() for s in stamps] == [0.0, 30.0, 90.0]


# -- map_stream backoff in virtual time ---------------------------------------------------------


def test_map_stream_backoff_waits_in_virtual_time():
    attempts: list[float] = []

    async def flaky(item):
        attempts.append(testing.now())
        if len(attempts) < 4:
            raise ConnectionError("try again")
        return item

    workflow = Workflow()
    src = workflow.add_inlet("src")
    work = workflow.add_stream(map_stream(flaky, retries=3, backoff=30.0, name="work"))
    out = workflow.add_outlet("out")
    src.pipe(work).pipe(out)

    async def main():
        async with workflow.running():
            await testing.feed(src, "x|")
            return [item async for item in out]

    started = time.perf_counter()
    assert testing.run(main) == ["x"]
    assert attempts == [0.0, 30.0, 90.0, 210.0]
    assert time.perf_counter() - started < 2.0


# -- exact deadlocks ------------------------------------------------------------------------------


def test_a_deadlock_in_virtual_time_fails_at_once():
    workflow = broadcast_then_drain_one_input_first()

    async def main():
        with pytest.raises(DeadlockError, match="'join'"):
            await workflow.start()
        return testing.now()

    started = time.perf_counter()
    assert testing.run(main) == 0.0  # no grace period
    assert time.perf_counter() - started < 1.0


def test_an_application_timer_keeps_time_moving_and_the_verdict_comes_in_virtual_seconds():
    workflow = broadcast_then_drain_one_input_first()

    async def tick():
        for _ in range(10**6):  # an application's periodic timer
            await asyncio.sleep(10)

    async def main():
        ticker = asyncio.get_running_loop().create_task(tick())
        with pytest.raises(DeadlockError):
            await workflow.start()
        ticker.cancel()
        return testing.now()

    assert testing.run(main) < 2.0  # section 9's "within about a second", in virtual seconds


def test_a_sleeping_stream_is_not_a_deadlock():
    async def slow(ins, outs, state):
        async for item in ins.x:
            await asyncio.sleep(3600)
            await outs.y.push(item)

    workflow = Workflow(buffer_size=1)
    src = workflow.add_inlet("src")
    work = workflow.add_stream(Stream(["x"], ["y"], fn=slow, name="slow"))
    out = workflow.add_outlet("out")
    src.pipe(work).pipe(out)

    async def main():
        async with workflow.running():
            await testing.feed(src, "abc|")
            return [item async for item in out], testing.now()

    assert testing.run(main) == (["a", "b", "c"], 3 * 3600.0)


# -- traces: marbles, pressure, assertions --------------------------------------------------------


def slow_consumer(buffer_size: int = 1, pause: float = 10.0) -> tuple[Workflow, object, object]:
    async def consume(ins, outs, state):
        async for _item in ins.x:
            await asyncio.sleep(pause)

    workflow = Workflow(buffer_size=buffer_size)
    src = workflow.add_inlet("src")
    sink = workflow.add_stream(Stream(["x"], fn=consume, name="sink"))
    src.pipe(sink)
    return workflow, src, sink


def test_feed_waits_for_room_and_later_sends_keep_their_times():
    workflow, src, _ = slow_consumer(buffer_size=1, pause=10.0)
    trace = testing.record(workflow)

    async def main():
        async with workflow.running():
            await testing.feed(src, "abc-------------d|")

    testing.run(main)
    # a is taken at once; b fills the buffer; c waits until the sink takes b at 10 s; d's
    # time (16 s) comes while c fills the buffer, so it waits until 20 s; the close, due at
    # 17 s, never goes before d.
    assert trace.items("src.out") == [(0.0, "a"), (1.0, "b"), (10.0, "c"), (20.0, "d")]
    assert trace.pauses("src.out") == [(2.0, 10.0), (16.0, 20.0)]
    assert trace.completed("src.out") == 20.0
    assert trace.marbles("src.out", frame=2.0) == "(ab)----c----(d|)"
    assert trace.pressure("src.out", frame=2.0) == "-====---==-"
    trace.assert_paused("src.out", at_least=12.0)
    trace.assert_peak("sink.x", at_most=1)
    with pytest.raises(AssertionError, match=r"paused 12 s in total; expected at least 13 s"):
        trace.assert_paused("src.out", at_least=13.0)


def test_assert_never_paused_draws_the_lanes():
    workflow, src, _ = slow_consumer(buffer_size=1, pause=10.0)
    trace = testing.record(workflow)

    async def main():
        async with workflow.running():
            await testing.feed(src, "abc|")

    testing.run(main)
    with pytest.raises(AssertionError) as info:
        trace.assert_never_paused("src.out")
    message = str(info.value)
    assert message.splitlines() == [
        "src.out was paused 1 time(s), 8 s in total (first at 2 s); expected never paused",
        "frame = 0.5 s; '=' a push was paused by a full input",
        "  src.out  a-b-----------------(c|)",
        "           ----================----",
    ]


def test_assert_peak_fails_with_the_peak():
    workflow, src, _ = slow_consumer(buffer_size=3, pause=1.0)
    trace = testing.record(workflow)

    async def main():
        async with workflow.running():
            await testing.feed(src, "(abcd)|")

    testing.run(main)
    assert trace.peak("sink.x") == 3
    with pytest.raises(AssertionError, match=r"sink\.x held up to 3 items; expected at most 2"):
        trace.assert_peak("sink.x", at_most=2)


def test_marbles_groups_long_items_and_frame_boundaries():
    workflow = Workflow()
    src = workflow.add_inlet("src")
    out = workflow.add_outlet("out")
    src.pipe(out)
    trace = testing.record(workflow)

    async def main():
        async with workflow.running():
            await testing.feed(src, "a(bc)-L-(xy|)", frame=2.0, values={"L": "long", "y": 42})
            return [item async for item in out]

    assert testing.run(main) == ["a", "b", "c", "long", "x", 42]
    assert trace.items("src.out") == [
        (0.0, "a"),
        (2.0, "b"),
        (2.0, "c"),
        (6.0, "long"),
        (10.0, "x"),
        (10.0, 42),
    ]
    assert trace.marbles("src.out", frame=2.0) == "a(bc)-*-(x*|)"
    # Events at 2, 6 and 10 s with a 4 s frame fall in frames 0, 1 and 2 (on a boundary: the
    # later frame).
    assert trace.marbles("src.out", frame=4.0) == "(abc)*(x*|)"
    assert trace.marbles("src.out", frame=100.0) == "(abc*x*|)"
    assert trace.pressure("src.out", frame=4.0) == "---"
    assert trace.completed("src.out") == 10.0
    with pytest.raises(KeyError, match=r"recorded: src\.out"):
        trace.marbles("out.x", frame=1.0)


def test_a_failed_output_is_drawn_with_a_hash():
    async def boom(ins, outs, state):
        async for item in ins.x:
            if item == "b":
                raise ValueError("bad item")
            await outs.y.push(item)

    workflow = Workflow()
    src = workflow.add_inlet("src")
    work = workflow.add_stream(Stream(["x"], ["y"], fn=boom, name="boom"))
    out = workflow.add_outlet("out")
    src.pipe(work).pipe(out)
    trace = testing.record(workflow)

    async def main():
        with pytest.raises(Exception, match="boom"):
            async with workflow.running():
                await testing.feed(src, "a-b|")

    testing.run(main)
    assert trace.marbles("boom.y", frame=1.0) == "a-#"
    assert trace.completed("boom.y") == 2.0


@pytest.mark.parametrize(
    ("marbles", "message"),
    [
        ("a-#", "'#' at position 2"),
        ("a(b", "never closed"),
        ("a)b", "closes no group"),
        ("()", "empty group"),
        ("(a(b))", "inside a group"),
        ("a|b", "after '|'"),
    ],
)
def test_feed_checks_the_whole_diagram_before_sending(marbles, message):
    workflow = Workflow()
    src = workflow.add_inlet("src")
    out = workflow.add_outlet("out")
    src.pipe(out)

    async def main():
        async with workflow.running():
            with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("|", r"\|")):
                await testing.feed(src, marbles)
            src.close()
        return workflow.stats()["streams"]["src"]["outputs"]["out"]["pushed"]

    assert testing.run(main) == 0


def test_feed_rejects_a_frame_that_is_not_positive():
    workflow = Workflow()
    src = workflow.add_inlet("src")
    src.pipe(workflow.add_outlet("out"))

    async def main():
        async with workflow.running():
            with pytest.raises(ConfigError, match="positive"):
                await testing.feed(src, "a|", frame=0)

    testing.run(main)


def test_importing_mimo_rx_does_not_import_testing():
    code = "import sys, mimo_rx; print('mimo_rx.testing' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


# -- the pytest plugin -----------------------------------------------------------------------------

PLUGIN_TESTS = """
import asyncio
import pytest
from mimo_rx import testing

@pytest.fixture
def greeting():
    return "hi"

@pytest.mark.mimo_virtual
async def test_virtual(greeting):
    await asyncio.sleep(3600)
    assert testing.now() == 3600.0 and greeting == "hi"

@pytest.mark.mimo_virtual(autojump=False)
async def test_manual():
    await testing.advance(2)
    assert testing.now() == 2.0

@pytest.mark.mimo_virtual
async def test_failing():
    await asyncio.sleep(1)
    assert testing.now() == 0.0
"""

ANYIO_TESTS = """
import asyncio
import pytest

@pytest.mark.anyio
async def test_anyio_keeps_the_real_loop():
    loop = asyncio.get_running_loop()
    assert type(loop).__name__ != "VirtualLoop"
"""


def run_pytest(tmp_path: Path, *files: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in files:
        (tmp_path / name).write_text(textwrap.dedent(text))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    from importlib.metadata import entry_points

    if not [e for e in entry_points(group="pytest11") if e.value == "mimo_rx.testing._plugin"]:
        args[3:3] = ["-p", "mimo_rx.testing._plugin"]  # mimo_rx is not installed: load it by name
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


def test_the_plugin_runs_marked_async_tests_in_virtual_time(tmp_path):
    result = run_pytest(tmp_path, ("test_plugin_user.py", PLUGIN_TESTS))
    assert "1 failed, 2 passed" in result.stdout, result.stdout + result.stderr
    assert "test_failing" in result.stdout


def test_the_plugin_registers_its_marker(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    result = run_pytest(tmp_path, ("test_marker.py", PLUGIN_TESTS))
    assert "1 failed, 2 passed" in result.stdout, result.stdout + result.stderr


def test_the_plugin_leaves_anyio_tests_alone(tmp_path):
    pytest.importorskip("anyio")
    result = run_pytest(
        tmp_path, ("test_plugin_user.py", PLUGIN_TESTS), ("test_anyio_user.py", ANYIO_TESTS)
    )
    assert "1 failed, 3 passed" in result.stdout, result.stdout + result.stderr


ASYNCIO_TESTS = """
import asyncio
import pytest

@pytest.mark.asyncio
async def test_pytest_asyncio_keeps_the_real_loop():
    assert type(asyncio.get_running_loop()).__name__ != "VirtualLoop"
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_the_plugin_leaves_pytest_asyncio_tests_alone(tmp_path, mode):
    # In auto mode pytest-asyncio takes every async test; the marked ones stay virtual.
    pytest.importorskip("pytest_asyncio")
    (tmp_path / "pytest.ini").write_text(
        f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = run_pytest(
        tmp_path, ("test_plugin_user.py", PLUGIN_TESTS), ("test_asyncio_user.py", ASYNCIO_TESTS)
    )
    assert "1 failed, 3 passed" in result.stdout, result.stdout + result.stderr


def test_the_entry_point_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert '[project.entry-points.pytest11]\nmimo_rx = "mimo_rx.testing._plugin"' in text


def test_executor_threads_hold_the_clock():
    def blocking(item):
        time.sleep(0.05)
        return item * 2

    workflow = Workflow()
    src = workflow.add_inlet("src")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        work = workflow.add_stream(map_stream(blocking, executor=pool, name="work"))
        out = workflow.add_outlet("out")
        src.pipe(work).pipe(out)

        async def main():
            async with workflow.running():
                await testing.feed(src, "(123)|", values={"1": 1, "2": 2, "3": 3})
                return [item async for item in out], testing.now()

        items, now = testing.run(main)
    assert items == [2, 4, 6]
    assert 0.1 <= now < 5.0  # real speed while the threads worked


def test_the_workflow_scheduler_reports_the_loop_clock():
    # The same LoopScheduler serves every run; only the loop's clock tells real from virtual.
    from mimo_rx._monitor import StepRuntime
    from mimo_rx._scheduler import LoopScheduler

    async def main():
        scheduler = LoopScheduler(asyncio.get_running_loop(), StepRuntime("s", None, []))
        first = scheduler.now
        await asyncio.sleep(3600.25)
        return (scheduler.now - first).total_seconds()

    assert testing.run(main) == 3600.25


def test_a_deadlock_is_reported_at_once_while_a_server_socket_is_open():
    workflow = broadcast_then_drain_one_input_first()

    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        try:
            with pytest.raises(DeadlockError):
                await workflow.start()
        finally:
            server.close()
            await server.wait_closed()
        return testing.now()

    assert testing.run(main) == 0.0


def test_without_autojump_advance_moves_time_while_a_thread_works():
    async def main():
        work = asyncio.ensure_future(asyncio.to_thread(time.sleep, 0.2))
        await testing.advance(30)
        assert testing.now() == 30.0 and not work.done()
        await work
        assert testing.now() == 30.0  # the thread's real time does not move the clock

    testing.run(main, autojump=False)
