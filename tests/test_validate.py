"""Schema errors as located problems (daemon/config/validate.py): each kind of error, its exact
`FILE:LINE:COL: message`, pointing at the offending key or value itself."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.problems import ConfigError, quoted

F = "gateway.yaml"  # loaded by a relative path, so it is the FILE of every message

NAME_HINT = "names use letters, digits, '.', '_', '-', ':' and '/', starting with a letter or digit"
TOP_KEYS = "version, server, defaults, providers, models, aliases, cache, telemetry, state"


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
              - key: k
        """) == [f"{F}:5:9: server.auth.keys[0] is missing the required key 'name'"]


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
        "use one of: openai, azure-openai, anthropic, ollama, gemini, bedrock, mock")
    ]


def test_enum_without_a_close_value_has_no_suggestion():
    assert errors("""\
        version: 1
        server:
          log_format: xml
        """) == [f"{F}:3:15: server.log_format: 'xml' is not allowed; use one of: text, json"]


def test_role_and_metrics_take_only_their_values():
    assert errors("""\
        version: 1
        server:
          metrics: open
          auth:
            keys:
              - {name: ops, key: k, role: amdin}
              - {name: app, key_sha256: 12, role: app}
        """) == [
        f"{F}:3:12: server.metrics: 'open' is not allowed; use one of: auth, public",
        f"{F}:6:35: server.auth.keys[0].role: 'amdin' is not allowed (did you mean 'admin'?); use one of: app, admin",
        f"{F}:7:33: server.auth.keys[1].key_sha256 must be a string, found a number",
    ]


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
        "use one of: ordered, round-robin, weighted, least-busy, lowest-latency, ucb")
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
        "use one of: openai, azure-openai, anthropic, ollama, gemini, bedrock, mock"),
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
                 "provider, model, pricing, windows, limits, queue, max_output_tokens, timeouts, retry, cooldown")]


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


# --- a secret pasted into the wrong field is never quoted whole -------------------------------

PASTED = "sk-proj-Q2xhdWRlQ29kZTIwMjZnYXRld2F5ZGRlbW9rZXk1"  # written literally, not from the environment
MASKED = "'sk-p…("  # its first characters and its length, e.g. 'sk-p…(48 characters)'
PROVIDERS = "providers:\n  demo: {type: mock}\n"
MODELS = "models:\n  echo: {provider: demo, model: echo}\n"


@pytest.mark.parametrize("config", [
    "server: {listen: 'PASTED:8080'}\n" + PROVIDERS,  # a listen address that is not loopback (the compiler)
    "providers:\n  p: {type: openai, base_url: PASTED}\n",  # not a URL (the schema's pattern)
    "defaults: {timezone: PASTED}\n" + PROVIDERS,  # no such time zone (the compiler)
    PROVIDERS + "models:\n  m: {provider: PASTED, model: x}\n",  # no such provider
    PROVIDERS + MODELS + "aliases:\n  chat: {targets: [PASTED]}\n",  # no such model
    PROVIDERS + MODELS + "aliases:\n  chat: {targets: [echo], fallbacks: [PASTED]}\n",
    PROVIDERS + MODELS + "aliases:\n  chat: {targets: [echo], strategy: PASTED}\n",  # not a strategy (an enum)
    "defaults: {retry: {attempts: PASTED}}\n" + PROVIDERS,  # a string where a number belongs: no value quoted
], ids=["listen", "base_url", "timezone", "provider", "target", "fallback", "strategy", "attempts"])
def test_a_literal_secret_in_the_wrong_field_is_masked_in_every_message(config):
    problems = "\n".join(errors("version: 1\n" + config.replace("PASTED", PASTED)))
    assert PASTED not in problems and PASTED[8:24] not in problems, problems
    if "attempts" not in config:
        assert MASKED in problems, problems


@pytest.mark.parametrize("value", [
    "sk-proj-Q2xhdWRlQ29kZTIwMjZnYXRld2F5ZGRlbW9rZXk1", "sk-ant-api03-AbCdEfGh12345678", "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "7f3a9c2e51d84b06a1b2c3d4e5f60718",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig", "https://host/v1?key=0123456789abcdef0123456789abcdef",
])
def test_values_that_could_be_keys_are_masked(value):
    assert quoted(value) == f"'{value[:4]}…({len(value)} characters)'"


