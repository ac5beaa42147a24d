"""Admission keys of the config language (SPEC §12): an app key's `limits`, `budget` and
`priority`, a model's `limits`, `queue` and `max_output_tokens`, compiled into the graph;
their defaults, the schema's refusals and the compiler's checks, each at its FILE:LINE:COL."""

from __future__ import annotations

import hashlib
from pathlib import Path
from textwrap import dedent, indent

import pytest

from gatewayd.daemon.config import schemadoc
from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.graph import PRIORITIES, Budget, Limits
from tests.compiling import F, compiled, errors, in_tmp  # noqa: F401 (in_tmp: autouse)

EXAMPLE = Path(__file__).resolve().parents[1] / "gateway.yaml.example"





# Six lines; the key entries `keyed()` appends start at line 7.
KEYS = """\
version: 1
providers:
  demo: {type: mock}
server:
  auth:
    keys:
"""

# Four lines; the models `modelled()` appends start at line 5.
MODELS = """\
version: 1
providers:
  demo: {type: mock}
models:
"""


def keyed(entries: str) -> str:
    """KEYS with `entries` (a YAML list, written at any indentation) under server.auth.keys."""
    return KEYS + indent(dedent(entries), "    ")


def modelled(models: str) -> str:
    """MODELS with `models` (a YAML mapping, written at any indentation) under models."""
    return MODELS + indent(dedent(models), "  ")


# --- app keys --------------------------------------------------------------------------------


def test_a_keys_limits_budget_and_priority_compile():
    digest = hashlib.sha256(b"ops-key").hexdigest()
    graph = compiled(keyed(f"""\
          - name: billing
            key: billing-key
            limits: {{rpm: 600, tpm: 200000, concurrency: 20}}
            budget: {{usd: 50, period: week}}
            priority: high
          - name: ops
            key_sha256: {digest}
            limits: {{tpm: 1000}}
            budget: {{usd: 0.5, period: day}}
            priority: low
        """))
    billing, ops = graph.server.keys
    assert billing.limits == Limits(rpm=600, tpm=200000, concurrency=20)
    assert billing.budget == Budget(usd=50.0, period="week")
    assert isinstance(billing.budget.usd, float)
    assert billing.priority == "high"
    assert billing.limited
    assert ops.hashed
    assert ops.limits == Limits(rpm=None, tpm=1000, concurrency=None)
    assert ops.budget == Budget(usd=0.5, period="day")
    assert ops.priority == "low"


def test_a_key_without_admission_keys_is_unlimited_and_normal():
    graph = compiled(keyed("""\
          - name: plain
            key: plain-key
          - name: spender
            key: spender-key
            budget: {usd: 10}
        """))
    plain, spender = graph.server.keys
    assert (plain.limits, plain.budget, plain.priority) == (None, None, "normal")
    assert not plain.limited
    assert spender.budget == Budget(usd=10.0, period="month")
    assert spender.limits is None and spender.limited
    assert schemadoc.default("appKey", "priority") == "normal" and "normal" in PRIORITIES
    assert schemadoc.default("appKey", "budget", "period") == "month"


def test_a_limit_written_as_a_whole_float_is_an_int():
    key = compiled(keyed("""\
          - name: k
            key: k-key
            limits: {rpm: 5.0}
        """)).server.keys[0]
    assert key.limits == Limits(rpm=5)
    assert isinstance(key.limits.rpm, int)


def test_renaming_a_key_keeps_its_identity_and_its_limits_change():
    before = compiled(keyed("- {name: a, key: same-key, limits: {rpm: 10}}\n")).server.keys[0]
    after = compiled(keyed("- {name: b, key: same-key, limits: {rpm: 20}}\n")).server.keys[0]
    assert before.identity == after.identity
    assert (before.limits.rpm, after.limits.rpm) == (10, 20)


# --- models ----------------------------------------------------------------------------------


def test_a_models_limits_queue_and_max_output_tokens_compile():
    graph = compiled(modelled("""\
          big:
            provider: demo
            model: echo
            limits: {rpm: 500, tpm: 200000, concurrency: 50}
            queue: {max_wait: 1m30s}
            max_output_tokens: 4096
          slots:
            provider: demo
            model: echo
            limits: {concurrency: 2}
            queue: {max_wait: 250ms}
        """))
    big, slots = graph.deployments["big"], graph.deployments["slots"]
    assert big.limits == Limits(rpm=500, tpm=200000, concurrency=50)
    assert big.queue_wait == 90.0
    assert big.max_output_tokens == 4096
    assert slots.limits == Limits(concurrency=2)
    assert slots.queue_wait == 0.25
    assert slots.max_output_tokens is None
    assert graph.warnings == ()


