"""Provider adapters: turn a provider's HTTP stream into forwardable Anthropic-shaped frames."""

from __future__ import annotations

from service.upstream.base import FrameDecoder, UpstreamAdapter, UpstreamFrame, strip_terminator

__all__ = ["FrameDecoder", "UpstreamAdapter", "UpstreamFrame", "strip_terminator"]
