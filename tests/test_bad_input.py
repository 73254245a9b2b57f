"""Bad input gets its documented error, in Anthropic's shape, over real sockets.

Every refusal is ``{"type": "error", "error": {"type": ..., "message": ...}}`` with the right
status and no stack trace. The provider key reaches the provider, and nothing else: not the
relay's logs, not any response.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import structlog

from tests.support.stack import Stack, relay_stack

CLIENT_KEY = "relay-client-key-1"
PROVIDER_KEY = "sk-test-secret"
MAX_BODY = 4096

_AUTH = {"x-api-key": CLIENT_KEY}
_VALID: dict[str, Any] = {
    "model": "mock-text",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello"}],
    "mock": {"tokens": 5},
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    overrides = {
        "api_keys": frozenset({CLIENT_KEY}),
        "upstream_api_key": PROVIDER_KEY,
        "max_request_bytes": MAX_BODY,
        "retry_base_delay": 0.01,
    }
    with relay_stack(overrides) as running:
        yield running


def _post(stack: Stack, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    all_headers = {"content-type": "application/json", **_AUTH, **(headers or {})}
    return httpx.post(f"{stack.relay_url}/v1/messages", content=content, headers=all_headers)


def _json(body: Any) -> bytes:
    return msgspec.json.encode(body)


def _assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    """The Anthropic error shape, nothing else; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == "error"
    assert set(body) <= {"type", "error", "relay"}
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    message: str = body["error"]["message"]
    assert message
    for leak in ("Traceback", 'File "', "service/", ".py", "litestar"):
        assert leak not in response.text, response.text
    return message


# -- request validation ---------------------------------------------------------------------


def test_invalid_json_is_400(stack: Stack) -> None:
    message = _assert_error(_post(stack, b'{"model": '), 400, "invalid_request_error")
    assert "JSON" in message


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_400(stack: Stack, body: bytes) -> None:
    message = _assert_error(_post(stack, body), 400, "invalid_request_error")
    assert "object" in message


@pytest.mark.parametrize(
    ("field", "bad_value"),
    [
        ("model", None),
        ("model", ""),
        ("model", 7),
        ("messages", None),
        ("messages", []),
        ("messages", "hello"),
        ("max_tokens", None),
        ("max_tokens", 0),
        ("max_tokens", "16"),
        ("max_tokens", True),
    ],
)
def test_a_missing_or_invalid_required_field_is_400_naming_it(
    stack: Stack, field: str, bad_value: Any
) -> None:
    body = dict(_VALID)
    if bad_value is None:
        del body[field]
    else:
        body[field] = bad_value
    message = _assert_error(_post(stack, _json(body)), 400, "invalid_request_error")
    assert message.startswith(f"{field}:")


@pytest.mark.parametrize("value", ["true", 1, None, {}])
def test_stream_that_is_not_a_boolean_is_400(stack: Stack, value: Any) -> None:
    message = _assert_error(
        _post(stack, _json({**_VALID, "stream": value})), 400, "invalid_request_error"
    )
    assert message.startswith("stream:")


def test_an_invalid_idempotency_key_is_400(stack: Stack) -> None:
    response = _post(stack, _json(_VALID), {"idempotency-key": "x" * 300})
    message = _assert_error(response, 400, "invalid_request_error")
    assert "Idempotency-Key" in message


def test_an_oversized_body_is_413(stack: Stack) -> None:
    padded = {**_VALID, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}
    _assert_error(_post(stack, _json(padded)), 413, "request_too_large")


def test_an_oversized_chunked_body_is_413(stack: Stack) -> None:
    # No Content-Length to check up front: the limit must hold while the body streams in.
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 512 + 2):
            yield b" " * 512

    response = httpx.post(
        f"{stack.relay_url}/v1/messages",
        content=chunks(),
        headers={"content-type": "application/json", **_AUTH},
    )
    assert "content-length" not in response.request.headers
    _assert_error(response, 413, "request_too_large")


