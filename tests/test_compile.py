"""The compiler (daemon/config/compile.py): its rules with exact locations, warnings, plan
flattening, policy merging, the frozen graph, version ids and identities."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import signal
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.daemon.config import schemadoc
from gatewayd.daemon.config.load import load
from gatewayd.daemon.config.units import size_bytes
from gatewayd.daemon.core.graph import Candidate, Graph, Route, Tier
from gatewayd.daemon.core.problems import ConfigError
from tests.compiling import F, compiled, errors, in_tmp  # noqa: F401 (in_tmp: autouse)


def plan(graph: Graph, name: str) -> list[tuple[str, str, list[tuple[str, float]]]]:
    """A route as [(strategy, origin, [(deployment, weight), ...]), ...]."""
    return [(t.strategy, t.origin, [(c.deployment, c.weight) for c in t.candidates])
            for t in graph.routes[name].tiers]


# Seven lines; a snippet appended to it starts at line 8.
BASE = """\
version: 1
providers:
  openai: {type: openai, api_key: sk-test}
  demo: {type: mock}
models:
  gpt: {provider: openai, model: gpt-4o}
  echo: {provider: demo, model: echo}
"""


# --- references ------------------------------------------------------------------------------


def test_unknown_provider_with_suggestion():
    assert errors("""\
        version: 1
        providers:
          openai: {type: openai}
        models:
          gpt:
            provider: opnai
            model: gpt-4o
        """) == [(f"{F}:6:15: model 'gpt' names provider 'opnai', which is not defined "
                 "(did you mean 'openai'?)")]


def test_unknown_provider_without_a_close_name():
    assert errors("""\
        version: 1
        providers:
          openai: {type: openai}
        models:
          gpt: {provider: zzz, model: gpt-4o}
        """) == [f"{F}:5:19: model 'gpt' names provider 'zzz', which is not defined"]


def test_unknown_target_as_a_name_and_as_a_mapping():
    assert errors(BASE + dedent("""\
        aliases:
          chat:
            targets: [gtp, {model: ech, weight: 2}]
        """)) == [
        f"{F}:10:15: target 'gtp' is not a defined model (did you mean 'gpt'?)",
        f"{F}:10:28: target 'ech' is not a defined model (did you mean 'echo'?)",
    ]


def test_a_target_that_is_an_alias():
    assert errors(BASE + dedent("""\
        aliases:
          cheap:
            targets: [echo]
          chat:
            targets:
              - gpt
              - cheap
        """)) == [f"{F}:14:9: target 'cheap' is an alias; targets name models (put aliases in fallbacks)"]


def test_unknown_fallback_with_suggestion():
    assert errors(BASE + dedent("""\
        aliases:
          cheap:
            targets: [echo]
          chat:
            targets: [gpt]
            fallbacks: [echo, cheep]
        """)) == [f"{F}:13:23: fallback 'cheep' is neither a model nor an alias (did you mean 'cheap'?)"]


def test_fallback_cycle_of_two():
    assert errors(BASE + dedent("""\
        aliases:
          chat:
            targets: [gpt]
            fallbacks: [cheap]
          cheap:
            targets: [echo]
            fallbacks: [chat]
        """)) == [f"{F}:14:17: fallback cycle: chat -> cheap -> chat"]


def test_fallback_cycle_of_three_is_reported_once_at_the_closing_entry():
    assert errors(BASE + dedent("""\
        aliases:
          a:
            targets: [gpt]
            fallbacks: [echo, b]
          b:
            targets: [gpt]
            fallbacks: [c]
          c:
            targets: [echo]
            fallbacks:
              - echo
              - a
        """)) == [f"{F}:19:9: fallback cycle: a -> b -> c -> a"]


def test_cycle_reached_from_outside_names_only_the_cycle():
    assert errors(BASE + dedent("""\
        aliases:
          entry:
            targets: [gpt]
            fallbacks: [a]
          a:
            targets: [gpt]
            fallbacks: [b]
          b:
            targets: [echo]
            fallbacks: [a]
        """)) == [f"{F}:17:17: fallback cycle: a -> b -> a"]


def test_self_fallback():
    assert errors(BASE + dedent("""\
        aliases:
          chat:
            targets: [gpt]
            fallbacks: [chat]
        """)) == [f"{F}:11:17: fallback cycle: chat -> chat"]


def test_a_name_both_model_and_alias_is_reported_at_the_alias():
    assert errors(BASE + dedent("""\
        aliases:
          echo:
            targets: [gpt]
        """)) == [f"{F}:9:3: 'echo' is both a model and an alias; rename one of them"]


# --- server ----------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "203.0.113.7:8080", "[::]:8080",
                                    "gateway.example.com:8080"])
def test_non_loopback_listen_without_auth_is_an_error(listen):
    assert errors(f"""\
        version: 1
        server:
          listen: "{listen}"
        """) == [(f"{F}:3:11: listen address '{listen}' is not loopback: add server.auth with keys, "
                 "or listen on 127.0.0.1, [::1] or a unix socket")]


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.5.5.5:9000", "[::1]:8080",
                                    "localhost:8080", "unix:/x.sock"])
def test_loopback_listen_without_auth_is_fine(listen):
    graph = compiled(f"""\
        version: 1
        server:
          listen: "{listen}"
        """)
    assert graph.server.listen == listen
    assert graph.server.keys is None


def test_non_loopback_listen_with_auth_is_fine():
    graph = compiled("""\
        version: 1
        server:
          listen: 0.0.0.0:8080
          auth:
            keys:
              - {name: billing, key: "${BILLING_KEY}", allow: [chat]}
              - {name: ops, key: ops-key}
        """, env={"BILLING_KEY": "b-key"})
    billing, ops = graph.server.keys
    assert (billing.name, billing.key.reveal(), billing.allow) == ("billing", "b-key", {"chat"})
    assert (ops.name, ops.key.reveal(), ops.allow) == ("ops", "ops-key", None)


def test_duplicate_app_key_names():
    assert errors("""\
        version: 1
        server:
          auth:
            keys:
              - {name: app, key: one}
              - {name: other, key: two}
              - {name: app, key: three}
        """) == [f"{F}:7:16: app key name 'app' is used twice (first at keys[0])"]


@pytest.mark.parametrize("key", ['""', '"${APP_KEY:-}"'])
def test_empty_app_key(key):
    assert errors(f"""\
        version: 1
        server:
          auth:
            keys:
              - name: app
                key: {key}
        """) == [f"{F}:6:14: app key 'app' is empty; set the variable it names or remove the entry"]


DIGEST = hashlib.sha256(b"ops-key").hexdigest()


def test_roles_hashed_keys_and_the_metrics_setting():
    graph = compiled(f"""\
        version: 1
        server:
          metrics: public
          auth:
            keys:
              - {{name: app, key: app-key}}
              - {{name: ops, key_sha256: "{DIGEST.upper()}", role: admin, allow: [chat]}}
        """)
    app, ops = graph.server.keys
    assert (app.admin, app.hashed, app.expected, app.key.reveal()) == (False, False, b"app-key", "app-key")
    assert (ops.admin, ops.hashed, ops.expected, ops.key, ops.allow) == (True, True, bytes.fromhex(DIGEST), None,
                                                                         {"chat"})
    assert graph.server.metrics == "public" and graph.server.hashed_keys
    assert DIGEST not in repr(graph.server).lower()


def test_role_and_metrics_default_to_the_schemas_defaults():
    graph = compiled("""\
        version: 1
        server:
          auth: {keys: [{name: app, key: app-key}]}
        """)
    assert schemadoc.default("appKey", "role") == "app" and not graph.server.keys[0].admin
    assert schemadoc.default("server", "metrics") == "auth" == graph.server.metrics
    assert not graph.server.hashed_keys  # then a request never hashes what it presents


def test_key_and_key_sha256_together_is_an_error_at_key_sha256():
    assert errors(f"""\
        version: 1
        server:
          auth:
            keys:
              - name: ops
                key: ops-key
                key_sha256: {DIGEST}
        """) == [f"{F}:7:9: app key 'ops': give either key or key_sha256, not both"]


def test_an_entry_without_key_or_key_sha256_is_an_error_at_the_entry():
    assert errors("""\
        version: 1
        server:
          auth:
            keys:
              - name: ops
                role: admin
        """) == [f"{F}:5:9: app key 'ops' needs key (the key itself) or key_sha256 (its SHA-256, "
                 "from `gatewayd hash-key`)"]


@pytest.mark.parametrize("digest", ["my-actual-secret-key", DIGEST[:-1], DIGEST + "0", "g" * 64])
def test_key_sha256_must_be_64_hex_digits_and_is_never_echoed(digest):
    found = errors(f"""\
        version: 1
        server:
          auth:
            keys:
              - name: ops
                key_sha256: "{digest}"
        """)
    assert found == [f"{F}:6:21: app key 'ops': key_sha256 must be 64 hex digits, the SHA-256 of the key "
                     "(`gatewayd hash-key` prints it)"]
    assert digest not in found[0]


def test_the_version_id_follows_a_key_sha256_and_hides_a_plain_key():
    def version(entry: str) -> str:
        return compiled(f"version: 1\nserver: {{auth: {{keys: [{entry}]}}}}\n").version

    hashed = version(f"{{name: ops, key_sha256: {DIGEST}}}")
    assert hashed == version(f"{{name: ops, key_sha256: {DIGEST}}}")
    assert hashed != version(f"{{name: ops, key_sha256: {hashlib.sha256(b'other').hexdigest()}}}")
    assert hashed != version(f"{{name: ops, key_sha256: {DIGEST}, role: admin}}")
    assert version("{name: ops, key: one-key}") != version("{name: ops, key: two-key}")


# --- providers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("type_", "key", "value", "only"), [
    ("openai", "reply", "hi", "mock"),
    ("ollama", "latency", "1s", "mock"),
    ("anthropic", "fail_rate", "0.5", "mock"),
    ("anthropic", "api_version", '"2024-10-21"', "azure-openai"),
    ("mock", "anthropic_version", '"2023-06-01"', "anthropic"),
])
def test_type_only_keys_on_the_wrong_provider_type(type_, key, value, only):
    assert errors(f"""\
        version: 1
        providers:
          p:
            type: {type_}
            {key}: {value}
        """) == [f"{F}:5:5: key '{key}' applies only to {only} providers, and 'p' is {type_}"]


def test_api_key_and_api_key_file_together():
    Path("openai.key").write_text("sk-file\n")
    assert errors("""\
        version: 1
        providers:
          openai:
            type: openai
            api_key: sk-inline
            api_key_file: openai.key
        """) == [f"{F}:6:5: give either api_key or api_key_file, not both"]


def test_azure_openai_needs_base_url():
    assert errors("""\
        version: 1
        providers:
          azure:
            type: azure-openai
            api_key: k
        models:
          gpt: {provider: azure, model: my-deployment}
        """) == [(f"{F}:3:3: provider 'azure' (azure-openai) needs base_url, "
                 "e.g. https://RESOURCE.openai.azure.com")]


def test_default_base_urls_and_explicit_ones():
    graph = compiled("""\
        version: 1
        providers:
          openai: {type: openai}
          anthropic: {type: anthropic}
          ollama: {type: ollama}
          azure: {type: azure-openai, base_url: "https://r.openai.azure.com/", api_version: "v"}
        """)
    urls = {name: p.base_url for name, p in graph.providers.items()}
    assert urls == {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com",
                    "ollama": "http://127.0.0.1:11434", "azure": "https://r.openai.azure.com"}
    assert graph.providers["azure"].options["api_version"] == "v"


# --- windows and time zones ------------------------------------------------------------------


def test_bad_window_timezone_with_suggestion():
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m:
            provider: p
            model: echo
            windows:
              only: [sat]
              timezone: Europe/Berln
        """) == [f"{F}:10:17: unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)"]


