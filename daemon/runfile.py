"""The runtime file: where a running daemon says which config it serves and where it listens.

`gatewayd run` writes `$RUNTIME_DIRECTORY/gatewayd.json` (systemd's
`RuntimeDirectory=`; the first one when it names several), else
`/run/gatewayd/gatewayd.json` when that folder can be created and written, else
nothing. It holds `{"pid", "listen", "config", "version"}`: the address the
socket was bound to at start (a reload never moves it), the absolute path of the
config file, and gatewayd's own version. It is written atomically and removed at
exit when it is still this process's own, so the last daemon started owns it.

`gatewayd reload` reads it to reach the daemon serving a file even after an edit
of `server.listen`; it is a hint, never trusted alone: the daemon is still asked
which file it serves.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Mapping

FILE_NAME = "gatewayd.json"
SYSTEM_DIRECTORY = "/run/gatewayd"


@dataclass(frozen=True, slots=True)
class RunInfo:
    pid: int
    listen: str
    config: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another user (systemd's DynamicUser=)
            return True
        return True


def location(env: Mapping[str, str]) -> Path:
    directories = env.get("RUNTIME_DIRECTORY", "").split(":")
    return Path(directories[0] or SYSTEM_DIRECTORY, FILE_NAME)


def publish(listen: str, config_path: str, env: Mapping[str, str] = os.environ) -> Path | None:
    """Write the runtime file for this process; None when there is no place for it."""
    path = location(env)
    content = json.dumps({"pid": os.getpid(), "listen": listen, "config": os.path.abspath(config_path),
                          "version": gatewayd_version()})
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    try:
        path.parent.mkdir(mode=0o755, exist_ok=True)
        temporary.write_text(content + "\n", "utf-8")
        os.replace(temporary, path)  # a reader sees the old file or the new one, never half of one
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        return None
    return path


def gatewayd_version() -> str:
    try:
        return metadata.version("gatewayd")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def withdraw(path: Path | None) -> None:
    """Remove the runtime file if it is still this process's own (a later daemon may own it now)."""
    if path is None:
        return
    info = read_file(path)
    if info is not None and info.pid == os.getpid():
        path.unlink(missing_ok=True)


def read(env: Mapping[str, str]) -> RunInfo | None:
    return read_file(location(env))


def read_file(path: Path) -> RunInfo | None:
    """The runtime file's content; None when it is absent or not what a daemon writes."""
    try:
        data = json.loads(path.read_text("utf-8"))
        return RunInfo(int(data["pid"]), str(data["listen"]), str(data["config"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
