"""Scenarios: the script of one generation as a lazy sequence of steps.

A script is an iterator of :class:`Emit` (one SSE frame, possibly one output token),
:class:`Pause` (simulated model time) and :class:`Drop` (close the connection mid-stream). The
player in :mod:`service.mock.generation` writes it to the socket or folds it into one Message.
Scripts are lazy so a 20000-token stream costs no memory up front, and the ``large`` scenario
reuses one precomputed frame so each token is CPU-cheap.

Every delta except ``signature_delta`` is one output token, so the final cumulative
``usage.output_tokens`` equals the number of token deltas.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from service.mock import frames
from service.mock.frames import Payload
from service.mock.request import MockRequest
from service.mock.settings import MockSettings

__all__ = [
    "TOOL_FRAGMENTS",
    "TOOL_INPUT",
    "Drop",
    "Emit",
    "Pause",
    "Step",
    "build_script",
]

_DEFAULT_FAIL_AFTER = 10
_DEFAULT_THINK_MS = 1500.0
_DEFAULT_STALL_MS = 300_000.0
_LARGE_TOKENS = 20_000
_LARGE_TOKEN_BYTES = 512
_THINK_CHUNK_MS = 150.0

_WORDS = (
    "the", "stream", "relay", "measures", "every", "token", "as", "it", "flows", "from",
    "provider", "to", "a", "client", "and", "keeps", "latency", "honest", "when", "networks",
    "stall", "buffers", "fill", "proxies", "hold", "bytes", "users", "press", "stop", "retries",
    "wait", "politely", "backoff", "grows", "servers", "breathe", "metrics", "rise", "traces",
    "connect", "logs", "tell", "stories", "about", "time", "first", "output", "quick", "slow",
    "steady", "bright", "quiet", "river", "mountain", "cloud", "signal", "packet", "socket",
    "window", "frame", "event", "delta", "message", "answer", "question", "model", "prompt",
    "careful", "simple", "clear", "small", "large", "gentle", "rapid", "patient", "curious",
)  # fmt: skip

_TOOL_PREAMBLE = (
    "I'll", " check", " the", " weather", " in", " San", " Francisco", " and", " the",
    " current", " time.",
)  # fmt: skip

# The get_weather input as streamed: cut at awkward places on purpose. The first fragment is
# empty; others end inside a string, inside an escaped quote (a lone backslash), inside a
# \u00e9 escape, and between two multi-byte characters. Joined, they parse to TOOL_INPUT.
TOOL_FRAGMENTS: tuple[str, ...] = (
    "",
    '{"loca',
    'tion": "San Fran',
    'cisco, CA", "unit',
    '": "celsius", "details": {"note": "say \\',
    '"hi\\" at the caf\\u0',
    '0e9", "city": "東',
    '京", "sky": "🌤", "nested": {"level": 2',
    ', "flags": [true, null]}}}',
)
TOOL_INPUT: Payload = {
    "location": "San Francisco, CA",
    "unit": "celsius",
    "details": {
        "note": 'say "hi" at the café',
        "city": "東京",
        "sky": "🌤",
        "nested": {"level": 2, "flags": [True, None]},
    },
}


@dataclass(frozen=True, slots=True)
class Emit:
    """Write one frame."""

    frame: bytes
    """The encoded SSE frame."""
    payload: Payload | None
    """The event it encodes (None for a deliberately malformed frame)."""
    token: bool = False
    """Counts as one output token once written."""


@dataclass(frozen=True, slots=True)
class Pause:
    """Simulated model time before the next step."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection now, without ending the HTTP response."""


Step = Emit | Pause | Drop

_NO_PAUSE = Pause(0.0)


def build_script(
    request: MockRequest, settings: MockSettings, message_id: str, *, inject_failure: bool
) -> Iterator[Step]:
    """The steps of one generation; ``inject_failure`` False plays a failure scenario cleanly."""
    return _Script(request, settings, message_id, inject_failure).steps()


def _emit(payload: Payload, *, token: bool = False) -> Emit:
    return Emit(frames.encode_frame(payload), payload, token)


