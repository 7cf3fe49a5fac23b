"""The pytest plugin (entry point ``mimo_rx`` in ``pytest11``): registers the marker
``mimo_virtual``; an ``async def`` test so marked runs under :func:`mimo_rx.testing.run`.

Only marked tests are touched, so projects that use pytest-asyncio or anyio's plugin for their
other tests keep them as they are.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mimo_virtual(autojump=True): run this async def test under mimo_rx.testing.run "
        "(virtual time)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    marker = pyfuncitem.get_closest_marker("mimo_virtual")
    if marker is None:
        return None
    # pytest-asyncio in auto mode wraps every async test in a function of its own (with
    # functools.wraps): the marked test is still ours.
    test = inspect.unwrap(pyfuncitem.obj)
    if not inspect.iscoroutinefunction(test):
        return None
    from ._clock import run

    autojump = bool(marker.kwargs.get("autojump", True))
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}
    run(test(**kwargs), autojump=autojump)
    return True
