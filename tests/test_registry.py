"""The registry of provider types: what each type's module declares (adapter, default base_url,
the keys only it takes) is what the schema allows and what the compiler reads, so that a new
provider type is its module, its registry entry and its schema keys, and nothing else."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent, indent

import pytest

from gatewayd.adapters.registry import PROVIDER_TYPES, TYPE_KEYS, create_adapter
from gatewayd.daemon.config import schemadoc
from gatewayd.daemon.config.load import load
from gatewayd.daemon.config.units import seconds

# the keys the compiler reads for every provider, whatever its type
COMMON_KEYS = {"type", "base_url", "api_key", "api_key_file", "headers", "max_connections",
               "timeouts", "retry", "cooldown"}


def test_the_schema_and_the_registry_name_the_same_provider_types():
    assert list(PROVIDER_TYPES) == schemadoc.definition("provider")["properties"]["type"]["enum"]


def test_every_provider_key_of_the_schema_is_common_or_declared_by_the_types_that_take_it():
    properties = schemadoc.definition("provider")["properties"]
    assert set(properties) == COMMON_KEYS | set(TYPE_KEYS)
    for key, types in TYPE_KEYS.items():
        # the schema's description says which type the key belongs to, as the compiler's error does
        assert properties[key]["description"].startswith(f"{' and '.join(types)} only:"), key


def test_each_type_declares_its_default_base_url_or_an_example_of_one():
    for kind in PROVIDER_TYPES.values():
        assert (kind.base_url is None) == (kind.base_url_example is not None), kind.name
    assert PROVIDER_TYPES["openai"].base_url.endswith("/v1")  # OpenAI's root includes /v1; the others' do not
    assert PROVIDER_TYPES["anthropic"].base_url == "https://api.anthropic.com"


def compiled_providers(tmp_path: Path, providers: str) -> dict:
    path = tmp_path / "gateway.yaml"
    path.write_text("version: 1\nproviders:\n" + indent(dedent(providers), "  "))
    return load(str(path), env={}).graph.providers


def test_the_compiler_reads_each_type_key_as_its_type_declares(tmp_path):
    providers = compiled_providers(tmp_path, """\
        drill: {type: mock, latency: 250ms, fail_rate: 1, reply: hi}
        quiet: {type: mock}
        azure: {type: azure-openai, base_url: "https://r.openai.azure.com"}
        claude: {type: anthropic, anthropic_version: "2024-01-01"}
        """)
    assert dict(providers["drill"].options) == {"reply": "hi", "latency": 0.25, "fail_rate": 1.0}
    assert type(providers["drill"].options["fail_rate"]) is float
    # left out: a key with `schema_default` gets the schema's, any other stays out for the adapter
    assert dict(providers["quiet"].options) == {
        "reply": schemadoc.default("provider", "reply"),
        "latency": seconds(schemadoc.default("provider", "latency")),
        "fail_rate": float(schemadoc.default("provider", "fail_rate")),
    }
    assert dict(providers["azure"].options) == {}
    assert dict(providers["claude"].options) == {"anthropic_version": "2024-01-01"}
    assert {name: p.base_url for name, p in providers.items()} == {
        "drill": "mock://local", "quiet": "mock://local", "azure": "https://r.openai.azure.com",
        "claude": "https://api.anthropic.com"}


@pytest.mark.parametrize("type_", list(PROVIDER_TYPES))
def test_create_adapter_builds_the_adapter_its_type_declares(tmp_path, type_):
    base_url = "" if PROVIDER_TYPES[type_].base_url else ", base_url: 'https://r.openai.azure.com'"
    provider = compiled_providers(tmp_path, f"p: {{type: {type_}{base_url}}}\n")["p"]
    adapter = create_adapter(provider)
    assert type(adapter) is PROVIDER_TYPES[type_].adapter
    assert adapter.provider is provider
