"""Instructions per item, counted by valgrind's callgrind: repeatable on a loaded machine,
where CPU-time ratios are noisy.

Usage::

    python bench/instructions.py                  # both W8 cases, 20k items
    python bench/instructions.py --n 50000 --case "in-memory AckSource"
    python bench/instructions.py --hops           # where W8's extra instructions go
    # one case function of bench/mimo_cases.py, here or in another checkout (before/after):
    python bench/instructions.py --function w1_streams
    python bench/instructions.py --function w1_streams --repo /path/to/older/checkout

Each case runs in a fresh interpreter under ``valgrind --tool=callgrind`` twice, with ``n``
items and with none (after the same 2,000-item warm-up); the difference over ``n`` is what one
item costs. The ratio is the plain iterable's count over the case's (higher is better, as in
bench_w8.py). Needs valgrind (Debian package ``valgrind``); takes about a minute per case.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASELINE = "plain iterable"

CHILD = """
import asyncio, functools, sys
sys.path[:0] = [{repo!r}, {bench!r}]
import bench_w8, mimo_cases
if {hops!r} is not None:
    case = functools.partial(bench_w8.hops_case, hops={hops!r}, tracked={tracked!r})
else:
    case = getattr(mimo_cases, {function!r}) if {function!r} else bench_w8.CASES[{case!r}]
loop = asyncio.new_event_loop()
loop.run_until_complete(case(2000))
if {n}:
    loop.run_until_complete(case({n}))
"""


def instructions(
    case: str,
    n: int,
    repo: Path = HERE.parent,
    function: str = "",
    hops: int | None = None,
    tracked: bool = False,
) -> int:
    bench = str(repo / "bench")
    code = CHILD.format(
        repo=str(repo), bench=bench, case=case, n=n, function=function, hops=hops, tracked=tracked
    )
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    run = subprocess.run(
        [*valgrind, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{run.stderr}")
    return int(found.group(1))


def per_item(case: str, n: int, repo: Path = HERE.parent, function: str = "", **hops: Any) -> float:
    counts = [instructions(case, count, repo, function, **hops) for count in (n, 0)]
    return (counts[0] - counts[1]) / n


def decompose(n: int, repo: Path) -> None:
    """``--hops``: W8's extra instructions split into a part per message (source, ledger and
    sink: the difference with no hop) and a part per stream it passes (per added hop)."""
    counts = {
        (tracked, hops): per_item("", n, repo, hops=hops, tracked=tracked)
        for tracked in (False, True)
        for hops in (0, 1, 2)
    }
    for hops in (0, 1, 2):
        plain, tracked = counts[(False, hops)], counts[(True, hops)]
        print(
            f"source -> {hops} map stage(s) -> sink: plain iterable {plain:,.0f}, "
            f"in-memory AckSource {tracked:,.0f} instructions per item (+{tracked - plain:,.0f})"
        )
    extra = [counts[(True, h)] - counts[(False, h)] for h in (0, 1, 2)]
    print(
        f"tracking costs {extra[0]:,.0f} instructions per message at the source, ledger and "
        f"sink, and {(extra[2] - extra[0]) / 2:,.0f} per stream it passes through"
    )


def main() -> int:
    sys.path[:0] = [str(HERE.parent), str(HERE)]
    import bench_w8

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--case", default="in-memory AckSource", choices=sorted(bench_w8.CASES))
    parser.add_argument("--function", help="a case function of mimo_cases.py (w1_streams, ...)")
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the checkout to count")
    parser.add_argument("--hops", action="store_true", help="split W8's extra cost by hops")
    args = parser.parse_args()
    if args.hops:
        decompose(args.n, args.repo)
        return 0
    if args.function:
        count = per_item("", args.n, args.repo, args.function)
        print(f"{args.function} in {args.repo}: {count:,.0f} instructions per item, n={args.n}")
        return 0
    base = per_item(BASELINE, args.n)
    case = per_item(args.case, args.n)
    print(
        f"W8 instructions per item, n={args.n}: {BASELINE} {base:,.0f}, {args.case} {case:,.0f}; "
        f"ratio {base / case:.3f}x (target >= {bench_w8.TARGET}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
