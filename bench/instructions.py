"""Instructions per item of the W8 cases, counted by valgrind's callgrind: repeatable on a
loaded machine, where CPU-time ratios are noisy.

Usage::

    python bench/instructions.py                  # both W8 cases, 20k items
    python bench/instructions.py --n 50000 --case "in-memory AckSource"

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

HERE = Path(__file__).resolve().parent
BASELINE = "plain iterable"

CHILD = """
import asyncio, sys
sys.path[:0] = [{repo!r}, {bench!r}]
import bench_w8
case = bench_w8.CASES[{case!r}]
loop = asyncio.new_event_loop()
loop.run_until_complete(case(2000))
if {n}:
    loop.run_until_complete(case({n}))
"""


def instructions(case: str, n: int) -> int:
    code = CHILD.format(repo=str(HERE.parent), bench=str(HERE), case=case, n=n)
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


def per_item(case: str, n: int) -> float:
    return (instructions(case, n) - instructions(case, 0)) / n


def main() -> int:
    sys.path[:0] = [str(HERE.parent), str(HERE)]
    import bench_w8

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--case", default="in-memory AckSource", choices=sorted(bench_w8.CASES))
    args = parser.parse_args()
    base = per_item(BASELINE, args.n)
    case = per_item(args.case, args.n)
    print(
        f"W8 instructions per item, n={args.n}: {BASELINE} {base:,.0f}, {args.case} {case:,.0f}; "
        f"ratio {base / case:.3f}x (target >= {bench_w8.TARGET}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
