"""Durable sources shipped with mimo_rx, each an :class:`~mimo_rx.AckSource` (contract §12).

* :class:`FileSource`: the lines of a text file, resumable from an atomic checkpoint.
* :class:`RedisStreamSource` (extra ``mimo_rx[redis]``): a Redis stream read through a consumer
  group; items are :class:`StreamEntry`.
* :class:`NatsSource` (extra ``mimo_rx[nats]``): a NATS JetStream durable pull consumer; items
  are :class:`NatsMessage`.

Each lives in its own module, imported when its name is first used, so ``import mimo_rx`` (and
``import mimo_rx.sources``) never imports a broker's client library.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._acksource import AckSource

# public name -> the module (in this package) that defines it
_MODULES = {
    "FileSource": "._file",
    "RedisStreamSource": "._redis",
    "StreamEntry": "._redis",
    "NatsSource": "._nats",
    "NatsMessage": "._nats",
}

__all__ = ["AckSource", *_MODULES]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'mimo_rx.sources' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
