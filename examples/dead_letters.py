"""Dead letters: one bad record must not stop the run, and none may go missing.

Records arrive as JSON lines; some are malformed. A resuming ``map_stream`` parses each one
and looks its customer up in a flaky async service (retried with backoff). Good records go
to a SQLite table; every failure goes, through the parser's ``errors`` output, to a
dead-letter table with the original line and the error (a call is retried whatever it
raised, so a record that keeps failing reaches the dead letters with the error of its last
attempt). At the end the counters of ``stats()`` add up: ``parsed + failed == read``.

    records --> parse (on_error="resume", retries=3) --y------> store   (table orders)
                                                     \\-errors-> dead    (table dead_letters)

Run it with ``python examples/dead_letters.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from typing import Any

from mimo_rx import Failure, Stream, Workflow, map_stream

LINES = [
    '{"id": 1, "customer": "ada", "amount": 12.5}',
    '{"id": 2, "customer": "bob", "amount": 3}',
    '{"id": 3, "customer": "cy", "amount": ',  # truncated
    '{"id": 4, "customer": "dee", "amount": 7.25}',
    "not json at all",
    '{"id": 6, "customer": "nobody", "amount": 1}',  # unknown customer
    '{"id": 7, "customer": "eve", "amount": 40}',
    '{"id": 8, "amount": 2}',  # no customer
    '{"id": 9, "customer": "ada", "amount": 0.5}',
    '{"id": 10, "customer": "bob", "amount": 18}',
]

CUSTOMERS = {"ada": "Ada Lovelace", "bob": "Bob Kahn", "dee": "Dee Hock", "eve": "Eve Online"}


class FlakyDirectory:
    """A customer lookup that times out now and then, as remote services do."""

    def __init__(self, seed: int = 7, failure_rate: float = 0.3) -> None:
        self.random = random.Random(seed)
        self.failure_rate = failure_rate
        self.calls = 0

    async def lookup(self, customer: str) -> str:
        self.calls += 1
        await asyncio.sleep(0)  # the network
        if self.random.random() < self.failure_rate:
            raise ConnectionError("directory did not answer")
        return CUSTOMERS[customer]  # KeyError for an unknown customer


def make_parser(directory: FlakyDirectory) -> Any:
    async def parse(line: str) -> dict[str, Any]:
        record = json.loads(line)  # ValueError for a malformed line
        record["name"] = await directory.lookup(record["customer"])
        return record

    return parse


class Store(Stream):
    """Writes each good record to the ``orders`` table."""

    IN = ["x"]

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(name="store")
        self.db = db

    async def run(self, ins: Any, outs: Any) -> None:
        async for record in ins.x:
            self.db.execute(
                "INSERT INTO orders VALUES (?, ?, ?)",
                (record["id"], record["name"], record["amount"]),
            )
        self.db.commit()


class DeadLetters(Stream):
    """Writes each failure to the ``dead_letters`` table: the original line and the error."""

    IN = ["x"]

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(name="dead")
        self.db = db

    async def run(self, ins: Any, outs: Any) -> None:
        async for failure in ins.x:
            assert isinstance(failure, Failure)
            self.db.execute(
                "INSERT INTO dead_letters VALUES (?, ?, ?)",
                (failure.stream, failure.item, repr(failure.error)),
            )
        self.db.commit()


def main(db_path: str = ":memory:") -> dict[str, Any]:
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE orders (id INTEGER, name TEXT, amount REAL)")
    db.execute("CREATE TABLE dead_letters (stage TEXT, line TEXT, error TEXT)")
    directory = FlakyDirectory()

    workflow = Workflow()
    records = workflow.add_source(LINES, name="records")
    parse = workflow.add_stream(
        map_stream(
            make_parser(directory),
            name="parse",
            concurrency=4,
            on_error="resume",
            retries=3,
            backoff=0.01,
        )
    )
    records.pipe(parse).pipe(workflow.add_stream(Store(db)))
    parse.pipe(workflow.add_stream(DeadLetters(db)), output="errors")
    workflow.run()

    stats = workflow.stats()["streams"]
    read = stats["parse"]["inputs"]["x"]["taken"]
    parsed = stats["parse"]["outputs"]["y"]["pushed"]
    failed = stats["parse"]["failures"]
    orders = db.execute("SELECT id, name FROM orders ORDER BY id").fetchall()
    dead = db.execute("SELECT line, error FROM dead_letters").fetchall()
    print(
        f"read {read}, parsed {parsed}, failed {failed}: parsed + failed == read is "
        f"{parsed + failed == read}"
    )
    for line, error in dead:
        print(f"  dead letter: {line!r}: {error}")
    print(f"directory calls (with retries): {directory.calls}")
    db.close()
    return {"read": read, "parsed": parsed, "failed": failed, "orders": orders, "dead": dead}


if __name__ == "__main__":
    main()