def test_bad_default_timezone_used_by_two_windowed_models_is_reported_once():
    assert errors("""\
        version: 1
        defaults:
          timezone: Europe/Berln
        providers:
          p: {type: mock}
        models:
          a: {provider: p, model: echo, windows: {only: [sat]}}
          b: {provider: p, model: echo, windows: {only: [sun]}}
        """) == [f"{F}:3:13: unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)"]


def test_bad_default_timezone_is_an_error_even_without_windows():
    # Time zones must exist; a typo must not wait for the first windowed model to surface.
    assert errors("""\
        version: 1
        defaults:
          timezone: Mars/Olympus_Mons
        """) == [f"{F}:3:13: unknown time zone 'Mars/Olympus_Mons'"]


def test_window_strings_the_schema_accepts_but_the_parser_rejects():
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m:
            provider: p
            model: echo
            windows:
              only: ["mon-fry 10:00-11:00", "25:00-26:00"]
              except:
                - "sat 10:00-10:00"
        """) == [
        (f"{F}:9:14: 'mon-fry 10:00-11:00': unknown day 'fry' "
        "(days are mon, tue, wed, thu, fri, sat, sun; did you mean 'fri'?)"),
        f"{F}:9:37: '25:00-26:00': bad start time '25:00' (expected HH:MM, 00:00 to 23:59)",
        (f"{F}:11:11: 'sat 10:00-10:00': start equals end, which is an empty range "
        "(for whole days give the days alone, e.g. 'sat,sun')"),
    ]


def test_graph_windows_evaluate_at_two_instants():
    graph = compiled("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m:
            provider: p
            model: echo
            windows:
              only: ["mon-fri 09:00-17:00"]
              except: ["wed 12:00-13:00"]
              timezone: America/New_York
        """)
    windows = graph.deployments["m"].windows
    assert windows.timezone == "America/New_York"
    tuesday_10_local = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # EST is UTC-5
    wednesday_12_30_local = datetime(2026, 11, 25, 17, 30, tzinfo=UTC)
    saturday_10_local = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    assert windows.is_open(tuesday_10_local)
    assert windows.explain(tuesday_10_local) is None
    assert not windows.is_open(wednesday_12_30_local)
    assert windows.explain(wednesday_12_30_local) == (
        "inside except window 'wed 12:00-13:00' (now Wed 12:30 America/New_York)")
    assert not windows.is_open(saturday_10_local)


