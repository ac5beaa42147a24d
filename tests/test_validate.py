"""Schema errors as located problems (daemon/validate.py): each kind of error, its exact
`FILE:LINE:COL: message`, pointing at the offending key or value itself."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from gatewayd.daemon.config import load
from gatewayd.daemon.problems import ConfigError

F = "gateway.yaml"  # loaded by a relative path, so it is the FILE of every message

NAME_HINT = "names use letters, digits, '.', '_', '-', ':' and '/', starting with a letter or digit"
TOP_KEYS = "version, server, defaults, providers, models, aliases"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    """Write `text` to ./gateway.yaml, load it, return every problem as `FILE:LINE:COL: message`."""
    Path(F).write_text(dedent(text), "utf-8")
    with pytest.raises(ConfigError) as info:
        load(F, env={} if env is None else env)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


# --- unknown keys ----------------------------------------------------------------------------


def test_unknown_key_is_reported_at_the_key_with_a_suggestion():
    assert errors("""\
        version: 1
        defaults:
          retyr:
            attempts: 2
        """) == [f"{F}:3:3: unknown key 'retyr' in defaults (did you mean 'retry'?)"]


def test_unknown_key_at_a_nested_depth():
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m:
            provider: p
            model: echo
            retry:
              backoff:
                initial: 1s
                jiter: full
        """) == [f"{F}:11:9: unknown key 'jiter' in models.m.retry.backoff (did you mean 'jitter'?)"]


def test_unknown_key_inside_a_flow_mapping_in_a_list():
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m: {provider: p, model: echo}
        aliases:
          a:
            targets: [{model: m, wieght: 2}]
        """) == [f"{F}:8:26: unknown key 'wieght' in aliases.a.targets[0] (did you mean 'weight'?)"]


def test_unknown_top_level_key_lists_the_allowed_keys():
    assert errors("""\
        version: 1
        bogus: 1
        """) == [f"{F}:2:1: unknown key 'bogus' in the top level; allowed keys: {TOP_KEYS}"]


def test_unknown_top_level_key_close_to_a_known_one_gets_a_suggestion():
    assert errors("""\
        version: 1
        provider:
          p: {type: mock}
        """) == [f"{F}:2:1: unknown key 'provider' in the top level (did you mean 'providers'?)"]


# --- required keys ---------------------------------------------------------------------------


def test_missing_required_key_is_reported_at_the_mappings_key():
    assert errors("""\
        version: 1
        providers:
          a: {type: mock}
          b:
            base_url: http://127.0.0.1:1
        """) == [f"{F}:4:3: providers.b is missing the required key 'type'"]


def test_missing_required_keys_are_each_reported():
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m:
            pricing: {input_per_mtok: 1}
        """) == [
        f"{F}:5:3: models.m is missing the required key 'model'",
        f"{F}:5:3: models.m is missing the required key 'provider'",
    ]


def test_missing_version_is_reported_at_the_top_level():
    assert errors("""\
        providers: {}
        """) == [f"{F}:1:1: the top level is missing the required key 'version'"]


def test_missing_required_key_in_a_list_item_points_at_the_item():
    assert errors("""\
        version: 1
        server:
          auth:
            keys:
              - name: app
        """) == [f"{F}:5:9: server.auth.keys[0] is missing the required key 'key'"]


# --- types, enums, constants -----------------------------------------------------------------


def test_wrong_type_is_reported_at_the_value():
    assert errors("""\
        version: 1
        defaults:
          retry:
            attempts: "two"
        """) == [f"{F}:4:15: defaults.retry.attempts must be a whole number, found a string"]


def test_null_where_a_mapping_is_expected():
    assert errors("""\
        version: 1
        providers:
          p: null
        """) == [f"{F}:3:6: providers.p must be a mapping, found nothing (null)"]


def test_enum_with_suggestion_and_the_allowed_values():
    assert errors("""\
        version: 1
        providers:
          p:
            type: opnai
        """) == [
        (f"{F}:4:11: providers.p.type: 'opnai' is not allowed (did you mean 'openai'?); "
        "use one of: openai, azure-openai, anthropic, ollama, mock")
    ]


