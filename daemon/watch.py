"""The folder watch: tells the reload task when a file the config is made of changed.

Why the folder is watched, not the file. Editors save by writing a temporary
file and renaming it over the config, and Kubernetes updates a ConfigMap
volume by re-pointing the `..data` symlink at a fresh directory; either way
the inode a watch on "the file" was attached to is gone, and no further event
would come. A watch on the folder sees the new name appear. Events are kept
only for the names that matter: the config's name, `..data`, the resolved
target of the config path (whose folder is watched too when it lies outside),
and api_key_file secrets in those folders. `aim` recomputes that set (the
reload task calls it after every reload, the watch after every event, since a
`..data` swap moves the target), and the watch restarts when its folders
changed.

Debounce, first stage. watchfiles groups raw events (a 50 ms step, at most
400 ms) and the watch calls `changed` once per group; the reload task's own
quiet window, bounded, waits for the content to settle (`reload.DELAYS`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import awatch

log = logging.getLogger("gatewayd")

WATCH_STEP_MS, WATCH_DEBOUNCE_MS = 50, 400


class FolderWatch:
    """Watches the folders of the config at `config_path` and calls `changed` for each
    group of events on a name that matters."""

    def __init__(self, config_path: str, changed: Callable[[], None]) -> None:
        self.path = config_path
        self.changed = changed
        self._secrets: tuple[Path, ...] = ()
        self._interest: set[tuple[str, str]] = set()  # (real folder, name) pairs that matter
        self.folders: tuple[str, ...] = ()  # watched; the config's own first
        self._stopping = asyncio.Event()
        self._rewatch = asyncio.Event()  # stops the current watch so it restarts on new folders
        self._task: asyncio.Task | None = None

    def aim(self, secrets: Iterable[Path] | None = None) -> None:
        """Recompute which folders to watch and which names in them matter; `secrets`, when
        given, replaces the secret files the config names."""
        if secrets is not None:
            self._secrets = tuple(secrets)
        config = Path(os.path.abspath(self.path))
        home = Path(os.path.realpath(config.parent))
        target = Path(os.path.realpath(config))
        folders = [str(config.parent)]
        if not target.parent.is_relative_to(home):  # a symlink to a file elsewhere: watch there too
            folders.append(str(target.parent))
        interest = {(str(home), config.name), (str(home), "..data"), (str(target.parent), target.name)}
        for secret in self._secrets:
            interest.add((os.path.realpath(secret.parent), secret.name))
        self._interest = interest
        if tuple(folders) != self.folders:
            self.folders = tuple(folders)
            self._rewatch.set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._watch(), name="gatewayd-watch")

    async def stop(self) -> None:
        """End the watch: its thread sees the stop within one step; cancelled if it does not."""
        self._stopping.set()
        self._rewatch.set()
        if self._task is None:
            return
        await asyncio.wait([self._task], timeout=2)
        self._task.cancel()
        await asyncio.wait([self._task], timeout=1)

    def matters(self, path: str) -> bool:
        """Whether an event on `path` (in a watched folder) may change the config."""
        folder, name = os.path.split(path)
        return (os.path.realpath(folder), name) in self._interest

    def _relevant(self, _change, path: str) -> bool:  # watchfiles' filter signature
        return self.matters(path)

    async def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._rewatch.clear()
            folders = [f for f in self.folders if os.path.isdir(f)]
            try:
                if not folders:
                    raise FileNotFoundError(f"no folder to watch: {self.folders}")
                async for _changes in awatch(*folders, watch_filter=self._relevant, recursive=False,
                                             step=WATCH_STEP_MS, debounce=WATCH_DEBOUNCE_MS,
                                             stop_event=self._rewatch):
                    failures = 0
                    self.changed()
                    self.aim()  # a ..data swap moves the target: rewatch before the settle ends
            except Exception as exc:  # the folder vanished, inotify limits: retry, SIGHUP still works
                failures += 1
                if failures == 1:
                    log.warning("watching %s failed (%s); retrying, and SIGHUP still reloads",
                                ", ".join(self.folders), exc, extra={"event": "watch_failed"})
                try:
                    async with asyncio.timeout(min(0.2 * failures, 2.0)):
                        await self._stopping.wait()
                except TimeoutError:
                    pass
