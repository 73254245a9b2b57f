"""Request validation: each bad input has its own clear error."""

from __future__ import annotations

import pytest

from service.errors import RequestError
from service.request import parse_request

GOOD = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"stream":true}'


def test_a_good_request_keeps_its_raw_bytes() -> None:
    request = parse_request(GOOD, {"idempotency-key": "k1", "x-relay-events": "all"})
    assert request.raw_body == GOOD
    assert request.streaming and request.model == "m"
    assert request.idempotency_key == "k1" and request.early_relay_events


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b'{"max_tokens":5,"messages":[1]}', "model"),
        (b'{"model":"m","max_tokens":5,"messages":[]}', "messages"),
        (b'{"model":"m","messages":[1]}', "max_tokens"),
        (b'{"model":"m","max_tokens":true,"messages":[1]}', "max_tokens"),
        (b'{"model":"m","max_tokens":0,"messages":[1]}', "max_tokens"),
        (b'{"model":"m","max_tokens":1,"messages":[1],"stream":"yes"}', "stream"),
    ],
)
def test_bad_bodies_get_400_naming_the_problem(body: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body, {})
    assert info.value.status == 400
    assert info.value.error_type == "invalid_request_error"
    assert fragment in info.value.message


def test_bad_idempotency_key() -> None:
    with pytest.raises(RequestError, match="Idempotency-Key"):
        parse_request(GOOD, {"idempotency-key": "x" * 300})