def test_windows_without_a_timezone_use_the_default_one():
    graph = compiled("""\
        version: 1
        defaults:
          timezone: Asia/Kolkata
        providers:
          p: {type: mock}
        models:
          m: {provider: p, model: echo, windows: {only: ["22:00-02:00"]}}
          always: {provider: p, model: echo}
        """)
    windows = graph.deployments["m"].windows
    assert windows.timezone == "Asia/Kolkata"
    assert windows.is_open(datetime(2026, 1, 1, 17, 0, tzinfo=UTC))  # 22:30 in Kolkata
    assert not windows.is_open(datetime(2026, 1, 1, 21, 0, tzinfo=UTC))  # 02:30
    assert graph.deployments["always"].windows is None


# --- warnings: disabled providers ------------------------------------------------------------


DISABLED = """\
    version: 1
    providers:
      openai: {type: openai, api_key: "${OPENAI_API_KEY:-}"}
      local: {type: openai, base_url: "http://127.0.0.1:8000/v1"}
      demo: {type: mock}
    models:
      gpt: {provider: openai, model: gpt-4o}
      mini: {provider: openai, model: gpt-4o-mini}
      loc: {provider: local, model: qwen}
      echo: {provider: demo, model: echo}
    aliases:
      only-openai:
        targets: [gpt, mini]
      chat:
        targets: [gpt, loc]
        fallbacks: [echo]
    """


