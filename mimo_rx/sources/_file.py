"""FileSource: the lines of a text file as an acknowledged source, resumable after a crash.

Tokens are the byte offsets at which lines start. The checkpoint records which lines are done::

    {"offset": n, "done": [m, ...]}

``offset`` is the byte offset of the first line not yet done; ``done`` lists the offsets of later
lines that are already done (lines complete out of order, so the lines between ``offset`` and the
last done one are a mix). A run reads from ``offset`` and skips the lines in ``done``: a line that
was acked is never delivered again, a line that was fetched but not acked before the process died
is delivered again.

Every ``ack``/``nack`` call writes the whole checkpoint atomically: a temporary file in the same
directory is written and fsynced, ``os.replace``-d over the checkpoint, and the directory is
fsynced, so after a crash (even a power cut) the checkpoint is the old one or the new one, never a
torn mix. The write runs on a worker thread, so the graph keeps moving during the fsyncs.

The file is read in blocks and split into lines in memory (no syscall per line); each line is
decoded on its own, because tokens are byte offsets.

``stop()`` and a followed file: the engine calls :meth:`FileSource.fetch_at_stop` (the optional
hook of the AckSource protocol, see ``mimo_rx/_acksource.py``) instead of ``fetch`` once the run
stops. If the source had caught up with the file (everything read so far was handed out, and it
had seen the end of the file or read up to it), it reads what was appended since its last look,
up to the size of the file at that moment, and hands out those lines and the last one without an
ending; then it ends. Otherwise it ends at once: the lines it had not reached come in the next
run, as they would from an iterable that ``stop()`` no longer pulls.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
from collections import deque
from collections.abc import Hashable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import IO, Any

from .._errors import ConfigError

__all__ = ["FileSource"]

_BLOCK = 1 << 18  # bytes read per syscall: a few thousand lines of a typical log
_PLUS_ONE = (1).__add__


class FileSource:
    """The lines of a text file, delivered at least once across crashes (contract section 12).

    Each line comes without its line ending (``\\n`` or ``\\r\\n``). A last line with no ending is
    a line too; with ``follow=True`` it is delivered only once its ending is written, or at
    ``stop()`` (when the source had read up to it: see :meth:`fetch_at_stop`), processed, acked
    and checkpointed before ``start()`` returns. At the end of the file the source ends, unless
    ``follow=True``: then it polls for appended lines until the run is stopped.

    Args:
        path: The text file to read.
        checkpoint: Where the progress is kept (default: ``path`` + ``".checkpoint"``). Delete it
            to read the file from the start again.
        follow: Keep waiting for lines appended to the file, like ``tail -f``.
        encoding: How each line is decoded.

    Raises:
        ConfigError: ``encoding`` is not a known codec; at ``open()``, the checkpoint file is not
            one this source wrote, or points past the end of the file.

    ``resumed_from`` is the byte offset the last ``open()`` resumed at (0 for a fresh start) and
    ``skipped`` the number of lines after it that an earlier run had already done.
    """

    #: seconds between two looks at the end of a followed file
    poll_interval: float = 0.05

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        follow: bool = False,
        encoding: str = "utf-8",
    ) -> None:
        self.path = Path(path)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else Path(f"{path}.checkpoint")
        self.follow = follow
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(
                f"FileSource({str(self.path)!r}): unknown encoding {encoding!r}; "
                "pass a codec name such as 'utf-8' or 'latin-1'"
            ) from None
        self.encoding = encoding
        # ASCII bytes decode to the same characters in this codec: a block of them is decoded
        # at once (a line's characters then sit where its bytes do)
        self._ascii_compatible = _ascii_compatible(encoding)
        self.resumed_from = 0
        self.skipped = 0
        self._file: IO[bytes] | None = None
        self._reset(0, set())
        self._write_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r})"

    def _reset(self, offset: int, done: set[int]) -> None:
        self._done = done  # lines after the frontier that are done (from the checkpoint or acked)
        self._skip = set(done)  # lines ahead of the reader that an earlier run did
        self._pending: set[int] = set()  # fetched and not done: in flight, or nacked
        # the offsets of each fetch, oldest first, until the frontier has passed them all; the
        # frontier is found with set operations on these lists (C loops), not per line in Python
        self._fetched: deque[list[int]] = deque()
        # the lines split from the last block read: fetch hands out [_next:]
        self._offsets: list[int] = []
        self._lines: list[str] = []
        self._next = 0
        self._rest = b""  # bytes after the last line ending read so far
        self._rest_at = offset  # file offset of _rest[0]
        self._eof = False
        self._at_end = False  # following: the last read found nothing more in the file
        self._stopped = False  # stop(): fetch_at_stop was called
        self._drain = False  # ... and the source had caught up: it reads on to _limit
        self._limit: int | None = None  # after stop(): read no further than this byte offset

    # -- the AckSource protocol --------------------------------------------------------------

    async def open(self) -> None:
        """Load the checkpoint and open the file at the first line not yet done."""
        offset, done = self._load_checkpoint()
        self._file = self._open_at(offset)
        self._reset(offset, done)
        self._write_lock = asyncio.Lock()  # made here: each run may be on a new event loop
        self.resumed_from = offset
        self.skipped = 0

    async def fetch(self, max_items: int) -> Sequence[tuple[Hashable, Any]] | None:
        """Up to ``max_items`` ``(offset, line)`` pairs; ``None`` at the end of the file."""
        while self._next == len(self._offsets):
            if self._eof:
                return None
            if not self._read_block():
                if not self.follow or self._stopped:
                    self._finish()
                    continue
                self._at_end = True
                await asyncio.sleep(self.poll_interval)  # stop() cancels it: see fetch_at_stop
        i = self._next
        j = self._next = min(i + max_items, len(self._offsets))
        offsets = self._offsets[i:j]
        self._pending.update(offsets)
        self._fetched.append(offsets)
        return list(zip(offsets, self._lines[i:j], strict=True))

    async def fetch_at_stop(self, max_items: int) -> Sequence[tuple[Hashable, Any]] | None:
        """What ``stop()`` completes, then ``None``; never waits (the optional hook of the
        AckSource protocol that the engine calls in place of ``fetch`` once the run stops).

        With ``follow=True``, if the source had caught up with the file when the run stopped,
        the lines appended since its last look (up to the file's size at the first call) and
        the last line without an ending; otherwise, and without ``follow``, nothing.
        """
        if not self._stopped:
            self._stopped = True  # fetch no longer waits: at the end of the file, it ends
            self._drain = self._caught_up()
        if not self._drain:
            return None
        return await self.fetch(max_items)

    def _caught_up(self) -> bool:
        """At stop(): is the followed file read up to its end (then read on to the size it
        has now, bounded, and end with its unended last line)?"""
        if not self.follow or self._file is None or self._eof:
            return False
        if self._next < len(self._offsets):
            return False  # lines read and not handed out yet: it had not caught up
        read = self._rest_at + len(self._rest)  # the bytes read so far
        size = os.fstat(self._file.fileno()).st_size
        if size < read or not (self._at_end or size == read):
            return False  # truncated, or more to read than since the last look
        self._limit = size
        return True

    async def ack(self, tokens: Sequence[Hashable]) -> None:
        """Mark these lines done and write the checkpoint."""
        acked = self._pending.intersection(tokens)  # a token acked twice counts once
        self._pending -= acked
        self._done |= acked
        await self._commit()

    async def nack(self, tokens: Sequence[Hashable]) -> None:
        """Leave these lines not done (the next run delivers them) and write the checkpoint.

        A nacked line stays pending for the rest of this run: it is not delivered again in the
        same run, and the checkpoint's ``offset`` stays at or before it.
        """
        await self._commit()

    async def close(self) -> None:
        """Close the file. The checkpoint is already up to date (``ack`` writes it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- reading ------------------------------------------------------------------------------

    def _open_at(self, offset: int) -> IO[bytes]:
        file = self.path.open("rb")
        try:
            size = os.fstat(file.fileno()).st_size
            if offset > size:
                raise ConfigError(
                    f"checkpoint {str(self.checkpoint)!r} resumes {str(self.path)!r} at byte "
                    f"{offset}, past its end ({size} bytes): the file was truncated or replaced; "
                    "delete the checkpoint to read the file from the start"
                )
            file.seek(offset)
        except BaseException:
            file.close()
            raise
        return file

    def _read_block(self) -> bool:
        """Read the next block and split its complete lines; False at the end of the file.

        The work per line is done by C loops (split, accumulate, decode of the whole block)
        unless the block needs more: lines to skip, or non-ASCII bytes in an encoding where
        that needs a decode per line.
        """
        assert self._file is not None, "FileSource.fetch() called before open()"
        if self._limit is None:
            data = self._file.read(_BLOCK)
        else:  # stopping: what the file held at stop() only
            data = self._file.read(
                max(0, min(_BLOCK, self._limit - self._rest_at - len(self._rest)))
            )
        if not data:
            return False
        self._at_end = False
        if self._rest:
            data = self._rest + data
        parts = data.split(b"\n")
        self._rest = parts.pop()
        # the offset of each line: the previous one + its length + 1 (its "\n")
        offsets = list(accumulate(map(_PLUS_ONE, map(len, parts)), initial=self._rest_at))
        self._rest_at = offsets.pop()
        complete = data[: len(data) - len(self._rest)]
        if self._ascii_compatible and complete.isascii():
            lines = complete.decode("ascii").split("\n")
            lines.pop()  # after the last "\n"
        else:
            lines = [self._decode(raw, at) for raw, at in zip(parts, offsets, strict=True)]
        if b"\r" in complete:
            lines = [line[:-1] if line[-1:] == "\r" else line for line in lines]
        if self._skip:
            kept = [
                (at, line) for at, line in zip(offsets, lines, strict=True) if at not in self._skip
            ]
            self.skipped += len(offsets) - len(kept)
            offsets, lines = [at for at, _ in kept], [line for _, line in kept]
        self._offsets, self._lines, self._next = offsets, lines, 0
        return True

    def _finish(self) -> None:
        """End of input: a last line without an ending is a line."""
        self._eof = True
        if self._rest:
            at, raw = self._rest_at, self._rest
            self._rest, self._rest_at = b"", at + len(raw)
            if at in self._skip:
                self.skipped += 1
            else:
                self._offsets, self._lines, self._next = [at], [self._decode(raw, at)], 0

    def _decode(self, raw: bytes, at: int) -> str:
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{str(self.path)!r}: the line at byte {at} is not valid {self.encoding} "
                f"({exc}); pass FileSource(..., encoding=...) with the file's encoding"
            ) from exc

    # -- the checkpoint -----------------------------------------------------------------------

    def _frontier(self) -> int:
        """Byte offset of the first line not yet done; forgets the done lines before it."""
        fetched, pending, done = self._fetched, self._pending, self._done
        while fetched:
            oldest = fetched[0]
            if not pending.isdisjoint(oldest):
                return min(pending.intersection(oldest))
            fetched.popleft()  # all done: the checkpoint's offset moves past them
            done.difference_update(oldest)
        if self._next < len(self._offsets):
            return self._offsets[self._next]
        return self._rest_at

    def _snapshot(self) -> dict[str, Any]:
        offset = self._frontier()
        done = self._done
        if done and min(done) < offset:  # lines of the checkpoint this run read past
            done = self._done = {m for m in done if m > offset}
        return {"offset": offset, "done": sorted(done)}

    async def _commit(self) -> None:
        assert self._write_lock is not None, "FileSource.ack() called before open()"
        async with self._write_lock:  # writes land in call order
            snapshot = self._snapshot()
            await asyncio.to_thread(_write_atomically, self.checkpoint, snapshot)

    def _load_checkpoint(self) -> tuple[int, set[int]]:
        try:
            text = self.checkpoint.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0, set()
        fix = "delete it to read the file from the start"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(
                f"checkpoint {str(self.checkpoint)!r} of {str(self.path)!r} is not JSON ({exc}); "
                f"it was not written by FileSource: {fix}"
            ) from None
        offset = data.get("offset") if isinstance(data, dict) else None
        done = data.get("done", []) if isinstance(data, dict) else None
        if (
            not isinstance(offset, int)
            or not _is_offset(offset)
            or not isinstance(done, list)
            or not all(_is_offset(m) and m > offset for m in done)
        ):
            raise ConfigError(
                f"checkpoint {str(self.checkpoint)!r} of {str(self.path)!r} is not "
                '{"offset": n, "done": [m, ...]} with byte offsets m > n >= 0 '
                f"(it holds {text[:80]!r}); {fix}"
            )
        return offset, set(done)


def _ascii_compatible(encoding: str) -> bool:
    sample = bytes(range(128))
    try:
        return sample.decode(encoding) == sample.decode("ascii")
    except UnicodeDecodeError:
        return False


def _is_offset(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON so that a crash leaves the old or the new file."""
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(json.dumps(data, separators=(",", ":")).encode())
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
