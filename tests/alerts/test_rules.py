"""The alerting rules (kafkaworker/alerts.py): the checked-in rules file is what `kafkaworker
alerts` writes with the default thresholds, promtool accepts it and its unit tests pass (each
alert fires on the series of its trouble and not on healthy look-alikes), thresholds come
from the settings, and `kafkaworker manifests` carries them as a PrometheusRule scoped to the
app's Services."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kafkaworker.alerts import duration, rules_file
from kafkaworker.settings import AlertSettings
from tests.alerts.conftest import ROOT, RULES_DIR, promtool

CHECKED_IN = RULES_DIR / "kafkaworker-alerts.yaml"
ALERTS = {
    "KafkaworkerLagGrowing",
    "KafkaworkerTimeLagHigh",
    "KafkaworkerDeadLetters",
    "KafkaworkerRetriesStalled",
    "KafkaworkerCircuitOpen",
    "KafkaworkerNotReady",
    "KafkaworkerCommitsStalled",
}


def kafkaworker(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """The command as a user runs it: its own process, no KAFKAWORKER_* of ours."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAFKAWORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "kafkaworker", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def test_durations_are_prometheus_durations() -> None:
    assert [duration(s) for s in (900, 90, 5400, 3600, 0.5, 0)] == [
        "15m", "90s", "90m", "1h", "500ms", "0s",
    ]  # fmt: skip


def test_the_checked_in_rules_are_current(tmp_path: Path) -> None:
    written = kafkaworker("alerts", cwd=tmp_path)  # no settings.yaml there: the defaults
    assert written.returncode == 0, written.stderr
    assert written.stdout == rules_file(AlertSettings()) == CHECKED_IN.read_text(), (
        "deploy/prometheus/kafkaworker-alerts.yaml is out of date: regenerate it with "
        "`kafkaworker alerts > deploy/prometheus/kafkaworker-alerts.yaml` (no settings.yaml)"
    )
    names = {r["alert"] for r in yaml.safe_load(written.stdout)["groups"][0]["rules"]}
    assert names == ALERTS
    for rule in yaml.safe_load(written.stdout)["groups"][0]["rules"]:
        # Every description says where to look.
        assert "kafkaworker dashboard" in rule["annotations"]["description"], rule["alert"]


def test_promtool_accepts_the_rules_and_their_unit_tests_pass(
    prometheus_binaries: dict[str, str],
) -> None:
    assert "SUCCESS: 7 rules found" in promtool(
        prometheus_binaries, "check", "rules", CHECKED_IN.name
    )
    out = promtool(prometheus_binaries, "test", "rules", "kafkaworker-alerts.test.yaml")
    assert "SUCCESS" in out


def test_a_failing_unit_test_fails(prometheus_binaries: dict[str, str], tmp_path: Path) -> None:
    """The unit tests can fail: with a threshold of 100 dead letters a minute the test that
    expects 20 a minute to fire does."""
    higher = rules_file(AlertSettings(dead_letters_per_minute=100))
    (tmp_path / CHECKED_IN.name).write_text(higher)
    tests = (RULES_DIR / "kafkaworker-alerts.test.yaml").read_text()
    (tmp_path / "t.yaml").write_text(tests)
    result = subprocess.run(
        [prometheus_binaries["promtool"], "test", "rules", "t.yaml"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "alertname: KafkaworkerDeadLetters" in result.stdout + result.stderr


def test_thresholds_come_from_the_settings(
    prometheus_binaries: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "settings.yaml").write_text(
        "alerts:\n  dead_letters_per_minute: 5\n  time_lag_seconds: 60\n"
    )
    written = kafkaworker("alerts", cwd=tmp_path, env={"KAFKAWORKER_ALERTS__STALLED_FOR": "30"})
    assert written.returncode == 0, written.stderr
    rules = {r["alert"]: r for r in yaml.safe_load(written.stdout)["groups"][0]["rules"]}
    assert rules["KafkaworkerDeadLetters"]["expr"].endswith("* 60 > 5")
    assert rules["KafkaworkerTimeLagHigh"]["expr"].endswith("> 60")
    assert rules["KafkaworkerRetriesStalled"]["for"] == "30s"
    (tmp_path / "rules.yaml").write_text(written.stdout)
    promtool(prometheus_binaries, "check", "rules", "rules.yaml", cwd=tmp_path)

    bad = kafkaworker("alerts", cwd=tmp_path, env={"KAFKAWORKER_ALERTS__TIME_LAG_SECONDS": "-1"})
    assert bad.returncode == 1
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("Error: setting alerts.time_lag_seconds='-1' is invalid"), line


def test_manifests_carry_the_alerts_for_the_app_s_services(
    prometheus_binaries: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "deploy"
    written = kafkaworker(
        "manifests", "apps.orders.app:app", "--image", "img:1", "--namespace", "orders",
        "--out", str(out), cwd=ROOT,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    [rule] = [
        doc
        for path in sorted(out.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc["kind"] == "PrometheusRule"
    ]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "orders"
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert f"{rule['metadata']['name']}.yaml" in kustomization["resources"]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len(exprs) == len(ALERTS)
    for expr in exprs:
        # Only the app's series: its Services' names are the jobs of its ServiceMonitors.
        assert "kafkaworker_" in expr and '{namespace="orders", job=~"orders-service"}' in expr
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    promtool(prometheus_binaries, "check", "rules", "rules.yaml", cwd=tmp_path)
