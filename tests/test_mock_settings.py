"""MockSettings: defaults and the RELAY_MOCK_* mapping."""

from __future__ import annotations

import pytest

from service.mock import MockSettings, MockSettingsError


def test_defaults_are_realistic_and_local() -> None:
    settings = MockSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8100)
    assert 100 <= settings.ttft_ms <= 1000
    assert 10 <= settings.tpot_ms <= 100
    assert 0 < settings.jitter < 1


def test_from_environ_reads_prefixed_variables_only() -> None:
    settings = MockSettings.from_environ(
        {
            "RELAY_MOCK_HOST": "0.0.0.0",
            "RELAY_MOCK_PORT": "9100",
            "RELAY_MOCK_TTFT_MS": "12.5",
            "RELAY_MOCK_TPOT_MS": "3",
            "RELAY_MOCK_JITTER": "0",
            "RELAY_MOCK_SEED": "42",
            "RELAY_PORT": "1234",
        }
    )
    assert settings == MockSettings(
        host="0.0.0.0", port=9100, ttft_ms=12.5, tpot_ms=3.0, jitter=0.0, seed=42
    )


def test_overrides_win_over_the_mapping() -> None:
    settings = MockSettings.from_environ({"RELAY_MOCK_PORT": "9100"}, port=9200)
    assert settings.port == 9200


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_MOCK_PORT", "http"),
        ("RELAY_MOCK_PORT", "0"),
        ("RELAY_MOCK_TTFT_MS", "-1"),
        ("RELAY_MOCK_TPOT_MS", "nan"),
        ("RELAY_MOCK_JITTER", "1.5"),
        ("RELAY_MOCK_SEED", "1.5"),
    ],
)
def test_bad_values_are_rejected_with_the_variable_name(name: str, value: str) -> None:
    with pytest.raises(MockSettingsError, match=name):
        MockSettings.from_environ({name: value})


def test_settings_errors_are_configuration_errors() -> None:
    from service.config import ConfigError

    with pytest.raises(ConfigError):
        MockSettings.from_environ({"RELAY_MOCK_PORT": "not-a-port"})