def test_nothing_refused_reaches_the_provider(stack: Stack) -> None:
    stack.upstream.clear()
    _post(stack, b"{")
    _post(stack, _json({**_VALID, "stream": "yes"}))
    _post(stack, _json({**_VALID, "max_tokens": 0}))
    _post(stack, _json(_VALID), {"x-api-key": "wrong"})
    assert stack.upstream.exchanges() == []


# -- routes and methods ---------------------------------------------------------------------


# BUG (paths outside /v1): service/app.py mounts the chat page with
# `create_static_files_router(path="/", ...)`, a catch-all for GET/HEAD. A POST to any path
# it covers (e.g. /nope, /v2/messages: an SDK with a wrong base_url) then answers
# 405 "Method Not Allowed" with `Allow: HEAD, GET, OPTIONS` instead of 404 not_found_error.
# Paths under /v1 are unaffected. Serving `GET /` by its own handler and the page's assets
# under a prefix (e.g. /web/) would keep unknown routes 404.
@pytest.mark.parametrize("path", ["/v1/nope", "/v1/messages/extra", "/v2/messages", "/nope"])
def test_an_unknown_route_is_404(stack: Stack, path: str) -> None:
    response = httpx.post(f"{stack.relay_url}{path}", json=_VALID, headers=_AUTH)
    _assert_error(response, 404, "not_found_error")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_a_wrong_method_is_405(stack: Stack, method: str) -> None:
    response = httpx.request(method, f"{stack.relay_url}/v1/messages", headers=_AUTH)
    _assert_error(response, 405, "invalid_request_error")


def test_a_405_says_which_methods_are_allowed(stack: Stack) -> None:
    # RFC 9110 section 15.5.6: a 405 response MUST carry Allow.
    response = httpx.get(f"{stack.relay_url}/v1/messages", headers=_AUTH)
    assert response.status_code == 405
    assert "POST" in response.headers.get("allow", ""), dict(response.headers)


def test_an_unknown_stream_is_404(stack: Stack) -> None:
    response = httpx.post(f"{stack.relay_url}/v1/streams/rs_nope/cancel", headers=_AUTH)
    _assert_error(response, 404, "not_found_error")


