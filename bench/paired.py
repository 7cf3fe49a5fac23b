"""Two implementations of one workload, alternated round by round: a tight ratio on a noisy VM.

`run.py` interleaves every case of a workload, so on W2 the slow peers (aiostream needs ~10 s
per run) put seconds between two cases' runs, and the VM's speed bursts in between. Here only
the two cases alternate (the order flips every round), and the ratio is taken per round: the
median of those paired ratios, their range, and how many rounds clear a target.

Usage::

    python bench/paired.py W2 "mimo_rx async streams" asyncio.Queue --rounds 20 --target 1.5
    python bench/paired.py W6 "mimo_rx async streams" asyncio.Queue --rounds 9 --target 0.8

For W6 the ratio is of p99 latency (case / baseline, lower is better; `--metric p50_us` or
`max_us` for the others), and the target counts the rounds at or below it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # mimo_rx from the repo, bench modules by name

import workloads as wl  # noqa: E402
from timing import run_cases, timeout_for  # noqa: E402

WORKLOADS = {w.key: w for w in (wl.W1, wl.W1_BATCH, wl.W2, wl.W3, wl.W6)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("case", help='e.g. "mimo_rx async streams"')
    parser.add_argument("baseline", help="e.g. asyncio.Queue")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--target", type=float, help="count the rounds at or above this ratio")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--metric", choices=("p50_us", "p99_us", "max_us"), default="p99_us")
    args = parser.parse_args()

    w = WORKLOADS[args.workload]
    cases = [w.case(args.case), w.case(args.baseline)]
    outcomes = run_cases(
        cases, w.n, w.expected(w.n), args.rounds, timeout=timeout_for(w.n), clock=args.clock
    )
    for outcome in outcomes.values():
        if not outcome.ok:
            print(f"{outcome.label}: {outcome.error or outcome.skipped}")
            return 1
    if w.latency:
        return report_latency(w, args, outcomes)
    mine, base = outcomes[args.case].seconds, outcomes[args.baseline].seconds
    ratios = sorted(b / m for m, b in zip(mine, base, strict=True))  # items/s of case / baseline
    print(
        f"{w.key}, n = {w.n:,}, {args.rounds} rounds, {args.clock} time: {args.case} vs "
        f"{args.baseline}: median of paired ratios {statistics.median(ratios):.2f}x "
        f"(min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x); ratio of medians "
        f"{statistics.median(base) / statistics.median(mine):.2f}x"
    )
    if args.target is not None:
        met = sum(r >= args.target for r in ratios)
        print(f"rounds at or above {args.target}x: {met} of {len(ratios)}")
    return 0


def report_latency(w: wl.Workload, args: argparse.Namespace, outcomes: dict[str, Any]) -> int:
    """W6: the per-round ratio of one latency percentile, case / baseline (lower is better)."""
    mine, base = outcomes[args.case].extra[args.metric], outcomes[args.baseline].extra[args.metric]
    ratios = sorted(m / b for m, b in zip(mine, base, strict=True))
    print(
        f"{w.key}, n = {w.n:,}, {args.rounds} rounds: {args.metric} of {args.case} / "
        f"{args.baseline}: median of paired ratios {statistics.median(ratios):.2f}x "
        f"(min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x); ratio of medians "
        f"{statistics.median(mine) / statistics.median(base):.2f}x; medians "
        f"{statistics.median(mine):.0f} us vs {statistics.median(base):.0f} us"
    )
    if args.target is not None:
        met = sum(r <= args.target for r in ratios)
        print(f"rounds at or below {args.target}x: {met} of {len(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
