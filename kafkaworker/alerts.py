"""Prometheus alerting rules for kafkaworker's metrics, thresholds from `alerts:` settings.

Pure: `rules()` returns the rule groups as data; `kafkaworker alerts` prints them as a rules
file, `kafkaworker manifests` wraps them in a PrometheusRule scoped to the app's Services,
and deploy/prometheus/kafkaworker-alerts.yaml is the file with the default thresholds (a test
regenerates it, and `promtool test rules` runs deploy/prometheus/kafkaworker-alerts.test.yaml
against it).

Every expression groups by (namespace, job, handler), plus the partition where the metric is
per partition: a handler's name is only unique within its app, and Prometheus gives every
series the job that scraped it (under the Prometheus operator, the Service's name; in
Kubernetes, the namespace too).
"""

from __future__ import annotations

from typing import Any

import yaml

from kafkaworker.settings import AlertSettings

GROUP = "kafkaworker"
BY = "namespace, job, handler"
BY_PARTITION = f"{BY}, topic, partition"
# Where an operator looks: the dashboards, and the commands that ask the cluster itself.
_PAGE = "the dashboard (kafkaworker dashboard: the fleet page)"
_LAG = "`kafkaworker lag MODULE:APP`"


def duration(seconds: float) -> str:
    """Seconds as a Prometheus duration: 900 -> 15m, 90 -> 90s, 5400 -> 90m, 0.5 -> 500ms."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def rules(settings: AlertSettings, selector: str = "") -> list[dict[str, Any]]:
    """The rule groups (a rules file's `groups`). `selector`: label matchers every metric is
    read with, e.g. 'job=~"orders|billing"' (empty: every kafkaworker in the Prometheus)."""

    def m(name: str) -> str:
        return f"{name}{{{selector}}}" if selector else name

    lag, lag_seconds = m("kafkaworker_consumer_lag"), m("kafkaworker_consumer_lag_seconds")
    stalled_window = duration(settings.commits_stalled_for)
    alerts = [
        _alert(
            "KafkaworkerLagGrowing",
            # A caught-up consumer's lag goes up and down by a poll batch: over 5-minute
            # windows its slope changes sign. Rising over every window for the whole
            # duration means it falls behind.
            f"(deriv((sum by ({BY}) ({lag}))[5m:30s]) > 0) and (sum by ({BY}) ({lag}) > 0)",
            settings.lag_growing_for,
            severity="warning",
            summary=(
                "The lag of {{ $labels.handler }} ({{ $labels.job }}) grows by "
                "{{ $value | humanize }} records a second"
            ),
            description=(
                f"It falls behind its topics. Look at the partitions' lag and owners on {_PAGE} "
                f"and at {_LAG}: one partition (a stuck key, a pause) or all (more replicas, up "
                "to the partitions; more concurrency)."
            ),
        ),
        _alert(
            "KafkaworkerTimeLagHigh",
            f"max by ({BY_PARTITION}) ({lag_seconds}) > {settings.time_lag_seconds:g}",
            settings.time_lag_for,
            severity="warning",
            summary=(
                "{{ $labels.topic }}[{{ $labels.partition }}] of {{ $labels.handler }} is "
                "{{ $value | humanizeDuration }} behind"
            ),
            description=(
                "Its oldest unfinished record is older than "
                f"{duration(settings.time_lag_seconds)}. Look at the partition (paused and why, "
                f"in flight, owner) on {_PAGE} and at {_LAG}."
            ),
        ),
        _alert(
            "KafkaworkerDeadLetters",
            f"sum by ({BY}) (rate({m('kafkaworker_dead_lettered_total')}[5m])) * 60 "
            f"> {settings.dead_letters_per_minute:g}",
            settings.dead_letters_for,
            severity="warning",
            summary=(
                "{{ $labels.handler }} ({{ $labels.job }}) dead-letters {{ $value | humanize }} "
                "records a minute"
            ),
            description=(
                f"Look at the failures and tracebacks on {_PAGE} and at the records: its DLQ "
                "explorer, or `kafkaworker dlq inspect <dlq>`; once fixed, replay them."
            ),
        ),
        _alert(
            "KafkaworkerRetriesStalled",
            f"sum by ({BY}) ({m('kafkaworker_stalled_messages')}) > 0",
            settings.stalled_for,
            severity="critical",
            summary=(
                "{{ $value }} message(s) of {{ $labels.handler }} ({{ $labels.job }}) stalled "
                "past their retries"
            ),
            description=(
                "They have nowhere to go (no dlq, on_exhausted=stall): their partitions commit "
                f"nothing past them. Look at the failures on {_PAGE}; fix the cause, or give "
                "the handler a dlq."
            ),
        ),
        _alert(
            "KafkaworkerCircuitOpen",
            f"max by ({BY}) ({m('kafkaworker_circuit_open')}) > 0",
            settings.breaker_open_for,
            severity="critical",
            summary="The circuit breaker of {{ $labels.handler }} ({{ $labels.job }}) is open",
            description=(
                "Most of its records went to the DLQ (or an operator opened it): its partitions "
                f"are paused. Look at the failures on {_PAGE} and at `kafkaworker dlq inspect "
                "<dlq>`."
            ),
        ),
        _alert(
            "KafkaworkerNotReady",
            f"min by ({BY}, instance) ({m('kafkaworker_ready')}) == 0",
            settings.not_ready_for,
            severity="critical",
            summary="{{ $labels.handler }} on {{ $labels.instance }} is not in its consumer group",
            description=(
                "Starting, rebalancing, draining, or the brokers do not answer. Look at the "
                f"process on {_PAGE}, its log and /readyz, and the group's state with {_LAG}."
            ),
        ),
        _alert(
            "KafkaworkerCommitsStalled",
            # The committed position not moving while records wait: the partition's oldest
            # waiting record stays the same one, so its age grows by a second a second
            # (kafkaworker_consumer_lag_seconds); any progress hands the age on to a younger
            # record and bends the slope down. That record is older than the window too (a
            # series younger than the window has not been stuck for all of it).
            f"(min by ({BY_PARTITION}) (min_over_time({lag}[{stalled_window}])) > 0) and "
            f"(max by ({BY_PARTITION}) (deriv({lag_seconds}[{stalled_window}])) > 0.9) and "
            f"(max by ({BY_PARTITION}) ({lag_seconds}) > {settings.commits_stalled_for:g})",
            0,
            severity="critical",
            summary=(
                "Commits of {{ $labels.topic }}[{{ $labels.partition }}] ({{ $labels.handler }}) "
                f"have not moved for {stalled_window}"
            ),
            description=(
                "Records wait and the committed position stays: a message stuck in the "
                f"handler, a pause, or a hung owner. Look at the partition on {_PAGE} and at "
                f"{_LAG}."
            ),
        ),
    ]
    return [{"name": GROUP, "rules": alerts}]


def _alert(
    name: str, expr: str, hold: float, *, severity: str, summary: str, description: str
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if hold:
        rule["for"] = duration(hold)
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


HEADER = "# Generated by `kafkaworker alerts` from the alerts: settings; regenerate, do not edit."


def rules_file(settings: AlertSettings, selector: str = "") -> str:
    """A Prometheus rules file (rule_files:, `promtool check rules`)."""
    body = yaml.safe_dump(
        {"groups": rules(settings, selector)}, sort_keys=False, width=120, allow_unicode=True
    )
    return f"{HEADER}\n{body}"
