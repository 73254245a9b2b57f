"""Choosing the provider adapter from the settings."""

from __future__ import annotations

from service.config import Settings
from service.upstream.anthropic import AnthropicUpstream
from service.upstream.base import UpstreamAdapter
from service.upstream.openai import OpenAIUpstream

__all__ = ["make_adapter"]


def make_adapter(settings: Settings) -> UpstreamAdapter:
    """The adapter for ``settings.upstream_provider``: ``anthropic`` forwards frames as the
    provider sent them, ``openai`` translates Chat Completions to Anthropic-shaped frames."""
    if settings.upstream_provider == "anthropic":
        return AnthropicUpstream(settings)
    if settings.upstream_provider == "openai":
        return OpenAIUpstream(settings)
    raise NotImplementedError(f"upstream provider {settings.upstream_provider!r}")