def test_enum_without_a_close_value_has_no_suggestion():
    assert errors("""\
        version: 1
        server:
          log_format: xml
        """) == [f"{F}:3:15: server.log_format: 'xml' is not allowed; use one of: text, json"]


def test_strategy_enum_with_suggestion():
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m: {provider: p, model: echo}
        aliases:
          a:
            targets: [m]
            strategy: weigthed
        """) == [
        (f"{F}:9:15: aliases.a.strategy: 'weigthed' is not allowed (did you mean 'weighted'?); "
        "use one of: ordered, round-robin, weighted, least-busy, lowest-latency")
    ]


def test_version_2_is_not_supported():
    assert errors("""\
        version: 2
        """) == [f"{F}:1:10: version 2 is not supported: this gatewayd reads version: 1"]


# --- patterns --------------------------------------------------------------------------------


def test_duration_pattern():
    assert errors("""\
        version: 1
        defaults:
          timeouts:
            connect: 5 sec
        """) == [
        (f"{F}:4:14: defaults.timeouts.connect: '5 sec' is not valid: "
        "a duration is written like 250ms, 30s, 10m, 1h or 1m30s, or as a number of seconds")
    ]


def test_negative_duration_number():
    assert errors("""\
        version: 1
        defaults:
          timeouts:
            connect: -1
        """) == [f"{F}:4:14: defaults.timeouts.connect: -1 is less than the minimum of 0"]


def test_size_pattern():
    assert errors("""\
        version: 1
        server:
          max_body: 8 MegaB
        """) == [
        (f"{F}:3:13: server.max_body: '8 MegaB' is not valid: "
        "a size is written like 512KiB, 8MiB or 1GiB, or as a number of bytes")
    ]


def test_bad_window_string_is_reported_with_the_window_parsers_message():
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m:
            provider: p
            model: echo
            windows:
              only: ["mon-fri 9am-5pm"]
              except: ["sat 10:00 to 11:00"]
        """) == [
        (f"{F}:9:14: models.m.windows.only[0]: 'mon-fri 9am-5pm': "
        "bad start time '9am' (expected HH:MM, 00:00 to 23:59)"),
        (f"{F}:10:16: models.m.windows.except[0]: 'sat 10:00 to 11:00': "
        "missing '-' between start and end in time range '10:00 to 11:00' (expected HH:MM-HH:MM)"),
    ]


