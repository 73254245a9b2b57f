"""Retry policy: backoff with full jitter, retry-after honoured and capped, budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from service.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after


def test_retryable_statuses_match_the_design() -> None:
    assert {408, 409, 429, 500, 502, 503, 504, 529} == RETRYABLE_STATUSES
    assert 400 not in RETRYABLE_STATUSES and 401 not in RETRYABLE_STATUSES


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after({"retry-after": later}, now=now) == 7.0


def test_unparseable_retry_after_is_ignored() -> None:
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after-ms": "x"}) is None
    assert parse_retry_after({}) is None


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(retry_after_cap=2.0, deadline=100)
    assert policy.next_delay(1, elapsed=0, retry_after=60) == 2.0


def test_attempts_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=3, random=lambda: 0.5)
    assert policy.next_delay(1, elapsed=0, retry_after=None) is not None
    assert policy.next_delay(2, elapsed=0, retry_after=None) is not None
    assert policy.next_delay(3, elapsed=0, retry_after=None) is None


def test_deadline_bounds_the_total_wait() -> None:
    policy = RetryPolicy(max_attempts=10, deadline=5.0)
    assert policy.next_delay(1, elapsed=4.0, retry_after=2.0) is None
    assert policy.next_delay(1, elapsed=1.0, retry_after=2.0) == 2.0


@given(attempt=st.integers(1, 20), jitter=st.floats(0, 0.999999))
def test_full_jitter_stays_within_the_exponential_ceiling(attempt: int, jitter: float) -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0, random=lambda: jitter)
    delay = policy.backoff(attempt)
    assert 0 <= delay <= min(8.0, 0.5 * 2 ** (attempt - 1))
