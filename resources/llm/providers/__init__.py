"""Wire formats, one file per provider: build the request body, parse replies, usage, headers and errors.
No retries, limits or money here: that is written once in runner.py."""

from resources.llm.providers.anthropic_messages import AnthropicMessages
from resources.llm.providers.base import ParsedReply, ProviderAdapter, WireRequest
from resources.llm.providers.openai_chat import OpenAIChat


def adapter_for(provider: str) -> ProviderAdapter:
    """The adapter for a provider name; unknown names are a configuration error."""
    if provider == "openai":
        return OpenAIChat()
    if provider == "anthropic":
        return AnthropicMessages()
    raise ValueError(
        f"unknown provider '{provider}'; use 'openai' (any OpenAI-compatible server) or 'anthropic'"
    )


__all__ = ["ParsedReply", "ProviderAdapter", "WireRequest", "adapter_for", "OpenAIChat", "AnthropicMessages"]
