"""Retry policy for the upstream call, before the first forwarded byte only.

Exponential backoff with full jitter (delay = uniform(0, min(cap, base * 2**n))), the
provider's ``retry-after-ms`` / ``retry-after`` honoured (capped), bounded attempts and a
total deadline. After content was forwarded the relay never retries: see relay.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from service.config import Settings

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "parse_retry_after"]

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
"""Statuses worth another attempt (Anthropic's own SDK retries the same set)."""


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds the provider asked us to wait, from ``retry-after-ms`` or ``retry-after``
    (delta-seconds or an HTTP date); ``None`` when absent or unparseable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before another upstream attempt."""

    max_attempts: int = 3
    """Attempts in all, the first included."""
    base_delay: float = 0.5
    """Backoff base in seconds."""
    max_delay: float = 8.0
    """Cap of one computed backoff delay."""
    retry_after_cap: float = 20.0
    """Cap of a provider-requested delay."""
    deadline: float = 30.0
    """Total seconds after which no new attempt starts."""
    random: Callable[[], float] = field(default=random.random, compare=False)
    """Source of jitter in [0, 1); injectable for tests."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy configured by ``RELAY_RETRY_*``."""
        return cls(
            max_attempts=settings.retry_max_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            retry_after_cap=settings.retry_after_cap,
            deadline=settings.retry_deadline,
        )

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        jitter: float = self.random()
        return jitter * ceiling

    def next_delay(
        self, attempt: int, *, elapsed: float, retry_after: float | None
    ) -> float | None:
        """Delay before attempt ``attempt + 1``, or ``None`` when the budget is spent."""
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            delay = min(retry_after, self.retry_after_cap)
        else:
            delay = self.backoff(attempt)
        if elapsed + delay > self.deadline:
            return None
        return delay