@pytest.mark.parametrize("value", [
    "claude-3-5-sonnet-20241022", "gpt-4o-mini-2024-07-18", "meta-llama/Meta-Llama-3.1-70B-Instruct",
    "Qwen2_5_Coder_32B_Instruct", "text-embedding-3-large", "https://api.openai.com/v1", "Europe/Berlin",
    "America/Argentina/Buenos_Aires", "mon-fri 09:00-17:00", "127.0.0.1:8080", "sk-test", "internationalization",
])
def test_names_urls_and_zones_are_quoted_as_written(value):
    assert quoted(value) == f"'{value}'"


# --- a key at the wrong indentation is reported once, where it belongs ------------------------

INDENTED = "(check its indentation)"


def test_a_block_dedented_out_of_its_model_is_one_error_not_a_cascade():
    # as a model named 'windows' it would miss provider and model, with 'timezone' "like timeouts"
    assert errors("""\
        version: 1
        providers:
          demo: {type: mock}
        models:
          llama:
            provider: demo
            model: echo
          windows:
            only: ["mon-fri 09:00-17:00"]
            timezone: UTC
        """) == [f"{F}:8:3: 'windows' is indented as a key of models; it belongs under models.llama {INDENTED}"]


def test_a_key_dedented_out_of_an_empty_block_belongs_in_it():
    assert errors("""\
        version: 1
        providers:
          demo: {type: mock}
        models:
          llama:
            provider: demo
            model: echo
            retry:
            attempts: 3
        """) == [f"{F}:9:5: 'attempts' is indented as a key of models.llama; it belongs under models.llama.retry "
                 f"{INDENTED}"]


def test_keys_dedented_two_levels_and_several_of_one_block():
    assert errors("""\
        version: 1
        providers:
          openai:
            type: openai
            api_key: x
          timeouts:
            connect: 2s
        models:
          llama:
            provider: openai
            model: gpt-4o
        retry:
          attempts: 3
        aliases:
          chat:
            targets: [llama]
          fallbacks: [llama]
          strategy: ordered
        """) == [
        f"{F}:6:3: 'timeouts' is indented as a key of providers; it belongs under providers.openai {INDENTED}",
        f"{F}:12:1: 'retry' is indented as a key of the top level; it belongs under models.llama {INDENTED}",
        f"{F}:17:3: 'fallbacks' and 'strategy' are indented as keys of aliases; they belong under aliases.chat "
        "(check their indentation)",
    ]


def test_keys_indented_too_far_belong_one_level_up():
    assert errors("""\
        version: 1
        providers:
          demo: {type: mock}
        models:
          llama:
            provider: demo
            pricing:
              input_per_mtok: 1
              model: echo
            retry:
              attempts: 3
              timeouts:
                connect: 2s
        aliases:
          chat:
            targets: [llama]
            cheap:
              targets: [llama]
        """) == [  # nor is models.llama said to miss its 'model'
        f"{F}:9:7: 'model' is indented as a key of models.llama.pricing; it belongs under models.llama {INDENTED}",
        f"{F}:12:7: 'timeouts' is indented as a key of models.llama.retry; it belongs under models.llama {INDENTED}",
        f"{F}:17:5: 'cheap' is indented as a key of aliases.chat; it belongs under aliases {INDENTED}",
    ]


def test_a_key_over_indented_under_a_value_gets_a_hint_with_the_yaml_error():
    problems = errors("""\
        version: 1
        providers:
          demo:
            type: mock
              reply: hi
        """)
    assert len(problems) == 1 and problems[0].startswith(f"{F}:5:")
    assert "'reply' is indented deeper than 'type'" in problems[0]


def test_a_colon_inside_a_value_gets_no_indentation_hint():
    problems = errors("""\
        version: 1
        providers:
          demo:
            type: mock
            reply: Note: this
        """)
    assert len(problems) == 1 and "indent" not in problems[0]


def test_an_unknown_key_that_belongs_nowhere_keeps_its_suggestion():
    assert errors("""\
        version: 1
        providers:
          demo: {type: mock}
        models:
          llama:
            provider: demo
            model: echo
            timeout: {connect: 2s}
        """) == [f"{F}:8:5: unknown key 'timeout' in models.llama (did you mean 'timeouts'?)"]


def test_an_entry_named_like_a_key_whose_value_does_not_fit_there_is_an_ordinary_entry():
    assert errors("""\
        version: 1
        providers:
          demo: {type: mock}
        models:
          llama: {provider: demo, model: echo}
          windows:
            provider: demo
            model: echo
            timeouts: {connect: 5 sec}
        """) == [f"{F}:9:25: models.windows.timeouts.connect: '5 sec' is not valid: "
                 "a duration is written like 250ms, 30s, 10m, 1h or 1m30s, or as a number of seconds"]