def test_provider_with_an_empty_key_is_disabled_with_a_warning():
    graph = compiled(DISABLED)
    assert graph.warnings == (
        (f"{F}:3:3: provider 'openai' is disabled: its api_key resolved to an empty value; "
        "its models are left out of every plan"),
        (f"{F}:12:3: alias 'only-openai' has no usable deployment "
        "(every provider it uses is disabled)"),
    )
    assert graph.providers["openai"].disabled == "its api_key resolved to an empty value"
    assert graph.providers["openai"].api_key is None
    assert graph.deployments["gpt"].disabled == "its api_key resolved to an empty value"
    assert graph.deployments["mini"].disabled
    assert not graph.deployments["loc"].disabled
    assert not graph.deployments["echo"].disabled


def test_provider_without_any_key_is_not_disabled():
    graph = compiled(DISABLED)
    local = graph.providers["local"]
    assert local.api_key is None
    assert local.disabled is None
    assert not any("'local'" in w for w in graph.warnings)


def test_provider_with_a_key_is_enabled_and_no_warning():
    graph = compiled(DISABLED, env={"OPENAI_API_KEY": "sk-live"})
    assert graph.warnings == ()
    assert graph.providers["openai"].api_key.reveal() == "sk-live"
    assert graph.deployments["gpt"].disabled is None


def test_empty_secret_file_disables_the_provider():
    Path("anthropic.key").write_text("\n")
    graph = compiled("""\
        version: 1
        providers:
          anthropic: {type: anthropic, api_key_file: anthropic.key}
        """)
    assert graph.providers["anthropic"].disabled == "its api_key_file resolved to an empty value"
    assert graph.warnings == (
        (f"{F}:3:3: provider 'anthropic' is disabled: its api_key_file resolved to an empty value; "
        "its models are left out of every plan"),)


# --- plan flattening -------------------------------------------------------------------------


PLANS = """\
    version: 1
    providers:
      p: {type: mock}
    models:
      a: {provider: p, model: a}
      b: {provider: p, model: b}
      c: {provider: p, model: c}
      d: {provider: p, model: d}
      e: {provider: p, model: e}
      f: {provider: p, model: f}
    aliases:
      main:
        targets: [a, b]
        strategy: round-robin
        fallbacks: [mid, c, last]
      mid:
        targets:
          - {model: c, weight: 2}
          - {model: d, weight: 3}
        strategy: weighted
        fallbacks: [deep]
      deep:
        targets: [e, a]
        strategy: least-busy
      last:
        targets: [b]
        fallbacks: [f]
    """


def test_plan_order_nesting_dedup_weights_and_strategies():
    graph = compiled(PLANS)
    assert plan(graph, "main") == [
        ("round-robin", "main", [("a", 1.0), ("b", 1.0)]),
        ("weighted", "mid", [("c", 2.0), ("d", 3.0)]),  # the fallback alias's targets...
        ("least-busy", "deep", [("e", 1.0)]),  # ...then its own fallbacks; 'a' came first
        # fallback model 'c' is already in the plan; 'last' has only 'b': both tiers dropped
        ("ordered", "f", [("f", 1.0)]),
    ]
    assert graph.routes["main"].deployments() == ("a", "b", "c", "d", "e", "f")


def test_plans_of_the_nested_aliases_themselves():
    graph = compiled(PLANS)
    assert plan(graph, "mid") == [
        ("weighted", "mid", [("c", 2.0), ("d", 3.0)]),
        ("least-busy", "deep", [("e", 1.0), ("a", 1.0)]),
    ]
    assert plan(graph, "last") == [("ordered", "last", [("b", 1.0)]), ("ordered", "f", [("f", 1.0)])]