# -- client keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "wrong"},
        {"x-api-key": ""},
        {"authorization": f"Basic {CLIENT_KEY}"},
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer"},
        # The provider key is not a client key.
        {"x-api-key": PROVIDER_KEY},
    ],
)
def test_a_missing_or_invalid_client_key_is_401(stack: Stack, headers: dict[str, str]) -> None:
    response = httpx.post(f"{stack.relay_url}/v1/messages", json=_VALID, headers=headers)
    _assert_error(response, 401, "authentication_error")
    assert PROVIDER_KEY not in response.text


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": CLIENT_KEY},
        {"authorization": f"Bearer {CLIENT_KEY}"},
        {"Authorization": f"bearer {CLIENT_KEY}"},
    ],
)
def test_a_valid_client_key_is_accepted_either_way(stack: Stack, headers: dict[str, str]) -> None:
    response = httpx.post(f"{stack.relay_url}/v1/messages", json=_VALID, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["stop_reason"] == "end_turn"


def test_the_client_key_is_not_forwarded_to_the_provider(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.relay_url}/v1/messages",
        json=_VALID,
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    (upstream,) = stack.upstream.for_stream(response.headers["x-relay-stream-id"])
    assert upstream.headers["x-api-key"] == PROVIDER_KEY
    assert "authorization" not in upstream.headers
    assert CLIENT_KEY not in repr(upstream.headers)


# -- upstream errors ------------------------------------------------------------------------


def _upstream_400_body() -> dict[str, Any]:
    # The relay accepts it; the mock refuses an unknown "mock" option with 400.
    return {**_VALID, "mock": {"no_such_option": True}}


def test_an_upstream_400_is_passed_on_as_a_400_without_retry(stack: Stack) -> None:
    response = _post(stack, _json(_upstream_400_body()))

    message = _assert_error(response, 400, "invalid_request_error")
    assert "no_such_option" in message
    assert response.json()["relay"] == {
        "retryable": False,
        "partial": False,
        "reason": "status_400",
    }
    attempts = stack.upstream.for_stream(response.headers["x-relay-stream-id"])
    assert [a.status for a in attempts] == [400]


def test_an_upstream_400_on_a_stream_is_an_error_event(stack: Stack) -> None:
    # The stream's headers went out before the provider answered: the error is an event.
    response = _post(stack, _json({**_upstream_400_body(), "stream": True}))

    assert response.status_code == 200
    blocks = [b for b in response.content.split(b"\n\n") if b]
    events = [b for b in blocks if b.startswith(b"event:")]
    assert [e.split(b"\n", 1)[0] for e in events] == [b"event: error"]
    data = msgspec.json.decode(events[0].split(b"data: ", 1)[1].split(b"\n", 1)[0])
    assert data["error"]["type"] == "invalid_request_error"
    assert data["relay"] == {"retryable": False, "partial": False, "reason": "status_400"}
    # No message_start ever came, so the closing metrics stay a comment (SDK compatibility).
    assert blocks[-1].startswith(b": relay_metrics ")
    assert b"Traceback" not in response.content


def test_an_upstream_that_stays_overloaded_is_529(stack: Stack) -> None:
    # Three attempts (the relay's default budget), all overloaded.
    body = {**_VALID, "mock": {"scenario": "overloaded", "fail_times": 5, "key": "always-busy"}}
    response = _post(stack, _json(body))

    _assert_error(response, 529, "overloaded_error")
    assert response.json()["relay"]["retryable"] is True
    attempts = stack.upstream.for_stream(response.headers["x-relay-stream-id"])
    assert [a.status for a in attempts] == [529, 529, 529]


def test_a_non_streaming_turn_failing_mid_answer_gets_the_upstream_error(stack: Stack) -> None:
    # The provider failed after it had generated content. Retrying would generate (and bill)
    # that content again, so the relay does not retry, even though the client has seen
    # nothing yet; it answers the provider's own error. (An earlier relay retried here and
    # fed the second attempt into the first attempt's accumulator, answering 502
    # "message_start after message_start".) The mock would succeed on a second attempt.
    body = {**_VALID, "mock": {"scenario": "error_mid_stream", "fail_times": 1, "fail_after": 2}}
    response = _post(stack, _json(body))

    message = _assert_error(response, 529, "overloaded_error")
    assert "message_start" not in message
    relay = response.json()["relay"]
    assert relay["retryable"] is True
    assert relay["reason"] == "upstream_error"
    attempts = stack.upstream.for_stream(response.headers["x-relay-stream-id"])
    assert [a.status for a in attempts] == [200]


# -- the provider key -----------------------------------------------------------------------


def _exercise(stack: Stack) -> list[httpx.Response]:
    """Requests that take every path a key could leak through: success, retry, upstream
    error before and after the first byte, streaming and not."""
    once = secrets.token_hex(4)
    bodies = [
        _VALID,
        {**_VALID, "stream": True},
        {**_VALID, "mock": {"scenario": "tool_use"}, "stream": True},
        {**_VALID, "mock": {"scenario": "rate_limited", "retry_after_ms": 0, "key": once}},
        _upstream_400_body(),
        {**_upstream_400_body(), "stream": True},
        {**_VALID, "mock": {"scenario": "error_mid_stream", "fail_after": 2}, "stream": True},
        {**_VALID, "mock": {"scenario": "error_mid_stream", "fail_after": 2}},
    ]
    return [_post(stack, _json(body)) for body in bodies]


def test_the_provider_key_reaches_the_provider_and_nothing_else(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.upstream.clear()
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        responses = _exercise(stack)

    upstream = stack.upstream.exchanges()
    assert len(upstream) > len(responses)  # retries included
    assert all(e.headers.get("x-api-key") == PROVIDER_KEY for e in upstream)
    for response in responses:
        assert PROVIDER_KEY not in response.text
        assert PROVIDER_KEY not in repr(response.headers.multi_items())
    # capture_logs sees each event before any processor (redaction included) touched it.
    assert events, "no relay log line was captured"
    assert PROVIDER_KEY not in repr(events)
    assert caplog.records, "no standard-library log line was captured"
    assert PROVIDER_KEY not in caplog.text
    assert all(PROVIDER_KEY not in repr(r.args) for r in caplog.records)
