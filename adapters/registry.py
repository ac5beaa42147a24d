"""Which adapter class speaks which provider type."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gatewayd.adapters.anthropic import AnthropicAdapter
from gatewayd.adapters.base import Adapter
from gatewayd.adapters.mock import MockAdapter
from gatewayd.adapters.ollama import OllamaAdapter
from gatewayd.adapters.openai import AzureOpenAIAdapter, OpenAIAdapter

if TYPE_CHECKING:
    from gatewayd.daemon.core.graph import Provider

ADAPTER_TYPES = {
    "openai": OpenAIAdapter,
    "azure-openai": AzureOpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "ollama": OllamaAdapter,
    "mock": MockAdapter,
}


def create_adapter(provider: Provider) -> Adapter:
    return ADAPTER_TYPES[provider.type](provider)
