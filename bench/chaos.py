"""Chaos: kill -9 the FileSource job at random moments, restart it, count what was lost.

The job is ``examples/resumable_job.py`` (FileSource -> map_stream -> a sink that appends each
result to a file and flushes it). Each cycle starts the job, kills it with SIGKILL after a random
delay (uniformly 0 to ``--max-kill-delay`` seconds after the process starts: sometimes before it
has read a line, sometimes mid-stream) and starts it again. When a run gets to the end of its
file (the kill came too late), the epoch is checked and a new file begins; at the deadline the
last epoch runs to its end without kills. Reported:

* lost: orders of an epoch that no run wrote (must be 0);
* acked then delivered again: orders that a checkpoint said were done when the job was killed,
  written again by a later run (must be 0);
* duplicates per crash: the orders a killed run wrote that a later run wrote again, max and
  median, against the bound of contract section 12: ``max_in_flight`` + the orders done in the
  last ``commit_interval`` before the kill (measured by sampling the results file every 3 ms;
  an ack reaches the disk within the interval plus its fsyncs, so ``--slack`` seconds are added);
* restart to full rate: from the start of a process to the first 100 ms in which it wrote at
  >= 80% of the steady rate of an uninterrupted run (p50, p99; runs killed before are left out).

Usage::

    python bench/chaos.py                    # 5 minutes
    python bench/chaos.py --seconds 60 --lines 50000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "resumable_job.py"
LINE_BYTES = 19  # the job's fixed-width order line
WINDOW_S = 0.1  # the rate window of "full rate"


@dataclass
class Run:
    begin: int  # byte offset in results.csv where this run's rows start
    started: float
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, results size)
    end: int = 0
    killed_at: float | None = None
    acked: set[int] = field(default_factory=set)  # per the checkpoint, once it was killed


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def acked_ids(checkpoint: Path) -> set[int]:
    if not checkpoint.exists():
        return set()
    data = json.loads(checkpoint.read_text())
    return set(range(data["offset"] // LINE_BYTES)) | {m // LINE_BYTES for m in data["done"]}


def ids_of(data: bytes) -> list[int]:
    return [int(row.split(b",", 1)[0]) for row in data.splitlines()]


class Job:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir, self.args = workdir, args
        self.results = workdir / "results.csv"
        self.checkpoint = workdir / "orders.txt.checkpoint"
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": pythonpath}

    def fresh(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)

    def run(self, kill_after: float | None) -> tuple[Run, bool]:
        """One process; killed after ``kill_after`` seconds unless it ends first. Finished?"""
        a = self.args
        command = [sys.executable, str(JOB), "--workdir", str(self.workdir)]
        command += ["--lines", str(a.lines), "--max-in-flight", str(a.max_in_flight)]
        command += ["--commit-interval", str(a.commit_interval)]
        run = Run(begin=size(self.results), started=time.monotonic())
        with subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as child:
            deadline = None if kill_after is None else run.started + kill_after
            while child.poll() is None:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    child.send_signal(signal.SIGKILL)
                    run.killed_at = now
                    break
                run.samples.append((now, size(self.results)))
                time.sleep(0.003)
            out, err = child.communicate(timeout=120)
        run.end = size(self.results)
        if run.killed_at is None and child.returncode != 0:
            raise RuntimeError(f"the job failed (exit {child.returncode}):\n{err}")
        if run.killed_at is not None:
            run.acked = acked_ids(self.checkpoint)
        return run, run.killed_at is None and "all orders done" in out


def steady_rate(run: Run) -> float:
    """Bytes/s written in the middle half of an uninterrupted run."""
    t0, t1 = run.samples[0][0], run.samples[-1][0]
    lo, hi = t0 + (t1 - t0) / 4, t0 + 3 * (t1 - t0) / 4
    inside = [(t, s) for t, s in run.samples if lo <= t <= hi]
    (ta, sa), (tb, sb) = inside[0], inside[-1]
    return (sb - sa) / (tb - ta)


def time_to_rate(run: Run, rate_bytes: float) -> float | None:
    """Seconds from the start to the end of the first window at >= 80% of ``rate_bytes``/s."""
    samples = run.samples
    j = 0
    for t, s in samples:
        while samples[j][0] < t - WINDOW_S:
            j += 1
        t0, s0 = samples[j]
        if t - t0 >= WINDOW_S * 0.9 and (s - s0) / (t - t0) >= 0.8 * rate_bytes:
            return t - run.started
    return None


def check_epoch(
    job: Job, runs: list[Run], lines: int, slack: float, report: dict[str, Any]
) -> None:
    data = job.results.read_bytes()
    per_run = [ids_of(data[r.begin : r.end]) for r in runs]
    seen = {i for ids in per_run for i in ids}
    report["lost"] += lines - len(seen & set(range(lines)))
    for k, run in enumerate(runs):
        if run.killed_at is None:
            continue
        later = {i for ids in per_run[k + 1 :] for i in ids}
        report["acked_again"] += len(run.acked & later)
        repeated = len(set(per_run[k]) & later)
        since = run.killed_at - job.args.commit_interval - slack
        lately = min((s for t, s in run.samples if t >= since), default=run.end)
        done_lately = data[lately : run.end].count(b"\n")
        bound = job.args.max_in_flight + done_lately
        report["dups"].append(repeated)
        report["bounds"].append(bound)
        report["over_bound"] += repeated > bound


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--lines", type=int, default=100_000, help="orders per epoch")
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--commit-interval", type=float, default=0.5)
    parser.add_argument("--max-kill-delay", type=float, default=3.0)
    parser.add_argument("--slack", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        job = Job(Path(tmp) / "job", args)
        job.fresh()
        baseline, finished = job.run(kill_after=None)
        assert finished
        rows = len(ids_of(job.results.read_bytes()))
        rate_bytes = steady_rate(baseline)
        rows_per_s = rate_bytes * rows / (baseline.end - baseline.begin)
        print(f"steady rate of an uninterrupted run: {rows_per_s:,.0f} orders/s", file=sys.stderr)

        report: dict[str, Any] = {
            "lost": 0,
            "acked_again": 0,
            "dups": [],
            "bounds": [],
            "over_bound": 0,
        }
        to_rate: list[float] = []
        censored = cycles = epochs = 0
        began = time.monotonic()
        while True:
            job.fresh()
            runs: list[Run] = []
            while True:
                late = time.monotonic() - began >= args.seconds
                run, finished = job.run(None if late else rng.uniform(0, args.max_kill_delay))
                runs.append(run)
                reached = time_to_rate(run, rate_bytes)
                if reached is not None:
                    to_rate.append(reached)
                elif run.killed_at is not None:
                    censored += 1
                cycles += run.killed_at is not None
                if finished:
                    break
            epochs += 1
            check_epoch(job, runs, args.lines, args.slack, report)
            print(
                f"epoch {epochs}: {len(runs) - 1} kills, {cycles} in all, "
                f"{time.monotonic() - began:.0f} s",
                file=sys.stderr,
            )
            if time.monotonic() - began >= args.seconds:
                break

    elapsed = time.monotonic() - began
    dups, bounds = report["dups"] or [0], report["bounds"] or [0]
    q = statistics.quantiles(to_rate, n=100) if len(to_rate) >= 2 else to_rate * 99
    print(
        f"chaos: {cycles} kill -9 cycles in {elapsed:.0f} s ({epochs} epochs of {args.lines} "
        f"orders; max_in_flight={args.max_in_flight}, commit_interval={args.commit_interval})"
    )
    print(f"lost: {report['lost']}")
    print(f"acked then delivered again: {report['acked_again']}")
    print(
        f"duplicates per crash: max {max(dups)}, median {statistics.median(dups):.0f} "
        f"(bound per crash: max {max(bounds)}, median {statistics.median(bounds):.0f}); "
        f"crashes over their bound: {report['over_bound']}"
    )
    if to_rate:
        print(
            f"restart to full rate (80% of {rows_per_s:,.0f} orders/s over {WINDOW_S * 1000:.0f}"
            f" ms): p50 {statistics.median(to_rate):.2f} s, p99 {q[98]:.2f} s "
            f"({len(to_rate)} runs; {censored} killed before)"
        )
    bad = report["lost"] or report["acked_again"] or report["over_bound"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
