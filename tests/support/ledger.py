"""Proving a stop reached the provider: the mock's generation ledger and the relay's log line.

A stopped stream must end as ``aborted`` in the mock's ledger with its token count frozen, and
the relay must log exactly one ``upstream.aborted`` line with the reason. The ledger is read
over HTTP (``GET /mock/generations?relay_stream_id=``), so the helpers work whether the mock
runs in a thread of the test process or as a subprocess.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

__all__ = [
    "aborted_line",
    "assert_aborted_and_frozen",
    "generation",
    "wait_for_end",
]

_FREEZE_INTERVAL = 0.5


def generation(mock_url: str, stream_id: str) -> dict[str, Any]:
    """The mock's ledger record of the one generation behind a relay stream."""
    records = httpx.get(
        f"{mock_url}/mock/generations", params={"relay_stream_id": stream_id}
    ).json()
    assert len(records) == 1, f"expected one generation for {stream_id}, got {records}"
    record: dict[str, Any] = records[0]
    return record


def wait_for_end(mock_url: str, stream_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll until the generation left ``streaming`` (or ``timeout``); returns the record."""
    deadline = time.monotonic() + timeout
    record = generation(mock_url, stream_id)
    while record["state"] == "streaming" and time.monotonic() < deadline:
        time.sleep(0.05)
        record = generation(mock_url, stream_id)
    return record


def assert_aborted_and_frozen(
    mock_url: str, stream_id: str, asked: int = 5000, *, min_tokens: int = 1
) -> int:
    """Wait for ``aborted``, then check the token count does not move over 0.5 s and lies in
    ``min_tokens .. asked - 1``; returns the frozen count."""
    record = wait_for_end(mock_url, stream_id)
    assert record["state"] == "aborted", record
    before: int = record["tokens"]
    time.sleep(_FREEZE_INTERVAL)
    after = generation(mock_url, stream_id)["tokens"]
    assert after == before, "the upstream kept generating after the abort"
    assert min_tokens <= before < asked, record
    return before


def aborted_line(
    logs: Sequence[Mapping[str, Any]], stream_id: str, *, min_tokens: int = 1
) -> Mapping[str, Any]:
    """The one ``upstream.aborted`` line for ``stream_id`` in captured structlog entries
    (with at least ``min_tokens`` tokens at abort)."""
    lines = [
        e for e in logs if e.get("event") == "upstream.aborted" and e.get("stream_id") == stream_id
    ]
    assert len(lines) == 1, f"expected one upstream.aborted line, got {lines}"
    line = lines[0]
    assert line["tokens_at_abort"] >= min_tokens, line
    assert line["propagation_ms"] >= 0
    return line