def test_duplicate_targets_within_a_tier_appear_once():
    graph = compiled("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          a: {provider: p, model: a}
          b: {provider: p, model: b}
        aliases:
          x:
            targets: [a, b, a]
            fallbacks: [b, a]
        """)
    assert plan(graph, "x") == [("ordered", "x", [("a", 1.0), ("b", 1.0)])]


def test_models_are_routes_with_one_tier():
    graph = compiled(PLANS)
    assert graph.routes["c"] == Route("c", "model", (Tier("ordered", (Candidate("c"),), "c"),))
    assert set(graph.routes) == {"a", "b", "c", "d", "e", "f", "main", "mid", "deep", "last"}
    assert graph.aliases == ("main", "mid", "deep", "last")
    assert {n: r.kind for n, r in graph.routes.items() if r.kind == "alias"} == dict.fromkeys(
        graph.aliases, "alias")


def test_the_example_config_plans():
    example = Path(__file__).resolve().parents[1] / "gateway.yaml.example"
    graph = load(str(example), env={}).graph
    assert plan(graph, "chat") == [
        ("ordered", "chat", [("claude-haiku", 1.0), ("gpt-4o-mini", 1.0)]),
        ("weighted", "cheap", [("llama-night", 3.0)]),
        ("ordered", "demo-reply", [("demo-reply", 1.0)]),
        ("ordered", "echo", [("echo", 1.0)]),
    ]


def chain_of_aliases(n: int) -> str:
    lines = [f"  a{i}: {{targets: [m], fallbacks: [a{i + 1}]}}" for i in range(n - 1)]
    return MINIMAL + "\n".join(lines + [f"  a{n - 1}: {{targets: [m]}}"]) + "\n"


def lattice_of_aliases(levels: int) -> str:
    """a0 and b0 fall back to a1 and b1, which fall back to a2 and b2, ...: 2**levels paths."""
    lines = []
    for i in range(levels):
        fallbacks = f", fallbacks: [a{i + 1}, b{i + 1}]" if i + 1 < levels else ""
        lines += [f"  a{i}: {{targets: [m]{fallbacks}}}", f"  b{i}: {{targets: [m]{fallbacks}}}"]
    return MINIMAL + "\n".join(lines) + "\n"


MINIMAL = """\
version: 1
providers:
  p: {type: mock}
models:
  m: {provider: p, model: echo}
aliases:
"""


def test_a_long_fallback_chain_compiles_or_is_a_located_error():
    # 1200 aliases in one chain: deeper than Python's default recursion limit.
    Path(F).write_text(chain_of_aliases(1200), "utf-8")
    try:
        graph = load(F, env={}).graph
    except ConfigError as error:
        assert all(p.line >= 1 and p.column >= 1 and p.message for p in error.problems)
    else:
        assert plan(graph, "a0") == [("ordered", "a0", [("m", 1.0)])]


def test_fallbacks_sharing_aliases_compile_in_reasonable_time():
    # 48 aliases, 2**24 distinct fallback paths: each alias must be expanded once, not per path.
    Path(F).write_text(lattice_of_aliases(24), "utf-8")

    def too_slow(signum, frame):
        raise TimeoutError("compiling 48 aliases took more than 10 s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(10)
    try:
        graph = load(F, env={}).graph
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert plan(graph, "a0") == [("ordered", "a0", [("m", 1.0)])]


# --- policy ----------------------------------------------------------------------------------


POLICIES = """\
    version: 1
    defaults:
      timeouts: {connect: 1s, total: 100s}
      retry:
        attempts: 4
        backoff: {initial: 100ms, max: 2s}
        when: [429, 5xx, timeout]
      cooldown: {failures: 5}
    providers:
      p:
        type: mock
        timeouts: {connect: 2s, idle: 7s}
        retry:
          backoff: {max: 3s, jitter: equal}
      q: {type: mock}
    models:
      layered:
        provider: p
        model: echo
        timeouts: {idle: 9s}
        retry:
          attempts: 6
          backoff: {multiplier: 3}
      provider-only:
        provider: p
        model: echo
      defaults-only:
        provider: q
        model: echo
    """


def test_policy_merges_defaults_provider_and_model_key_by_key():
    policy = compiled(POLICIES).deployments["layered"].policy
    t, r, c = policy.timeouts, policy.retry, policy.cooldown
    assert (t.connect, t.first_byte, t.idle, t.total) == (2.0, 60.0, 9.0, 100.0)
    assert r.attempts == 6
    assert (r.backoff.initial, r.backoff.max, r.backoff.multiplier, r.backoff.jitter) == (
        0.1, 3.0, 3.0, "equal")
    assert r.retry_after_max == 30.0
    assert (c.failures, c.initial, c.multiplier, c.max) == (5, 30.0, 2.0, 600.0)


def test_policy_provider_layer_over_defaults():
    policy = compiled(POLICIES).deployments["provider-only"].policy
    assert (policy.timeouts.connect, policy.timeouts.idle, policy.timeouts.total) == (2.0, 7.0, 100.0)
    assert policy.retry.attempts == 4
    assert (policy.retry.backoff.initial, policy.retry.backoff.max,
            policy.retry.backoff.multiplier, policy.retry.backoff.jitter) == (0.1, 3.0, 2.0, "equal")


def test_policy_defaults_only():
    policy = compiled(POLICIES).deployments["defaults-only"].policy
    assert (policy.timeouts.connect, policy.timeouts.idle) == (1.0, 30.0)
    assert (policy.retry.backoff.max, policy.retry.backoff.jitter) == (2.0, "full")


def test_when_expands_status_classes():
    retry = compiled(POLICIES).deployments["layered"].policy.retry
    assert retry.retry_statuses == {429, *range(500, 600)}
    assert retry.retry_timeout is True
    assert retry.retry_connect is False


def test_when_with_4xx_strings_and_connect():
    retry = compiled("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m:
            provider: p
            model: echo
            retry: {when: [4xx, "503", connect]}
        """).deployments["m"].policy.retry
    assert retry.retry_statuses == {*range(400, 500), 503}
    assert (retry.retry_timeout, retry.retry_connect) == (False, True)