def test_a_model_without_admission_keys_has_none():
    graph = compiled(MODELS + "  m: {provider: demo, model: echo}\n")
    m = graph.deployments["m"]
    assert (m.limits, m.queue_wait, m.max_output_tokens) == (None, 0.0, None)
    assert schemadoc.default("model", "queue", "max_wait") == "0s"


def test_limits_are_not_part_of_a_deployments_identity():
    # the identity keys runtime counters: a changed limit applies to the counts already made
    a = compiled(MODELS + "  m: {provider: demo, model: echo, limits: {rpm: 1}}\n").deployments["m"]
    b = compiled(MODELS + "  m: {provider: demo, model: echo, limits: {rpm: 2}}\n").deployments["m"]
    assert a.identity == b.identity and a.limits != b.limits


# --- time zone -------------------------------------------------------------------------------


def test_the_graphs_time_zone_is_defaults_timezone():
    assert compiled(MODELS + "  m: {provider: demo, model: echo}\n").timezone == "UTC"
    graph = compiled("""\
        version: 1
        defaults: {timezone: Europe/Berlin}
        """)
    assert graph.timezone == "Europe/Berlin"


def test_a_bad_defaults_timezone_is_reported_without_windows():
    assert errors("""\
        version: 1
        defaults: {timezone: Mars/Olympus}
        server:
          auth:
            keys: [{name: k, key: k-key, budget: {usd: 1, period: day}}]
        """) == [f"{F}:2:22: unknown time zone 'Mars/Olympus'"]


# --- what the schema refuses -----------------------------------------------------------------


@pytest.mark.parametrize(("entry", "expected"), [
    ("limits: {rpm: 0}",
     "9:21: server.auth.keys[0].limits.rpm: 0 is less than the minimum of 1"),
    ("limits: {concurrency: 1.5}",
     "9:29: server.auth.keys[0].limits.concurrency must be a whole number, found a number"),
    ("limits: {rpm: 10, rps: 5}",
     "9:25: unknown key 'rps' in server.auth.keys[0].limits (did you mean 'rpm'?)"),
    ("budget: {usd: 5, period: year}",
     "9:32: server.auth.keys[0].budget.period: 'year' is not allowed; use one of: day, week, month"),
    ("budget: {usd: 0}",
     "9:21: server.auth.keys[0].budget.usd: 0 is less than or equal to the minimum of 0"),
    ("budget: {period: day}",
     "9:7: server.auth.keys[0].budget is missing the required key 'usd'"),
    ("priority: urgent",
     "9:17: server.auth.keys[0].priority: 'urgent' is not allowed; use one of: low, normal, high"),
    ("priority: hihg",
     "9:17: server.auth.keys[0].priority: 'hihg' is not allowed (did you mean 'high'?); "
     "use one of: low, normal, high"),
])
def test_the_schema_refuses_bad_key_admission_values(entry, expected):
    assert errors(keyed(f"""\
          - name: k
            key: k-key
            {entry}
        """)) == [f"{F}:{expected}"]


@pytest.mark.parametrize(("entry", "expected"), [
    ("limits: {tpm: 0}", "8:19: models.m.limits.tpm: 0 is less than the minimum of 1"),
    ("limits: {rpm: 10, burst: 5}",
     "8:23: unknown key 'burst' in models.m.limits; allowed keys: rpm, tpm, concurrency"),
    ("queue: {max_wait: soon}",
     "8:23: models.m.queue.max_wait: 'soon' is not valid: a duration is written like 250ms, 30s, 10m, 1h "
     "or 1m30s, or as a number of seconds"),
    ("queue: {max_wiat: 2s}",
     "8:13: unknown key 'max_wiat' in models.m.queue (did you mean 'max_wait'?)"),
    ("max_output_tokens: 0", "8:24: models.m.max_output_tokens: 0 is less than the minimum of 1"),
])
def test_the_schema_refuses_bad_model_admission_values(entry, expected):
    assert errors(modelled(f"""\
          m:
            provider: demo
            model: echo
            {entry}
        """)) == [f"{F}:{expected}"]


