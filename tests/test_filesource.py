"""FileSource through its AckSource methods, without an engine (contract section 12)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

from mimo_rx import AckSource, ConfigError
from mimo_rx.sources import FileSource

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def drain(source: FileSource, max_items: int = 1000) -> list[tuple[Hashable, Any]]:
    """Every (token, line) the source gives until it ends."""
    got: list[tuple[Hashable, Any]] = []
    while (batch := await source.fetch(max_items)) is not None:
        assert 1 <= len(batch) <= max_items
        got.extend(batch)
    return got


def run_once(source: FileSource, ack: str = "all", max_items: int = 1000) -> list[Any]:
    """One run: open, read everything, ack it all (or nothing), close; the lines seen."""

    async def main() -> list[Any]:
        await source.open()
        try:
            got = await drain(source, max_items)
            if ack == "all":
                await source.ack([token for token, _ in got])
            return [line for _, line in got]
        finally:
            await source.close()

    return asyncio.run(main())


def checkpoint_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(f"{path}.checkpoint").read_text())
    return data


def test_file_source_is_an_ack_source() -> None:
    assert isinstance(FileSource("x.txt"), AckSource)


def test_lines_come_in_file_order_without_endings_tokens_are_byte_offsets(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"one\ntwo\r\n\nthree\n")

    async def main() -> list[tuple[Hashable, Any]]:
        source = FileSource(path)
        await source.open()
        got = await drain(source, max_items=2)
        await source.close()
        return got

    assert asyncio.run(main()) == [(0, "one"), (4, "two"), (9, ""), (10, "three")]


def test_a_last_line_without_ending_is_a_line(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"a\r\nb\nlast")
    assert run_once(FileSource(path)) == ["a", "b", "last"]
    assert checkpoint_of(path) == {"offset": 9, "done": []}


def test_lines_are_decoded_with_the_encoding_after_splitting_on_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", "é\nà\n".encode("latin-1"))
    assert run_once(FileSource(path, encoding="latin-1")) == ["é", "à"]
    with pytest.raises(ValueError, match=r"line at byte 0 is not valid utf-8.*encoding="):
        run_once(FileSource(path, checkpoint=tmp_path / "other"))


def test_offsets_count_bytes_not_characters_in_multibyte_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", "naïve\r\ncafé\nok\n".encode())

    async def main() -> list[tuple[Hashable, Any]]:
        source = FileSource(path)
        await source.open()
        got = await drain(source)
        await source.close()
        return got

    assert asyncio.run(main()) == [(0, "naïve"), (8, "café"), (14, "ok")]


def test_an_unknown_encoding_is_a_config_error_at_construction() -> None:
    with pytest.raises(ConfigError, match="unknown encoding 'nope'"):
        FileSource("in.txt", encoding="nope")


def test_many_lines_across_read_blocks_keep_their_offsets(tmp_path: Path) -> None:
    lines = [f"line {i} " + "x" * (i % 97) for i in range(20_000)]
    data = "".join(f"{line}\n" for line in lines).encode()
    path = write(tmp_path / "in.txt", data)

    async def main() -> list[tuple[Hashable, Any]]:
        source = FileSource(path)
        await source.open()
        got = await drain(source, max_items=333)
        await source.close()
        return got

    got = asyncio.run(main())
    assert [line for _, line in got] == lines
    assert all(data[offset : offset + len(line)].decode() == line for offset, line in got)  # type: ignore[misc]


def test_a_rerun_after_everything_was_acked_delivers_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\nc\n")
    assert run_once(FileSource(path)) == ["a", "b", "c"]
    assert checkpoint_of(path) == {"offset": 6, "done": []}
    assert run_once(FileSource(path)) == []


def test_a_run_that_acked_nothing_is_delivered_again_in_full(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\n")
    assert run_once(FileSource(path), ack="none") == ["a", "b"]
    assert not Path(f"{path}.checkpoint").exists()
    assert run_once(FileSource(path)) == ["a", "b"]


def test_out_of_order_acks_record_the_first_line_not_done_and_later_done_lines(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\nc\nd\ne\n")  # offsets 0 2 4 6 8

    async def first_run() -> FileSource:
        source = FileSource(path)
        await source.open()
        got = await source.fetch(5)
        assert got is not None and [t for t, _ in got] == [0, 2, 4, 6, 8]
        await source.ack([6, 2])
        assert checkpoint_of(path) == {"offset": 0, "done": [2, 6]}
        await source.ack([0])
        assert checkpoint_of(path) == {"offset": 4, "done": [6]}
        await source.close()  # 4 and 8 were never acked: the process "died"
        return source

    asyncio.run(first_run())
    source = FileSource(path)
    assert run_once(source) == ["c", "e"]
    assert (source.resumed_from, source.skipped) == (4, 1)
    assert checkpoint_of(path) == {"offset": 10, "done": []}


def test_the_frontier_moves_to_the_next_unread_line_when_everything_fetched_is_done(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\nc\n")

    async def main() -> None:
        source = FileSource(path)
        await source.open()
        got = await source.fetch(2)
        assert got is not None and [t for t, _ in got] == [0, 2]
        await source.ack([0, 2])
        assert checkpoint_of(path) == {"offset": 4, "done": []}
        await source.close()

    asyncio.run(main())
    assert run_once(FileSource(path)) == ["c"]


def test_a_nacked_line_is_not_delivered_again_in_the_run_but_is_in_the_next(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\nc\n")

    async def main() -> list[Any]:
        source = FileSource(path)
        await source.open()
        got = await drain(source, max_items=1)
        await source.nack([2])
        assert checkpoint_of(path) == {"offset": 0, "done": []}
        await source.ack([0, 4])
        assert checkpoint_of(path) == {"offset": 2, "done": [4]}
        assert await source.fetch(10) is None
        await source.close()
        return [line for _, line in got]

    assert asyncio.run(main()) == ["a", "b", "c"]
    assert run_once(FileSource(path)) == ["b"]
    assert run_once(FileSource(path)) == []


def test_the_same_source_object_resumes_on_each_open(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\n")
    source = FileSource(path)
    assert run_once(source) == ["a", "b"]
    with path.open("ab") as f:
        f.write(b"c\n")
    assert run_once(source) == ["c"]
    assert source.resumed_from == 4


def test_the_checkpoint_path_can_be_chosen(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"a\n")
    run_once(FileSource(path, checkpoint=tmp_path / "progress.json"))
    assert json.loads((tmp_path / "progress.json").read_text()) == {"offset": 2, "done": []}
    assert not Path(f"{path}.checkpoint").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{torn", "is not JSON"),
        ("[1, 2]", "is not"),
        ('{"offset": -1, "done": []}', "is not"),
        ('{"offset": "3", "done": []}', "is not"),
        ('{"offset": true, "done": []}', "is not"),
        ('{"offset": 4, "done": [2]}', "is not"),
        ('{"offset": 0, "done": {}}', "is not"),
    ],
)
def test_a_bad_checkpoint_is_a_config_error_naming_the_file_and_the_fix(
    tmp_path: Path, content: str, match: str
) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\n")
    Path(f"{path}.checkpoint").write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        run_once(FileSource(path))
    assert "in.txt.checkpoint" in str(info.value)
    assert "delete it to read the file from the start" in str(info.value)


def test_a_checkpoint_past_the_end_of_a_truncated_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\n")
    Path(f"{path}.checkpoint").write_text('{"offset": 40, "done": []}')
    with pytest.raises(ConfigError, match=r"at byte 40, past its end \(4 bytes\).*delete"):
        run_once(FileSource(path))


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.txt"):
        run_once(FileSource(tmp_path / "nothere.txt"))


def test_follow_delivers_appended_lines_and_a_partial_line_only_once_it_ends(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "in.txt", b"a\n")

    async def main() -> None:
        source = FileSource(path, follow=True)
        source.poll_interval = 0.005
        await source.open()
        assert await source.fetch(10) == [(0, "a")]
        waiting = asyncio.ensure_future(source.fetch(10))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # end of file: waits instead of ending
        with path.open("ab") as f:
            f.write(b"b\npar")
            f.flush()
            assert await asyncio.wait_for(waiting, 5) == [(2, "b")]
            waiting = asyncio.ensure_future(source.fetch(10))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # "par" has no ending yet
            f.write(b"tial\r\nrest")
            f.flush()
        assert await asyncio.wait_for(waiting, 5) == [(4, "partial")]
        # stop() cancels the waiting fetch, then asks fetch_at_stop: the unended line, the end
        waiting = asyncio.ensure_future(source.fetch(10))
        await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await source.fetch_at_stop(10) == [(13, "rest")]
        assert await source.fetch_at_stop(10) is None
        assert await source.fetch_at_stop(10) is None
        await source.ack([0, 2, 4, 13])
        await source.close()
        assert checkpoint_of(path) == {"offset": 17, "done": []}

    asyncio.run(asyncio.wait_for(main(), 20))


def test_at_stop_a_caught_up_source_reads_what_was_appended_since_its_last_look(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "in.txt", b"a\n")

    async def main() -> None:
        source = FileSource(path, follow=True)
        source.poll_interval = 3600  # its next look would come long after the stop
        await source.open()
        assert await source.fetch(10) == [(0, "a")]
        waiting = asyncio.ensure_future(source.fetch(10))
        await asyncio.sleep(0.02)  # it has seen the end of the file and waits
        with path.open("ab") as f:
            f.write(b"b\nc\nd")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await source.fetch_at_stop(2) == [(2, "b"), (4, "c")]  # max_items holds
        with path.open("ab") as f:
            f.write(b"-after-the-stop\n")  # written after the stop's look: not read
        assert await source.fetch_at_stop(2) == [(6, "d")]
        assert await source.fetch_at_stop(2) is None
        await source.ack([0, 2, 4, 6])
        await source.close()
        assert checkpoint_of(path) == {"offset": 7, "done": []}

    asyncio.run(asyncio.wait_for(main(), 20))


def test_at_stop_a_source_behind_the_file_ends_at_once_and_keeps_the_rest(tmp_path: Path) -> None:
    lines = [f"line {i}" for i in range(100)]
    path = write(tmp_path / "in.txt", "".join(f"{line}\n" for line in lines).encode() + b"tail")

    async def main() -> None:
        source = FileSource(path, follow=True)
        await source.open()
        got = await source.fetch(10)
        assert got is not None and [line for _, line in got] == lines[:10]
        assert await source.fetch_at_stop(10) is None  # 90 lines it had not reached: not now
        assert await source.fetch_at_stop(10) is None
        await source.ack([token for token, _ in got])
        await source.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert run_once(FileSource(path)) == [*lines[10:], "tail"]  # the next run: the rest


def test_without_follow_fetch_at_stop_hands_out_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"a\nb\nc")

    async def main() -> None:
        source = FileSource(path)
        await source.open()
        assert await source.fetch(1) == [(0, "a")]
        assert await source.fetch_at_stop(10) is None
        await source.ack([0])
        await source.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert run_once(FileSource(path)) == ["b", "c"]


def test_many_acks_then_a_resume_never_repeat_or_miss_a_line(tmp_path: Path) -> None:
    """Random fetch sizes, random ack order and a random crash point, run after run."""
    rng = random.Random(7)
    lines = [f"{i}" for i in range(3000)]
    path = write(tmp_path / "in.txt", "".join(f"{line}\r\n" for line in lines).encode())
    acked: list[str] = []

    async def crashy_run() -> bool:
        source = FileSource(path)
        await source.open()
        held: dict[Hashable, str] = {}
        ended = False
        for _ in range(rng.randrange(1, 40)):
            batch = await source.fetch(rng.randrange(1, 200))
            if batch is None:
                ended = True
                break
            held.update(batch)
            done = rng.sample(sorted(held), k=rng.randrange(0, len(held) + 1))
            await source.ack(done)
            acked.extend(held.pop(token) for token in done)
        await source.close()  # the rest of `held` was lost with the "process"
        return ended and not held

    for _ in range(200):
        if asyncio.run(crashy_run()):
            break
    assert sorted(acked, key=int) == lines  # each exactly once


CHILD = """
import asyncio, sys
from mimo_rx.sources import FileSource

