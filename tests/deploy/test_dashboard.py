"""deploy/grafana/kafkaworker.json: every metric its panels and variables query is one a live
worker serves, so that no panel silently shows nothing after a rename."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kafkaworker import App, DeadLetter, Message
from tests.conftest import TopicFactory
from tests.metrics_support import get
from tests.support import make_settings, produce, running, wait_until

DASHBOARD = (
    Path(__file__).resolve().parent.parent.parent / "deploy" / "grafana" / "kafkaworker.json"
)
# What every kafkaworker dashboard must show (issue 17), by the metric that shows it.
REQUIRED = {
    "kafkaworker_messages_finished_total",  # throughput
    "kafkaworker_handler_seconds_total",  # handler time
    "kafkaworker_in_flight_messages",
    "kafkaworker_consumer_lag",  # offset lag per partition
    "kafkaworker_consumer_lag_seconds",  # time lag per partition
    "kafkaworker_paused_partitions",
    "kafkaworker_rebalances_total",
    "kafkaworker_dead_lettered_total",
    "kafkaworker_retried_later_total",
    "kafkaworker_skipped_total",
    "kafkaworker_circuit_open",
    "process_resident_memory_bytes",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: every identifier left once strings, label
    matchers, ranges and grouping clauses are removed, except functions and keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    words = {"by", "without", "and", "or", "unless", "bool", "offset"}
    return {
        match.group(1)
        for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr)
        if match.group(2) is None
        and match.group(1) not in words
        and not match.group(1)[0].isdigit()
    }


def test_metric_names_are_found_in_promql() -> None:
    expr = 'sum by (handler) (rate(a_total{job=~"$job", x="y z"}[5m])) / max(b) > bool 0'
    assert metric_names(expr) == {"a_total", "b"}
    assert metric_names("histogram_quantile(0.9, sum(rate(c_bucket[1m])) by (le))") == {"c_bucket"}


def dashboard_metrics() -> dict[str, set[str]]:
    """Metric names by where they are queried (panel title or variable name)."""
    board = json.loads(DASHBOARD.read_text())
    found: dict[str, set[str]] = {}
    for panel in board["panels"]:
        assert panel.get("targets"), f"panel {panel['title']!r} queries nothing"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            found.setdefault(panel["title"], set()).update(names)
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            [metric] = re.findall(
                r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", variable["definition"]
            )
            found[f"${variable['name']}"] = {metric}
    return found


@pytest.mark.kafka
def test_every_dashboard_metric_is_served_by_a_live_worker(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic, dlq = new_topic(2), new_topic(2, prefix="dlq")
    app = App("dashboard-check")

    @app.handler(topic, dlq=dlq, codec="raw")
    def handle(msg: Message[bytes]) -> None:
        if int(msg.value) % 3 == 0:
            raise DeadLetter("a third of them, so the failure counters have samples")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    with running(app, make_settings(kafka_bootstrap, metrics={"port": port})):
        produce(kafka_bootstrap, topic, [b"%d" % i for i in range(30)])

        def finished() -> bool:
            status, body = get(port, "/metrics")
            match = re.search(rb"^kafkaworker_messages_finished_total\{[^}]*\} (\S+)$", body, re.M)
            return status == 200 and match is not None and float(match.group(1)) >= 30

        wait_until(finished, 60, "30 messages finished")
        status, body = get(port, "/metrics")
    assert status == 200
    served: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        # A labelled family with no sample yet still declares itself (HELP, TYPE).
        served.add(family.name)
        if family.type == "counter":
            served.add(f"{family.name}_total")
        served.update(sample.name for sample in family.samples)
    queried = dashboard_metrics()
    missing = {where: names - served for where, names in queried.items() if names - served}
    assert missing == {}, f"the dashboard queries metrics no worker serves: {missing}"
    shown = set().union(*queried.values())
    assert shown >= REQUIRED, f"the dashboard shows nothing of {REQUIRED - shown}"
