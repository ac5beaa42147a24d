"""The `gatewayd` command (daemon/cli.py), run as a real subprocess: check, explain, schema,
hash-key, --version."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from textwrap import dedent

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "gateway.yaml.example"
SCHEMA = REPO / "schema" / "gateway.schema.json"
SCRIPT = Path(sys.executable).with_name("gatewayd")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-P", "-m", "gatewayd.daemon.cli"]


def gatewayd(*args: str, cwd: Path | str = REPO, env: dict[str, str] | None = None,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `gatewayd ARGS` with a clean environment: no provider keys leak in from ours."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    return subprocess.run([*COMMAND, *args], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=60, input=stdin)


def example_line(text: str) -> int:
    """The line number of `text` (a whole line) in gateway.yaml.example."""
    return EXAMPLE.read_text("utf-8").splitlines().index(text) + 1


SMALL = """\
    version: 1
    providers:
      demo: {type: mock}
    models:
      echo: {provider: demo, model: echo}
    aliases:
      chat: {targets: [echo]}
    """


# --- check -----------------------------------------------------------------------------------


def test_check_example_is_ok_and_lists_the_disabled_providers():
    result = gatewayd("check", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"{re.escape(str(EXAMPLE))}: ok \(config [0-9a-f]{{12}}: 4 providers, 6 models, "
        r"4 aliases, 2 warnings\)\n", result.stdout)
    assert result.stderr.splitlines() == [
        f"warning: {EXAMPLE}:{example_line('  openai:')}:3: provider 'openai' is disabled: "
        "its api_key resolved to an empty value; its models are left out of every plan",
        f"warning: {EXAMPLE}:{example_line('  anthropic:')}:3: provider 'anthropic' is disabled: "
        "its api_key resolved to an empty value; its models are left out of every plan",
    ]


def test_check_example_with_keys_set_has_no_warnings():
    result = gatewayd("check", "-c", str(EXAMPLE),
                      env={"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(", 0 warnings)\n")
    assert result.stderr == ""
    assert "sk-test" not in result.stdout and "sk-ant-test" not in result.stdout


def test_check_broken_file_exits_1_with_located_errors(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(dedent("""\
        version: 1
        defaults:
          retyr: {attempts: 2}
        providers:
          p: {type: opnai}
        """))
    result = gatewayd("check", "-c", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: {config}:3:3: unknown key 'retyr' in defaults (did you mean 'retry'?)",
        f"error: {config}:5:13: providers.p.type: 'opnai' is not allowed (did you mean 'openai'?); "
        "use one of: openai, azure-openai, anthropic, ollama, gemini, bedrock, mock",
        "2 errors; the config was not loaded",
    ]


def test_check_compile_error_exits_1(tmp_path):
    (tmp_path / "gateway.yaml").write_text(dedent(SMALL) + dedent("""\
        server:
          listen: 0.0.0.0:8080
        """))
    result = gatewayd("check", "-c", "gateway.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: gateway.yaml:9:11: listen address '0.0.0.0:8080' is not loopback: "
        "add server.auth with keys, or listen on 127.0.0.1, [::1] or a unix socket",
        "1 error; the config was not loaded",
    ]


@pytest.mark.parametrize("content", [b"", b"[" * 10000, b"version: 1\nx: !!python/name:os.system\n",
                                     b"\xff\xfe"])
def test_check_bad_input_never_prints_a_traceback(tmp_path, content):
    (tmp_path / "gateway.yaml").write_bytes(content)
    result = gatewayd("check", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert re.match(r"error: gateway\.yaml:\d+:\d+: \S", result.stderr)


def test_check_without_c_uses_gateway_yaml_in_the_working_directory(tmp_path):
    (tmp_path / "gateway.yaml").write_text(dedent(SMALL))
    result = gatewayd("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gateway.yaml: ok (config ")
    assert result.stdout.endswith(": 1 providers, 1 models, 1 aliases, 0 warnings)\n")


@pytest.mark.skipif(Path("/etc/gatewayd/gateway.yaml").exists(),
                    reason="a system-wide config exists and would be used")
def test_check_without_c_in_an_empty_directory_explains_what_is_missing(tmp_path):
    result = gatewayd("check", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no config file: pass -c FILE, or create ./gateway.yaml or /etc/gatewayd/gateway.yaml" in (
        result.stderr)


# --- explain ---------------------------------------------------------------------------------


def explain_lines(at: str) -> list[str]:
    result = gatewayd("explain", "chat", "-c", str(EXAMPLE), "--at", at)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


def test_explain_at_tuesday_noon_in_berlin_puts_the_night_model_out():
    lines = explain_lines("2026-11-24T12:00:00+01:00")
    assert re.fullmatch(r"alias 'chat' at 2026-11-24T12:00:00\+01:00 \(config [0-9a-f]{12}\)", lines[0])
    assert lines[1:] == [
        "  tier 1 from 'chat' (ordered):",
        "    1. [out] claude-haiku (anthropic/claude-haiku-4-5) — provider 'anthropic' disabled: "
        "its api_key resolved to an empty value",
        "    2. [out] gpt-4o-mini (openai/gpt-4o-mini) [limits: rpm 500, tpm 200000, concurrency 50, queue 2s] "
        "— provider 'openai' disabled: its api_key resolved to an empty value",
        "  tier 2 from 'cheap' (weighted):",
        "    3. [out] llama-night (local/llama3.1:8b) weight 3 — outside window "
        "(only: mon-fri 20:00-07:00, sat,sun; now Tue 12:00 Europe/Berlin)",
        "  tier 3 from 'demo-reply' (ordered):",
        "    4. [in ] demo-reply (demo/canned)",
        "  tier 4 from 'echo' (ordered):",
        "    5. [in ] echo (demo/echo)",
    ]


def test_explain_at_tuesday_nine_pm_in_berlin_puts_the_night_model_in():
    lines = explain_lines("2026-11-24T21:00:00+01:00")
    assert "    3. [in ] llama-night (local/llama3.1:8b) weight 3" in lines
    assert "    5. [in ] echo (demo/echo)" in lines
    assert not any("outside window" in line for line in lines)


def test_explain_same_instant_in_utc_gives_the_same_answer():
    noon_berlin = explain_lines("2026-11-24T11:00:00Z")
    assert any("[out] llama-night" in line and "now Tue 12:00 Europe/Berlin" in line
               for line in noon_berlin)


def test_explain_unknown_alias_suggests_a_name():
    result = gatewayd("explain", "chta", "-c", str(EXAMPLE), "--at", "2026-11-24T12:00:00+01:00")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: 'chta' is neither an alias nor a model (did you mean 'chat'?)"]


@pytest.mark.parametrize("at", ["tomorrow", "2026-13-01T00:00:00", "24/11/2026 12:00"])
def test_explain_bad_at_exits_2(at):
    result = gatewayd("explain", "chat", "-c", str(EXAMPLE), "--at", at)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: --at {at!r} is not an ISO 8601 instant (e.g. 2026-11-22T21:30:00+01:00)"]


def test_explain_broken_config_exits_1(tmp_path):
    (tmp_path / "gateway.yaml").write_text("version: 2\n")
    result = gatewayd("explain", "chat", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        "error: gateway.yaml:1:10: version 2 is not supported: this gatewayd reads version: 1")


# --- schema ----------------------------------------------------------------------------------


def test_schema_prints_the_schema_file(tmp_path):
    result = gatewayd("schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(SCHEMA.read_text("utf-8"))


def test_no_command_is_a_usage_error():
    result = gatewayd()
    assert result.returncode == 2
    assert "usage: gatewayd" in result.stderr


# --- --version and hash-key ------------------------------------------------------------------


def test_version_prints_the_installed_version():
    result = gatewayd("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"gatewayd {metadata.version('gatewayd')}\n"
    assert re.fullmatch(r"gatewayd \d+\.\d+\.\d+\S*\n", result.stdout)


@pytest.mark.parametrize(("typed", "key"), [("s3cret-key\n", "s3cret-key"), ("s3cret-key", "s3cret-key"),
                                            ("s3cret-key\r\n", "s3cret-key"), ("two-lines\n\n", "two-lines\n")])
def test_hash_key_prints_the_line_to_paste(typed, key):
    result = gatewayd("hash-key", stdin=typed)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"key_sha256: {hashlib.sha256(key.encode()).hexdigest()}\n"


@pytest.mark.parametrize("typed", ["", "\n"])
def test_hash_key_without_a_key_is_a_usage_error(typed):
    result = gatewayd("hash-key", stdin=typed)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and "stdin" in result.stderr
    assert "Traceback" not in result.stderr


async def test_hash_key_output_pasted_into_a_config_authenticates_that_key(gateway, tmp_path):
    line = gatewayd("hash-key", stdin="ops-key-from-the-vault\n").stdout.strip()
    config = dedent(SMALL) + dedent(f"""\
        server:
          auth:
            keys:
              - name: ops
                role: admin
                {line}
        """)
    (tmp_path / "checked.yaml").write_text(config)
    assert gatewayd("check", "-c", str(tmp_path / "checked.yaml")).returncode == 0
    assert "ops-key-from-the-vault" not in config
    gw = await gateway(config)
    async with gw.session.get(gw.url + "/admin/status", headers={"x-api-key": "ops-key-from-the-vault"}) as response:
        assert response.status == 200
    async with gw.session.get(gw.url + "/admin/status", headers={"x-api-key": "ops-key-from-the-vaul"}) as response:
        assert response.status == 401
    assert (await gw.chat("chat", headers={"Authorization": "Bearer ops-key-from-the-vault"})).status == 200
