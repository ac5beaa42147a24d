"""daemon/sdnotify.py against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from gatewayd.daemon.sdnotify import Notifier


@pytest.fixture
def receiver(tmp_path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that reaches it."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    with sock:
        yield sock, path


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued, in order."""
    sock.setblocking(False)
    got = []
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        return got
    finally:
        sock.settimeout(2)


def test_datagrams_arrive_in_order_one_per_call(receiver):
    sock, path = receiver
    with Notifier.from_environ({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        notifier.ready()
        notifier.ready(status="serving version 1")
        notifier.status("rejected: gateway.yaml:3:5: unknown key\ngateway.yaml:9:1: bad route\n")
        notifier.watchdog()
        notifier.stopping()
        notifier.send("A=1", "B=2")
    assert [sock.recv(4096) for _ in range(6)] == [
        b"READY=1",
        b"READY=1\nSTATUS=serving version 1",
        b"STATUS=rejected: gateway.yaml:3:5: unknown key; gateway.yaml:9:1: bad route",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"A=1\nB=2",
    ]
    assert drain(sock) == []


def test_reloading_carries_monotonic_usec_in_the_same_datagram(receiver):
    sock, path = receiver
    with Notifier.from_environ({"NOTIFY_SOCKET": path}) as notifier:
        notifier.reloading()
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert abs(int(value) - now_usec) < 1_000_000


def test_abstract_namespace_address():
    name = f"gatewayd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        with Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}) as notifier:
            notifier.ready(status="ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


def test_unset_notify_socket_is_a_silent_no_op():
    with Notifier.from_environ({}) as notifier:
        assert not notifier.enabled
        notifier.ready(status="x")
        notifier.reloading()
        notifier.watchdog()
        notifier.stopping()


def test_relative_notify_socket_is_ignored():
    with Notifier.from_environ({"NOTIFY_SOCKET": "notify.sock"}) as notifier:
        assert not notifier.enabled
        notifier.ready()


def test_missing_socket_path_does_not_raise(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="gatewayd.daemon.sdnotify")
    with Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) as notifier:
        assert notifier.enabled
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] * 3
    assert "gone.sock" in caplog.records[0].getMessage()


def test_socket_is_reused_and_close_is_idempotent(receiver):
    sock, path = receiver
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    notifier.watchdog()
    notifier.close()
    notifier.close()
    notifier.watchdog()  # reopens after close
    notifier.close()
    assert [sock.recv(4096), sock.recv(4096)] == [b"WATCHDOG=1", b"WATCHDOG=1"]


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "2000000"}, 1.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval(environ, expected):
    with Notifier.from_environ({"NOTIFY_SOCKET": "/run/systemd/notify", **environ}) as notifier:
        assert notifier.watchdog_interval() == expected


async def test_run_watchdog_pings_from_the_event_loop(receiver):
    sock, path = receiver
    with Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}) as notifier:
        assert notifier.watchdog_interval() == 0.05
        task = asyncio.create_task(notifier.run_watchdog())
        got: list[bytes] = []
        try:
            deadline = asyncio.get_running_loop().time() + 0.5
            while len(got) < 3 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
                got += drain(sock)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len(got) >= 3
    assert set(got) == {b"WATCHDOG=1"}


async def test_run_watchdog_returns_when_there_is_nothing_to_ping(receiver):
    _, path = receiver
    with Notifier.from_environ({"NOTIFY_SOCKET": path}) as notifier:
        await asyncio.wait_for(notifier.run_watchdog(), timeout=1)
    with Notifier.from_environ({"WATCHDOG_USEC": "100000"}) as notifier:
        await asyncio.wait_for(notifier.run_watchdog(), timeout=1)