class _Script:
    def __init__(
        self, request: MockRequest, settings: MockSettings, message_id: str, inject: bool
    ) -> None:
        opts = request.options
        self._req = request
        self._id = message_id
        self._inject = inject
        seed = settings.seed if opts.seed is None else opts.seed
        # Two generators: timing jitter must not change the words (tests compare texts).
        self._words = random.Random(f"words:{seed}:{request.prompt_digest}")  # noqa: S311 - simulation
        self._timing = random.Random(f"timing:{seed}")  # noqa: S311 - simulation
        self._jitter = settings.jitter if opts.jitter is None else opts.jitter
        self._ttft = (settings.ttft_ms if opts.ttft_ms is None else opts.ttft_ms) / 1000
        default_tpot = 0.0 if request.scenario == "large" else settings.tpot_ms
        self._tpot = (default_tpot if opts.tpot_ms is None else opts.tpot_ms) / 1000
        self._tokens = 0
        self._first_content_sent = False

    # -- building blocks -------------------------------------------------------------------

    def _delay(self, seconds: float) -> Pause:
        if seconds <= 0:
            return _NO_PAUSE
        if self._jitter:
            seconds *= 1 + self._timing.uniform(-self._jitter, self._jitter)
        return Pause(seconds)

    def _gap(self, steady: float | None = None) -> Pause:
        """The pause before a content delta: TTFT before the first one, TPOT afterwards."""
        if not self._first_content_sent:
            self._first_content_sent = True
            return self._delay(self._ttft)
        return self._delay(self._tpot if steady is None else steady)

    def _token(self, index: int, delta: Payload, steady: float | None = None) -> Iterator[Step]:
        yield self._gap(steady)
        self._tokens += 1
        yield _emit(frames.content_block_delta(index, delta), token=True)

    def _open(self) -> Iterator[Step]:
        yield _emit(frames.message_start(self._id, self._req.model, self._req.input_tokens))
        yield _emit(frames.ping())

    def _close(self, stop_reason: str) -> Iterator[Step]:
        yield _emit(frames.message_delta(stop_reason, self._tokens))
        yield _emit(frames.message_stop())

    def _text_budget(self, default: int, used: int = 0) -> tuple[int, str]:
        if self._req.options.tokens is not None:
            return self._req.options.tokens, "end_turn"
        return max(1, default - used), "max_tokens"

    def _failure(self) -> tuple[list[Step], bool]:
        """The injected failure's steps and whether the stream ends with it."""
        opts = self._req.options
        match self._req.scenario:
            case "error_mid_stream":
                error = frames.error_body("overloaded_error", "Overloaded")
                return [_emit(error)], True
            case "drop":
                return [Drop()], True
            case "stall":
                stall = _DEFAULT_STALL_MS if opts.stall_ms is None else opts.stall_ms
                return [Pause(stall / 1000)], False
            case "malformed":
                return [Emit(frames.MALFORMED_FRAME, None)], False
        return [], False

    # -- scenarios -------------------------------------------------------------------------

    def steps(self) -> Iterator[Step]:
        yield from self._open()
        match self._req.scenario:
            case "tool_use":
                yield from self._tool_use()
            case "thinking":
                yield from self._thinking()
            case "large":
                yield from self._large()
            case _:
                yield from self._text()

    def _text(self) -> Iterator[Step]:
        count, stop_reason = self._text_budget(self._req.max_tokens)
        fail_at = -1
        if self._inject and self._req.scenario in (
            "error_mid_stream",
            "drop",
            "stall",
            "malformed",
        ):
            # A failure scenario always fails: with fewer tokens than fail_after, at the end.
            fail_after = self._req.options.fail_after
            fail_at = min(count, _DEFAULT_FAIL_AFTER if fail_after is None else fail_after)
        yield _emit(frames.content_block_start(0, {"type": "text", "text": ""}))
        for i in range(count + 1):
            if i == fail_at:
                failure, terminal = self._failure()
                yield from failure
                if terminal:
                    return
            if i == count:
                break
            text = " " + self._words.choice(_WORDS)
            yield from self._token(0, {"type": "text_delta", "text": text})
        yield _emit(frames.content_block_stop(0))
        yield from self._close(stop_reason)

    def _tool_use(self) -> Iterator[Step]:
        yield _emit(frames.content_block_start(0, {"type": "text", "text": ""}))
        for word in _TOOL_PREAMBLE:
            yield from self._token(0, {"type": "text_delta", "text": word})
        yield _emit(frames.content_block_stop(0))
        yield from self._tool_block(1, "get_weather", TOOL_FRAGMENTS)
        # A zero-argument tool: one empty fragment, as the real API sends.
        yield from self._tool_block(2, "get_time", ("",))
        yield from self._close("tool_use")

    def _tool_block(self, index: int, name: str, fragments: tuple[str, ...]) -> Iterator[Step]:
        tool_id = f"toolu_mock_{self._words.getrandbits(64):016x}"
        block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
        yield _emit(frames.content_block_start(index, block))
        for fragment in fragments:
            yield from self._token(index, {"type": "input_json_delta", "partial_json": fragment})
        yield _emit(frames.content_block_stop(index))

    def _thinking(self) -> Iterator[Step]:
        opts = self._req.options
        think_ms = _DEFAULT_THINK_MS if opts.think_ms is None else opts.think_ms
        chunks = max(1, round(think_ms / _THINK_CHUNK_MS))
        spacing = think_ms / 1000 / chunks
        yield _emit(
            frames.content_block_start(0, {"type": "thinking", "thinking": "", "signature": ""})
        )
        for i in range(chunks):
            words = "".join(" " + self._words.choice(_WORDS) for _ in range(4))
            text = ("Let me think." if i == 0 else "") + words
            yield from self._token(0, {"type": "thinking_delta", "thinking": text}, spacing)
        signature = f"mock-signature-{self._words.getrandbits(128):032x}"
        yield _emit(
            frames.content_block_delta(0, {"type": "signature_delta", "signature": signature})
        )
        yield _emit(frames.content_block_stop(0))
        count, stop_reason = self._text_budget(self._req.max_tokens, used=chunks)
        yield _emit(frames.content_block_start(1, {"type": "text", "text": ""}))
        for _ in range(count):
            text = " " + self._words.choice(_WORDS)
            yield from self._token(1, {"type": "text_delta", "text": text})
        yield _emit(frames.content_block_stop(1))
        yield from self._close(stop_reason)

    def _large(self) -> Iterator[Step]:
        opts = self._req.options
        count = _LARGE_TOKENS if opts.tokens is None else opts.tokens
        size = _LARGE_TOKEN_BYTES if opts.token_bytes is None else opts.token_bytes
        filler = "abcdefghijklmnopqrstuvwxyz "
        text = (filler * (size // len(filler) + 1))[:size]
        # One frame for every token: the hot loop only pauses and writes.
        token = _emit(
            frames.content_block_delta(0, {"type": "text_delta", "text": text}), token=True
        )
        yield _emit(frames.content_block_start(0, {"type": "text", "text": ""}))
        for _ in range(count):
            yield self._gap()
            yield token
        self._tokens += count
        yield _emit(frames.content_block_stop(0))
        yield from self._close("end_turn")
