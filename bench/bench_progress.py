"""What does run(progress=True) cost? Throughput of a 3-stage workflow with and without it.

    python bench/bench_progress.py [--items 200000] [--repeat 5]

The workflow: a source pushes ``--items`` integers, a middle stream adds one, a sink counts.
Each round runs it once without and once with the progress display (alternating which goes
first), each on a fresh event loop; the medians of wall time (throughput) and of this
process's CPU time (steadier on a busy machine) are compared. The display draws only on a
terminal, so when standard output is not one this script re-runs itself under a
pseudo-terminal whose output the parent reads and throws away, as a terminal emulator would.

On a shared machine the wall-clock comparison is noisy (other processes come and go between
runs), so the script also measures the display's cost directly, which noise cannot hide: the
time the event loop spent inside the display (starting it, building and drawing frames,
stopping it) as a share of each run, and the cost of one frame.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import pty
import select
import statistics
import struct
import sys
import tempfile
import termios
import time
from typing import Any

from rich.live import Live

import mimo_rx._progress as progress_module
from mimo_rx import Stream, Workflow
from mimo_rx._progress import REFRESH_HZ, start_progress

# Seconds the event loop spent inside the display during the current run.
display_s = 0.0
_depth = 0  # Live.stop calls Live.refresh: count only the outermost call


def _timed(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global display_s, _depth
        t0 = time.perf_counter()
        _depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _depth -= 1
            if _depth == 0:
                display_s += time.perf_counter() - t0

    return wrapper


def instrument() -> None:
    """Count the display's own time: frames built, drawn, and its start and stop."""
    live = progress_module._LiveProgress
    live._frame = _timed(live._frame)  # type: ignore[method-assign]
    Live.refresh = _timed(Live.refresh)  # type: ignore[method-assign]
    Live.start = _timed(Live.start)  # type: ignore[method-assign]
    Live.stop = _timed(Live.stop)  # type: ignore[method-assign]


def build(items: int) -> Workflow:
    async def numbers(ins: Any, outs: Any, state: Any) -> None:
        push = outs.out.push
        for i in range(items):
            await push(i)

    async def inc(ins: Any, outs: Any, state: Any) -> None:
        push = outs.y.push
        async for x in ins.x:
            await push(x + 1)

    async def count(ins: Any, outs: Any, state: Any) -> None:
        n = 0
        async for _ in ins.a:
            n += 1
        state["n"] = n

    wf = Workflow()
    source = wf.add_stream(Stream(outs=["out"], fn=numbers))
    source.pipe(wf.add_stream(Stream(["x"], ["y"], fn=inc))).pipe(
        wf.add_stream(Stream(["a"], fn=count))
    )
    return wf


def time_run(items: int, progress: bool) -> tuple[float, float, float]:
    """Run once; return (wall seconds, CPU seconds of this process, display seconds)."""
    global display_s
    wf = build(items)
    display_s = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    wf.run(progress=progress)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert wf.stats()["streams"]["count"]["inputs"]["a"]["taken"] == items
    return wall, cpu, display_s


def frame_cost(items: int, frames: int = 50) -> float:
    """Seconds to build and draw one frame of a finished workflow of this shape."""
    wf = build(items)
    wf.run()

    async def draw() -> float:
        display: Any = start_progress(wf)
        t0 = time.perf_counter()
        for _ in range(frames):
            display._live.update(display._frame(), refresh=True)
        cost = (time.perf_counter() - t0) / frames
        await display.stop()
        return cost

    return asyncio.run(draw())


def measure(items: int, repeat: int) -> dict[str, Any]:
    time_run(items // 10, False)  # warm up imports and caches
    time_run(items // 10, True)
    instrument()
    runs: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for round_ in range(repeat):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for progress in order:
            runs[progress].append(time_run(items, progress))
    result: dict[str, Any] = {"items": items, "repeat": repeat, "frame_s": frame_cost(items)}
    for progress, key in ((False, "without"), (True, "with")):
        result[key] = statistics.median(wall for wall, _, _ in runs[progress])
        result[key + "_cpu"] = statistics.median(cpu for _, cpu, _ in runs[progress])
    # Rounds ran back to back, so the ratio within a round sees the least machine noise.
    pairs = zip(runs[False], runs[True], strict=True)
    result["pair_ratio"] = statistics.median(w[0] / wo[0] for wo, w in pairs)
    result["display_share"] = statistics.median(d / wall for wall, _, d in runs[True])
    return result


def in_pty(argv: list[str]) -> dict[str, Any]:
    """Run this script under a pseudo-terminal; drain what it draws; return its results."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "result.json")
        pid, fd = pty.fork()
        if pid == 0:
            try:
                args = [sys.executable, __file__, *argv, "--result", result_path]
                os.execv(sys.executable, args)
            finally:
                os._exit(127)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        while True:
            select.select([fd], [], [])
            try:
                if not os.read(fd, 65536):
                    break
            except OSError:  # the child exited
                break
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("the benchmark failed under the pseudo-terminal")
        with open(result_path) as f:
            result: dict[str, Any] = json.load(f)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.result:  # the child under a pseudo-terminal
        with open(args.result, "w") as f:
            json.dump(measure(args.items, args.repeat), f)
        return
    argv = ["--items", str(args.items), "--repeat", str(args.repeat)]
    terminal = sys.stdout.isatty()
    r = measure(args.items, args.repeat) if terminal else in_pty(argv)
    ratio = r["with"] / r["without"]
    where = "this terminal" if terminal else "a pseudo-terminal"
    print(
        f"progress overhead: 3-stage workflow, {r['items']:,} items, "
        f"median of {r['repeat']}, drawn on {where}"
    )
    for label, key in (("without progress", "without"), ("with progress", "with")):
        rate = r["items"] / r[key]
        print(f"  {label:<17} {r[key]:.3f} s  ({rate:,.0f} items/s), CPU {r[key + '_cpu']:.3f} s")
    cpu_ratio = r["with_cpu"] / r["without_cpu"]
    print(f"  overhead ratio    {ratio:.3f} wall ({(ratio - 1) * 100:+.1f}%)", end="")
    print(f", {cpu_ratio:.3f} CPU ({(cpu_ratio - 1) * 100:+.1f}%)", end="")
    print(f", {r['pair_ratio']:.3f} median of per-round ratios")
    print(f"  display's own time {r['display_share'] * 100:.2f}% of each run (median)")
    share = r["frame_s"] * REFRESH_HZ * 100
    print(
        f"  one frame         {r['frame_s'] * 1000:.2f} ms to build and draw; "
        f"at {REFRESH_HZ:g} Hz that is {share:.2f}% of the event loop's time"
    )


if __name__ == "__main__":
    main()
