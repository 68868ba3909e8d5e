"""The fleet on a secured cluster (the session's SASL_SSL broker with ACLs): a worker and
`kafkaworker dashboard` connect with the same kafka.security settings and create the fleet's
topics under the prefix user app may use; the password and the dashboard token appear in no
log, page, report, failure or audit record. Where the ACLs deny the fleet's topics, the
worker and the dashboard refuse to start in one line naming the topic and the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kafkaworker.testing.broker import Secured
from kafkaworker.testing.jvm import free_port
from tests.fleet.conftest import ROOT, TOKEN, as_env, fleet_settings
from tests.integration.test_security import create_topics, leaks, security_env
from tests.metrics_support import get
from tests.support import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def environment(secured: Secured, fleet: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KAFKAWORKER_")},
        "PYTHONPATH": str(ROOT),
        "KAFKAWORKER_STARTUP_TIMEOUT": "15",
        **security_env(secured, "scram"),
        **as_env("KAFKAWORKER_FLEET__", fleet),
        "KAFKAWORKER_DASHBOARD__TOKEN": TOKEN,
        **extra,
    }


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kafkaworker", *command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    try:
        return process.wait(40)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def read_all(bootstrap: str, topic: str) -> bytes:
    """Every record of `topic`, keys and values, as the super user on the plain listener."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, low)])
        found = b""
        seen = low
        while seen < high:
            for record in consumer.consume(100, 1.0):
                if record.error() is None:
                    found += (record.key() or b"") + (record.value() or b"") + b"\n"
                    seen = (record.offset() or 0) + 1
        return found
    finally:
        consumer.close()


def refused(env: dict[str, str], command: list[str]) -> str:
    """The one line a command that cannot start prints (it exits 1, no traceback)."""
    result = subprocess.run(
        [sys.executable, "-m", "kafkaworker", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    return line


def test_the_fleet_over_sasl_ssl_shows_no_secret(secured_kafka: Secured, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, app = f"app-{suffix}", f"app-{suffix}-orders"
    create_topics(secured_kafka, topic)
    # Under the prefix user app may create and use (it creates them itself).
    fleet = {
        **fleet_settings(suffix),
        **{k: f"app-{suffix}-fleet.{k}" for k in ("topic", "errors_topic", "commands_topic")},
        "audit_topic": f"app-{suffix}-fleet.audit",
    }
    env = environment(
        secured_kafka,
        fleet,
        FLEET_APP=app,
        FLEET_TOPIC=topic,
        FLEET_BROKEN=str(tmp_path / "broken"),
    )
    (tmp_path / "broken").touch()
    worker = start(["run", "tests.fleet.fleetapp:app"], env, tmp_path / "worker.log")
    port = free_port()
    dashboard_env = {**env, "KAFKAWORKER_DASHBOARD__CONTROL": "true"}
    dashboard = start(
        ["dashboard", "--port", str(port), "--host", "127.0.0.1"],
        dashboard_env,
        tmp_path / "dashboard.log",
    )
    pages: list[bytes] = []
    try:

        def shown() -> Any:
            assert dashboard.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            status, body = get(port, "/api/fleet")
            found = json.loads(body) if status == 200 else {"processes": []}
            ready = [p for p in found["processes"] if p["state"] == "ready" and p["partitions"]]
            return found if ready else None

        fleet_json = wait_until(shown, 90, "the worker shown ready on the fleet page")
        assert fleet_json["apps"][0]["name"] == app
        producer = Producer(secured_kafka.sasl_config(secured_kafka.app_user))
        producer.produce(topic, b'{"id": 1, "fail": true}')
        assert producer.flush(30) == 0
        wait_until(lambda: json.loads(get(port, "/api/failures")[1])["failures"], 30, "the failure")
        call = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/commands/pause",
            data=json.dumps({"topic": topic}).encode(),
            method="POST",
        )
        call.add_header("Authorization", f"Bearer {TOKEN}")
        with urllib.request.urlopen(call, timeout=30) as response:
            assert response.status == 202
        wait_until(lambda: json.loads(get(port, "/api/audit")[1])["audit"], 20, "the audit entry")
        for path in (
            "/",
            "/fleet.js",
            "/api/fleet",
            "/api/groups",
            "/api/failures",
            "/api/audit",
            f"/api/dlq/{topic}.dlq",
            "/metrics",
            "/healthz",
        ):
            pages.append(get(port, path)[1])
    finally:
        worker_code = stop(worker)
        stop(dashboard)
    assert worker_code == 0, (tmp_path / "worker.log").read_text()[-3000:]
    written = b"".join(
        read_all(secured_kafka.plain_bootstrap, fleet[key])
        for key in ("topic", "errors_topic", "commands_topic", "audit_topic")
    )
    assert b'"state":"stopped"' in written  # the reports are there, the final one too
    for secret in (secured_kafka.app_password, TOKEN):
        assert not leaks(
            secret,
            (tmp_path / "worker.log").read_text(),
            (tmp_path / "dashboard.log").read_text(),
            *(page.decode(errors="replace") for page in pages),
            written.decode(errors="replace"),
        )


def test_fleet_topics_the_acls_deny_refuse_start_up_in_one_line(
    secured_kafka: Secured, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic = f"app-{suffix}"
    create_topics(secured_kafka, topic)
    # The default names: user app may not even describe __kafkaworker.*.
    env = environment(
        secured_kafka, {"enabled": True}, FLEET_APP=f"app-{suffix}-orders", FLEET_TOPIC=topic
    )
    for command in (["run", "tests.fleet.fleetapp:app"], ["dashboard", "--port", str(free_port())]):
        line = refused(env, command)
        assert line.startswith("Error: user 'app' is not authorized to Describe and "), line
        assert "'__kafkaworker." in line and "the fleet's" in line

    # Allowed to see the topic but not to create it: one line naming the setting. (User
    # nobody, whose ACLs are this test's alone.)
    missing = f"fleet-{suffix}.reports"
    secured_kafka.allow("nobody", topics=[missing], operations=["DESCRIBE", "WRITE"])
    try:
        env = environment(
            secured_kafka,
            {"enabled": True, "topic": missing},
            FLEET_APP=f"app-{suffix}-orders",
            FLEET_TOPIC=topic,
            KAFKAWORKER_KAFKA__SECURITY__SASL__USERNAME="nobody",
            KAFKAWORKER_KAFKA__SECURITY__SASL__PASSWORD=secured_kafka.nobody_password,
        )
        line = refused(env, ["run", "tests.fleet.fleetapp:app"])
    finally:
        secured_kafka.revoke("nobody")
    assert line.startswith(
        f"Error: user 'nobody' is not authorized to create the fleet's reports topic '{missing}'"
    ), line
    assert "set fleet.topic" in line
