"""How errors and warnings present themselves: public names, the user's line, fitting advice."""

from __future__ import annotations

import asyncio
import pickle
import sys
import traceback
from typing import Any

import pytest
from harness import Collector, run_checked, source

import mimo_rx
from mimo_rx import DeadlockError, PipeError, Stream, Workflow

PUBLIC_ERRORS = [
    getattr(mimo_rx, name)
    for name in mimo_rx.__all__
    if isinstance(getattr(mimo_rx, name), type)
    and issubclass(getattr(mimo_rx, name), BaseException)
]


def test_every_public_exception_is_named_after_the_package() -> None:
    assert len(PUBLIC_ERRORS) >= 13
    for error in PUBLIC_ERRORS:
        assert f"{error.__module__}.{error.__qualname__}" == f"mimo_rx.{error.__name__}"


def test_a_traceback_shows_mimo_rx_pipe_error_and_it_pickles_under_that_name() -> None:
    workflow = Workflow()
    a = workflow.add_stream(Stream(outs=["y"]))
    b = workflow.add_stream(Stream(["x"]))
    with pytest.raises(PipeError) as info:
        a.pipe(b, output="nope")
    line = traceback.format_exception_only(type(info.value), info.value)[-1]
    assert line.startswith("mimo_rx.PipeError: ")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is PipeError and str(copy) == str(info.value)


@pytest.fixture
def no_rich_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError


def _small_workflow() -> Workflow:
    workflow = Workflow()
    workflow.add_stream(source(range(3))).pipe(workflow.add_stream(Collector()))
    return workflow


@pytest.mark.usefixtures("no_rich_on_a_terminal")
def test_a_warning_from_run_points_at_the_users_line() -> None:
    with pytest.warns(RuntimeWarning, match="mimo_rx\\[progress\\]") as caught:
        line = sys._getframe().f_lineno + 1
        _small_workflow().run(progress=True)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


@pytest.mark.usefixtures("no_rich_on_a_terminal")
def test_a_warning_from_await_start_points_at_the_users_line() -> None:
    lines = []

    async def main() -> None:
        lines.append(sys._getframe().f_lineno + 1)
        await _small_workflow().start(progress=True)

    with pytest.warns(RuntimeWarning, match="mimo_rx\\[progress\\]") as caught:
        asyncio.run(main())
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, lines[0])]


def test_a_deadlock_with_a_full_buffer_advises_more_room() -> None:
    async def drain_x_first(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            pass
        async for _ in ins.y:
            pass

    workflow = Workflow(buffer_size=2)
    src = workflow.add_stream(source(range(10)))
    both = workflow.add_stream(Stream(["x", "y"], fn=drain_x_first))
    src.pipe(both, input="x")
    src.pipe(both, input="y")
    with pytest.raises(DeadlockError, match="more room") as info:
        run_checked(workflow)
    assert "would not help" not in str(info.value)


def test_a_cycle_of_empty_inputs_is_not_told_to_add_room() -> None:
    async def relay(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            await outs.y.push(item)

    workflow = Workflow()
    a = workflow.add_stream(Stream(["x"], ["y"], fn=relay, name="a"))
    b = workflow.add_stream(Stream(["x"], ["y"], fn=relay, name="b"))
    a.pipe(b)
    b.pipe(a)
    with pytest.raises(DeadlockError, match="more room would not help") as info:
        run_checked(workflow)
    message = str(info.value)
    assert "Give the full buffers more room" not in message
    assert "first item into the cycle" in message
