"""A pure fold of stream events into a message snapshot.

Shared by the relay (non-streaming responses, tool-call logging) and the Python client.

Design rule for tool input: ``input_json_delta`` fragments are kept in a list, concatenated and
parsed exactly once, at the block's ``content_block_stop``, through the module-level
:func:`parse_tool_input`. Nothing parses partial JSON. An empty concatenation is ``{}``.

Text and thinking are kept as lists of fragments and joined lazily, so a long stream costs
linear time however often the snapshot is read between deltas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from service.events import (
    CitationsDelta,
    ContentBlock,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    Delta,
    ErrorEvent,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    OtherBlock,
    OtherDelta,
    Ping,
    ServerToolUseBlock,
    SignatureDelta,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    UnknownEvent,
    Usage,
)

__all__ = [
    "AccumulationError",
    "MessageAccumulator",
    "ToolInputError",
    "ToolInputParsed",
    "accumulate",
    "parse_tool_input",
]


class AccumulationError(ValueError):
    """Events out of order or inconsistent with each other (the message names event and index)."""


class ToolInputError(AccumulationError):
    """A tool block's concatenated input is not a JSON object."""


@dataclass(frozen=True, slots=True)
class ToolInputParsed:
    """Evidence of the one parse of one tool block's input, reported at its stop."""

    index: int
    """Content block index of the tool block."""
    tool_name: str
    """Tool name from ``content_block_start``."""
    tool_id: str
    """Tool use id (``toolu_...`` / ``srvtoolu_...``)."""
    fragments: int
    """Number of ``input_json_delta`` events (empty fragments included)."""
    bytes: int
    """UTF-8 size of the concatenated input JSON."""
    parse_attempts: int
    """Always 1 by construction; logged as evidence that nothing parsed partial input."""
    input: dict[str, Any]
    """The parsed input object."""


def parse_tool_input(fragments: Sequence[str]) -> dict[str, Any]:
    """THE one parse of a tool block's input: join, ``""`` becomes ``{}``, else a JSON object.

    Raises :class:`ToolInputError` when the text is not JSON or not an object.
    """
    text = "".join(fragments)
    if not text:
        return {}
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ToolInputError(f"tool input is not valid JSON ({exc}): {_excerpt(text)}") from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise ToolInputError(f"tool input must be a JSON object, got {kind}: {_excerpt(text)}")
    return value


