"""In-process timing: every case of a workload, interleaved round by round, with timeouts.

Rounds interleave the cases (and rotate their order) so that a slow spell on this shared
2-core machine hits every implementation alike instead of one of them.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from common import Case, Clock, Measured, Outcome, check, describe_error, missing

T = TypeVar("T")


class BenchTimeout(Exception):
    """A case ran longer than its time limit."""


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise `BenchTimeout` in the main thread after `seconds` (a backstop for stuck code)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise BenchTimeout(f"timed out after {seconds:.0f} s (the bench's limit per run)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_on_fresh_loop(coro: Coroutine[Any, Any, T], backstop: float) -> T:
    """`asyncio.run(coro)`, except that a case that ignores cancellation cannot hang the run.

    After `backstop` seconds `BenchTimeout` is raised; leftover tasks are cancelled and given
    two seconds to finish, then abandoned with their loop.
    """
    loop = asyncio.new_event_loop()
    try:
        with alarm(backstop):
            return loop.run_until_complete(coro)
    finally:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        try:
            with alarm(5):
                if tasks:
                    loop.run_until_complete(asyncio.wait(tasks, timeout=2))
                loop.run_until_complete(loop.shutdown_asyncgens())
        except BenchTimeout:
            pass
        finally:
            loop.close()


def time_once(case: Case, n: int, timeout: float) -> tuple[float, float, Any]:
    """Run `case` once on `n` items; return (wall seconds, CPU seconds, result).

    An async case gets a fresh event loop; only the awaited call is timed, not loop set-up.
    CPU time is this process's (all threads): every case here runs on one thread, so it is
    the wall time minus the time other processes took the CPU away.
    """
    gc.collect()
    if case.is_async:

        async def timed() -> tuple[float, float, Any]:
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                result = await asyncio.wait_for(case.fn(n), timeout)
            except TimeoutError:
                raise BenchTimeout(
                    f"timed out after {timeout:.0f} s (the bench's limit per run)"
                ) from None
            return time.perf_counter() - w0, time.process_time() - c0, result

        return run_on_fresh_loop(timed(), backstop=timeout + 10)
    with alarm(timeout):
        w0, c0 = time.perf_counter(), time.process_time()
        result = case.fn(n)
        return time.perf_counter() - w0, time.process_time() - c0, result


def run_cases(
    cases: Sequence[Case],
    n: int,
    expected: Any,
    repeat: int,
    *,
    warmup: int = 1,
    timeout: float = 60.0,
    clock: Clock = "wall",
    runs_per_sample: int = 1,
) -> dict[str, Outcome]:
    """Run each case `warmup + repeat` times, interleaved; keep the timed runs.

    `Outcome.seconds` holds the `clock` times (`wall` or `cpu`); both are kept in `extra`.
    With `runs_per_sample` > 1 each timed sample is that many back-to-back runs, their times
    summed (W5 uses it so a small size's sample lasts as long as one run of the largest).
    A case that raises, times out or returns a wrong result is run no more: its outcome
    carries the error text instead of times. A case returning a `Measured` has its `value`
    checked and each number of its `extra` appended to `Outcome.extra` (W6's latencies).
    """
    outcomes = {c.label: Outcome(c.label, items=n) for c in cases}
    for c in cases:
        outcomes[c.label].skipped = missing(c.requires)
    for rnd in range(warmup + repeat):
        shift = rnd % len(cases)
        for case in [*cases[shift:], *cases[:shift]]:
            out = outcomes[case.label]
            if out.error or out.skipped:
                continue
            wall = cpu = 0.0
            measured: dict[str, float] = {}
            try:
                for _ in range(runs_per_sample):
                    run_wall, run_cpu, result = time_once(case, n, timeout)
                    if isinstance(result, Measured):
                        result, measured = result.value, result.extra
                    check(result, expected)
                    wall, cpu = wall + run_wall, cpu + run_cpu
            except Exception as exc:
                out.error = describe_error(exc)
                continue
            if rnd >= warmup:
                out.record(wall, cpu, clock)
                for key, value in measured.items():
                    out.extra.setdefault(key, []).append(value)
    return outcomes


def timeout_for(n: int) -> float:
    """A generous per-run limit, elapsed time: 30 s plus 300 us per item.

    The slowest peer (aiostream on W2) needs about 90 us per item on an idle machine; the
    margin keeps it from timing out on a busy one, while a hung case still fails in minutes.
    """
    return 30.0 + 300e-6 * n
