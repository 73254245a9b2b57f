"""The simulated LLM provider ("mock"): the relay's offline default upstream.

An Anthropic Messages compatible server (``POST /v1/messages``, SSE when ``"stream": true``)
that plays scripted scenarios with realistic timing, and keeps a generation ledger that proves
whether a generation stopped when its client went away.

Scenario selection per request, first match wins: the header ``x-mock-scenario: <name>``, else
the body field ``"mock": {"scenario": "<name>", ...options}`` (SDKs: ``extra_body``), else the
model name ``mock-<name>``; none or an unknown name plays ``text``. Scenarios: ``text``,
``tool_use``, ``thinking`` (alias ``reasoning``), ``rate_limited``, ``overloaded``,
``error_mid_stream``, ``drop``, ``stall``, ``malformed``, ``large``. Options of the ``"mock"``
object: see :class:`service.mock.request.MockOptions` and ``runbook/mock-provider.md``.
"""

from service.mock.app import create_mock_app
from service.mock.ledger import GenerationLedger, GenerationRecord, GenerationState
from service.mock.settings import MockSettings, MockSettingsError

__all__ = [
    "GenerationLedger",
    "GenerationRecord",
    "GenerationState",
    "MockSettings",
    "MockSettingsError",
    "create_mock_app",
]
