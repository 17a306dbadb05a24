"""Wire formats, one file per provider: build the request body, parse replies, usage, headers and errors.
No retries, limits or money here: that is written once in runner.py. `dialects.py` says how OpenAI-compatible
servers differ (output-cap parameter, structured-output mode, concurrency)."""

from resources.llm.providers.anthropic_messages import AnthropicMessages
from resources.llm.providers.base import ParsedReply, ProviderAdapter, WireRequest
from resources.llm.providers.dialects import DIALECTS, Dialect, dialect_for
from resources.llm.providers.openai_chat import OpenAIChat


def adapter_for(provider: str, dialect: str | None = None) -> ProviderAdapter:
    """The adapter for a provider name and server dialect; unknown names are a configuration error."""
    if provider == "openai":
        return OpenAIChat(dialect_for(provider, dialect))
    if provider == "anthropic":
        dialect_for(provider, dialect)
        return AnthropicMessages()
    raise ValueError(
        f"unknown provider '{provider}'; use 'openai' (any OpenAI-compatible server) or 'anthropic'"
    )


__all__ = [
    "DIALECTS",
    "AnthropicMessages",
    "Dialect",
    "OpenAIChat",
    "ParsedReply",
    "ProviderAdapter",
    "WireRequest",
    "adapter_for",
    "dialect_for",
]
