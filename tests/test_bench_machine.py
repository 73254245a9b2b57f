"""What a results page records about the machine and the stack it ran on."""

from __future__ import annotations

from importlib import metadata

from service.bench.machine import RELAY_PACKAGES, cpu_model, package_versions


def test_versions_of_the_relay_stack_as_installed() -> None:
    versions = package_versions()
    assert list(versions) == list(RELAY_PACKAGES)
    assert versions["httpx-aiohttp"] == metadata.version("httpx-aiohttp")
    assert all(versions.values())  # every package the relay runs on is installed


def test_a_missing_package_has_no_version() -> None:
    assert package_versions(["no-such-package-here"]) == {"no-such-package-here": None}


def test_the_cpu_model_is_named() -> None:
    assert cpu_model().strip()
