"""The response cache in the config language (SPEC §13): the top-level `cache:` section and an
alias's `cache`, compiled into the graph with the schema's defaults; each route's plan id, which
decides what a reload keeps; the schema's refusals and the compiler's checks, each at its
FILE:LINE:COL."""

from __future__ import annotations

import re
from pathlib import Path
from textwrap import dedent

import pytest

from gatewayd.daemon.config import schemadoc
from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.graph import CacheSettings, SemanticCache
from tests.compiling import F, compiled, errors, in_tmp  # noqa: F401 (in_tmp: autouse)

EXAMPLE = Path(__file__).resolve().parents[1] / "gateway.yaml.example"
MiB = 1024 * 1024





# Ten lines: aliases `chat` (line 8) and `embed` (line 9), then `cache:` at line 10;
# what `cached()` appends to it starts at line 11.
BASE = """\
version: 1
providers:
  demo: {type: mock}
models:
  echo: {provider: demo, model: echo}
  vectors: {provider: demo, model: vectors}
aliases:
  chat: {targets: [echo], cache: CHAT}
  embed: {targets: [vectors], cache: EMBED}
cache:
"""


def cached(section: str = "", chat: str = "exact", embed: str = "off") -> str:
    """BASE with the aliases' cache modes and `section` (YAML under `cache:`, any indentation)."""
    text = BASE.replace("CHAT", chat).replace("EMBED", embed)
    return text + re.sub(r"(?m)^(?=.)", "  ", dedent(section)) if section else text + "  {}\n"


# --- what compiles ---------------------------------------------------------------------------


def test_the_cache_section_compiles():
    graph = compiled(cached("""\
        ttl: 1m30s
        max_entries: 500
        max_bytes: 4MiB
        scope: shared
        semantic:
          embeddings: embed
          threshold: 0.9
          max_entries: 100
        """, chat="semantic"))
    assert graph.cache == CacheSettings(ttl=90.0, max_entries=500, max_bytes=4 * MiB, scope="shared",
                                        semantic=SemanticCache(embeddings="embed", threshold=0.9, max_entries=100))
    assert isinstance(graph.cache.semantic.threshold, float)
    assert (graph.routes["chat"].cache, graph.routes["embed"].cache) == ("semantic", "off")
    assert graph.routes["echo"].cache == "off"  # a model's own route is never cached


def test_an_empty_cache_section_takes_the_schemas_defaults():
    graph = compiled(cached())
    assert graph.cache == CacheSettings(ttl=600.0, max_entries=10000, max_bytes=256 * MiB, scope="key",
                                        semantic=None)
    assert graph.routes["chat"].cache == "exact"
    assert [schemadoc.default("cache", key) for key in ("ttl", "max_entries", "max_bytes", "scope")] == [
        "10m", 10000, "256MiB", "key"]


def test_semantic_with_only_its_embeddings_takes_the_schemas_defaults():
    graph = compiled(cached("semantic: {embeddings: vectors}\n"))
    assert graph.cache.semantic == SemanticCache(embeddings="vectors", threshold=0.95, max_entries=2000)
    assert schemadoc.default("cache", "semantic", "threshold") == 0.95
    assert schemadoc.default("cache", "semantic", "max_entries") == 2000


def test_without_a_cache_section_there_is_no_cache_and_no_alias_is_cached():
    graph = compiled("""\
        version: 1
        providers:
          demo: {type: mock}
        models:
          echo: {provider: demo, model: echo}
        aliases:
          chat: {targets: [echo]}
        """)
    assert graph.cache is None
    assert graph.routes["chat"].cache == "off"
    assert schemadoc.default("alias", "cache") == "off"


@pytest.mark.parametrize("written", ["off", "'off'", "false"])
def test_a_bare_off_read_by_yaml_as_false_is_off(written):
    assert compiled(cached(chat=written)).routes["chat"].cache == "off"


# --- plan ids --------------------------------------------------------------------------------

PLANS = """\
version: 1
providers:
  demo: {type: mock}
  other: {type: mock, reply: other}
models:
  m1: {provider: demo, model: one}
  m2: {provider: demo, model: two}
  m3: {provider: demo, model: three}
aliases:
  chat:
    targets: [{model: m1, weight: 2}, {model: m2, weight: 1}]
    strategy: weighted
    fallbacks: [tail]
  tail: {targets: [m3]}
  lone: {targets: [m3]}
"""


def plan_ids(text: str) -> dict[str, str]:
    return dict(compiled(text).plan_ids)


def test_plan_ids_are_short_digests_stable_across_compiles():
    first, second = plan_ids(PLANS), plan_ids(PLANS)
    assert first == second
    assert set(first) == {"m1", "m2", "m3", "chat", "tail", "lone"}  # every route, models too
    assert all(re.fullmatch(r"[0-9a-f]{16}", plan_id) for plan_id in first.values())
    assert first["tail"] == first["lone"]  # the same plan under two names