def test_unquoted_window_time_read_as_a_number_is_a_type_error():
    # YAML 1.1 reads an unquoted 22:00 as the sexagesimal number 1320.
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m:
            provider: p
            model: echo
            windows:
              only: [22:00]
        """) == [f"{F}:9:14: models.m.windows.only[0] must be a string, found a number"]


BAD_NAMES = {
    "providers": """\
        version: 1
        providers:
          p: {type: mock}
          "-bad": {type: mock}
        """,
    "models": """\
        version: 1
        providers:
          p: {type: mock}
        models:
          m: {provider: p, model: echo}
          "-bad": {provider: p, model: echo}
        """,
    "aliases": """\
        version: 1
        providers:
          p: {type: mock}
        models:
          m: {provider: p, model: echo}
        aliases:
          a: {targets: [m]}
          "bad name": {targets: [m]}
        """,
}


@pytest.mark.parametrize(("section", "name", "line"), [
    ("providers", "-bad", 4), ("models", "-bad", 6), ("aliases", "bad name", 8),
])
def test_bad_name_is_reported_at_the_key(section, name, line):
    # The bad name is not the first key: a location at the mapping's start would be wrong.
    assert errors(BAD_NAMES[section]) == [
        f"{F}:{line}:3: '{name}' is not a valid name in {section}: {NAME_HINT}"
    ]


@pytest.mark.parametrize("listen", ["localhost", "[::1]", "127.0.0.1:", "http://127.0.0.1:80"])
def test_listen_pattern(listen):
    assert errors(f"""\
        version: 1
        server:
          listen: "{listen}"
        """) == [
        (f"{F}:3:11: server.listen: '{listen}' is not valid: listen is written host:port "
        "(e.g. 127.0.0.1:8080, [::1]:8080) or unix:/path/to.sock")
    ]


def test_retry_when_pattern():
    assert errors("""\
        version: 1
        defaults:
          retry:
            when: [429, 6xx]
        """) == [
        (f"{F}:4:17: defaults.retry.when[1]: '6xx' is not valid: "
        "retry.when lists HTTP statuses (429, 503), '4xx' or '5xx', 'timeout' and 'connect'")
    ]


# --- several errors --------------------------------------------------------------------------


def test_every_error_in_a_file_is_reported_sorted_by_line():
    problems = errors("""\
        version: 1
        server:
          max_body: lots
        defaults:
          retyr: {}
          retry:
            attempts: "two"
        bogus: 1
        providers:
          a:
            type: opnai
          b: {}
        models:
          m:
            provider: a
            model: x
            timeouts: {connect: 5 sec}
        """)
    assert problems == [
        (f"{F}:3:13: server.max_body: 'lots' is not valid: "
        "a size is written like 512KiB, 8MiB or 1GiB, or as a number of bytes"),
        f"{F}:5:3: unknown key 'retyr' in defaults (did you mean 'retry'?)",
        f"{F}:7:15: defaults.retry.attempts must be a whole number, found a string",
        f"{F}:8:1: unknown key 'bogus' in the top level; allowed keys: {TOP_KEYS}",
        (f"{F}:11:11: providers.a.type: 'opnai' is not allowed (did you mean 'openai'?); "
        "use one of: openai, azure-openai, anthropic, ollama, mock"),
        f"{F}:12:3: providers.b is missing the required key 'type'",
        (f"{F}:17:25: models.m.timeouts.connect: '5 sec' is not valid: "
        "a duration is written like 250ms, 30s, 10m, 1h or 1m30s, or as a number of seconds"),
    ]


def test_schema_errors_stop_before_the_compiler():
    # The unknown provider would be a compile error; only the schema error is reported.
    assert errors("""\
        version: 1
        models:
          m: {provider: nope, model: x, colour: red}
        """) == [(f"{F}:3:33: unknown key 'colour' in models.m; allowed keys: "
                 "provider, model, pricing, windows, timeouts, retry, cooldown")]


# --- numbers that are not numbers ------------------------------------------------------------

NON_FINITE = """\
    version: 1
    providers:
      p:
        type: mock
        fail_rate: .nan
    models:
      m:
        provider: p
        model: echo
        timeouts:
          total: .nan
        cooldown:
          multiplier: .inf
    aliases:
      a:
        targets:
          - {model: m, weight: .inf}
    """


def test_non_finite_numbers_are_rejected_at_the_value():
    # YAML reads .nan and .inf as floats; a NaN timeout or an infinite weight is never meant.
    locations = [problem.split(": ", 1)[0] for problem in errors(NON_FINITE)]
    assert locations == [f"{F}:5:16", f"{F}:11:14", f"{F}:13:19", f"{F}:17:28"]


def test_a_model_or_provider_named_windows_gets_the_ordinary_pattern_messages():
    # Only window strings get the window parser's message, not anything under a key 'windows'.
    assert errors("""\
        version: 1
        providers:
          windows: {type: openai, base_url: "ftp://x"}
        models:
          windows:
            provider: windows
            model: x
            timeouts: {connect: 5 sec}
        """) == [
        f"{F}:3:37: providers.windows.base_url: 'ftp://x' is not valid: "
        "base_url is an http:// or https:// URL without query or fragment",
        f"{F}:8:25: models.windows.timeouts.connect: '5 sec' is not valid: "
        "a duration is written like 250ms, 30s, 10m, 1h or 1m30s, or as a number of seconds",
    ]


def test_a_value_from_the_environment_is_never_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "gateway.yaml"
    path.write_text("version: 1\nproviders:\n  p:\n    type: openai\n    base_url: ${OPENAI_API_KEY}\n")
    with pytest.raises(ConfigError) as caught:
        load("gateway.yaml", {"OPENAI_API_KEY": "sk-secret-canary-123"})
    message = str(caught.value)
    assert "sk-secret-canary-123" not in message
    assert message == ("gateway.yaml:5:15: providers.p.base_url: the value of ${OPENAI_API_KEY} is not valid: "
                       "base_url is an http:// or https:// URL without query or fragment")
