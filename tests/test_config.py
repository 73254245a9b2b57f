"""Settings from a RELAY_* mapping."""

from __future__ import annotations

import pytest

from service.config import ConfigError, Settings


def test_defaults_run_offline_against_the_mock() -> None:
    settings = Settings.from_environ({})
    assert settings.upstream_url == "http://127.0.0.1:8100"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.heartbeat_interval == 15.0


def test_variables_are_parsed_by_type() -> None:
    settings = Settings.from_environ(
        {
            "RELAY_PORT": "9001",
            "RELAY_HEARTBEAT_INTERVAL": "1.5",
            "RELAY_ACCEL_BUFFERING_HEADER": "false",
            "RELAY_API_KEYS": "a, b,,",
            "RELAY_UPSTREAM_PROVIDER": "openai",
        }
    )
    assert settings.port == 9001
    assert settings.heartbeat_interval == 1.5
    assert settings.accel_buffering_header is False
    assert settings.api_keys == frozenset({"a", "b"})
    assert settings.upstream_provider == "openai"


def test_overrides_win_over_the_mapping() -> None:
    assert Settings.from_environ({"RELAY_PORT": "1"}, port=2).port == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_PORT", "eighty"),
        ("RELAY_TYPED_HEARTBEATS", "maybe"),
        ("RELAY_UPSTREAM_PROVIDER", "gemini"),
        ("RELAY_UPSTREAM_TRANSPORT", "requests"),
        ("RELAY_HEARTBEAT_INTERVAL", "0"),
        ("RELAY_RETRY_MAX_ATTEMPTS", "0"),
    ],
)
def test_bad_values_are_named_in_the_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_environ({name: value})


def test_keys_stay_out_of_repr() -> None:
    settings = Settings.from_environ(
        {"RELAY_UPSTREAM_API_KEY": "sk-secret", "RELAY_API_KEYS": "client-secret"}
    )
    assert "sk-secret" not in repr(settings)
    assert "client-secret" not in repr(settings)