@pytest.mark.parametrize(("old", "new", "changed"), [
    ("{model: m2, weight: 1}]", "{model: m3, weight: 1}]", {"chat"}),  # a target
    ("{model: m2, weight: 1}", "{model: m2, weight: 3}", {"chat"}),  # a weight
    ("strategy: weighted", "strategy: round-robin", {"chat"}),  # a strategy
    ("fallbacks: [tail]", "fallbacks: [lone]", set()),  # another alias with the same plan
    ("fallbacks: [tail]", "fallbacks: [m2]", {"chat"}),  # a fallback
    ("m3: {provider: demo, model: three}", "m3: {provider: demo, model: four}",
     {"m3", "chat", "tail", "lone"}),  # a deployment's upstream model
    ("m3: {provider: demo, model: three}", "m3: {provider: other, model: three}",
     {"m3", "chat", "tail", "lone"}),  # a deployment's provider, with another reply
    ("  other: {type: mock, reply: other}", "  other: {type: mock, reply: changed}",
     set()),  # a provider no plan uses
    ("  demo: {type: mock}", "  demo: {type: mock, reply: changed}",
     {"m1", "m2", "m3", "chat", "tail", "lone"}),  # what a mock answers
    ("  demo: {type: mock}", "  demo: {type: mock, max_connections: 5}", set()),  # not what answers
    ("m1: {provider: demo, model: one}", "m1: {provider: demo, model: one, limits: {rpm: 5}}",
     set()),  # not what answers
    ("  lone: {targets: [m3]}\n", "  lone: {targets: [m3], cache: exact}\ncache: {}\n", set()),
])
def test_a_plan_id_changes_with_the_plan_and_only_for_routes_holding_it(old, new, changed):
    before = plan_ids(PLANS)
    assert PLANS.count(old) == 1
    after = plan_ids(PLANS.replace(old, new))
    assert {name for name in before if before[name] != after[name]} == changed


def test_renaming_a_model_keeps_the_plan_id_of_the_aliases_using_it():
    renamed = PLANS.replace("m3", "m9")
    assert plan_ids(renamed)["tail"] == plan_ids(PLANS)["tail"]


# --- what the compiler checks ----------------------------------------------------------------


def test_a_cached_alias_needs_the_cache_section():
    assert errors("""\
        version: 1
        providers:
          demo: {type: mock}
        models:
          echo: {provider: demo, model: echo}
        aliases:
          chat: {targets: [echo], cache: exact}
          plain: {targets: [echo], cache: off}
          near:
            targets: [echo]
            cache: semantic
        """) == [
        f"{F}:7:34: alias 'chat' has cache: exact, but there is no cache section: "
        "add a top-level `cache:` section (every key of it has a default)",
        f"{F}:11:12: alias 'near' has cache: semantic, but there is no cache section: "
        "add a top-level `cache:` section (every key of it has a default)",
    ]


def test_a_semantic_alias_needs_cache_semantic():
    assert errors(cached("ttl: 5m\n", chat="semantic")) == [
        f"{F}:8:34: alias 'chat' has cache: semantic, but cache.semantic is not set: "
        "add cache.semantic with the embeddings route to use, or use cache: exact",
    ]


def test_the_embeddings_route_must_exist():
    assert errors(cached("""\
        semantic:
          embeddings: embde
        """)) == [f"{F}:12:17: cache.semantic.embeddings 'embde' is neither a model nor an alias "
                  "(did you mean 'embed'?)"]
    assert errors(cached("semantic: {embeddings: nowhere}\n")) == [
        f"{F}:11:26: cache.semantic.embeddings 'nowhere' is neither a model nor an alias"]


@pytest.mark.parametrize("mode", ["exact", "semantic"])
def test_the_embeddings_route_must_not_be_cached(mode):
    assert errors(cached("semantic: {embeddings: embed}\n", embed=mode)) == [
        f"{F}:11:26: cache.semantic.embeddings names alias 'embed', which has cache: {mode}; "
        "the route that embeds requests must not be cached (set its cache to off)"]


def test_the_caches_problems_come_with_the_others():
    assert errors(cached("semantic: {embeddings: embed}\n", embed="exact").replace(
        "targets: [echo]", "targets: [ecoh]")) == [
        f"{F}:8:20: target 'ecoh' is not a defined model (did you mean 'echo'?)",
        f"{F}:11:26: cache.semantic.embeddings names alias 'embed', which has cache: exact; "
        "the route that embeds requests must not be cached (set its cache to off)",
    ]


# --- what the schema refuses -----------------------------------------------------------------


