"""Puts every asyncio program of this interpreter on uvloop, for the suite's uvloop pass.

With ``MIMO_RX_LOOP=uvloop``, ``tests/conftest.py`` adds this directory to ``PYTHONPATH``, so
the processes the tests start (examples, README code blocks, the signal children) run on
uvloop as well, without any test-only code in them.
"""

from __future__ import annotations

import os

if os.environ.get("MIMO_RX_LOOP") == "uvloop":
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
