"""Ctrl-C: SIGINT sent to a process running a workflow ends it promptly and cleanly.

Each test starts ``tests/scripts/interrupt_child.py`` with the interpreter running the tests,
waits until the child reports the state the scenario is about, sends SIGINT, and checks that
the child exits promptly through ``KeyboardInterrupt``, that every user ``finally`` block ran,
and that asyncio complained about nothing on stderr.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = Path(__file__).parent / "scripts" / "interrupt_child.py"
STARTUP_S = 20  # importing and reaching the scenario's state, on a slow machine
PROMPT_S = 5  # from SIGINT to exit

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# scenario -> the user finally blocks that must have run
SCENARIOS = {
    "paused": ["producer", "consumer", "watcher", "main"],
    "flowing": ["producer", "middle", "consumer", "main"],
    "executor": ["producer", "consumer", "main"],
    "cold": ["consumer", "watcher", "main"],
    "start": ["producer", "consumer", "watcher", "user_main", "main"],
    # SIGINT delivered to a thread other than the main one while the loop is idle (Python runs
    # handlers in the main thread only): the child sends it itself, with pthread_kill.
    "stray": ["producer", "consumer", "watcher", "main"],
}
SELF_INTERRUPTING = {"stray"}

ASYNCIO_COMPLAINTS = [
    "Task was destroyed but it is pending",
    "was never retrieved",
    "Exception ignored",
    "was never awaited",
    "Unclosed",
]


def _start(scenario: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDEVMODE="1")
    return subprocess.Popen(
        [sys.executable, str(CHILD), scenario],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_line(proc: subprocess.Popen[str], wanted: str, timeout: float) -> list[str]:
    """Read the child's stdout until the line ``wanted`` (bounded by ``timeout``)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"child never printed {wanted!r}: {lines}\n{err}")
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        if readable:
            line = proc.stdout.readline().rstrip("\n")
            lines.append(line)
            if line == wanted:
                return lines


def _interrupt(proc: subprocess.Popen[str], send: bool = True) -> tuple[str, str, float]:
    """Send SIGINT (unless the child does it itself) and wait for the child to exit.

    Returns its remaining stdout and its stderr, and the seconds it took; kills it if it hangs.
    """
    try:
        interrupted = time.monotonic()
        if send:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=PROMPT_S + 5)
        return out, err, time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _assert_ended_by_keyboard_interrupt(proc: subprocess.Popen[str], err: str) -> None:
    assert proc.returncode in (-signal.SIGINT, 128 + signal.SIGINT), (proc.returncode, err)
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    for complaint in ASYNCIO_COMPLAINTS:
        assert complaint not in err, err


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigint_ends_a_running_workflow_promptly_running_every_finally_block(scenario):
    proc = _start(scenario)
    before = _wait_for_line(proc, "ready", STARTUP_S)
    out, err, elapsed = _interrupt(proc, send=scenario not in SELF_INTERRUPTING)

    assert elapsed < PROMPT_S, f"took {elapsed:.1f} s to exit after SIGINT"
    _assert_ended_by_keyboard_interrupt(proc, err)
    lines = before + out.splitlines()
    ran = [line.removeprefix("finally ") for line in lines if line.startswith("finally ")]
    assert sorted(ran) == sorted(SCENARIOS[scenario]), lines
    assert ran[-1] == "main"  # the workflow's own blocks ran before run() returned


@pytest.mark.parametrize(
    "scenario",
    [
        "slow_cleanup",
        "blocking_cleanup",
    ],
)
def test_a_second_sigint_interrupts_a_slow_cleanup_without_asyncio_complaints(scenario):
    proc = _start(scenario)
    _wait_for_line(proc, "ready", STARTUP_S)  # (it kills the child when it fails)
    proc.send_signal(signal.SIGINT)
    _wait_for_line(proc, "cleanup", PROMPT_S)
    out, err, elapsed = _interrupt(proc)

    assert elapsed < PROMPT_S, f"took {elapsed:.1f} s to exit after the second SIGINT"
    _assert_ended_by_keyboard_interrupt(proc, err)
    assert "finally main" in out.splitlines()
