"""Which provider types exist: each type's module declares its `ProviderType` (its adapter,
default base_url and the keys only it takes), and this table lists them. A new provider type is
its module, one entry here and its keys in schema/gateway.schema.json; the compiler and the
adapter pool read everything else from here."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

from gatewayd.adapters.anthropic import ANTHROPIC
from gatewayd.adapters.base import Adapter, ProviderType
from gatewayd.adapters.bedrock import BEDROCK
from gatewayd.adapters.gemini import GEMINI
from gatewayd.adapters.mock import MOCK
from gatewayd.adapters.ollama import OLLAMA
from gatewayd.adapters.openai import AZURE_OPENAI, OPENAI

if TYPE_CHECKING:
    from gatewayd.daemon.core.graph import Provider

PROVIDER_TYPES: Mapping[str, ProviderType] = MappingProxyType(
    {kind.name: kind for kind in (OPENAI, AZURE_OPENAI, ANTHROPIC, OLLAMA, GEMINI, BEDROCK, MOCK)})

# each type-only key and the types that take it: given to any other type, it is a config error
TYPE_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    key: tuple(kind.name for kind in PROVIDER_TYPES.values() if key in kind.keys)
    for key in dict.fromkeys(key for kind in PROVIDER_TYPES.values() for key in kind.keys)
})


def create_adapter(provider: Provider) -> Adapter:
    return PROVIDER_TYPES[provider.type].adapter(provider)
