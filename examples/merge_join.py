"""Merge-join two key-sorted inputs: the case plain functions cannot express.

The join stream ``peek``s at both inputs and ``pop``s only from the side with the smaller key,
so each input advances at its own pace. Matched keys go to ``matched``; keys found on only one
side go to ``unmatched``. Back-pressure keeps every buffer at 8 items or fewer.

Run it: ``python examples/merge_join.py``
"""

from __future__ import annotations

from mimo_rx import EndOfStream, Stream, Workflow

CUSTOMERS = [(1, "ada"), (2, "bob"), (4, "cy"), (7, "dee"), (9, "eve")]
ORDERS = [(1, "book"), (3, "lamp"), (4, "pen"), (7, "mug"), (8, "cup"), (9, "hat")]


class MergeJoin(Stream):
    """Joins ``left`` and ``right`` (both sorted by key, keys unique per side)."""

    IN = ["left", "right"]
    OUT = ["matched", "unmatched"]

    async def run(self, ins, outs):
        while True:
            try:
                left = await ins.left.peek()
            except EndOfStream:
                left = None
            try:
                right = await ins.right.peek()
            except EndOfStream:
                right = None
            if left is None and right is None:
                return
            if right is None or (left is not None and left[0] < right[0]):
                await outs.unmatched.push(("left only", await ins.left.pop()))
            elif left is None or right[0] < left[0]:
                await outs.unmatched.push(("right only", await ins.right.pop()))
            else:
                (key, name), (_, item) = await ins.left.pop(), await ins.right.pop()
                await outs.matched.push((key, name, item))


def printer(label: str, results: list):
    async def show(ins, outs, state):
        async for row in ins.rows:
            results.append(row)
            print(f"{label:9s} {row}")

    return Stream(["rows"], fn=show, name=label)


def main() -> tuple[list, list]:
    workflow = Workflow(buffer_size=8)
    customers = workflow.add_source(CUSTOMERS, name="customers")
    orders = workflow.add_source(ORDERS, name="orders")
    join = workflow.add_stream(MergeJoin())
    matched, unmatched = [], []
    customers.pipe(join, input="left")
    orders.pipe(join, input="right")
    join.pipe(workflow.add_stream(printer("matched", matched)), output="matched")
    join.pipe(workflow.add_stream(printer("unmatched", unmatched)), output="unmatched")
    workflow.run()
    return matched, unmatched


if __name__ == "__main__":
    main()
