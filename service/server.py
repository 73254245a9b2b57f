"""Running the relay and the mock under uvicorn, with a shutdown that ends streams cleanly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import FrameType

import uvicorn
from litestar import Litestar

from service.app import RelayState, create_app
from service.config import LogFormat, Settings
from service.mock.app import create_mock_app
from service.mock.settings import MockSettings
from service.telemetry.logging import configure_logging
from service.telemetry.setup import Telemetry

__all__ = ["RelayServer", "app_from_environ", "build_relay_app", "run_mock", "run_relay"]


class RelayServer(uvicorn.Server):
    """uvicorn server that stops in-flight streams (reason ``shutdown``) the moment a
    shutdown signal arrives, so their clients get an error event and their upstreams
    close while uvicorn still waits for the connections to finish."""

    def __init__(self, config: uvicorn.Config, state: RelayState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.registry.begin_shutdown()
        super().handle_exit(sig, frame)


def build_relay_app(settings: Settings, environ: Mapping[str, str]) -> Litestar:
    """The relay app with telemetry configured from ``environ`` (``OTEL_*``)."""
    return create_app(settings, telemetry=Telemetry.from_environ(environ))


def app_from_environ() -> Litestar:
    """Factory for ``uvicorn --factory service.server:app_from_environ --workers N``: settings
    and telemetry from the process environment (``RELAY_*``, ``OTEL_*``)."""
    settings = Settings.from_environ(os.environ)
    configure_logging(settings.log_format, settings.log_level)
    return build_relay_app(settings, os.environ)


def run_relay(settings: Settings, environ: Mapping[str, str]) -> None:
    """Serve the relay until SIGINT/SIGTERM."""
    configure_logging(settings.log_format, settings.log_level)
    app = build_relay_app(settings, environ)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 1,
        lifespan="on",
    )
    RelayServer(config, app.state["relay"]).run()


def run_mock(settings: MockSettings, log_format: LogFormat = "auto") -> None:
    """Serve the simulated provider until SIGINT/SIGTERM."""
    configure_logging(log_format, "info")
    app = create_mock_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()