@pytest.mark.parametrize(("section", "expected"), [
    ("semantic: {embeddings: embed, threshold: 0}",
     "11:44: cache.semantic.threshold: 0 is less than or equal to the minimum of 0"),
    ("semantic: {embeddings: embed, threshold: 1.5}",
     "11:44: cache.semantic.threshold: 1.5 is greater than the maximum of 1"),
    ("scope: other", "11:10: cache.scope: 'other' is not allowed; use one of: key, shared"),
    ("scope: shard", "11:10: cache.scope: 'shard' is not allowed (did you mean 'shared'?); use one of: key, shared"),
    ("max_entries: 0", "11:16: cache.max_entries: 0 is less than the minimum of 1"),
    ("ttl: soon", "11:8: cache.ttl: 'soon' is not valid: a duration is written like 250ms, 30s, 10m, 1h "
     "or 1m30s, or as a number of seconds"),
    ("max_bytes: lots", "11:14: cache.max_bytes: 'lots' is not valid: a size is written like 512KiB, 8MiB "
     "or 1GiB, or as a number of bytes"),
    ("tll: 5m", "11:3: unknown key 'tll' in cache (did you mean 'ttl'?)"),
    ("semantic: {threshold: 0.9}", "11:3: cache.semantic is missing the required key 'embeddings'"),
    ("semantic: {embeddings: embed, model: x}",
     "11:33: unknown key 'model' in cache.semantic; allowed keys: embeddings, threshold, max_entries"),
])
def test_the_schema_refuses_bad_cache_values(section, expected):
    # the refused section is set aside: the alias asking for it is not reported too
    chat = "semantic" if "semantic" in section else "exact"
    assert errors(cached(section + "\n", chat=chat)) == [f"{F}:{expected}"]


@pytest.mark.parametrize(("mode", "expected"), [
    ("other", "'other' is not allowed; use one of: off, exact, semantic, False"),
    ("exakt", "'exakt' is not allowed (did you mean 'exact'?); use one of: off, exact, semantic, False"),
    ("on", "'True' is not allowed; use one of: off, exact, semantic, False"),
])
def test_the_schema_refuses_a_bad_alias_cache(mode, expected):
    assert errors(cached(chat=mode)) == [f"{F}:8:34: aliases.chat.cache: {expected}"]


def test_every_cache_key_is_described():
    top = schemadoc.schema()["properties"]["cache"]
    assert top == {"$ref": "#/$defs/cache"}
    nodes = [schemadoc.definition("cache"), schemadoc.definition("alias")["properties"]["cache"]]
    nodes += schemadoc.definition("cache")["properties"].values()
    nodes += schemadoc.definition("cache")["properties"]["semantic"]["properties"].values()
    assert all(node.get("description") for node in nodes)
    assert schemadoc.definition("cache")["properties"]["ttl"]["$ref"] == "#/$defs/duration"
    assert schemadoc.definition("cache")["properties"]["max_bytes"]["$ref"] == "#/$defs/size"


# --- the example -----------------------------------------------------------------------------


def test_the_example_caches_one_alias():
    graph = load(str(EXAMPLE), env={}).graph
    assert graph.cache == CacheSettings(ttl=600.0, max_entries=10000, max_bytes=256 * MiB, scope="key")
    assert {name: graph.routes[name].cache for name in graph.aliases} == {
        "chat": "off", "cheap": "off", "embeddings": "off", "faq": "exact"}
    assert "echo" in graph.routes["faq"].deployments()  # answers without keys


def test_the_examples_commented_semantic_block_compiles(tmp_path):
    lines = EXAMPLE.read_text("utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # semantic:"))
    end = start
    while end < len(lines) and lines[end].startswith("  #"):
        lines[end] = "  " + lines[end][len("  # "):]
        end += 1
    config = tmp_path / "semantic.yaml"
    config.write_text("\n".join(lines).replace("cache: exact ", "cache: semantic") + "\n", "utf-8")
    graph = load(str(config), env={}).graph
    assert graph.cache.semantic == SemanticCache(embeddings="embeddings", threshold=0.95, max_entries=2000)
    assert graph.routes["faq"].cache == "semantic"


@pytest.mark.parametrize("setting", ["ttl: 0s", "max_bytes: 0"])
def test_a_cache_that_keeps_nothing_is_refused(setting):
    problems = errors(f"""\
        version: 1
        providers: {{demo: {{type: mock}}}}
        models: {{echo: {{provider: demo, model: echo}}}}
        aliases: {{chat: {{targets: [echo], cache: exact}}}}
        cache:
          {setting}
        """)
    key = setting.split(":")[0]
    value_column = 3 + len(key) + 2  # the message points at the value
    assert len(problems) == 1 and problems[0].startswith(f"{F}:6:{value_column}: cache.{key} must be more than 0")
