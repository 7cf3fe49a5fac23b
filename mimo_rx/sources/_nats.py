"""A NATS JetStream durable pull consumer, as an acknowledged source (contract §12).

:meth:`NatsSource.open` connects, creates the durable consumer when it is missing (or updates
the settings this source owns: ``ack_wait``, ``max_deliver``, the subject filter), binds a pull
subscription and starts the keep-alive task. :meth:`NatsSource.fetch` asks for at most
``max_items`` messages and waits while none is available. The token of a message is its reply
subject (``$JS.ACK.<stream>.<consumer>...``, unique per delivery); ``ack`` publishes ``+ACK``
to it, ``nack`` ``-NAK`` (JetStream delivers the message again at once, to any consumer of the
durable, until ``max_deliver``).

The keep-alive: JetStream delivers a message again when it is not acked within ``ack_wait``.
A message that stays in the graph longer than half of that gets ``+WPI`` ("work in progress",
which restarts the server's ack timer), and again every half ``ack_wait`` until it is acked or
nacked; so a slow message is not handed to another process while this one still works on it,
and a message of a process that died comes back within ``ack_wait``. The task is the source's
own: started in ``open()``, cancelled and awaited in ``close()``.

``nats`` (nats-py) is imported when a source is opened, never at import time:
:class:`NatsMessage` is importable without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from .._acksource import raise_if_cancel_pending
from .._errors import ConfigError

__all__ = ["NatsMessage", "NatsSource"]

MISSING_NATS = "NatsSource needs the optional dependency 'nats-py': pip install \"mimo_rx[nats]\""
# How long one pull request waits on the server before fetch() asks again. It bounds what a
# cancelled fetch (stop()) leaves behind: a pull that may still capture messages, which then
# come back only after ack_wait.
_PULL_WAIT_S = 1.0
_ACK = b""
_NAK = b"-NAK"
_WPI = b"+WPI"


@dataclass(frozen=True, slots=True)
class NatsMessage:
    """One JetStream message.

    Attributes:
        subject: the subject it was published on.
        data: its payload.
        headers: its headers, or ``None`` when it has none.
    """

    subject: str
    data: bytes
    headers: dict[str, str] | None


# A frozen dataclass's __init__ sets each field through object.__setattr__; setting the slots
# directly costs a quarter of that (see _redis.py).
_new = object.__new__
_set_subject = NatsMessage.__dict__["subject"].__set__
_set_data = NatsMessage.__dict__["data"].__set__
_set_headers = NatsMessage.__dict__["headers"].__set__


def _message(msg: Any) -> NatsMessage:
    """``NatsMessage(msg.subject, msg.data, msg.headers)``, built the fast way."""
    message: NatsMessage = _new(NatsMessage)
    _set_subject(message, msg.subject)
    _set_data(message, msg.data)
    _set_headers(message, msg.headers)
    return message


class NatsSource:
    """A NATS JetStream durable pull consumer, acknowledged message by message.

    Items are :class:`NatsMessage` values; a workflow fed by this source (``add_source``)
    acks each message once the graph is done with it and naks the ones that failed. Several
    processes on the same ``durable`` share the messages; a message held by a process that
    died is delivered to another after ``ack_wait`` seconds. The source never ends by itself:
    ``stop()`` (or SIGTERM) ends the run.

    Args:
        servers: a NATS URL (``"nats://127.0.0.1:4222"``) or a list of them.
        stream: the JetStream stream, which must exist (create it with ``nats stream add``
            or ``js.add_stream``: its subjects, storage and retention are yours to choose).
        durable: the durable consumer's name; created when missing.
        subject: consume only the stream's messages whose subject matches this filter
            (``"orders.eu.>"``); ``None``: every message of the stream.
        ack_wait: seconds JetStream waits for an ack before it delivers the message again.
            A message held longer than half of it is kept alive with ``in_progress``.
        max_deliver: JetStream's limit: a message is delivered at most this many times
            (``None``: no limit).

    Raises:
        ConfigError: a parameter is out of range.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        stream: str,
        durable: str,
        subject: str | None = None,
        *,
        ack_wait: float = 30.0,
        max_deliver: int | None = None,
    ) -> None:
        where = f"NatsSource(stream={stream!r}, durable={durable!r})"
        if not isinstance(stream, str) or not stream:
            raise ConfigError(f"NatsSource: stream must be a non-empty str, not {stream!r}")
        if not isinstance(durable, str) or not durable:
            raise ConfigError(f"{where}: durable must be a non-empty str, not {durable!r}")
        if not ack_wait > 0:
            raise ConfigError(
                f"{where}: ack_wait must be positive seconds (above the longest time a "
                f"message spends in the graph), not {ack_wait!r}"
            )
        if max_deliver is not None and (not isinstance(max_deliver, int) or max_deliver < 1):
            raise ConfigError(
                f"{where}: max_deliver must be a positive int or None, not {max_deliver!r}"
            )
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.stream = stream
        self.durable = durable
        self.subject = subject
        self.ack_wait = float(ack_wait)
        self.max_deliver = max_deliver
        self._nc: Any = None
        self._sub: Any = None
        # reply subject -> when it was delivered or last kept alive, oldest first
        self._held: dict[str, float] = {}
        self._keep_alive: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"NatsSource(stream={self.stream!r}, durable={self.durable!r})"

    # -- the AckSource protocol --------------------------------------------------------------

    async def open(self) -> None:
        """Connect, make sure the durable consumer exists with these settings, bind to it."""
        try:
            import nats
        except ImportError as exc:
            raise ImportError(MISSING_NATS) from exc
        self._nc = await nats.connect(servers=self.servers)
        try:
            js = self._nc.jetstream()
            await self._ensure_consumer(js)
            self._sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except BaseException:
            await self._nc.close()
            self._nc = None
            raise
        self._held.clear()
        self._keep_alive = asyncio.get_running_loop().create_task(
            self._keep_messages_alive(), name=f"{self!r} keep-alive"
        )

    async def fetch(self, max_items: int) -> list[tuple[Hashable, NatsMessage]]:
        """Between 1 and ``max_items`` messages, waiting while none is available."""
        sub = self._sub
        while True:
            try:
                msgs = await sub.fetch(max_items, timeout=_PULL_WAIT_S)
            except TimeoutError:  # nats.errors.TimeoutError derives from it: none came
                msgs = []
            if msgs:
                break
            raise_if_cancel_pending()  # stop()'s cancellation, should the client lose it
        batch = [(m.reply, _message(m)) for m in msgs]
        self._held.update(dict.fromkeys([m.reply for m in msgs], time.monotonic()))
        return batch

    async def ack(self, tokens: Sequence[Hashable]) -> None:
        """Acknowledge the messages (one ``+ACK`` each; the client batches the writes)."""
        await self._reply(tokens, _ACK)

    async def nack(self, tokens: Sequence[Hashable]) -> None:
        """``nak`` the messages: JetStream delivers them again now, until ``max_deliver``."""
        await self._reply(tokens, _NAK)

    async def close(self) -> None:
        """Stop the keep-alive, send what is buffered, and disconnect."""
        task, self._keep_alive = self._keep_alive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        nc, self._nc, self._sub = self._nc, None, None
        if nc is not None:
            try:
                await nc.flush(timeout=5)  # the last acks leave before the connection goes
            finally:
                await nc.close()

    # -- helpers -------------------------------------------------------------------------------

    async def _reply(self, tokens: Sequence[Hashable], payload: bytes) -> None:
        publish, held = self._nc.publish, self._held
        for token in tokens:
            held.pop(token, None)  # type: ignore[call-overload]
            await publish(token, payload)

    async def _ensure_consumer(self, js: Any) -> None:
        from nats.errors import Error as NatsError
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        where = f"NATS stream {self.stream!r}, durable consumer {self.durable!r}"
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            raise ConfigError(
                f"{where}: the stream does not exist; create it first (`nats stream add "
                f"{self.stream}` or `await js.add_stream(name={self.stream!r}, subjects=[...])`)"
            ) from None
        max_deliver = self.max_deliver or -1
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            config = ConsumerConfig(
                durable_name=self.durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=max_deliver,
                filter_subject=self.subject,
            )
        else:
            config = info.config
            current = (
                config.ack_wait,
                config.max_deliver if (config.max_deliver or 0) > 0 else -1,
                config.filter_subject or None,
            )
            if current == (self.ack_wait, max_deliver, self.subject):
                return
            # keep whatever else the operators set on the consumer (max_ack_pending, ...)
            config = dataclasses.replace(
                config,
                ack_wait=self.ack_wait,
                max_deliver=max_deliver,
                filter_subject=self.subject,
            )
        try:
            await js.add_consumer(self.stream, config=config)
        except NatsError as exc:
            raise ConfigError(
                f"{where}: cannot create or update the consumer with ack_wait={self.ack_wait}, "
                f"max_deliver={self.max_deliver}, subject={self.subject!r}: {exc}; use another "
                "durable name or delete the consumer (`nats consumer rm`)"
            ) from exc

    async def _keep_messages_alive(self) -> None:
        """Every quarter of ``ack_wait``: ``in_progress`` for each message held longer than
        half of it (so one is refreshed at the latest 3/4 ``ack_wait`` after the last time)."""
        half, held, publish = self.ack_wait / 2, self._held, self._nc.publish
        while True:
            await asyncio.sleep(self.ack_wait / 4)
            now = time.monotonic()
            due = []
            for token, since in held.items():  # oldest first
                if now - since < half:
                    break
                due.append(token)
            for token in due:
                if held.pop(token, None) is None:  # acked while an earlier one was sent
                    continue
                held[token] = now  # to the end: the dict stays oldest first
                await publish(token, _WPI)
