"""The guarantee of contract section 12, as tested: kill -9 at random moments, SIGTERM, reruns.

The child is ``examples/resumable_job.py``: FileSource (numbered orders) -> map_stream -> a sink
that appends each result to a file and flushes it before it takes the next one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "resumable_job.py"
LINE_BYTES = 19  # "00000001,003,12345\n", the example's fixed-width order line
RESULT_BYTES = 17  # the longest result row: "00000001,1299870\n"
MAX_IN_FLIGHT = 200
COMMIT_INTERVAL = 0.1
# An ack reaches the disk within commit_interval of the line being done, plus its fsyncs: on a
# loaded machine those and the sampling of the results file take up to this much more.
ACK_SLACK_S = 0.15


def start(workdir: Path, lines: int, *extra: str) -> subprocess.Popen[str]:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, str(JOB), "--workdir", str(workdir), "--lines", str(lines)]
    command += ["--max-in-flight", str(MAX_IN_FLIGHT), "--commit-interval", str(COMMIT_INTERVAL)]
    return subprocess.Popen(
        [*command, *extra],
        env={**os.environ, "PYTHONPATH": pythonpath},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rows(data: bytes) -> list[int]:
    """The order ids of complete result rows, checking each total."""
    ids = []
    for row in data.decode().splitlines():
        order, total = row.split(",")
        i = int(order)
        assert int(total) == (i * 7 % 13 + 1) * (i * 7919 % 99_991), row
        ids.append(i)
    return ids


def acked(checkpoint: Path) -> set[int]:
    """The order ids the checkpoint says are done."""
    if not checkpoint.exists():
        return set()
    data = json.loads(checkpoint.read_text())
    return set(range(data["offset"] // LINE_BYTES)) | {m // LINE_BYTES for m in data["done"]}


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_kill_9_at_random_moments_loses_nothing_and_repeats_within_the_bound(
    tmp_path: Path,
) -> None:
    lines, kills_wanted = 20_000, 6
    # Each run is killed a random time (0-0.25 s, up to 2.5 commit intervals) after its first
    # result. Unpaced, a fast machine got through 4,500 orders in that time, and the runs
    # finished the job before the fifth kill: 1 ms of work per order (8 at a time) paces the
    # runs to be killed to 1,200 at most, and the last run goes at full speed. Should a busy
    # machine still be late to kill, a run is killed once it has written a twelfth of the job.
    most_per_run = lines * RESULT_BYTES // (2 * kills_wanted)
    results, checkpoint = tmp_path / "results.csv", tmp_path / "orders.txt.checkpoint"
    rng = random.Random()
    runs: list[tuple[int, int]] = []  # per run: its byte range of results.csv
    # per kill: the run, the ids its checkpoint says are done, where its last commit_interval began
    crashes: list[tuple[int, set[int], int]] = []
    while True:
        begin = size(results)
        paced = ["--work-ms", "1"] if len(crashes) < kills_wanted else []
        with start(tmp_path, lines, *paced) as child:
            assert child.stdout is not None and child.stderr is not None
            first = child.stdout.readline()  # the first result is written (or the job ended)
            if len(crashes) < kills_wanted and first.startswith("resumed at"):
                samples: list[tuple[float, int]] = []
                kill_at = time.monotonic() + rng.uniform(0.0, 0.25)
                while (now := time.monotonic()) < kill_at and child.poll() is None:
                    samples.append((now, written := size(results)))
                    if written - begin >= most_per_run:
                        kill_at = now
                        break
                    time.sleep(0.003)
                if child.poll() is None:
                    child.send_signal(signal.SIGKILL)
                    child.wait(timeout=10)
                    since = kill_at - COMMIT_INTERVAL - ACK_SLACK_S
                    lately = min((s for t, s in samples if t >= since), default=size(results))
                    crashes.append((len(runs), acked(checkpoint), lately))
                    runs.append((begin, size(results)))
                    continue
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
        runs.append((begin, size(results)))
        if "all orders done" in first + out:
            break
    assert len(crashes) >= 5, f"only {len(crashes)} kills landed before the job finished"

    data = results.read_bytes()
    per_run = [rows(data[a:b]) for a, b in runs]
    seen = [i for ids in per_run for i in ids]
    assert set(seen) == set(range(lines)), "a line was lost"
    for run, done, lately in crashes:
        later = {i for ids in per_run[run + 1 :] for i in ids}
        assert not done & later, "an acked line was delivered again"
        repeated = set(per_run[run]) & later  # written, not acked when the process died
        done_lately = data[lately : runs[run][1]].count(b"\n")
        assert len(repeated) <= MAX_IN_FLIGHT + done_lately, (run, len(repeated), done_lately)


def test_sigterm_drains_and_a_rerun_delivers_the_rest_each_line_exactly_once(
    tmp_path: Path,
) -> None:
    lines = 3000
    results = tmp_path / "results.csv"
    with start(tmp_path, lines, "--work-ms", "3") as child:  # ~1 s of work at concurrency 8
        assert child.stdout is not None
        assert child.stdout.readline().startswith("resumed at the first line")
        time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert "stopped; run again to resume" in out
    first = rows(results.read_bytes())
    assert 0 < len(first) < lines

    with start(tmp_path, lines) as child:
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert f"resumed at line {len(first) + 1} " in out  # the drained lines were all acked
    assert "all orders done" in out
    assert sorted(rows(results.read_bytes())) == list(range(lines))  # none twice, none missing
