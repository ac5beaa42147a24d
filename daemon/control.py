"""The control channel between the supervisor and one of its workers: JSON lines over a socketpair.

Either end may ask the other something. A request is `{"id": N, "op": NAME, ...fields}` and its
answer `{"re": N, "answer": {...}}`; a message without an `id` (`tell`) gets no answer. Each request
is handled in a task of its own, so a side that is waiting for an answer still answers what the
other side asks meanwhile (a worker's `/metrics` asks the supervisor, which asks every worker,
that one included). What the operations are is the business of the two ends
(`daemon/supervisor.py`, `daemon/workers.py`), not of this module.

The channel closing is how each end learns the other is gone: a worker whose supervisor died
(even by SIGKILL) sees end-of-file and shuts down; the supervisor sees a dead worker's channel
close as well as its exit status. Every `call` is bounded by its timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable

import orjson

log = logging.getLogger("gatewayd")

LINE_LIMIT = 64 * 1024 * 1024  # one message: a worker's /metrics text is the largest

Handler = Callable[[str, dict], Awaitable[dict | None]]


class ChannelClosed(ConnectionError):
    """The other end is gone: its process exited, or it closed the channel."""


class Channel:
    """One end of a control channel; `handle(op, message)` answers what the other end asks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler) -> None:
        self._reader = reader
        self._writer = writer
        self._handle = handle
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._handling: set[asyncio.Task] = set()
        self.closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read(), name="gatewayd-control")

    @classmethod
    async def over(cls, sock: socket.socket, handle: Handler) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer, handle)

    async def call(self, op: str, timeout: float, **fields) -> dict:
        """Ask the other end and return its answer; ChannelClosed or TimeoutError otherwise."""
        if self.closed.is_set():
            raise ChannelClosed(op)
        ident = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._pending[ident] = answer
        try:
            self._write({"id": ident, "op": op, **fields})
            async with asyncio.timeout(timeout):
                return await answer
        finally:
            self._pending.pop(ident, None)

    def tell(self, op: str, **fields) -> None:
        """Send a message that wants no answer; dropped when the channel is closed."""
        if not self.closed.is_set():
            self._write({"op": op, **fields})

    async def close(self) -> None:
        self._task.cancel()
        self._writer.close()
        await asyncio.gather(self._task, return_exceptions=True)
        self._closed()

    def _write(self, message: dict) -> None:
        try:
            self._writer.write(orjson.dumps(message) + b"\n")
        except (ConnectionError, RuntimeError) as exc:  # the other end went away meanwhile
            self._closed()
            raise ChannelClosed(message.get("op", "answer")) from exc

    async def _read(self) -> None:
        try:
            while line := await self._reader.readline():
                message = orjson.loads(line)
                answered = self._pending.get(message.get("re")) if "re" in message else None
                if answered is not None:
                    if not answered.done():
                        answered.set_result(message.get("answer") or {})
                elif "op" in message:
                    task = asyncio.get_running_loop().create_task(self._answer(message))
                    self._handling.add(task)
                    task.add_done_callback(self._handling.discard)
        except (ConnectionError, ValueError, orjson.JSONDecodeError) as exc:
            log.debug("control channel closed: %s", exc, extra={"event": "control_closed"})
        finally:
            self._closed()

    async def _answer(self, message: dict) -> None:
        try:
            answer = await self._handle(message["op"], message)
        except Exception as exc:  # one failed request must not end the channel
            log.exception("control request %r failed", message["op"], extra={"event": "control_error"})
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        if "id" in message and not self.closed.is_set():
            try:
                self._write({"re": message["id"], "answer": answer})
            except ChannelClosed:
                pass

    def _closed(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ChannelClosed("the other end closed the channel"))
        self._writer.close()
