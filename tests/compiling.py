"""Compiling a config text the way the daemon loads a file: written to ./gateway.yaml in the
test's own folder (the autouse fixture `in_tmp`, imported by each module that compiles), so
`gateway.yaml` is the FILE of every `FILE:LINE:COL` message."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.graph import Graph
from gatewayd.daemon.core.problems import ConfigError

F = "gateway.yaml"  # loaded by a relative path, so it is the FILE of every message


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def compiled(text: str, env: dict[str, str] | None = None) -> Graph:
    """Write `text` to ./gateway.yaml and compile it."""
    Path(F).write_text(dedent(text), "utf-8")
    return load(F, env={} if env is None else env).graph


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    """Write `text` to ./gateway.yaml; every problem as `FILE:LINE:COL: message`."""
    Path(F).write_text(dedent(text), "utf-8")
    with pytest.raises(ConfigError) as info:
        load(F, env={} if env is None else env)
    return [str(p) for p in info.value.problems]
