"""The dead-letter alert fires for real: Debian's Prometheus server scrapes a live worker every
second with the rules of `kafkaworker alerts` (thresholds from the settings), and a burst of
failing records makes KafkaworkerDeadLetters fire, read from Prometheus' HTTP API; before the
burst, with records handled, nothing fires."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kafkaworker import App, Message
from kafkaworker.alerts import rules_file
from kafkaworker.testing.jvm import die_with_parent, free_port, stop_group
from tests.conftest import TopicFactory
from tests.support import make_settings, produce, running, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

JOB = "kafkaworker-alert-test"


class PrometheusServer:
    """`prometheus` scraping one target every second and evaluating `rules` every second, in a
    process group of its own that dies with the test process."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.directory = binary, directory
        self.port = free_port()
        self.rules = directory / "rules.yaml"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, target: int) -> None:
        config = self.directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(self.rules)],
                    "scrape_configs": [
                        {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}
                    ],
                }
            )
        )
        with open(self.directory / "prometheus.log", "wb") as log:
            self.process = subprocess.Popen(
                die_with_parent([
                    self.binary, f"--config.file={config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def api(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def scraping(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()
        try:
            targets = self.api("/api/v1/targets")["activeTargets"]
        except OSError:
            return False  # not answering yet
        return bool(targets) and targets[0]["health"] == "up"

    def value(self, query: str) -> float | None:
        found = self.api("/api/v1/query", query=query)["result"]
        return float(found[0]["value"][1]) if found else None

    def alerts(self, name: str, state: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.api("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == state
        ]

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")


@pytest.fixture
def prometheus(prometheus_binaries: dict[str, str], tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(prometheus_binaries["prometheus"], tmp_path)
    try:
        yield server
    finally:
        stop_group(server.process, timeout=10, kill=False)


def test_a_burst_of_dead_letters_fires_the_dlq_alert(
    kafka_bootstrap: str, new_topic: TopicFactory, prometheus: PrometheusServer
) -> None:
    topic = new_topic(2)
    app = App(f"alerts-{topic}")

    @app.handler(topic, dlq=f"{topic}.dlq")
    def handle(msg: Message[Any]) -> None:
        if msg.value.get("fail"):
            raise ValueError(f"record {msg.value['id']} is bad")

    metrics_port = free_port()
    settings = make_settings(
        kafka_bootstrap,
        metrics={"port": metrics_port, "host": "127.0.0.1"},
        # Fire at once above one dead letter a minute (averaged over the rule's 5 minutes):
        # a burst of 20 is 4 a minute.
        alerts={"dead_letters_per_minute": 1, "dead_letters_for": 0},
    )
    prometheus.rules.write_text(rules_file(settings.alerts))
    with running(app, settings):
        prometheus.start(metrics_port)
        wait_until(prometheus.scraping, 60, "Prometheus scraping the worker", step=0.5)
        produce(kafka_bootstrap, topic, [json.dumps({"id": i}).encode() for i in range(20)])
        finished = f'sum(kafkaworker_messages_finished_total{{job="{JOB}"}})'
        wait_until(lambda: prometheus.value(finished) == 20, 60, "20 finished", step=0.5)
        assert prometheus.api("/api/v1/alerts")["alerts"] == []

        produce(
            kafka_bootstrap,
            topic,
            [json.dumps({"id": 100 + i, "fail": True}).encode() for i in range(20)],
        )
        [alert] = wait_until(
            lambda: prometheus.alerts("KafkaworkerDeadLetters", "firing"),
            60,
            "KafkaworkerDeadLetters firing",
            step=0.5,
        )
    assert alert["labels"]["handler"] == "handle"
    assert alert["labels"]["job"] == JOB
    assert alert["labels"]["severity"] == "warning"
    assert float(alert["value"]) > 1  # dead letters a minute
    assert "dlq inspect" in alert["annotations"]["description"]
