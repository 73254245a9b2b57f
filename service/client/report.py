"""The client's view of a stream, as posted to ``/v1/streams/{id}/client-metrics``."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["ClientReport", "decode_report"]


class ClientReport(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Client-observed timings in milliseconds (``None`` where not observed)."""

    ttft_ms: float | None = None
    ttfb_ms: float | None = None
    perceived_ms: float | None = None
    tpot_ms: float | None = None
    total_ms: float | None = None
    content_deltas: int | None = None
    client: str | None = None
    """Free-form client kind (``python``, ``browser``); bounded to a few values in metrics."""

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "ttfb_ms", "perceived_ms", "tpot_ms", "total_ms"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 86_400_000:
                raise ValueError(f"{name} must be between 0 and 86400000 ms")
        if self.client is not None and len(self.client) > 32:
            raise ValueError("client must be at most 32 characters")


def decode_report(body: bytes) -> ClientReport:
    """Validate a report; raises ``ValueError`` with a message naming the field."""
    try:
        return msgspec.json.decode(body, type=ClientReport)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def report_dict(report: ClientReport) -> dict[str, Any]:
    """The report as a plain mapping."""
    return msgspec.structs.asdict(report)