def test_schema_defaults_apply_when_nothing_is_set():
    from gatewayd.daemon.config.units import seconds

    graph = compiled("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m: {provider: p, model: echo}
        """)
    policy = graph.deployments["m"].policy
    file_schema = json.loads(resources.files("gatewayd.schema").joinpath("gateway.schema.json")
                             .read_text("utf-8"))
    assert schemadoc.schema() == file_schema  # schema.default reads schema/gateway.schema.json

    for key in ("connect", "first_byte", "idle", "total"):
        assert getattr(policy.timeouts, key) == seconds(schemadoc.default("timeouts", key))
    assert policy.retry.attempts == schemadoc.default("retry", "attempts")
    assert policy.retry.retry_after_max == seconds(schemadoc.default("retry", "retry_after_max"))
    backoff = policy.retry.backoff
    assert backoff.initial == seconds(schemadoc.default("retry", "backoff", "initial"))
    assert backoff.max == seconds(schemadoc.default("retry", "backoff", "max"))
    assert backoff.multiplier == schemadoc.default("retry", "backoff", "multiplier")
    assert backoff.jitter == schemadoc.default("retry", "backoff", "jitter")
    assert schemadoc.default("retry", "when") == [429, "5xx", "timeout", "connect"]
    assert policy.retry.retry_statuses == {429, *range(500, 600)}
    assert (policy.retry.retry_timeout, policy.retry.retry_connect) == (True, True)
    cooldown = policy.cooldown
    assert cooldown.failures == schemadoc.default("cooldown", "failures")
    assert cooldown.initial == seconds(schemadoc.default("cooldown", "initial"))
    assert cooldown.multiplier == schemadoc.default("cooldown", "multiplier")
    assert cooldown.max == seconds(schemadoc.default("cooldown", "max"))

    server = graph.server
    assert server.listen == schemadoc.default("server", "listen")
    assert server.shutdown_grace == seconds(schemadoc.default("server", "shutdown_grace"))
    assert server.read_timeout == seconds(schemadoc.default("server", "read_timeout"))
    assert server.log_format == schemadoc.default("server", "log_format")
    assert server.max_body == 8 * 1024 * 1024 and schemadoc.default("server", "max_body") == "8MiB"
    provider = graph.providers["p"]
    assert provider.max_connections == schemadoc.default("provider", "max_connections")
    assert provider.options["reply"] == schemadoc.default("provider", "reply")
    assert graph.aliases == ()


def test_alias_strategy_defaults_to_the_schemas():
    graph = compiled(BASE + dedent("""\
        aliases:
          chat: {targets: [gpt]}
        """))
    assert graph.routes["chat"].tiers[0].strategy == schemadoc.default("alias", "strategy")


# --- immutability ----------------------------------------------------------------------------


def test_graph_is_frozen():
    graph = compiled(PLANS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.version = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.deployments["a"].model = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.deployments["a"].policy.retry.attempts = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.routes["main"].tiers[0].candidates[0].weight = 9.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.server.listen = "0.0.0.0:80"  # type: ignore[misc]


def test_graph_mappings_are_read_only():
    graph = compiled(PLANS)
    with pytest.raises(TypeError):
        graph.routes["new"] = graph.routes["a"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del graph.routes["a"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        graph.deployments["new"] = graph.deployments["a"]  # type: ignore[index]
    with pytest.raises(TypeError):
        graph.providers["new"] = graph.providers["p"]  # type: ignore[index]
    with pytest.raises(TypeError):
        graph.providers["p"].options["reply"] = "x"  # type: ignore[index]
    assert isinstance(graph.routes["main"].tiers, tuple)


# --- version id and identity -----------------------------------------------------------------


SECRETS = """\
    version: 1
    server:
      listen: 0.0.0.0:8080
      auth:
        keys: [{name: app, key: "${APP_KEY}"}]
    providers:
      openai: {type: openai, api_key: "${OPENAI_API_KEY}"}
      anthropic: {type: anthropic, api_key_file: anthropic.key}
    models:
      gpt: {provider: openai, model: gpt-4o}
      claude: {provider: anthropic, model: claude-haiku-4-5}
    """
SECRET_ENV = {"APP_KEY": "app-secret-1111", "OPENAI_API_KEY": "sk-secret-2222"}


def test_same_file_twice_gives_the_same_version():
    Path("anthropic.key").write_text("file-secret-3333\n")
    assert compiled(SECRETS, SECRET_ENV).version == compiled(SECRETS, SECRET_ENV).version


def test_changing_a_referenced_env_var_changes_the_version():
    Path("anthropic.key").write_text("file-secret-3333\n")
    first = compiled(SECRETS, SECRET_ENV).version
    assert compiled(SECRETS, {**SECRET_ENV, "OPENAI_API_KEY": "sk-secret-2223"}).version != first
    assert compiled(SECRETS, {**SECRET_ENV, "APP_KEY": "app-secret-1112"}).version != first
    assert compiled(SECRETS, {**SECRET_ENV, "UNRELATED": "x"}).version == first


def test_changing_a_secret_files_content_changes_the_version():
    Path("anthropic.key").write_text("file-secret-3333\n")
    first = compiled(SECRETS, SECRET_ENV).version
    Path("anthropic.key").write_text("file-secret-4444\n")
    assert compiled(SECRETS, SECRET_ENV).version != first


def test_secrets_never_appear_in_the_graphs_repr_or_version():
    Path("anthropic.key").write_text("file-secret-3333\n")
    graph = compiled(SECRETS, SECRET_ENV)
    assert graph.providers["anthropic"].api_key.reveal() == "file-secret-3333"
    assert graph.providers["openai"].api_key.reveal() == "sk-secret-2222"
    for text in (repr(graph), str(graph), graph.version, repr(graph.providers["anthropic"])):
        for secret in ("app-secret-1111", "sk-secret-2222", "file-secret-3333"):
            assert secret not in text


def test_deployment_identity_survives_a_rename_but_not_a_new_key():
    renamed = BASE.replace("gpt:", "gpt-renamed:")
    before = compiled(BASE).deployments["gpt"]
    after = compiled(renamed).deployments["gpt-renamed"]
    assert after.identity == before.identity
    rekeyed = compiled(BASE.replace("sk-test", "sk-other")).deployments["gpt"]
    assert rekeyed.identity != before.identity
    assert "sk-test" not in repr(before.identity)


def provider_of(text: str, name: str = "p"):
    return compiled(text).providers[name]


USERINFO = """
version: 1
providers:
  p: {type: openai, base_url: "https://proxy%40corp:pa%3Ass-word-1234@llm.example.com:8443/v1"EXTRA}
"""


def test_a_base_urls_userinfo_becomes_a_basic_header_and_leaves_the_url():
    provider = provider_of(USERINFO.replace("EXTRA", ""))
    assert provider.base_url == "https://llm.example.com:8443/v1"
    sent = dict(provider.headers)["Authorization"]
    assert sent.startswith("Basic ")
    assert base64.b64decode(sent[6:]).decode() == "proxy@corp:pa:ss-word-1234"  # percent-decoded, as sent
    # every form an upstream may echo is redacted, the password alone too
    assert {sent, sent[6:], "proxy@corp:pa:ss-word-1234", "pa:ss-word-1234"} <= set(provider.redactions)
    assert "pa%3Ass-word-1234" not in repr(provider) + repr(provider.identity)


def test_an_explicit_authorization_header_wins_over_userinfo():
    provider = provider_of(USERINFO.replace("EXTRA", ', headers: {authorization: "Bearer tok-5678"}'))
    assert dict(provider.headers) == {"authorization": "Bearer tok-5678"}
    assert provider.base_url == "https://llm.example.com:8443/v1"
    assert {"Bearer tok-5678", "tok-5678"} <= set(provider.redactions)


def test_every_header_value_long_enough_to_be_a_credential_is_redacted():
    provider = provider_of("""
version: 1
providers:
  p: {type: openai, api_key: sk-1, headers: {X-Title: MyApp, X-Org-Key: org-12345678}}
""")
    assert set(provider.redactions) == {"sk-1", "org-12345678"}  # "MyApp" would blank out answers


def test_a_credential_in_headers_is_part_of_the_deployments_identity():
    text = """
version: 1
providers:
  p: {type: openai, headers: {X-Api-Key: "%s"}}
models:
  m: {provider: p, model: gpt-4o-mini}
"""
    first, second = compiled(text % "key-one-1234"), compiled(text % "key-two-5678")
    assert first.deployments["m"].identity != second.deployments["m"].identity
    assert "key-one" not in repr(first.deployments["m"].identity)


def test_max_upstream_body_goes_into_every_provider_and_its_pools_identity():
    default = compiled(BASE)
    assert default.server.max_upstream_body == size_bytes(schemadoc.default("server", "max_upstream_body"))
    assert {p.max_upstream_body for p in default.providers.values()} == {64 * 1024 * 1024}
    bounded = compiled(BASE + "server: {max_upstream_body: 2MiB}\n")
    assert bounded.server.max_upstream_body == 2 * 1024 * 1024
    assert {p.max_upstream_body for p in bounded.providers.values()} == {2 * 1024 * 1024}
    # an adapter reads with the bound it was built with: a new bound is a new pool
    assert bounded.providers["openai"].identity != default.providers["openai"].identity
    assert bounded.deployments["gpt"].identity == default.deployments["gpt"].identity  # health is kept


# --- property: generated configs -------------------------------------------------------------

# Names per section; a broken reference or key may come from any section or be a name that
# YAML reads as something else (yes, 1, null, ~) or that the schema refuses (-x).
PROVIDER_NAMES = ["openai", "anthropic", "local", "demo"]
MODEL_NAMES = ["gpt", "claude", "llama", "echo", "m/1", "x.y"]
ALIAS_NAMES = ["chat", "cheap", "fast", "night", "all"]
ODD = ["yes", "1", "null", "~", "-x"]
ANY = PROVIDER_NAMES + MODEL_NAMES + ALIAS_NAMES + ODD
TYPES = st.sampled_from(["openai", "anthropic", "ollama", "mock"] * 5 + ["azure-openai", "opnai"])
API_KEYS = st.sampled_from([None] * 10 + ["sk-x", '""', '"${EMPTY:-}"', '"${SET}"'] * 3
                           + ['"${UNSET}"'])
WINDOWS = st.sampled_from([None] * 8 + [
    '{only: ["mon-fri 09:00-17:00"]}', '{only: [sat], timezone: UTC}', '{except: ["25:00-26:00"]}',
    '{only: [sat], timezone: Europe/Berln}', '{only: ["fri 22:00-02:00"], except: ["sat"]}'])
STRATEGIES = st.sampled_from([None, "ordered", "weighted", "round-robin"] * 3 + ["fastest"])
LISTENS = st.sampled_from([None, "127.0.0.1:8080", "unix:/g.sock"] * 8 + ["0.0.0.0:8080", "host"])


@st.composite
def configs(draw) -> str:
    def rarely() -> bool:
        return draw(st.integers(0, 39)) == 0

    def keys(choices: list[str], max_size: int) -> list[str]:
        names = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=max_size, unique=True))
        if rarely():  # a duplicate key, or one that is not a valid (string) name
            names.append(draw(st.sampled_from(names + ODD)))
        return names

    def ref(defined: list[str]) -> str:
        return draw(st.sampled_from(ANY if rarely() else defined))

    lines = ["version: 1"]
    if listen := draw(LISTENS):
        lines += ["server:", f"  listen: {listen}"]
    lines.append("providers:")
    for name in (providers := keys(PROVIDER_NAMES, 3)):
        lines += [f"  {name}:", f"    type: {draw(TYPES)}"]
        if (key := draw(API_KEYS)) is not None:
            lines.append(f"    api_key: {key}")
    lines.append("models:")
    for name in (models := keys(MODEL_NAMES, 5)):
        lines += [f"  {name}:", f"    provider: {ref(providers)}",
                  f"    model: {draw(st.sampled_from(MODEL_NAMES))}"]
        if (windows := draw(WINDOWS)) is not None:
            lines.append(f"    windows: {windows}")
    lines.append("aliases:")
    for name in (aliases := keys(ALIAS_NAMES + (models if rarely() else []), 5)):
        weighted = draw(st.booleans())
        targets = [f"{{model: {t}, weight: 2}}" if weighted else t
                   for t in (ref(models) for _ in range(draw(st.integers(0 if rarely() else 1, 3))))]
        lines += [f"  {name}:", f"    targets: [{', '.join(targets)}]"]
        if (strategy := draw(STRATEGIES)) is not None:
            lines.append(f"    strategy: {strategy}")
        if fallbacks := [ref(aliases + models) for _ in range(draw(st.integers(0, 3)))]:
            lines.append(f"    fallbacks: [{', '.join(fallbacks)}]")
    return "\n".join(lines) + "\n"


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # in_tmp only chdirs
@given(configs())
def test_generated_configs_compile_or_fail_with_located_problems(text):
    Path(F).write_text(text, "utf-8")
    try:
        graph = load(F, env={"EMPTY": "", "SET": "sk-set"}).graph
    except ConfigError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.file == F
            assert problem.line >= 1 and problem.column >= 1
            assert problem.message.strip()
            assert problem.line <= text.count("\n") + 1
        return
    for name, route in graph.routes.items():
        assert route.tiers, name
        assert all(tier.candidates for tier in route.tiers)
        deployments = route.deployments()
        assert len(deployments) == len(set(deployments))
        assert all(d in graph.deployments for d in deployments)
