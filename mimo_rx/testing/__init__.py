"""Testing workflows: virtual time, exact deadlocks and back-pressure you can assert.

``run(main)`` runs a coroutine on an event loop whose clock is virtual: while some task is
ready, time stands still; when every task waits, the clock jumps to the next timer. A
``debounce(300)``, a five-minute window or a retry backoff runs in milliseconds, and gives the
same result on every run. ``record(workflow)`` returns a :class:`Trace` of what the run did
(items, closes, pauses, peaks) that draws marble diagrams; ``feed`` sends one through an inlet.

Importing ``mimo_rx`` does not import this package.
"""

from ._clock import Stalled, advance, now, run
from ._feed import feed
from ._trace import Trace, record

__all__ = ["Stalled", "Trace", "advance", "feed", "now", "record", "run"]
