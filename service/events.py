"""Typed Anthropic Messages stream events (msgspec Structs, tagged on ``"type"``).

``decode_event`` runs once per upstream event on the relay hot path, so the common case is a
single typed ``msgspec`` decode. Anything the typed union does not know (a new event type, a
new content block type, a new delta type) falls back to :class:`UnknownEvent`,
:class:`OtherBlock` or :class:`OtherDelta`, which keep the raw JSON object, so a new server-side
feature never breaks the relay. Only invalid JSON or a *known* type with the wrong shape raises
:class:`EventDecodeError`.

Every struct exposes ``.type`` (a class constant equal to its wire tag; for the fallback
variants the type read from the raw object) so callers can switch on it like on the SDK's types.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeAlias

import msgspec

__all__ = [
    "CitationsDelta",
    "ContentBlock",
    "ContentBlockDelta",
    "ContentBlockStart",
    "ContentBlockStop",
    "Delta",
    "ErrorBody",
    "ErrorEvent",
    "EventDecodeError",
    "InputJsonDelta",
    "Message",
    "MessageDelta",
    "MessageDeltaBody",
    "MessageDeltaUsage",
    "MessageStart",
    "MessageStop",
    "OtherBlock",
    "OtherDelta",
    "Ping",
    "RedactedThinkingBlock",
    "RelayErrorInfo",
    "ServerToolUseBlock",
    "SignatureDelta",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ThinkingBlock",
    "ThinkingDelta",
    "ToolUseBlock",
    "UnknownEvent",
    "Usage",
    "decode_event",
    "decode_message",
    "encode_event_json",
    "encode_message_json",
    "event_to_dict",
    "message_to_dict",
]

# A content block index; negative indexes are a wrong shape, caught at decode time.
_Index = Annotated[int, msgspec.Meta(ge=0)]

# Wire tags of the fallback variants. They are only ever produced by our own fallback path
# (never sent by the API) and are replaced by the raw object when encoding.
_OTHER_BLOCK_TAG = "__relay_other_block__"
_OTHER_DELTA_TAG = "__relay_other_delta__"


class EventDecodeError(ValueError):
    """Invalid JSON, or a known event/block/delta type whose fields have the wrong shape."""


class _Struct(msgspec.Struct, frozen=True, kw_only=True):
    """Common options: immutable, since one decoded event is shared by relay, log and replay.

    Every subclass repeats ``frozen``/``kw_only``: ``kw_only`` only covers the fields a class
    itself defines, and type checkers only see ``frozen`` where it is written.
    """


# --- usage -------------------------------------------------------------------------------


# The API always sends input/output token counts, but its own documentation abbreviates them
# away in examples, and Anthropic-compatible servers copy those examples. Missing usage is not
# worth failing a stream over, so every count is optional and ``None`` stays off the wire.


class Usage(_Struct, omit_defaults=True, frozen=True, kw_only=True):
    """Token usage of a message; counts that are ``None`` are omitted from JSON."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDeltaUsage(_Struct, omit_defaults=True, frozen=True, kw_only=True):
    """Cumulative usage carried by ``message_delta`` (totals, not increments)."""

    output_tokens: int | None = None
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


# --- content blocks ----------------------------------------------------------------------


class _Block(_Struct, tag_field="type", omit_defaults=True, frozen=True, kw_only=True):
    """Base of content blocks (tag first in JSON, like the API)."""


class TextBlock(_Block, tag="text", frozen=True, kw_only=True):
    """A text block; ``citations`` stays ``None`` (and off the wire) unless the API sent any."""

    type: ClassVar[Literal["text"]] = "text"
    text: str
    citations: list[dict[str, Any]] | None = None


class ToolUseBlock(_Block, tag="tool_use", frozen=True, kw_only=True):
    """A client tool call; ``input`` is ``{}`` in ``content_block_start``, filled by deltas."""

    type: ClassVar[Literal["tool_use"]] = "tool_use"
    id: str
    name: str
    # No default: a zero-argument call must still encode ``"input": {}``.
    input: dict[str, Any]


