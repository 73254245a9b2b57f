"""Settings of the simulated provider, built from ``RELAY_MOCK_*`` variables.

Every field maps to ``RELAY_MOCK_<FIELD_NAME_UPPER>``; tests pass their own mapping instead of
mutating ``os.environ``. Per-request options (the body's ``"mock"`` object) override the timing
fields for one generation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.config import ConfigError

__all__ = ["MockSettings", "MockSettingsError"]

_PREFIX = "RELAY_MOCK_"


class MockSettingsError(ConfigError):
    """A ``RELAY_MOCK_*`` variable holds a value that cannot be used.

    A :class:`~service.config.ConfigError`, so whoever reports bad relay settings (the CLI's
    one-line "configuration error") reports bad mock settings the same way.
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class MockSettings:
    """How the mock provider listens and how fast it "generates" by default."""

    host: str = "127.0.0.1"
    """Interface the mock provider listens on."""
    port: int = 8100
    """Port the mock provider listens on (the relay's default upstream)."""
    ttft_ms: float = 400.0
    """Time to first token: milliseconds from ``message_start`` to the first content delta."""
    tpot_ms: float = 30.0
    """Time per output token: milliseconds between two content deltas."""
    jitter: float = 0.2
    """Random spread of every delay as a fraction (0.2 = +-20%), drawn from a seeded generator."""
    seed: int = 0
    """Seed of the word and jitter generators; the same seed and prompt give the same text."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: Any) -> MockSettings:
        """Build settings from ``RELAY_MOCK_*`` variables; ``overrides`` win over the mapping."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f"{_PREFIX}{f.name.upper()}"
            if name in environ:
                values[f.name] = _parse(name, environ[name], f.type)
        values.update(overrides)
        settings = cls(**values)
        settings._validate()
        return settings

    def _validate(self) -> None:
        if not 0 < self.port < 65536:
            raise MockSettingsError(f"{_PREFIX}PORT must be in 1..65535, got {self.port}")
        for name in ("ttft_ms", "tpot_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise MockSettingsError(f"{_PREFIX}{name.upper()} must be a number >= 0")
        if not 0 <= self.jitter <= 1:
            raise MockSettingsError(f"{_PREFIX}JITTER must be within 0..1")


def _parse(name: str, raw: str, hint: object) -> object:
    # With ``from __future__ import annotations`` field types are strings; match on their names.
    kind = hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise MockSettingsError(f"{name}={raw!r}: expected a number") from None
    return raw
