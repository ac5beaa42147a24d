"""The loading pipeline (daemon/config/load.py): secret files, environment references, and bad
inputs of every kind, each a located ConfigError and never any other exception."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from gatewayd.daemon.config.load import find_config, load
from gatewayd.daemon.core.problems import ConfigError

ANTHROPIC_FROM_FILE = """\
    version: 1
    providers:
      anthropic:
        type: anthropic
        api_key_file: anthropic.key
    models:
      claude: {provider: anthropic, model: claude-haiku-4-5}
    """


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text), "utf-8")
    return str(path)


def problems(path: str, env: dict[str, str] | None = None) -> list[str]:
    """Load `path`; every problem as `FILE:LINE:COL: message`."""
    with pytest.raises(ConfigError) as info:
        load(path, env={} if env is None else env)
    for problem in info.value.problems:
        assert problem.file == path
        assert problem.line >= 1 and problem.column >= 1 and problem.message
    return [str(p) for p in info.value.problems]


# --- secret files ----------------------------------------------------------------------------


def test_api_key_file_is_read_from_credentials_directory_when_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "etc" / "gateway.yaml", ANTHROPIC_FROM_FILE)
    (tmp_path / "etc" / "anthropic.key").write_text("from-config-folder\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "anthropic.key").write_text("from-credentials\n")
    graph = load(config, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}).graph
    assert graph.providers["anthropic"].api_key.reveal() == "from-credentials"


def test_a_credential_of_a_lone_newline_disables_its_provider(tmp_path):
    # systemd/gatewayd.service gives each credential this default when its file is absent
    config = write(tmp_path / "etc" / "gateway.yaml", ANTHROPIC_FROM_FILE)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "anthropic.key").write_text("\n")
    graph = load(config, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}).graph
    assert graph.providers["anthropic"].disabled and graph.providers["anthropic"].api_key is None
    assert any("anthropic" in warning and "disabled" in warning for warning in graph.warnings)


def test_api_key_file_is_read_from_the_configs_folder_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "anthropic.key").write_text("from-the-working-directory\n")  # a decoy
    config = write(tmp_path / "etc" / "gateway.yaml", ANTHROPIC_FROM_FILE)
    (tmp_path / "etc" / "anthropic.key").write_text("from-config-folder\n")
    for env in ({}, {"CREDENTIALS_DIRECTORY": ""}):
        graph = load(config, env=env).graph
        assert graph.providers["anthropic"].api_key.reveal() == "from-config-folder"


def test_config_loaded_by_a_relative_path_finds_its_secret_next_to_it(tmp_path, monkeypatch):
    write(tmp_path / "etc" / "gateway.yaml", ANTHROPIC_FROM_FILE)
    (tmp_path / "etc" / "anthropic.key").write_text("from-config-folder\n")
    monkeypatch.chdir(tmp_path)
    graph = load("etc/gateway.yaml", env={}).graph
    assert graph.providers["anthropic"].api_key.reveal() == "from-config-folder"


def test_an_absolute_api_key_file_is_used_as_is(tmp_path):
    key = tmp_path / "elsewhere" / "key"
    key.parent.mkdir()
    key.write_text("absolute\n")
    config = write(tmp_path / "gateway.yaml", ANTHROPIC_FROM_FILE.replace("anthropic.key", str(key)))
    graph = load(config, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}).graph
    assert graph.providers["anthropic"].api_key.reveal() == "absolute"


@pytest.mark.parametrize(("content", "key"), [
    ("sk-abc\n", "sk-abc"),
    ("sk-abc\r\n", "sk-abc"),
    ("sk-abc", "sk-abc"),
    ("sk abc  \n", "sk abc  "),  # only the newline goes
])
def test_trailing_newline_of_a_secret_file_is_stripped(tmp_path, content, key):
    config = write(tmp_path / "gateway.yaml", ANTHROPIC_FROM_FILE)
    (tmp_path / "anthropic.key").write_text(content, newline="")
    assert load(config, env={}).graph.providers["anthropic"].api_key.reveal() == key


def test_missing_secret_file_names_the_path_at_the_api_key_file_value(tmp_path):
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        providers:
          openai:
            type: openai
            api_key_file: openai.key
          anthropic:
            type: anthropic
            api_key_file: anthropic.key
        """)
    (tmp_path / "openai.key").write_text("sk-very-secret-value\n")
    missing = tmp_path.resolve() / "anthropic.key"
    errors = problems(config)
    assert errors == [f"{config}:8:19: secret file {missing} for provider 'anthropic' does not exist"]
    assert "sk-very-secret-value" not in "\n".join(errors)


def test_missing_secret_file_in_credentials_directory(tmp_path):
    config = write(tmp_path / "gateway.yaml", ANTHROPIC_FROM_FILE)
    (tmp_path / "anthropic.key").write_text("not this one\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    assert problems(config, env={"CREDENTIALS_DIRECTORY": str(creds)}) == [
        f"{config}:5:19: secret file {creds / 'anthropic.key'} for provider 'anthropic' does not exist"
    ]