class ServerToolUseBlock(_Block, tag="server_tool_use", frozen=True, kw_only=True):
    """A server-side tool call (web search, code execution); input streams like tool_use."""

    type: ClassVar[Literal["server_tool_use"]] = "server_tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(_Block, tag="thinking", frozen=True, kw_only=True):
    """Extended thinking; ``signature`` arrives as a ``signature_delta`` before the block stops."""

    type: ClassVar[Literal["thinking"]] = "thinking"
    thinking: str
    # content_block_start may omit the signature; it is never empty in a finished message.
    signature: str = ""


class RedactedThinkingBlock(_Block, tag="redacted_thinking", frozen=True, kw_only=True):
    """Encrypted thinking, complete in ``content_block_start`` (no deltas)."""

    type: ClassVar[Literal["redacted_thinking"]] = "redacted_thinking"
    data: str


class OtherBlock(_Block, tag=_OTHER_BLOCK_TAG, frozen=True, kw_only=True):
    """Any block type this module does not model; ``raw`` is the block object as received."""

    raw: dict[str, Any]

    @property
    def type(self) -> str:
        """The block's wire type, read from the raw object."""
        return str(self.raw.get("type", ""))


ContentBlock: TypeAlias = (
    TextBlock
    | ToolUseBlock
    | ServerToolUseBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | OtherBlock
)


# --- deltas ------------------------------------------------------------------------------


class _Delta(_Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of ``content_block_delta`` payloads."""


class TextDelta(_Delta, tag="text_delta", frozen=True, kw_only=True):
    """Text appended to a text block."""

    type: ClassVar[Literal["text_delta"]] = "text_delta"
    text: str


class InputJsonDelta(_Delta, tag="input_json_delta", frozen=True, kw_only=True):
    """A fragment of a tool block's input JSON; fragments only parse once concatenated."""

    type: ClassVar[Literal["input_json_delta"]] = "input_json_delta"
    partial_json: str


class ThinkingDelta(_Delta, tag="thinking_delta", frozen=True, kw_only=True):
    """Text appended to a thinking block."""

    type: ClassVar[Literal["thinking_delta"]] = "thinking_delta"
    thinking: str


class SignatureDelta(_Delta, tag="signature_delta", frozen=True, kw_only=True):
    """The thinking block's signature (sent once, just before the block stops)."""

    type: ClassVar[Literal["signature_delta"]] = "signature_delta"
    signature: str


class CitationsDelta(_Delta, tag="citations_delta", frozen=True, kw_only=True):
    """One citation added to a text block (kept as the raw citation object)."""

    type: ClassVar[Literal["citations_delta"]] = "citations_delta"
    citation: dict[str, Any]


class OtherDelta(_Delta, tag=_OTHER_DELTA_TAG, frozen=True, kw_only=True):
    """Any delta type this module does not model; ``raw`` is the delta object as received."""

    raw: dict[str, Any]

    @property
    def type(self) -> str:
        """The delta's wire type, read from the raw object."""
        return str(self.raw.get("type", ""))


Delta: TypeAlias = (
    TextDelta | InputJsonDelta | ThinkingDelta | SignatureDelta | CitationsDelta | OtherDelta
)


# --- message -----------------------------------------------------------------------------


class Message(_Struct, frozen=True, kw_only=True):
    """The Message object: ``message_start`` payload and the non-streaming response body.

    Not tagged (it never sits in a union), so ``type`` is a plain field and the JSON keeps the
    API's key order: id, type, role, model, content, stop_reason, stop_sequence, usage.
    """

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)


# --- events ------------------------------------------------------------------------------


