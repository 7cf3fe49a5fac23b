"""Fresh-process runs for W4: throughput and peak RSS growth of one case per process.

Parent side: `run_fresh(workload, label, n, timeout)` starts
``python bench/rss.py W4 "<label>" <n>`` and parses the JSON line it prints.

Child side: import everything the case needs, collect garbage, reset the kernel's peak-RSS
counter (``/proc/self/clear_refs``) and read the baseline RSS; then run the case once, check its
result and report ``VmHWM - baseline``: the memory the workload itself added at its peak.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _proc_status_kib(field: str) -> int | None:
    """A `VmRSS`/`VmHWM`-style field of /proc/self/status in KiB, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). Return whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _maxrss_kib() -> int:
    """Peak RSS of this process from getrusage (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_main(key: str, label: str, n: int) -> dict[str, Any]:
    """Run one case once in this (fresh) process and measure it."""
    import workloads
    from common import check, describe_error

    workload = workloads.WORKLOADS[key]
    case = workload.case(label)
    for module in filter(
        None, [case.requires, "reactivex" if case.requires == "mimo_rx" else None]
    ):
        importlib.import_module(module)  # library imports belong to the baseline
    expected = workload.expected(n)
    gc.collect()
    hwm_reset = _reset_peak()
    baseline = _proc_status_kib("VmRSS") or _maxrss_kib()
    report: dict[str, Any] = {"baseline_kib": baseline, "hwm_reset": hwm_reset}

    async def timed() -> tuple[float, float, Any]:
        w0, c0 = time.perf_counter(), time.process_time()
        result = await case.fn(n)
        return time.perf_counter() - w0, time.process_time() - c0, result

    try:
        wall, cpu, result = asyncio.run(timed())
        check(result, expected)
    except Exception as exc:
        report["error"] = describe_error(exc)
        return report
    peak = _proc_status_kib("VmHWM") if hwm_reset else None
    peak = peak or _maxrss_kib()
    report.update(wall=wall, cpu=cpu, peak_kib=peak, growth_kib=max(0, peak - baseline))
    return report


def run_fresh(key: str, label: str, n: int, timeout: float) -> dict[str, Any]:
    """Run one case in a fresh interpreter; return the child's report (or an `error`)."""
    cmd = [sys.executable, str(HERE / "rss.py"), key, label, str(n)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:]) or f"exit code {proc.returncode}"
        return {"error": f"child process failed: {tail}"}
    report: dict[str, Any] = json.loads(lines[-1])
    return report


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(HERE)]
    _key, _label, _n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(child_main(_key, _label, _n)))