def test_unreadable_secret_files(tmp_path):
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        providers:
          a: {type: openai, api_key_file: binary.key}
          b: {type: openai, api_key_file: folder}
        """)
    (tmp_path / "binary.key").write_bytes(b"\xff\xfe-secret-\x80")
    (tmp_path / "folder").mkdir()
    folder = tmp_path.resolve()
    assert problems(config) == [
        f"{config}:3:35: cannot read secret file {folder / 'binary.key'} for provider 'a': "
        "it is not UTF-8 text",
        f"{config}:4:35: cannot read secret file {folder / 'folder'} for provider 'b': Is a directory",
    ]


# --- environment references ------------------------------------------------------------------


def test_env_references_defaults_and_escape(tmp_path):
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        providers:
          a: {type: openai, api_key: "${A_KEY}"}
          b: {type: openai, api_key: "${B_KEY:-fallback}", base_url: "http://${HOST:-127.0.0.1}:1"}
          c: {type: mock, reply: "costs $${PRICE} now"}
        """)
    graph = load(config, env={"A_KEY": "sk-a"}).graph
    assert graph.providers["a"].api_key.reveal() == "sk-a"
    assert graph.providers["b"].api_key.reveal() == "fallback"
    assert graph.providers["b"].base_url == "http://127.0.0.1:1"
    assert graph.providers["c"].options["reply"] == "costs ${PRICE} now"


def test_unset_env_var_is_named_at_its_line(tmp_path):
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        providers:
          openai:
            type: openai
            api_key: ${OPENAI_API_KEY}
        """)
    assert problems(config, env={"OTHER": "x"}) == [
        f"{config}:5:14: environment variable 'OPENAI_API_KEY' is not set "
        "(use ${OPENAI_API_KEY:-} for an optional value)"
    ]


def test_the_environment_is_the_one_passed_in(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAYD_TEST_ONLY_IN_OS_ENV", "x")
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        providers:
          p: {type: openai, api_key: "${GATEWAYD_TEST_ONLY_IN_OS_ENV}"}
        """)
    assert problems(config) == [
        f"{config}:3:30: environment variable 'GATEWAYD_TEST_ONLY_IN_OS_ENV' is not set "
        "(use ${GATEWAYD_TEST_ONLY_IN_OS_ENV:-} for an optional value)"
    ]


# --- bad inputs ------------------------------------------------------------------------------

NESTED_100 = b"".join(b"  " * i + b"k%d:\n" % i for i in range(100))


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param(b"", "1:1: the file is empty; it needs at least 'version: 1'", id="empty"),
    pytest.param(b"# only a comment\n", "1:1: the file is empty; it needs at least 'version: 1'",
                 id="comment-only"),
    pytest.param(b"- version\n- 1\n", "1:1: the top level must be a mapping of keys "
                 "(version, server, providers, ...), found a list", id="top-level-list"),
    pytest.param(b"version: 1\nproviders:\n  p: {type: mock, reply: \"caf\xe9\"}\n",
                 "3:30: file is not UTF-8 text (invalid byte 0xe9 at line 3, column 30)",
                 id="not-utf-8"),
    pytest.param(b"version: 1\n" + b"#" * (10 * 1024 * 1024) + b"\n",
                 "1:1: file is 10.0 MiB; the limit is 1 MiB", id="10-MB"),
    pytest.param(b"[" * 10000, "1:65: nested too deeply (more than 64 levels)", id="10000-brackets"),
    pytest.param(NESTED_100, "65:129: nested too deeply (more than 64 levels)",
                 id="100-level-mapping"),
    pytest.param(b"version: 1\nproviders:\n  p: {type: mock}\n  p: {type: openai}\n",
                 "4:3: duplicate key 'p' (first at line 3)", id="duplicate-key"),
    pytest.param(b"version: 1\nversion: 1\n", "2:1: duplicate key 'version' (first at line 1)",
                 id="duplicate-top-level-key"),
    pytest.param(b"version: 2\n",
                 "1:10: version 2 is not supported: this gatewayd reads version: 1", id="version-2"),
    pytest.param(b"version: 1\nproviders: {p: {type: mock}\n",
                 "3:1: invalid YAML: expected ',' or '}', but got '<stream end>' "
                 "(while parsing a flow mapping at line 2, column 12)", id="unclosed-flow-mapping"),
    pytest.param(b"version: 1\n\tproviders: {}\n",
                 "2:1: invalid YAML: found character '\\t' that cannot start any token",
                 id="tab-indent"),
    pytest.param(b"version: 1\n---\nversion: 1\n",
                 "2:1: only one YAML document is allowed per file", id="two-documents"),
    pytest.param(b"version: 1\nproviders: \x07\n",
                 "2:12: control character U+0007 is not allowed in YAML text", id="control-char"),
])
def test_bad_input_gives_a_located_error(tmp_path, content, expected):
    path = tmp_path / "gateway.yaml"
    path.write_bytes(content)
    assert problems(str(path)) == [f"{path}:{expected}"]


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system",
                                 "!!python/name:os.system"])
