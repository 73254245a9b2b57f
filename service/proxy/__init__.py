"""Reverse proxies in front of the relay: run the project's nginx configs as child processes."""

from service.proxy.nginx import (
    DEFAULT_CONFIGS_DIR,
    ConfigName,
    NginxError,
    NginxProcess,
    check_config,
    nginx_binary,
    nginx_version,
    render_prefix,
    run_nginx,
)

__all__ = [
    "DEFAULT_CONFIGS_DIR",
    "ConfigName",
    "NginxError",
    "NginxProcess",
    "check_config",
    "nginx_binary",
    "nginx_version",
    "render_prefix",
    "run_nginx",
]
