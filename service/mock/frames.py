"""Anthropic Messages stream events as plain dicts, and their SSE frames.

The mock writes JSON with msgspec and frames with :func:`service.sse.encode_event`; it does not
depend on the relay's typed events so the two can evolve apart.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.sse import encode_event

__all__ = [
    "MALFORMED_FRAME",
    "Payload",
    "content_block_delta",
    "content_block_start",
    "content_block_stop",
    "encode_frame",
    "error_body",
    "message_delta",
    "message_start",
    "message_stop",
    "ping",
]

Payload = dict[str, Any]

_ENCODER = msgspec.json.Encoder()

# A content delta cut off in the middle of its JSON, as a broken provider or proxy would send.
MALFORMED_FRAME = (
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
    b'"delta": {"type": "text_delta", "text": " trunc\n\n'
)


def encode_frame(payload: Payload) -> bytes:
    """One SSE frame whose ``event:`` name is the payload's ``type``."""
    return encode_event(_ENCODER.encode(payload).decode(), event=payload["type"])


def message_start(message_id: str, model: str, input_tokens: int) -> Payload:
    """``message_start``: an empty assistant message; ``output_tokens`` is 1, as Anthropic's."""
    return {
        "type": "message_start",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        },
    }


def ping() -> Payload:
    """Anthropic's keepalive event."""
    return {"type": "ping"}


def content_block_start(index: int, block: Payload) -> Payload:
    """Open content block ``index`` with its empty initial shape."""
    return {"type": "content_block_start", "index": index, "content_block": block}


def content_block_delta(index: int, delta: Payload) -> Payload:
    """A ``text_delta``, ``input_json_delta``, ``thinking_delta`` or ``signature_delta``."""
    return {"type": "content_block_delta", "index": index, "delta": delta}


def content_block_stop(index: int) -> Payload:
    """Close content block ``index``."""
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str, output_tokens: int) -> Payload:
    """Final stop reason and the cumulative output token count."""
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }


def message_stop() -> Payload:
    """The last event of a complete stream."""
    return {"type": "message_stop"}


def error_body(error_type: str, message: str) -> Payload:
    """Anthropic's error shape, as a response body or the data of an ``event: error``."""
    return {"type": "error", "error": {"type": error_type, "message": message}}