def test_key_and_model_limits_share_one_definition():
    schema = schemadoc.schema()
    assert schemadoc.definition("appKey")["properties"]["limits"]["$ref"] == "#/$defs/limits"
    assert schemadoc.definition("model")["properties"]["limits"]["$ref"] == "#/$defs/limits"
    assert set(schemadoc.property_names("limits")) == {"rpm", "tpm", "concurrency"}
    admission = [schemadoc.definition("appKey")["properties"][k] for k in ("limits", "budget", "priority")]
    admission += [schemadoc.definition("model")["properties"][k] for k in ("limits", "queue", "max_output_tokens")]
    admission += list(schema["$defs"]["limits"]["properties"].values())
    admission += list(schemadoc.definition("appKey")["properties"]["budget"]["properties"].values())
    admission.append(schemadoc.definition("model")["properties"]["queue"]["properties"]["max_wait"])
    assert all(node.get("description") for node in admission)


# --- what the compiler checks ----------------------------------------------------------------


def test_empty_limits_are_an_error_on_a_key_and_on_a_model():
    assert errors(keyed("""\
          - name: k
            key: k-key
            limits: {}
        """) + dedent("""\
        models:
          m:
            provider: demo
            model: echo
            limits: {}
        """)) == [
        f"{F}:9:15: limits of app key 'k' is empty: give rpm, tpm or concurrency, or remove limits",
        f"{F}:14:13: limits of model 'm' is empty: give rpm, tpm or concurrency, or remove limits",
    ]


def test_empty_limits_come_with_the_other_errors():
    # the model names no provider that exists: both of its problems are reported at once
    assert errors(modelled("""\
          m:
            provider: dmeo
            model: echo
            limits: {}
        """)) == [
        f"{F}:6:15: model 'm' names provider 'dmeo', which is not defined (did you mean 'demo'?)",
        f"{F}:8:13: limits of model 'm' is empty: give rpm, tpm or concurrency, or remove limits",
    ]


def test_a_queue_without_concurrency_is_a_warning():
    graph = compiled(modelled("""\
          counted:
            provider: demo
            model: echo
            limits: {rpm: 100}
            queue: {max_wait: 2s}
          bare:
            provider: demo
            model: echo
            queue:
              max_wait: 5s
          zero:
            provider: demo
            model: echo
            queue: {max_wait: 0s}
        """))
    assert graph.warnings == (
        f"{F}:9:13: model 'counted': queue.max_wait has no effect without limits.concurrency "
        "(requests wait only for a free slot)",
        f"{F}:14:7: model 'bare': queue.max_wait has no effect without limits.concurrency "
        "(requests wait only for a free slot)",
    )
    # the wait is compiled as written all the same
    assert graph.deployments["counted"].queue_wait == 2.0
    assert graph.deployments["bare"].queue_wait == 5.0


# --- the example -----------------------------------------------------------------------------


def test_the_example_compiles_with_its_model_limits():
    graph = load(str(EXAMPLE), env={}).graph
    model = graph.deployments["gpt-4o-mini"]
    assert model.limits == Limits(rpm=500, tpm=200000, concurrency=50)
    assert model.queue_wait == 2.0
    assert model.max_output_tokens == 4096
    assert graph.timezone == "UTC"
    assert not any("queue" in warning for warning in graph.warnings)


def uncommented_auth(text: str) -> str:
    """The example with its commented-out `auth:` block turned on."""
    lines = text.splitlines()
    start = lines.index("  # auth:                         # absent: no auth, so listen must stay loopback or unix")
    end = start
    while lines[end].startswith("  #"):
        lines[end] = "  " + lines[end][len("  # "):]
        end += 1
    assert end - start > 5
    return "\n".join(lines) + "\n"


def test_the_examples_commented_key_compiles_with_its_limits_budget_and_priority(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(uncommented_auth(EXAMPLE.read_text("utf-8")), "utf-8")
    graph = load(str(config), env={"BILLING_APP_KEY": "billing-secret"}).graph
    keys = {key.name: key for key in graph.server.keys}
    assert keys["billing-app"].limits == Limits(rpm=600, tpm=200000, concurrency=20)
    assert keys["billing-app"].budget == Budget(usd=50.0, period="month")
    assert keys["billing-app"].priority == "normal"
    assert (keys["ops"].limits, keys["ops"].budget, keys["ops"].priority) == (None, None, "normal")
