"""SIGTERM at random moments: does every worker of the Redis example stop, and in time?

Starts a throwaway ``redis-server``, then in each round three workers of
``examples/orders_from_redis.py`` (``--worker``), adds 100 orders every other round, sends each
worker SIGTERM after a random delay and waits up to ``--grace`` seconds for it to exit. A worker
still running then has hung: it is killed and counted. With ``--early`` the delays are 0-1.5 s
(mostly while the worker starts: the imports, ``run()``'s set-up, the source opening); by
default 1.2-2.5 s (mostly while it waits in ``XREADGROUP`` for more). An exit by the SIGTERM
itself (-15) means the signal came before ``run()`` installed its handler.

Before the fixes of 2026-12-03, about one worker in 40 hung either way. Usage::

    python bench/sigterm_stress.py --rounds 40 --seed 1
    python bench/sigterm_stress.py --rounds 40 --seed 1 --early
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

import orders_from_redis as example  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--early", action="store_true", help="SIGTERM while workers start")
    parser.add_argument("--grace", type=float, default=15.0)
    args = parser.parse_args()
    import redis

    rng = random.Random(args.seed)
    low, high = (0.0, 1.5) if args.early else (1.2, 2.5)
    hung = exited = by_signal = 0
    with example.spawned_redis() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        command = [sys.executable, str(ROOT / "examples" / "orders_from_redis.py")]
        command += ["--worker", "--redis", url]
        for round_ in range(args.rounds):
            if round_ % 2 == 0:
                example.produce(client, round_ * 100, round_ * 100 + 100)
            workers = [subprocess.Popen(command) for _ in range(3)]
            time.sleep(rng.uniform(low, high))
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    code = worker.wait(timeout=args.grace)
                except subprocess.TimeoutExpired:
                    hung += 1
                    worker.kill()
                    worker.wait()
                    print(f"round {round_}: a worker hung after SIGTERM", flush=True)
                    continue
                exited += 1
                by_signal += code == -signal.SIGTERM
        client.close()
    print(
        f"{args.rounds * 3} workers: {exited} exited ({by_signal} by the signal itself, before "
        f"run() handled it), {hung} hung"
    )
    return 1 if hung else 0


if __name__ == "__main__":
    sys.exit(main())
