"""Hypothesis profiles: "ci" (default, 200 examples) and "deep" (2000), chosen by the
environment variable HYPOTHESIS_PROFILE. Neither has a deadline: a run's duration depends on
the event loop, not only on the example.

A heavy property (every example runs whole workflows, and reactivex or a model beside them)
takes a share of the profile's count: ``@settings(max_examples=examples(2))`` with
``harness.examples`` runs 100 examples under "ci", a few seconds, and 1000 under "deep"; its
timeout is sized from that number. So the suite keeps to its budget (one event loop in under
four minutes on two cores) while ``HYPOTHESIS_PROFILE=deep`` still searches ten times further.

The event loop: the standard one, or uvloop's with MIMO_RX_LOOP=uvloop."""

from __future__ import annotations

import os
import signal

from hypothesis import HealthCheck, settings

# A test run started in the background of a non-interactive shell (`cmd &`) inherits SIGINT
# ignored, and so would every process the tests start: the Ctrl-C tests need it delivered.
# A Python handler here becomes the default disposition in children at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# MIMO_RX_LOOP=uvloop runs every test on uvloop's event loop (``.ci/run`` does a second pass
# with it): the harness, ``asyncio.run`` and ``Workflow.run()`` make their loops through the
# policy.
LOOP = os.environ.get("MIMO_RX_LOOP") or "asyncio"
if LOOP not in ("asyncio", "uvloop"):
    raise RuntimeError(f"MIMO_RX_LOOP must be 'asyncio' or 'uvloop', not {LOOP!r}")
if LOOP == "uvloop":
    import asyncio
    from pathlib import Path

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # The processes tests start run on uvloop too (see uvloop_site/sitecustomize.py).
    _site = str(Path(__file__).parent / "uvloop_site")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_site, os.environ.get("PYTHONPATH")]))


def pytest_report_header() -> str:
    return f"mimo_rx event loop: {LOOP} (MIMO_RX_LOOP)"


# The broker servers (tests/servers.py) are session fixtures, started by the first test that
# asks for one.
pytest_plugins = ["servers"]
