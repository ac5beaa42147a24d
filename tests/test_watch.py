"""The folder watch (daemon/watch.py) in process: which folders it watches, which names in
them matter, and that an event on one of them, and only on one of them, calls `changed`.
The whole path through the daemon (edits, rename-saves, ConfigMap swaps, symlinks) is in
tests/test_reload.py."""

from __future__ import annotations

import asyncio
import os

from gatewayd.daemon.watch import WATCH_DEBOUNCE_MS, FolderWatch
from tests.daemon_proc import rename_save
from tests.fakes import eventually


def test_a_config_linked_from_elsewhere_is_watched_in_both_folders(tmp_path):
    home, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    (elsewhere / "real.yaml").write_text("version: 1\n")
    (home / "gateway.yaml").symlink_to(elsewhere / "real.yaml")
    watch = FolderWatch(str(home / "gateway.yaml"), lambda: None)
    watch.aim([home / "key.txt"])
    assert watch.folders == (str(home), str(elsewhere))
    for name in ("gateway.yaml", "..data", "key.txt"):
        assert watch.matters(str(home / name)), name
    assert watch.matters(str(elsewhere / "real.yaml"))
    assert not watch.matters(str(home / "notes.txt")) and not watch.matters(str(elsewhere / "other.yaml"))

    (home / "gateway.yaml").unlink()
    (home / "gateway.yaml").write_text("version: 1\n")  # no longer a link: only its own folder
    watch.aim()
    assert watch.folders == (str(home),)
    assert watch.matters(str(home / "key.txt"))  # the secrets given before are kept


async def test_a_rename_save_or_a_secret_is_seen_and_other_files_are_not(tmp_path):
    path, secret = tmp_path / "gateway.yaml", tmp_path / "key.txt"
    path.write_text("version: 1\n")
    secret.write_text("sk-one\n")
    seen = []
    watch = FolderWatch(str(path), lambda: seen.append(True))
    watch.aim([secret])
    watch.start(asyncio.get_running_loop())
    try:
        async def saved_until_seen(save) -> bool:
            for attempt in range(20):  # the watch thread may not listen yet on the first save
                save(attempt)
                if await eventually(lambda: seen, timeout=0.5):
                    await asyncio.sleep(0.2)  # a straggling group of the same save lands before the clear
                    seen.clear()
                    return True
            return False

        assert await saved_until_seen(lambda n: rename_save(path, f"version: 1\n# {n}\n"))
        assert await saved_until_seen(lambda n: secret.write_text(f"sk-{n}\n"))
        (tmp_path / "notes.txt").write_text("unrelated")
        os.replace(tmp_path / "notes.txt", tmp_path / "notes.bak")
        await asyncio.sleep(2 * WATCH_DEBOUNCE_MS / 1000)
        assert seen == []
    finally:
        await watch.stop()