def _excerpt(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- per-block state ---------------------------------------------------------------------


class _Slot:
    """State of one content block. ``apply`` returns False when the delta does not fit."""

    __slots__ = ("_cache", "open")

    def __init__(self) -> None:
        self.open = True
        self._cache: ContentBlock | None = None

    @property
    def kind(self) -> str:
        """The block's wire type, for error messages."""
        return self.snapshot().type

    def apply(self, delta: Delta) -> bool:
        raise NotImplementedError

    def build(self) -> ContentBlock:
        raise NotImplementedError

    def snapshot(self) -> ContentBlock:
        """The block so far, rebuilt only after a change."""
        if self._cache is None:
            self._cache = self.build()
        return self._cache


def _joined(parts: list[str]) -> str:
    """Join and collapse in place, so the next snapshot only joins what arrived since."""
    text = "".join(parts)
    parts[:] = [text]
    return text


class _TextSlot(_Slot):
    __slots__ = ("citations", "keep", "parts")

    def __init__(self, block: TextBlock, *, keep: bool = True) -> None:
        super().__init__()
        self.keep = keep
        self.parts = [block.text]
        self.citations = list(block.citations) if block.citations is not None else None

    def apply(self, delta: Delta) -> bool:
        if isinstance(delta, TextDelta):
            if self.keep:
                self.parts.append(delta.text)
        elif isinstance(delta, CitationsDelta):
            self.citations = [*(self.citations or ()), delta.citation]
        else:
            return False
        self._cache = None
        return True

    def build(self) -> ContentBlock:
        citations = list(self.citations) if self.citations is not None else None
        return TextBlock(text=_joined(self.parts), citations=citations)


class _ThinkingSlot(_Slot):
    __slots__ = ("keep", "parts", "signature")

    def __init__(self, block: ThinkingBlock, *, keep: bool = True) -> None:
        super().__init__()
        self.keep = keep
        self.parts = [block.thinking]
        self.signature = [block.signature]

    def apply(self, delta: Delta) -> bool:
        if isinstance(delta, ThinkingDelta):
            if self.keep:
                self.parts.append(delta.thinking)
        elif isinstance(delta, SignatureDelta):
            self.signature.append(delta.signature)
        else:
            return False
        self._cache = None
        return True

    def build(self) -> ContentBlock:
        return ThinkingBlock(thinking=_joined(self.parts), signature=_joined(self.signature))


class _ToolSlot(_Slot):
    __slots__ = ("block", "fragments", "parsed")

    def __init__(self, block: ToolUseBlock | ServerToolUseBlock) -> None:
        super().__init__()
        self.block = block
        self.fragments: list[str] = []
        self.parsed: dict[str, Any] | None = None

    def apply(self, delta: Delta) -> bool:
        if not isinstance(delta, InputJsonDelta):
            return False
        self.fragments.append(delta.partial_json)
        return True  # the snapshot shows {} until the stop, so nothing to invalidate

    def build(self) -> ContentBlock:
        # Until the stop the input is {} (a fresh dict: snapshots must not share a mutable one).
        return msgspec.structs.replace(
            self.block, input=self.parsed if self.parsed is not None else {}
        )

    def finish(self, index: int) -> ToolInputParsed:
        """The one parse, looked up at call time so tests can spy on it."""
        try:
            parsed = parse_tool_input(self.fragments)
        except ToolInputError as exc:
            where = f"content_block_stop for index {index} ({self.block.type} {self.block.name!r})"
            raise ToolInputError(f"{where}: {exc}") from exc
        if not self.fragments and self.block.input:
            # Some Anthropic-compatible servers put the whole input in content_block_start and
            # send no deltas; keep it rather than replacing it with {}.
            parsed = self.block.input
        evidence = ToolInputParsed(
            index=index,
            tool_name=self.block.name,
            tool_id=self.block.id,
            fragments=len(self.fragments),
            bytes=sum(len(f.encode()) for f in self.fragments),
            parse_attempts=1,
            input=parsed,
        )
        self.parsed = parsed
        self.fragments = []
        self._cache = None
        return evidence


class _StaticSlot(_Slot):
    """A block complete at its start (redacted thinking, unknown types, message_start content)."""

    __slots__ = ("block",)

    def __init__(self, block: ContentBlock) -> None:
        super().__init__()
        self.block = block

    def apply(self, delta: Delta) -> bool:
        # Nobody knows which deltas a new block type takes: ignore them rather than fail.
        return isinstance(self.block, OtherBlock)

    def build(self) -> ContentBlock:
        return self.block


def _make_slot(block: ContentBlock, *, keep_text: bool = True) -> _Slot:
    if isinstance(block, TextBlock):
        return _TextSlot(block, keep=keep_text)
    if isinstance(block, ThinkingBlock):
        return _ThinkingSlot(block, keep=keep_text)
    if isinstance(block, ToolUseBlock | ServerToolUseBlock):
        return _ToolSlot(block)
    return _StaticSlot(block)


# --- the accumulator ---------------------------------------------------------------------


class MessageAccumulator:
    """Folds stream events, in order, into a :class:`Message` snapshot.

    ``feed`` raises :class:`AccumulationError` on out-of-order or inconsistent events. ``Ping``,
    :class:`UnknownEvent` (e.g. ``relay_*`` events) and :class:`OtherDelta` are ignored, at any
    point of the stream; an :class:`ErrorEvent` is recorded in :attr:`error`, never raised.
    ``on_tool_input`` is called once per tool block, at its stop, with the parse evidence.
    ``keep_text=False`` validates text and thinking deltas without keeping them (their blocks
    stay empty in :attr:`message`): a streaming relay forwards the bytes and only needs the
    order checks, tool inputs and usage, so its memory must not grow with the answer.
    """

    def __init__(
        self,
        *,
        on_tool_input: Callable[[ToolInputParsed], None] | None = None,
        keep_text: bool = True,
    ) -> None:
        self._on_tool_input = on_tool_input
        self._keep_text = keep_text
        self._start: Message | None = None
        self._usage: Usage | None = None
        self._slots: list[_Slot] = []
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self._finished = False
        self._error: ErrorEvent | None = None
        self._tool_inputs: list[ToolInputParsed] = []
        self._cache: Message | None = None

    # -- feeding --

    def feed(self, event: StreamEvent) -> None:
        """Apply one event; raises :class:`AccumulationError` when it cannot come now."""
        # Deltas first and inline: this runs once per token of every stream.
        if isinstance(event, ContentBlockDelta):
            if self._finished or self._start is None:
                self._check_phase(event)
            self._cache = None
            self._on_delta(event)
        elif isinstance(event, (Ping, UnknownEvent)):
            return
        elif isinstance(event, ErrorEvent):
            self._error = event
        else:
            self._check_phase(event)
            self._cache = None
            self._on_other(event)

    def _on_other(self, event: StreamEvent) -> None:
        if isinstance(event, ContentBlockStart):
            self._on_block_start(event)
        elif isinstance(event, ContentBlockStop):
            self._on_block_stop(event)
        elif isinstance(event, MessageDelta):
            self._on_message_delta(event)
        elif isinstance(event, MessageStop):
            self._on_message_stop()
        elif isinstance(event, MessageStart):
            self._on_message_start(event)

    def _check_phase(self, event: StreamEvent) -> None:
        if self._finished:
            raise AccumulationError(f"{event.type} after message_stop")
        if self._start is None and not isinstance(event, MessageStart):
            raise AccumulationError(f"{event.type} before message_start")

    def _on_message_start(self, event: MessageStart) -> None:
        if self._start is not None:
            raise AccumulationError("message_start after message_start (a second message)")
        message = event.message
        self._start = message
        self._usage = message.usage
        self._stop_reason = message.stop_reason
        self._stop_sequence = message.stop_sequence
        # Blocks already in message_start are complete and take the first indexes, as in the SDK.
        for block in message.content:
            slot = _StaticSlot(block)
            slot.open = False
            self._slots.append(slot)

    def _on_block_start(self, event: ContentBlockStart) -> None:
        index, expected = event.index, len(self._slots)
        if index < expected:
            raise AccumulationError(
                f"content_block_start for index {index}: block {index} was already started"
            )
        if index > expected:
            raise AccumulationError(
                f"content_block_start for index {index} skips index {expected} "
                f"(the next block must be {expected})"
            )
        self._slots.append(_make_slot(event.content_block, keep_text=self._keep_text))

    def _open_slot(self, index: int, what: str) -> _Slot:
        if index >= len(self._slots):
            raise AccumulationError(f"{what} for index {index} before its content_block_start")
        slot = self._slots[index]
        if not slot.open:
            raise AccumulationError(f"{what} for index {index} after its content_block_stop")
        return slot

    def _on_delta(self, event: ContentBlockDelta) -> None:
        slot = self._open_slot(event.index, "content_block_delta")
        if isinstance(event.delta, OtherDelta):
            return  # a delta type from the future: nothing to fold
        if not slot.apply(event.delta):
            raise AccumulationError(
                f"content_block_delta for index {event.index}: "
                f"{event.delta.type} does not apply to a {slot.kind} block"
            )

    def _on_block_stop(self, event: ContentBlockStop) -> None:
        slot = self._open_slot(event.index, "content_block_stop")
        if isinstance(slot, _ToolSlot):
            evidence = slot.finish(event.index)
            self._tool_inputs.append(evidence)
            if self._on_tool_input is not None:
                self._on_tool_input(evidence)
        slot.open = False

    def _on_message_delta(self, event: MessageDelta) -> None:
        self._stop_reason = event.delta.stop_reason
        self._stop_sequence = event.delta.stop_sequence
        if self._usage is not None:  # always true: _check_phase saw message_start
            self._usage = _merge_usage(self._usage, event)

    def _on_message_stop(self) -> None:
        still_open = [i for i, slot in enumerate(self._slots) if slot.open]
        if still_open:
            raise AccumulationError(f"message_stop while blocks {still_open} are still open")
        self._finished = True

    # -- reading --

    @property
    def message(self) -> Message:
        """The message so far (cached until the next event; treat it as read-only).

        Tool inputs are ``{}`` until their block stops. Raises :class:`AccumulationError`
        before ``message_start``.
        """
        if self._start is None or self._usage is None:
            raise AccumulationError("no message yet: message_start has not arrived")
        if self._cache is None:
            self._cache = msgspec.structs.replace(
                self._start,
                content=[slot.snapshot() for slot in self._slots],
                stop_reason=self._stop_reason,
                stop_sequence=self._stop_sequence,
                usage=self._usage,
            )
        return self._cache

    @property
    def started(self) -> bool:
        """``message_start`` has been seen."""
        return self._start is not None

    @property
    def finished(self) -> bool:
        """``message_stop`` has been seen."""
        return self._finished

    @property
    def error(self) -> ErrorEvent | None:
        """The last ``error`` event seen, if any."""
        return self._error

    @property
    def tool_inputs(self) -> list[ToolInputParsed]:
        """Parse evidence of every stopped tool block, in stop order."""
        return list(self._tool_inputs)

    @property
    def output_tokens(self) -> int | None:
        """Latest cumulative ``usage.output_tokens`` (``message_delta``, else ``message_start``)."""
        return None if self._usage is None else self._usage.output_tokens

    @property
    def input_tokens(self) -> int | None:
        """``usage.input_tokens`` from ``message_start`` (or a later ``message_delta`` with it)."""
        return None if self._usage is None else self._usage.input_tokens

    @property
    def stop_reason(self) -> str | None:
        """The stop reason so far (set by ``message_delta``)."""
        return self._stop_reason


def _merge_usage(usage: Usage, event: MessageDelta) -> Usage:
    """Delta usage counts are cumulative totals: overwrite, keeping what the delta omits."""
    delta = event.usage
    return msgspec.structs.replace(
        usage,
        output_tokens=_first(delta.output_tokens, usage.output_tokens),
        input_tokens=_first(delta.input_tokens, usage.input_tokens),
        cache_creation_input_tokens=_first(
            delta.cache_creation_input_tokens, usage.cache_creation_input_tokens
        ),
        cache_read_input_tokens=_first(
            delta.cache_read_input_tokens, usage.cache_read_input_tokens
        ),
    )


def _first(value: int | None, fallback: int | None) -> int | None:
    return fallback if value is None else value


def accumulate(events: Iterable[StreamEvent]) -> Message:
    """Fold a whole stream into its message (see :class:`MessageAccumulator`)."""
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.feed(event)
    return accumulator.message
