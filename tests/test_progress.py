"""run(progress=True): drawn on a real pseudo-terminal, silent on a pipe, tidy on failure."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import pytest

from mimo_rx import Stream, StreamError, Workflow
from mimo_rx._progress import REFRESH_HZ, start_progress

# A 3-stage workflow; its sink sleeps per item so that the run lasts long enough (about
# N * DELAY seconds) for the display to draw several frames.
CHILD = """
import asyncio, sys, time
from mimo_rx import Stream, Workflow

N, DELAY = int(sys.argv[1]), float(sys.argv[2])

async def numbers(ins, outs, state):
    for i in range(N):
        await outs.out.push(i)

async def double(ins, outs, state):
    async for x in ins.x:
        await outs.y.push(x * 2)

async def sink(ins, outs, state):
    async for x in ins.a:
        await asyncio.sleep(DELAY)

wf = Workflow(buffer_size=16)
source = wf.add_stream(Stream(outs=["out"], fn=numbers))
source.pipe(wf.add_stream(Stream(["x"], ["y"], fn=double))).pipe(
    wf.add_stream(Stream(["a"], fn=sink))
)
t0 = time.perf_counter()
wf.run(progress=True)
print(f"elapsed {time.perf_counter() - t0:.3f}")
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TITLE = "mimo_rx · 3 streams · "


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_INTERACTIVE", "NO_COLOR")}
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40", PYTHONIOENCODING="utf-8")
    return env


