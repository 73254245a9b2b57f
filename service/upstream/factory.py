"""Choosing the provider adapter from the settings."""

from __future__ import annotations

from service.config import Settings
from service.upstream.anthropic import AnthropicUpstream
from service.upstream.base import UpstreamAdapter

__all__ = ["make_adapter"]


def make_adapter(settings: Settings) -> UpstreamAdapter:
    """The adapter for ``settings.upstream_provider``."""
    if settings.upstream_provider == "anthropic":
        return AnthropicUpstream(settings)
    raise NotImplementedError(f"upstream provider {settings.upstream_provider!r}")