class _Event(_Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of stream events; the tag is also the SSE ``event:`` name."""


class MessageStart(_Event, tag="message_start", frozen=True, kw_only=True):
    """First event: the message envelope with empty content and the input usage."""

    type: ClassVar[Literal["message_start"]] = "message_start"
    message: Message


class ContentBlockStart(_Event, tag="content_block_start", frozen=True, kw_only=True):
    """A content block opens at ``index``."""

    type: ClassVar[Literal["content_block_start"]] = "content_block_start"
    index: _Index
    content_block: ContentBlock


class ContentBlockDelta(_Event, tag="content_block_delta", frozen=True, kw_only=True):
    """An increment for the open block at ``index``."""

    type: ClassVar[Literal["content_block_delta"]] = "content_block_delta"
    index: _Index
    delta: Delta


class ContentBlockStop(_Event, tag="content_block_stop", frozen=True, kw_only=True):
    """The block at ``index`` is complete."""

    type: ClassVar[Literal["content_block_stop"]] = "content_block_stop"
    index: _Index


class MessageDeltaBody(_Struct, frozen=True, kw_only=True):
    """Top-level message changes; both fields are always on the wire (``null`` when unset)."""

    stop_reason: str | None = None
    stop_sequence: str | None = None


class MessageDelta(_Event, tag="message_delta", frozen=True, kw_only=True):
    """Stop reason and cumulative usage, just before ``message_stop``."""

    type: ClassVar[Literal["message_delta"]] = "message_delta"
    delta: MessageDeltaBody
    usage: MessageDeltaUsage = msgspec.field(default_factory=MessageDeltaUsage)


class MessageStop(_Event, tag="message_stop", frozen=True, kw_only=True):
    """Last event of a complete message."""

    type: ClassVar[Literal["message_stop"]] = "message_stop"


class Ping(_Event, tag="ping", frozen=True, kw_only=True):
    """Keepalive; carries nothing."""

    type: ClassVar[Literal["ping"]] = "ping"


class ErrorBody(_Struct, frozen=True, kw_only=True):
    """The Anthropic error object: ``type`` such as ``overloaded_error`` and a message."""

    type: str
    message: str


class RelayErrorInfo(_Struct, omit_defaults=True, frozen=True, kw_only=True):
    """The relay's addition to mid-stream errors (ignored by SDKs)."""

    retryable: bool = False
    partial: bool = False
    reason: str | None = None


class ErrorEvent(_Event, tag="error", omit_defaults=True, frozen=True, kw_only=True):
    """A mid-stream error; ``relay`` is present only on errors the relay itself emits."""

    type: ClassVar[Literal["error"]] = "error"
    error: ErrorBody
    relay: RelayErrorInfo | None = None
    request_id: str | None = None


class UnknownEvent(_Struct, frozen=True, kw_only=True):
    """Any event type this module does not model (e.g. the relay's ``relay_*`` events)."""

    type: str
    raw: dict[str, Any]


_KnownEvent: TypeAlias = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorEvent
)

StreamEvent: TypeAlias = _KnownEvent | UnknownEvent


# --- decoding ----------------------------------------------------------------------------

# Module-level decoders: building one compiles the type, so it must not happen per event.
_EVENT_DECODER = msgspec.json.Decoder(_KnownEvent)
_MESSAGE_DECODER = msgspec.json.Decoder(Message)
_ANY_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


