"""Quick start: the original mimo README's three-step workflow, doing something visible.

    source (outs: a)  ->  square (ins: b, outs: c)  ->  report (ins: d)

Run it: ``python examples/quickstart.py``
"""

from __future__ import annotations

from mimo_rx import Stream, Workflow


class Numbers(Stream):
    """Method 1 (inheritance): emits 0..9 with back-pressure."""

    IN = []
    OUT = ["a"]

    async def run(self, ins, outs):
        for number in range(10):
            await outs.a.push(number)


async def square(ins, outs, state):
    """Method 2 (constructor): squares every number it receives."""
    async for number in ins.b:
        await outs.c.push(number * number)


async def report(ins, outs, state):
    async for value in ins.d:
        state["total"] += value
        print(f"received {value:3d}   running total {state['total']:4d}")


def main() -> dict[str, int]:
    workflow = Workflow(buffer_size=4)  # small buffers: producers pause while report catches up
    step1 = workflow.add_stream(Numbers())
    step2 = workflow.add_stream(Stream(["b"], ["c"], fn=square))
    totals = {"total": 0}
    step3 = workflow.add_stream(Stream(["d"], fn=report, state=totals))

    step1.pipe(step2).pipe(step3)
    print(workflow)
    workflow.run()
    print(f"sum of squares 0..9 = {totals['total']}")
    return totals


if __name__ == "__main__":
    main()
