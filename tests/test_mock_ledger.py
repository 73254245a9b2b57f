"""GenerationLedger: bounded, first end wins, counts only while streaming."""

from __future__ import annotations

import itertools

import pytest

from service.mock import GenerationLedger


def test_ids_are_unique_and_records_are_kept_oldest_first() -> None:
    ledger = GenerationLedger()
    ids = [ledger.start(scenario="text", model="m", stream=True).id for _ in range(5)]
    assert len(set(ids)) == 5
    assert all(i.startswith("msg_mock_") for i in ids)
    assert [r.id for r in ledger.records()] == ids


def test_capacity_evicts_the_oldest() -> None:
    ledger = GenerationLedger(capacity=3)
    ids = [ledger.start(scenario="text", model="m", stream=True).id for _ in range(5)]
    assert [r.id for r in ledger.records()] == ids[2:]
    assert ledger.get(ids[0]) is None


def test_tokens_count_only_while_streaming_and_first_end_wins() -> None:
    clock = itertools.count(100.0)
    ledger = GenerationLedger(clock=lambda: next(clock))
    record = ledger.start(scenario="text", model="m", stream=True)
    ledger.count_token(record)
    ledger.count_token(record, 2)
    assert ledger.finish(record, "aborted", "client_disconnected")
    ledger.count_token(record)
    assert not ledger.finish(record, "completed")
    snapshot = ledger.get(record.id)
    assert snapshot is not None
    assert (snapshot.state, snapshot.tokens, snapshot.abort_reason) == (
        "aborted",
        3,
        "client_disconnected",
    )
    assert snapshot.started_at == 100.0
    assert snapshot.ended_at == 101.0


def test_readers_get_snapshots_not_the_live_record() -> None:
    ledger = GenerationLedger()
    record = ledger.start(scenario="text", model="m", stream=True)
    snapshot = ledger.get(record.id)
    ledger.count_token(record)
    assert snapshot is not None
    assert snapshot.tokens == 0
    assert ledger.records()[0].tokens == 1


def test_filter_by_relay_stream_id() -> None:
    ledger = GenerationLedger()
    a = ledger.start(scenario="text", model="m", stream=True, relay_stream_id="a")
    ledger.start(scenario="text", model="m", stream=True, relay_stream_id="b")
    assert [r.id for r in ledger.records(relay_stream_id="a")] == [a.id]


def test_attempts_count_per_key_and_reset_forgets_everything() -> None:
    ledger = GenerationLedger()
    assert [ledger.count_attempt("k") for _ in range(3)] == [1, 2, 3]
    assert ledger.count_attempt("other") == 1
    ledger.start(scenario="text", model="m", stream=True)
    ledger.reset()
    assert ledger.records() == []
    assert ledger.count_attempt("k") == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        GenerationLedger(capacity=0)
