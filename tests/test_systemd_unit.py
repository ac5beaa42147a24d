"""systemd/gatewayd.service: what running under systemd asks of it, checked by systemd-analyze itself.

systemd-analyze comes with Debian's `systemd` package; CI installs it. The
tests fail rather than skip without it, so a missing tool cannot pass silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "gatewayd.service"
INSTALLED_BINARY = "/usr/local/bin/gatewayd"
DEFAULT_SHUTDOWN_GRACE_S = 30


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed: `apt-get install systemd` "
                    "(CI installs it; these checks must not be skipped)")
    return found


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every line, repeated keys kept, in order."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def service(key: str) -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == "Service" and k == key]


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart=/ExecReload= pointed at a binary that exists here.

    `systemd-analyze verify` refuses a command path that is not executable, and
    /usr/local/bin/gatewayd exists only on an installed host. The venv's own
    `gatewayd` script (or /bin/true) stands in; every other line is unchanged.
    """
    venv_script = Path(sys.executable).parent / "gatewayd"
    stand_in = str(venv_script) if venv_script.exists() else shutil.which("true") or "/bin/true"
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 2, "ExecStart and ExecReload both run the installed binary"
    copy = tmp_path / UNIT.name  # the unit name comes from the file name
    copy.write_text(text.replace(INSTALLED_BINARY, stand_in))
    return copy


def test_systemd_analyze_verify_is_clean(tmp_path):
    result = subprocess.run([systemd_analyze(), "verify", str(runnable_copy(tmp_path))],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_security_exposure_is_ok(tmp_path):
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(runnable_copy(tmp_path))],
        check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for gatewayd\.service: (\d+(?:\.\d+)?) (\w+)",
                      result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 2.0, result.stdout
    assert match.group(2) == "OK"


def test_notify_type_and_reload_that_waits():
    assert service("Type") == ["notify"]  # not notify-reload: Debian 12 has systemd 252
    assert service("NotifyAccess") == ["main"]
    assert service("ExecStart") == [f"{INSTALLED_BINARY} run -c /etc/gatewayd/gateway.yaml"]
    assert service("ExecReload") == [f"{INSTALLED_BINARY} reload -c /etc/gatewayd/gateway.yaml"]


def test_watchdog_and_stop_timeout():
    assert service("WatchdogSec") == ["30s"]
    assert service("Restart") == ["on-failure"]
    (stop,) = service("TimeoutStopSec")
    assert stop.endswith("s") and int(stop[:-1]) > DEFAULT_SHUTDOWN_GRACE_S


def test_secrets_come_from_credentials():
    loaded = service("LoadCredential")
    assert loaded == [
        "openai:/etc/gatewayd/credentials/openai",
        "anthropic:/etc/gatewayd/credentials/anthropic",
        "admin-key:/etc/gatewayd/credentials/admin-key",
    ]
    # each has a default that reads as empty (a newline, stripped), so a credential file the host
    # lacks disables its provider rather than failing the start (systemd.exec: a SetCredential= for
    # the same ID makes a failed load non-fatal)
    assert service("SetCredential") == [f"{entry.partition(':')[0]}:\\n" for entry in loaded]
    assert service("DynamicUser") == ["yes"]
    assert not any("API_KEY" in v for v in service("Environment"))  # never secrets in the unit


def test_open_files_allow_ten_thousand_streams():
    # two descriptors per stream (the client's, the upstream's), soft and hard alike (one value)
    (limit,) = service("LimitNOFILE")
    assert ":" not in limit and int(limit) >= 2 * 10_000


def test_network_reaches_providers_and_clients():
    assert service("RestrictAddressFamilies") == ["AF_INET AF_INET6 AF_UNIX"]
    assert not service("IPAddressDeny")
    assert not service("PrivateNetwork")


def test_the_systemd_example_config_loads_with_only_the_credential_defaults(tmp_path):
    """What the unit hands gatewayd on a host with no key files: every credential a lone newline."""
    from gatewayd.daemon.config.load import load

    config = UNIT.with_name("gateway.yaml")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for entry in service("SetCredential"):
        name, _, default = entry.partition(":")
        (credentials / name).write_text(default.replace("\\n", "\n"))
    graph = load(str(config), {"CREDENTIALS_DIRECTORY": str(credentials)}).graph
    assert {name for name, p in graph.providers.items() if p.disabled} == {"openai", "anthropic"}
    assert graph.routes["chat"].deployments()[-1] == "echo"  # the mock still answers
    first_line = config.read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=gateway.schema.json"
    assert (config.parent / "gateway.schema.json").resolve() == UNIT.parent.parent / "schema" / "gateway.schema.json"