def test_python_tags_are_refused_and_never_run(tmp_path, tag):
    pwned = tmp_path / "pwned"
    path = tmp_path / "gateway.yaml"
    path.write_text(f"version: 1\nproviders: {tag} ['touch {pwned}']\n")
    assert problems(str(path)) == [
        f"{path}:2:12: tag '{tag}' is not allowed (gatewayd reads plain YAML only)"
    ]
    assert not pwned.exists()


def test_python_tag_on_a_scalar_is_refused(tmp_path):
    pwned = tmp_path / "pwned"
    path = tmp_path / "gateway.yaml"
    path.write_text(f"version: 1\nx: !!python/object/apply:os.system 'touch {pwned}'\n")
    errors = problems(str(path))
    assert errors[0] == (f"{path}:2:4: tag '!!python/object/apply:os.system' is not allowed "
                         "(gatewayd reads plain YAML only)")
    assert not pwned.exists()


def test_billion_laughs_is_bounded(tmp_path):
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    errors = problems(str(path))
    assert len(errors) == 1 and "past 100000 values" in errors[0]


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert problems(str(path)) == [f"{path}:1:1: cannot read the file: No such file or directory"]


def test_several_unset_variables_are_all_reported(tmp_path):
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        providers:
          a: {type: openai, api_key: "${A_KEY}"}
          b: {type: openai, api_key: "${B_KEY}"}
        """)
    assert problems(config) == [
        f"{config}:3:30: environment variable 'A_KEY' is not set (use ${{A_KEY:-}} for an optional value)",
        f"{config}:4:30: environment variable 'B_KEY' is not set (use ${{B_KEY:-}} for an optional value)",
    ]


# --- every error at once: the compiler checks the parts the schema accepted -------------------


def test_compile_errors_of_the_parts_that_validated_come_with_the_schema_errors(tmp_path):
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        server:
          max_body: lots
        defaults:
          timezone: Europe/Berln
        providers:
          demo: {type: mock}
          bad: {type: opnai}
          filed: {type: openai, api_key_file: missing.key}
        models:
          echo: {provider: demo, model: echo}
          lost: {provider: nowhere, model: x}
        aliases:
          chat: {targets: [echo], fallbacks: [cheap, nothere]}
          cheap: {targets: [echo], fallbacks: [chat]}
        """)
    found = problems(config)
    assert [p.split(": ", 1)[0] for p in found] == [
        f"{config}:3:13", f"{config}:5:13", f"{config}:8:15", f"{config}:9:39", f"{config}:12:20",
        f"{config}:14:46", f"{config}:15:40"]
    assert "max_body" in found[0] and "'opnai'" in found[2]  # the schema's
    assert "unknown time zone 'Europe/Berln'" in found[1]  # the compiler's, and the secret file's
    assert "missing.key" in found[3] and "does not exist" in found[3]
    assert "provider 'nowhere'" in found[4] and "'nothere'" in found[5] and "chat -> cheap -> chat" in found[6]


def test_a_secret_file_that_cannot_be_read_does_not_hide_compile_errors(tmp_path):
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        providers:
          filed: {type: openai, api_key_file: missing.key}
        models:
          m: {provider: filed, model: x}
          lost: {provider: nowhere, model: x}
        """)
    found = problems(config)
    assert [p.split(": ", 1)[0] for p in found] == [f"{config}:3:39", f"{config}:6:20"]
    assert "missing.key" in found[0] and "provider 'nowhere'" in found[1]


def test_a_refused_part_is_reported_by_the_schema_only_and_its_name_still_resolves(tmp_path):
    config = write(tmp_path / "gateway.yaml", """\
        version: 1
        providers:
          demo: {type: mock}
        models:
          broken: {provider: nowhere, model: x, colour: red}
          also-broken: {provider: demo}
        aliases:
          chat: {targets: [broken, also-broken], fallbacks: [odd]}
          odd: {targets: []}
        """)
    assert [p.split(": ", 1)[1] for p in problems(config)] == [
        "unknown key 'colour' in models.broken; allowed keys: provider, model, pricing, windows, limits, queue, "
        "max_output_tokens, timeouts, retry, cooldown",
        "models.also-broken is missing the required key 'model'",
        "aliases.odd.targets must not be empty",
    ]


@pytest.mark.parametrize("section", ["models: [echo]", "models:\n  -bad-name: {provider: demo, model: x}"])
def test_a_section_refused_whole_leaves_the_schema_errors_alone(tmp_path, section):
    config = write(tmp_path / "gateway.yaml", "version: 1\ndefaults: {timezone: Mars/Base}\n"
                                              "providers:\n  demo: {type: mock}\n" + section + "\n")
    found = problems(config)
    assert len(found) == 1 and "time zone" not in found[0]


# --- finding the config ----------------------------------------------------------------------


def test_find_config_prefers_the_explicit_path_then_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("/some/where.yaml") == "/some/where.yaml"
    (tmp_path / "gateway.yaml").write_text("version: 1\n")
    assert find_config(None) == "gateway.yaml"
