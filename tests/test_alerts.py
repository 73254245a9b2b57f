"""runbook/alerts.yml: promtool accepts it, its unit tests pass, and they cover every alert
firing and not firing; every alert links an existing runbook page."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.dashboards.queries import TTFT_SLO_BUCKET, TTFT_SLO_SECONDS, TTFT_SLO_TARGET
from service.prom import ALERT_RULES, RUNBOOK_DIR, binary

RULE_TESTS = ALERT_RULES.with_name("alerts.test.yml")
_REQUIRED_ANNOTATIONS = {"summary", "description", "runbook_url"}
_RUNBOOK_URL = re.compile(
    r"^\{\{ with \$externalLabels\.runbook_base_url \}\}\{\{ \. \}\}"
    r"\{\{ else \}\}runbook/alerts\{\{ end \}\}/(?P<page>[A-Za-z]+\.md)$"
)


def _alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def _rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return tests


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules_accepts_the_rules() -> None:
    result = _promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The harness is not vacuous: an expectation that is wrong makes promtool fail."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(ALERT_RULES)]
    case = next(
        t
        for t in tests["tests"]
        for c in t["alert_rule_test"]
        if c["alertname"] == "RelayRetryStorm"
    )
    for check in case["alert_rule_test"]:
        check["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {"severity": "page"}}]
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump({**tests, "tests": [case]}))
    result = _promtool("test", "rules", str(broken))
    assert result.returncode != 0
    assert "RelayRetryStorm" in result.stdout + result.stderr


def test_every_alert_has_firing_and_silent_cases() -> None:
    fired: dict[str, set[str]] = {}
    silent: set[str] = set()
    for case in _rule_tests():
        for check in case["alert_rule_test"]:
            name = check["alertname"]
            if check["exp_alerts"]:
                for alert in check["exp_alerts"]:
                    fired.setdefault(name, set()).add(alert["exp_labels"].get("signal", ""))
            else:
                silent.add(name)
    names = {a["alert"] for a in _alerts()}
    assert names - set(fired) == set(), "alerts without a firing case"
    assert names - silent == set(), "alerts without a not-firing case"
    # Alerts built from several `signal`s need a firing case for each one.
    for alert in _alerts():
        signals = set(re.findall(r'"signal", "(\w+)"', alert["expr"]))
        assert signals <= fired[alert["alert"]], f"{alert['alert']}: untested signals"


def test_the_issue_required_alerts_exist() -> None:
    names = {a["alert"] for a in _alerts()}
    assert {
        "RelayTTFTBudgetBurnFast",
        "RelayTTFTBudgetBurnSlow",
        "RelayProxyBufferingSuspected",
        "RelayCancellationsNotReachingUpstream",
        "RelayUpstreamErrorRateHigh",
        "RelayRetryStorm",
        "RelaySlowClientAborts",
        "RelayInFlightSaturation",
        "RelayQueuedBytesHigh",
    } <= names


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_annotations_and_runbook_page(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in {"page", "ticket"}
    assert set(alert["annotations"]) >= _REQUIRED_ANNOTATIONS
    match = _RUNBOOK_URL.match(alert["annotations"]["runbook_url"])
    assert match, alert["annotations"]["runbook_url"]
    assert match["page"] == f"{alert['alert']}.md"
    page = RUNBOOK_DIR / match["page"]
    assert page.is_file(), f"missing runbook page {page}"
    text = page.read_text()
    assert text.startswith(f"# {alert['alert']}\n")
    for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
        assert section in text, f"{page.name}: no {section!r} section"


def test_every_runbook_page_belongs_to_an_alert() -> None:
    names = {a["alert"] for a in _alerts()}
    pages = {p.stem for p in RUNBOOK_DIR.glob("*.md")}
    assert pages == names


def test_slo_numbers_match_the_dashboards() -> None:
    text = ALERT_RULES.read_text()
    assert float(TTFT_SLO_BUCKET) == TTFT_SLO_SECONDS
    assert f'_bucket{{le="{TTFT_SLO_BUCKET}"}}' in text
    budget = round(1 - TTFT_SLO_TARGET, 4)
    assert f"(14.4 * {budget})" in text
    assert f"(6 * {budget})" in text