async def main():
    source = FileSource(sys.argv[1])
    await source.open()
    print("ready", flush=True)
    while (batch := await source.fetch(7)) is not None:
        await source.ack([token for token, _ in batch][::-1])

asyncio.run(main())
"""


def test_a_process_killed_while_writing_checkpoints_leaves_a_whole_one(tmp_path: Path) -> None:
    lines = [f"{i:05}" for i in range(200_000)]
    path = write(tmp_path / "in.txt", "".join(f"{line}\n" for line in lines).encode())
    checkpoint = Path(f"{path}.checkpoint")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    rng = random.Random(11)
    last = 0
    for _ in range(6):
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], env=env, stdout=subprocess.PIPE, text=True
        ) as child:
            try:
                assert child.stdout is not None and child.stdout.readline() == "ready\n"
                # The first child's first checkpoint (two fsyncs) can take longer than the
                # sleep on a loaded machine (it failed once so in a CI rehearsal): wait for it.
                deadline = time.monotonic() + 20
                while not checkpoint.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.05, 0.3))
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=10)
        data = json.loads(checkpoint.read_text())  # never torn: the old file or the new one
        assert data["offset"] % 6 == 0 and data["offset"] >= last
        assert data["done"] == []  # every batch is acked whole
        last = data["offset"]
    assert 0 < last < len(lines) * 6, "the kills should land mid-run"
    assert run_once(FileSource(path)) == lines[last // 6 :]


def test_a_followed_file_feeds_a_workflow_until_stop_and_every_line_is_acked(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "in.txt", b"a\n")
    got, delivery = _follow_until_stop(path, b"b\r\nc\n", 0.005, ["b", "c"], commit_interval=0.01)
    assert got == ["a", "b", "c"]
    assert checkpoint_of(path) == {"offset": 7, "done": []}
    assert delivery == {"fetched": 3, "acked": 3, "nacked": 0, "in_flight": 0}


def _follow_until_stop(
    path: Path,
    append: bytes,
    poll_interval: float,
    seen: list[str],
    commit_interval: float = 3600,
) -> tuple[list[str], dict[str, int]]:
    """A workflow on ``path`` with ``follow=True``: wait for the first line at the sink,
    append ``append``, wait for the lines of ``seen`` too, then stop(). Returns every line the
    sink saw and the delivery stats. By default nothing is acked before the stop's flush."""
    from mimo_rx import Stream, Workflow

    async def main() -> tuple[list[str], dict[str, int]]:
        arrived: asyncio.Queue[str] = asyncio.Queue()

        async def sink(ins: Any, outs: Any, state: Any) -> None:
            async for line in ins.x:
                arrived.put_nowait(line)

        source = FileSource(path, follow=True)
        source.poll_interval = poll_interval
        workflow = Workflow()
        step = workflow.add_source(source, name="lines", commit_interval=commit_interval)
        step.pipe(workflow.add_stream(Stream(["x"], fn=sink)))
        run = asyncio.ensure_future(workflow.start())
        got = [await asyncio.wait_for(arrived.get(), 10)]
        if append:
            await asyncio.sleep(0.05)  # the source has seen the end of the file: it waits
            with path.open("ab") as f:
                f.write(append)
        got += [await asyncio.wait_for(arrived.get(), 10) for _ in seen]
        await asyncio.sleep(0.05)  # the source waits at the end of the file
        assert arrived.empty()
        workflow.stop()
        await asyncio.wait_for(run, 10)
        while not arrived.empty():
            got.append(arrived.get_nowait())
        return got, workflow.stats()["streams"]["lines"]["delivery"]

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("append", "poll_interval", "seen"),
    [
        (b"", 3600.0, []),  # "b" never gets its ending: stop() makes it a line
        (b"", 0.005, []),
        (b"\n", 3600.0, []),  # its ending comes after the source's last look: read at stop()
        (b"\n", 0.005, ["b"]),  # ... or while it polls: an ordinary line, nothing at stop()
    ],
)
def test_stop_delivers_the_unended_last_line_of_a_followed_file_once_and_checkpoints_it(
    tmp_path: Path, append: bytes, poll_interval: float, seen: list[str]
) -> None:
    path = write(tmp_path / "in.txt", b"a\nb")
    got, delivery = _follow_until_stop(path, append, poll_interval, seen)
    assert got == ["a", "b"]
    assert delivery == {"fetched": 2, "acked": 2, "nacked": 0, "in_flight": 0}
    assert checkpoint_of(path) == {"offset": 3 + len(append), "done": []}
    assert run_once(FileSource(path)) == []  # a rerun delivers nothing
    assert checkpoint_of(path) == {"offset": 3 + len(append), "done": []}


def test_stop_while_a_followed_source_is_behind_loses_and_repeats_nothing(tmp_path: Path) -> None:
    from mimo_rx import Stream, Workflow

    lines = [f"line {i}" for i in range(3000)]
    path = write(tmp_path / "in.txt", "".join(f"{line}\n" for line in lines).encode() + b"tail")

    async def main() -> list[str]:
        got: list[str] = []

        async def sink(ins: Any, outs: Any, state: Any) -> None:
            async for line in ins.x:
                got.append(line)
                if len(got) == 20:
                    workflow.stop()
                await asyncio.sleep(0.001)

        source = FileSource(path, follow=True)
        workflow = Workflow(buffer_size=4)
        workflow.add_source(source, max_in_flight=8).pipe(
            workflow.add_stream(Stream(["x"], fn=sink))
        )
        await asyncio.wait_for(workflow.start(), 20)
        return got

    first = asyncio.run(main())
    assert 20 <= len(first) < 100  # stop() did not read on to the end of the file
    rest = run_once(FileSource(path))
    assert first + rest == [*lines, "tail"]