def _tags(*types: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(str(t.__struct_config__.tag) for t in types)


_EVENT_TAGS = _tags(
    MessageStart,
    ContentBlockStart,
    ContentBlockDelta,
    ContentBlockStop,
    MessageDelta,
    MessageStop,
    Ping,
    ErrorEvent,
)
_BLOCK_TAGS = _tags(
    TextBlock, ToolUseBlock, ServerToolUseBlock, ThinkingBlock, RedactedThinkingBlock
)
_DELTA_TAGS = _tags(TextDelta, InputJsonDelta, ThinkingDelta, SignatureDelta, CitationsDelta)


def _excerpt(data: bytes | str, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = _ANY_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"{what} is not valid JSON ({exc}): {_excerpt(data)}") from None
    if not isinstance(obj, dict):
        raise EventDecodeError(f"{what} must be a JSON object: {_excerpt(data)}")
    return obj


def _wrap_unknown(obj: Any, known: frozenset[str], tag: str) -> Any:
    """Wrap an object whose string ``type`` is not in ``known`` as a fallback variant."""
    if isinstance(obj, dict):
        kind = obj.get("type")
        if isinstance(kind, str) and kind not in known:
            return {"type": tag, "raw": obj}
    return obj


def _wrap_blocks(message: Any) -> None:
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        message["content"] = [
            _wrap_unknown(b, _BLOCK_TAGS, _OTHER_BLOCK_TAG) for b in message["content"]
        ]


def _convert(obj: dict[str, Any], target: Any, what: str) -> Any:
    try:
        return msgspec.convert(obj, target)
    except msgspec.ValidationError as exc:
        raise EventDecodeError(f"invalid {what}: {exc}") from None


def _decode_slow(data: bytes | str) -> StreamEvent:
    """Fallback when the typed decode failed: unknown tags, or an error worth a clear message."""
    obj = _parse_object(data, "stream event")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise EventDecodeError(f"stream event has no string 'type': {_excerpt(data)}")
    if kind not in _EVENT_TAGS:
        return UnknownEvent(type=kind, raw=obj)
    if kind == "content_block_start":
        obj["content_block"] = _wrap_unknown(
            obj.get("content_block"), _BLOCK_TAGS, _OTHER_BLOCK_TAG
        )
    elif kind == "content_block_delta":
        obj["delta"] = _wrap_unknown(obj.get("delta"), _DELTA_TAGS, _OTHER_DELTA_TAG)
    elif kind == "message_start":
        _wrap_blocks(obj.get("message"))
    event: StreamEvent = _convert(obj, _KnownEvent, f"{kind} event")
    return event


def decode_event(data: bytes | str) -> StreamEvent:
    """Decode one SSE ``data`` payload into a typed event.

    Unknown event, block and delta types become :class:`UnknownEvent`, :class:`OtherBlock`
    and :class:`OtherDelta`. Raises :class:`EventDecodeError` for invalid JSON or a known type
    with a wrong shape (the message names the field, e.g. ``at `$.delta```).
    """
    try:
        event: StreamEvent = _EVENT_DECODER.decode(data)
    except msgspec.DecodeError:
        # ValidationError is a DecodeError too; the slow path sorts out which one it was.
        return _decode_slow(data)
    return event


def decode_message(data: bytes | str) -> Message:
    """Decode a non-streaming Message body, with the same unknown-block fallback."""
    try:
        message: Message = _MESSAGE_DECODER.decode(data)
    except msgspec.DecodeError:
        obj = _parse_object(data, "message")
        _wrap_blocks(obj)
        message = _convert(obj, Message, "message")
    return message


# --- encoding ----------------------------------------------------------------------------


def _block_to_dict(block: ContentBlock) -> dict[str, Any]:
    if isinstance(block, OtherBlock):
        return block.raw
    out: dict[str, Any] = msgspec.to_builtins(block)
    return out


def message_to_dict(message: Message) -> dict[str, Any]:
    """The Message as the API's JSON object (unknown blocks as received)."""
    out: dict[str, Any] = msgspec.to_builtins(message)
    out["content"] = [_block_to_dict(b) for b in message.content]
    return out


def encode_message_json(message: Message) -> bytes:
    """The non-streaming response body for ``message``."""
    if any(isinstance(b, OtherBlock) for b in message.content):
        return _ENCODER.encode(message_to_dict(message))
    return _ENCODER.encode(message)


def _has_raw_part(event: StreamEvent) -> bool:
    """Whether encoding needs the slow path (a fallback variant must become its raw object)."""
    if isinstance(event, UnknownEvent):
        return True
    if isinstance(event, ContentBlockStart):
        return isinstance(event.content_block, OtherBlock)
    if isinstance(event, ContentBlockDelta):
        return isinstance(event.delta, OtherDelta)
    if isinstance(event, MessageStart):
        return any(isinstance(b, OtherBlock) for b in event.message.content)
    return False


def event_to_dict(event: StreamEvent) -> dict[str, Any]:
    """The event as its API JSON object (fallback variants as their raw objects)."""
    if isinstance(event, UnknownEvent):
        return event.raw
    out: dict[str, Any] = msgspec.to_builtins(event)
    if isinstance(event, ContentBlockStart):
        out["content_block"] = _block_to_dict(event.content_block)
    elif isinstance(event, ContentBlockDelta) and isinstance(event.delta, OtherDelta):
        out["delta"] = event.delta.raw
    elif isinstance(event, MessageStart):
        out["message"] = message_to_dict(event.message)
    return out


def encode_event_json(event: StreamEvent) -> bytes:
    """The event's SSE ``data`` payload (compact JSON)."""
    if _has_raw_part(event):
        return _ENCODER.encode(event_to_dict(event))
    return _ENCODER.encode(event)
