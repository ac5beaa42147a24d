"""The sd_notify protocol: datagrams of newline-separated KEY=VALUE
fields sent to the AF_UNIX socket that systemd names in $NOTIFY_SOCKET.

What the daemon sends, and when:

    READY=1 [STATUS=...]              the first graph is compiled and the socket listens
    RELOADING=1 MONOTONIC_USEC=...    a reload starts (one datagram, so systemd sees both)
    READY=1 STATUS=accepted|rejected  the reload ended
    WATCHDOG=1                        every WATCHDOG_USEC/2, from the event loop
    STOPPING=1                        shutdown begins

Without $NOTIFY_SOCKET (run by hand, in a container, in tests) every call is a
no-op. Sending never raises: a lost notification must not take the daemon down,
so an OSError is logged at debug level and dropped. The socket is non-blocking
for the same reason: a full receive queue drops one datagram instead of
stalling the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Self

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET (path or abstract '@name'); a no-op when unset."""

    __slots__ = ("_address", "_socket", "_watchdog_pid", "_watchdog_usec")

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None,
                 watchdog_pid: int | None = None) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(_address(environ.get("NOTIFY_SOCKET", "")),
                   _positive_int(environ.get("WATCHDOG_USEC")),
                   _positive_int(environ.get("WATCHDOG_PID")))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> None:
        """Send the fields as ONE datagram, joined with newlines."""
        if self._address is None or not fields:
            return
        data = "\n".join(fields).encode("utf-8")
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(data, self._address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self._address, exc, extra={"event": "sd_notify_failed"})

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *self._status_field(status))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> None:
        self.send(*self._status_field(text))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when
        systemd expects none from this process."""
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None  # the variables were meant for another process (we were forked or exec'd)
        return self._watchdog_usec / 2 / 1_000_000

    async def run_watchdog(self) -> None:
        """Ping forever; run it as a task on the event loop, so a stuck loop
        stops the pings and systemd restarts the service. Returns at once when
        there is nothing to ping."""
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while True:
            await asyncio.sleep(interval)
            self.watchdog()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _status_field(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        one_line = "; ".join(line for line in text.splitlines() if line.strip())
        return (f"STATUS={one_line}",)


def _address(value: str) -> str | bytes | None:
    """'/path' as is, '@name' as the abstract address b'\\0name'; anything else disables."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    if value:
        log.debug("ignoring NOTIFY_SOCKET=%r: neither an absolute path nor '@name'", value,
                  extra={"event": "sd_notify_ignored"})
    return None


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value) if value else 0
    except ValueError:
        return None
    return number if number > 0 else None
