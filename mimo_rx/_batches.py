"""Batch ports: what ``Input.batches()`` returns, and how ``Output.push_many`` cuts its items.

``push_many`` delivers chunks as large as every connected input has room for, each chunk to
all of them without suspending. A list, tuple or range is sliced (:class:`SliceChunks`); any
other iterable is pulled only as far as there is room (:class:`IterChunks`), never ahead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from ._errors import EndOfStream

if TYPE_CHECKING:
    from ._ports import Input

T = TypeVar("T")


class Batches(Generic[T]):
    """The async iterator ``Input.batches()`` returns: lists of items until end of stream."""

    __slots__ = ("_max_items", "_port")

    def __init__(self, port: Input[T], max_items: int | None) -> None:
        self._port = port
        self._max_items = max_items

    def __aiter__(self) -> Batches[T]:
        return self

    async def __anext__(self) -> list[T]:
        port = self._port
        if not port._items:
            try:
                await port._wait_for_item("batches()")
            except EndOfStream:
                raise StopAsyncIteration from None
        return port._take_batch(self._max_items)


class SliceChunks(Generic[T]):
    """Successive slices of a list, tuple or range (all of it when one chunk takes it all)."""

    __slots__ = ("_items", "_start")

    def __init__(self, items: Sequence[T]) -> None:
        self._items = items
        self._start = 0

    def take(self, room: int) -> Sequence[T]:
        """The next ``room`` items (fewer at the end)."""
        start, items = self._start, self._items
        if start == 0 and room >= len(items):
            self._start = len(items)
            return items  # delivering copies it: no slice needed
        self._start = start + room
        return items[start : start + room]

    def exhausted(self) -> bool:
        return self._start >= len(self._items)


class IterChunks(Generic[T]):
    """Successive chunks pulled from an iterator, each only once there is room for it.

    ``exhausted`` pulls one item ahead (the item a ``for`` loop of pushes would be waiting
    to push), so that a call whose last chunk filled a buffer returns instead of waiting.

    When the iterator raises partway through a chunk, the items pulled before are still
    returned (a loop of pushes would have delivered them); the exception is raised by the
    next ``take`` or ``exhausted``.
    """

    __slots__ = ("_ahead", "_error", "_iterator")

    def __init__(self, iterator: Iterator[T]) -> None:
        self._iterator = iterator
        self._ahead: list[T] = []
        self._error: Exception | None = None

    def take(self, room: int) -> list[T]:
        """The next ``room`` items (fewer at the end)."""
        self._raise_pending()
        chunk, self._ahead = self._ahead, []
        try:
            # extend appends each item as it is pulled: what came before an error stays.
            chunk.extend(itertools.islice(self._iterator, room - len(chunk)))
        except Exception as exc:
            if not chunk:
                raise
            self._error = exc  # deliver what was pulled first, as successive pushes would
        return chunk

    def exhausted(self) -> bool:
        self._raise_pending()
        if not self._ahead:
            self._ahead = list(itertools.islice(self._iterator, 1))
        return not self._ahead

    def _raise_pending(self) -> None:
        error = self._error
        if error is not None:
            self._error = None
            raise error