def run_in_pty(*args: str, deadline_s: float = 45.0) -> bytes:
    """Run CHILD under a new pseudo-terminal; return everything it drew."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin/stdout/stderr are the pty's slave end
        try:
            os.execve(sys.executable, [sys.executable, "-c", CHILD, *args], child_env())
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    drawn = bytearray()
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child exited and closed the slave end
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, drawn.decode(errors="replace")
    return bytes(drawn)


def test_progress_draws_every_stream_with_its_counts_on_a_terminal() -> None:
    raw = run_in_pty("200", "0.005").decode("utf-8")
    text = ANSI.sub("", raw).replace("\r", "")
    elapsed = float(re.findall(r"elapsed ([0-9.]+)", text)[-1])

    frames = text.count(TITLE)
    assert frames >= 2, text  # live frames during the run, and the final one
    assert frames <= elapsed * REFRESH_HZ + 2, (frames, elapsed)  # the refresh rate is bounded

    final = text[text.rindex(TITLE) :]
    assert final.startswith(TITLE + "done")
    for header in ("stream", "status", "in", "out", "buffer", "dropped", "paused"):
        assert header in final.splitlines()[1]
    assert re.search(r"^ numbers +done +- +200 +- ", final, re.MULTILINE), final
    assert re.search(r"^ double +done +200 +200 +░+ 0/16 +0 +\d+\.\d\d s", final, re.M), final
    assert re.search(r"^ sink +done +200 +- +░+ 0/16 +0 +\d+\.\d\d s", final, re.M), final
    # While it ran, the slow sink's buffer was seen filling up.
    assert re.search(r"^ sink +running .*█+░* +\d+/16", text, re.MULTILINE), text
    assert "\x1b[?25h" in raw  # the cursor is shown again at the end


_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|([\r\n])|([^\x1b\r\n]+)")


def screen_after(raw: str) -> list[str]:
    """What a terminal shows once it has drawn ``raw``: the lines left on the screen.

    A small model of a terminal, enough for what rich's Live writes: text, carriage return,
    line feed, cursor up/down/column, erase in line and erase below; colours are ignored.
    """
    lines: list[list[str]] = [[]]
    row = col = 0
    for params, final, control, text in _CSI.findall(raw):
        if text:
            line = lines[row]
            line.extend(" " * (col - len(line)))
            line[col : col + len(text)] = text
            col += len(text)
        elif control == "\r":
            col = 0
        elif control == "\n":
            row += 1
            if row == len(lines):
                lines.append([])
        elif not params.startswith("?"):
            n = int(params.split(";")[0] or 1) if final in "ABG" else int(params or 0)
            if final == "A":
                row = max(row - n, 0)
            elif final == "B":
                row += n
                lines.extend([] for _ in range(row + 1 - len(lines)))
            elif final == "G":
                col = n - 1
            elif final == "K":
                lines[row] = [] if n == 2 else lines[row][:col] if n == 0 else lines[row]
            elif final == "J" and n == 0:
                lines[row] = lines[row][:col]
                del lines[row + 1 :]
    return ["".join(line).rstrip() for line in lines]


def test_the_final_table_stays_on_the_terminal_with_every_stream_done() -> None:
    raw = run_in_pty("120", "0.002").decode("utf-8")
    shown = screen_after(raw)
    text = "\n".join(shown)
    assert text.count(TITLE) == 1, text  # the live frames were redrawn in place
    final = text[text.index(TITLE) :]
    assert final.startswith(TITLE + "done"), text
    assert re.search(r"^ numbers +done +- +120 +- ", final, re.MULTILINE), text
    assert re.search(r"^ double +done +120 +120 +░+ 0/16 +0 +\d+\.\d\d s", final, re.M), text
    assert re.search(r"^ sink +done +120 +- +░+ 0/16 +0 +\d+\.\d\d s", final, re.M), text
    assert re.search(r"^elapsed [0-9.]+$", text, re.MULTILINE), text  # printed below it


@pytest.mark.parametrize("rich_installed", [True, False])
def test_progress_prints_nothing_when_stdout_is_a_pipe(rich_installed: bool) -> None:
    code = CHILD if rich_installed else "import sys; sys.modules['rich'] = None\n" + CHILD
    result = subprocess.run(
        [sys.executable, "-c", code, "50", "0"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=45,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"elapsed [0-9.]+\n", result.stdout), result.stdout
    assert result.stderr == ""


# -- in process, with the display forced on (rich's TTY_INTERACTIVE) -----------------------


@pytest.fixture
def forced_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setenv("COLUMNS", "120")


async def numbers(ins: Any, outs: Any, state: Any) -> None:
    for i in range(100):
        await outs.out.push(i)


def assert_only_this_task_is_left() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.usefixtures("forced_terminal")
def test_a_failed_run_stops_the_display_and_draws_the_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def breaks(ins: Any, outs: Any, state: Any) -> None:
        await ins.x.pop()
        raise ValueError("boom")

    async def main() -> None:
        wf = Workflow(buffer_size=4)
        wf.add_stream(Stream(outs=["out"], fn=numbers)).pipe(
            wf.add_stream(Stream(["x"], fn=breaks))
        )
        with pytest.raises(StreamError, match="breaks"):
            await wf.start(progress=True)
        assert_only_this_task_is_left()

    stdout = sys.stdout
    asyncio.run(main())
    assert sys.stdout is stdout  # the display's redirection of print() is undone
    final = ANSI.sub("", capsys.readouterr().out)
    assert "mimo_rx · 2 streams · failed" in final
    assert re.search(r"breaks +failed", final), final


@pytest.mark.usefixtures("forced_terminal")
def test_cancelling_a_run_stops_the_display_and_leaves_no_task(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def main() -> None:
        reading = asyncio.Event()

        async def stuck(ins: Any, outs: Any, state: Any) -> None:
            await ins.x.pop()
            reading.set()
            await asyncio.Event().wait()

        wf = Workflow(buffer_size=4)
        wf.add_stream(Stream(outs=["out"], fn=numbers)).pipe(wf.add_stream(Stream(["x"], fn=stuck)))
        run = asyncio.create_task(wf.start(progress=True))
        await reading.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert_only_this_task_is_left()

    asyncio.run(main())
    final = ANSI.sub("", capsys.readouterr().out)
    assert "mimo_rx · 2 streams · cancelled" in final
    assert re.search(r"stuck +cancelled", final), final


@pytest.mark.usefixtures("forced_terminal")
def test_stop_waits_for_the_refresh_task_even_when_cancelled_itself() -> None:
    async def main() -> None:
        wf = Workflow()
        wf.add_stream(Stream(outs=["out"], fn=numbers))
        display = start_progress(wf)
        stopping = asyncio.create_task(display.stop())
        await asyncio.sleep(0)  # let stop() cancel the refresh task and start waiting
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert_only_this_task_is_left()
        await display.stop()  # a second stop is harmless

    asyncio.run(main())


@pytest.mark.usefixtures("forced_terminal")
def test_without_rich_progress_warns_once_naming_the_extra_and_the_run_completes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError
    received: list[int] = []

    async def sink(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            received.append(item)

    wf = Workflow()
    wf.add_stream(Stream(outs=["out"], fn=numbers)).pipe(wf.add_stream(Stream(["x"], fn=sink)))
    with pytest.warns(RuntimeWarning, match=r"pip install 'mimo_rx\[progress\]'") as caught:
        wf.run(progress=True)
    assert len(caught) == 1
    assert received == list(range(100))
    assert capsys.readouterr().out == ""


@pytest.mark.usefixtures("forced_terminal")
def test_a_broken_display_warns_and_does_not_change_the_runs_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> Any:
        raise OSError("terminal gone")

    monkeypatch.setattr("mimo_rx._progress.render_frame", broken)
    wf = Workflow()
    wf.add_stream(Stream(outs=["out"], fn=numbers)).pipe(wf.add_stream(Stream(["x"])))
    with pytest.warns(RuntimeWarning, match="progress display stopped: OSError"):
        wf.run(progress=True)
    assert all(step.status == "done" for step in wf.steps)
