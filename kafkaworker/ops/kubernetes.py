"""Kubernetes manifests for an app, built from its handlers and settings (`kafkaworker
manifests`): per consumer group a Deployment (a StatefulSet with static membership), a
PodDisruptionBudget, a Service and a ServiceMonitor for Prometheus, and a KEDA ScaledObject
that scales the workload on the group's lag; with a secured cluster, a KEDA
TriggerAuthentication reading the same Secret as the worker. Per app, a PrometheusRule with
its alerts (kafkaworker/alerts.py).

Pure: the caller resolves the handlers (`Route`s) and settings; nothing here talks to Kafka.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafkaworker.errors import ConfigError
from kafkaworker.settings import Settings

Manifest = dict[str, Any]

# The image's defaults (Dockerfile): its metrics port, and the user it runs as.
DEFAULT_METRICS_PORT = 9400
IMAGE_UID = 10001
# Where the worker finds the Secret's files: SASL password, CA, client certificate and key.
SECRET_DIR = "/etc/kafkaworker/kafka"
# What a pod gets beyond shutdown_timeout before the kubelet kills it: the final commit,
# leaving the group and closing the clients take a few seconds after the drain.
GRACE_MARGIN = 15
# The Kafka scaler's trigger metadata keys, as KEDA documents them (keda.sh, scalers/apache-
# kafka, 2.17): only these are generated. A test holds the generated triggers to this list.
KEDA_KAFKA_METADATA_KEYS = frozenset(
    {
        "bootstrapServers",
        "consumerGroup",
        "topic",
        "lagThreshold",
        "activationLagThreshold",
        "offsetResetPolicy",
        "allowIdleConsumers",
        "scaleToZeroOnInvalidOffset",
        "excludePersistentLag",
        "limitToPartitionsWithLag",
        "ensureEvenDistributionOfPartitions",
        "version",
        "partitionLimitation",
        "sasl",
        "saslTokenProvider",
        "tls",
        "unsafeSsl",
        "awsRegion",
    }
)
# KEDA's Kafka authentication parameters, which are also the keys of the app's Secret: the
# worker reads the same keys, so one Secret serves both.
_KEDA_SASL = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
}
_ENV = "KAFKAWORKER_"


@dataclass(frozen=True)
class Route:
    """One handler as it will run: its name, source topics and consumer group."""

    name: str
    topics: tuple[str, ...]
    group: str
    mode: str = "stream"  # "queue": a share group (KIP-932)


@dataclass(frozen=True)
class Options:
    """What the command line chooses; the rest comes from the app and its settings."""

    app_ref: str
    image: str
    namespace: str | None = None
    bootstrap_servers: str | None = None  # None: the settings'
    secret: str | None = None  # None: "<app>-kafka"
    processes: int = 1
    min_replicas: int = 1
    max_replicas: int = 10
    lag_threshold: int = 100
    activation_lag_threshold: int = 1
    cpu_request: str = "250m"
    memory_request: str = "256Mi"
    memory_limit: str = "512Mi"
    labels: dict[str, str] = field(default_factory=dict)
    # A StatefulSet whose pod names (stable: NAME-0, NAME-1...) are the members' static names
    # (kafka.group_instance_id): a restarted pod takes its partitions back without a
    # rebalance; a pod removed for good leaves its partitions idle for session.timeout.ms.
    static_membership: bool = False


@dataclass(frozen=True)
class Workload:
    """The manifests of one consumer group (one Deployment)."""

    name: str
    group: str
    manifests: list[Manifest]


def dns_name(text: str) -> str:
    """`text` as a Kubernetes object name (RFC 1123 label: a-z, 0-9 and -, at most 63)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-")
    if not name:
        raise ConfigError(f"{text!r} gives no Kubernetes name (a-z, 0-9 and - only)")
    return name


def build(
    app_name: str, routes: Sequence[Route], settings: Settings, options: Options
) -> list[Workload]:
    """The manifests of every consumer group of the app, in the order its handlers come."""
    if not routes:
        raise ConfigError(f"app {app_name!r} has no handlers: nothing to deploy")
    groups: dict[str, list[Route]] = {}
    for route in routes:
        groups.setdefault(route.group, []).append(route)
    names: dict[str, str] = {}
    for group in groups:
        # One group named as the app (the default) keeps the app's name; others add theirs.
        name = dns_name(app_name if group == app_name else f"{app_name}-{group}")
        if name in names:
            raise ConfigError(
                f"consumer groups {names[name]!r} and {group!r} both give the Kubernetes name "
                f"{name!r}: rename one group"
            )
        names[name] = group
    security = _Security(settings, secret_name(app_name, options))
    return [
        Workload(
            name,
            group,
            _Group(app_name, name, groups[group], settings, options).manifests(security),
        )
        for name, group in names.items()
    ]


def prometheus_rule(
    app_name: str, workloads: Sequence[Workload], settings: Settings, options: Options
) -> Manifest:
    """The app's alerting rules (kafkaworker/alerts.py, thresholds from `alerts:`) for the
    Prometheus operator, reading only the app's series: its ServiceMonitors scrape its
    Services, whose names the operator gives the series as `job`."""
    from kafkaworker.alerts import rules  # noqa: PLC0415 - alerts imports settings only

    jobs = "|".join(w.name for w in workloads)
    selector = f'job=~"{jobs}"'
    if options.namespace:
        selector = f'namespace="{options.namespace}", {selector}'
    metadata: Manifest = {"name": f"{dns_name(app_name)}-alerts"}
    if options.namespace:
        metadata["namespace"] = options.namespace
    metadata["labels"] = {
        "app.kubernetes.io/part-of": dns_name(app_name),
        "app.kubernetes.io/managed-by": "kafkaworker",
        **options.labels,
    }
    groups = rules(settings.alerts, selector)
    for group in groups:
        group["name"] = f"kafkaworker-{dns_name(app_name)}"
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": groups},
    }


def secret_name(app_name: str, options: Options) -> str:
    """The Secret the worker and KEDA read the Kafka credentials from."""
    return options.secret or f"{dns_name(app_name)}-kafka"


def secret_keys(settings: Settings) -> list[str]:
    """The keys that Secret needs for these settings; [] when the cluster needs none."""
    return _Security(settings, "").keys


class _Group:
    """The manifests of one consumer group, from what they share."""

    def __init__(
        self, app_name: str, name: str, routes: list[Route], settings: Settings, options: Options
    ) -> None:
        self.name, self.routes, self.settings, self.options = name, routes, settings, options
        self.group = routes[0].group
        self.port = settings.metrics.port or DEFAULT_METRICS_PORT
        self.bootstrap = options.bootstrap_servers or settings.kafka.bootstrap_servers
        self.selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name}
        self.labels = {
            **self.selector,
            "app.kubernetes.io/part-of": dns_name(app_name),
            "app.kubernetes.io/component": "kafka-worker",
            "app.kubernetes.io/managed-by": "kafkaworker",
            **options.labels,
        }
        self.annotations = {
            "kafkaworker.io/app": options.app_ref,
            "kafkaworker.io/consumer-group": self.group,
            "kafkaworker.io/handlers": ",".join(r.name for r in routes),
        }

    def meta(self, name: str | None = None) -> Manifest:
        found: Manifest = {"name": name or self.name}
        if self.options.namespace:
            found["namespace"] = self.options.namespace
        found["labels"] = dict(self.labels)
        return found

    def manifests(self, security: _Security) -> list[Manifest]:
        selector, port = self.selector, self.port
        manifests = [
            self.stateful_set(security)
            if self.options.static_membership
            else self.deployment(security),
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": self.meta(),
                # One member at a time leaves for a voluntary disruption (a node drain): each
                # departure is a rebalance; maxUnavailable (not minAvailable) never blocks the
                # drain of a single replica.
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": self.meta(),
                "spec": {
                    "selector": selector,
                    "ports": [{"name": "metrics", "port": port, "targetPort": "metrics"}],
                },
            },
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": self.meta(),
                "spec": {
                    "selector": {"matchLabels": selector},
                    "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
                },
            },
        ]
        # A share group (queue mode) gets no ScaledObject: KEDA's Kafka scaler reads a
        # consumer group's committed offsets, which a share group has none of (its lag would
        # read as the whole log: always the maximum), and caps replicas at the partitions,
        # which is what queue mode is for going past. Scale its Deployment by hand or by CPU.
        scaled = all(route.mode == "stream" for route in self.routes)
        if scaled:
            manifests.append(self.scaled_object(security))
        if security.keys and scaled:
            manifests.append(security.trigger_authentication(self.meta(f"{self.name}-kafka")))
        return manifests

    def deployment(self, security: _Security) -> Manifest:
        metadata, annotations, selector = self.meta(), self.annotations, self.selector
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**metadata, "annotations": annotations},
            # No replicas: the ScaledObject's HPA owns the count, and a re-apply must not reset it.
            "spec": {
                "selector": {"matchLabels": selector},
                "strategy": {
                    "type": "RollingUpdate",
                    # One member leaves (drains, commits) before the next one joins: fewer
                    # rebalances during a rollout.
                    "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
                },
                "template": self.pod_template(security, static=False),
            },
        }

    def stateful_set(self, security: _Security) -> Manifest:
        """Static membership: a pod's name, stable across its restarts, is its members' name
        in the group. Its partitions wait for it while it restarts (up to session.timeout.ms)
        instead of moving twice, and no other member stops."""
        metadata, annotations, selector = self.meta(), self.annotations, self.selector
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {**metadata, "annotations": annotations},
            # No replicas: the ScaledObject's HPA owns the count, and a re-apply must not reset it.
            "spec": {
                "selector": {"matchLabels": selector},
                # The metrics Service; no per-pod DNS is needed, only the stable names.
                "serviceName": self.name,
                # Started and stopped together, not one by one: the members do not depend on
                # each other, and ordered start-up would hold the group's assignment back.
                "podManagementPolicy": "Parallel",
                # One pod at a time, each back under its name within its session: no rebalance.
                "updateStrategy": {"type": "RollingUpdate"},
                "template": self.pod_template(security, static=True),
            },
        }

    def pod_template(self, security: _Security, *, static: bool) -> Manifest:
        metadata, annotations = self.meta(), self.annotations
        routes, settings, options = self.routes, self.settings, self.options
        port, bootstrap = self.port, self.bootstrap
        args = ["run", options.app_ref]
        for route in routes:
            args += ["--only", route.name]
        if options.processes > 1:
            args += ["--processes", str(options.processes)]
        env = [
            {"name": f"{_ENV}KAFKA__BOOTSTRAP_SERVERS", "value": bootstrap},
            {"name": f"{_ENV}METRICS__PORT", "value": str(port)},
            # One JSON object per line, for the cluster's log collector.
            {"name": f"{_ENV}LOG_FORMAT", "value": "json"},
            *security.worker_env(),
        ]
        if static:
            env.append(
                {
                    "name": f"{_ENV}KAFKA__GROUP_INSTANCE_ID",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                }
            )
        volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
        mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]
        if security.files:
            # 0440 with fsGroup: readable by the worker's group only.
            volumes.append(
                {
                    "name": "kafka-credentials",
                    "secret": {"secretName": security.secret, "defaultMode": 0o440},
                }
            )
            mounts.append({"name": "kafka-credentials", "mountPath": SECRET_DIR, "readOnly": True})
        # Until the brokers answered (startup_timeout) the endpoint may not answer yet.
        startup_checks = math.ceil((settings.startup_timeout + 30) / 5)
        container: Manifest = {
            "name": "worker",
            "image": options.image,
            "args": args,
            "env": env,
            "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
            "startupProbe": {
                "httpGet": {"path": "/healthz", "port": "metrics"},
                "periodSeconds": 5,
                "failureThreshold": startup_checks,
            },
            # /healthz fails once a poll thread has not turned for max(revoke_timeout,
            # shutdown_timeout) + 30 s: a hung worker, restarted.
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "metrics"},
                "periodSeconds": 10,
                "timeoutSeconds": 3,
                "failureThreshold": 3,
            },
            # /readyz: every handler's consumer joined its group.
            "readinessProbe": {
                "httpGet": {"path": "/readyz", "port": "metrics"},
                "periodSeconds": 5,
                "timeoutSeconds": 3,
                "failureThreshold": 2,
            },
            "resources": {
                # A CPU request for scheduling and no CPU limit: throttling a consumer stretches
                # its poll loop and its rebalances; memory is limited (records are buffered).
                "requests": {
                    "cpu": _times(options.cpu_request, options.processes),
                    "memory": options.memory_request,
                },
                "limits": {"memory": options.memory_limit},
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": mounts,
        }
        grace = math.ceil(settings.shutdown_timeout) + GRACE_MARGIN
        return {
            "metadata": {"labels": dict(metadata["labels"]), "annotations": annotations},
            "spec": {
                # SIGTERM drains in-flight messages within shutdown_timeout, then commits.
                "terminationGracePeriodSeconds": grace,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": IMAGE_UID,
                    "runAsGroup": IMAGE_UID,
                    "fsGroup": IMAGE_UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
                "volumes": volumes,
            },
        }

    def scaled_object(self, security: _Security) -> Manifest:
        metadata, name, routes = self.meta(), self.name, self.routes
        settings, options, bootstrap = self.settings, self.options, self.bootstrap
        topics = list(dict.fromkeys(topic for route in routes for topic in route.topics))
        triggers = []
        for topic in topics:
            trigger: Manifest = {
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": bootstrap,
                    "consumerGroup": routes[0].group,
                    "topic": topic,
                    "lagThreshold": str(options.lag_threshold),
                    "activationLagThreshold": str(options.activation_lag_threshold),
                    # KEDA's lag for a group with no committed offset follows the same policy.
                    "offsetResetPolicy": settings.auto_offset_reset,
                    # Never more replicas than the topic has partitions: an extra member idles.
                    "allowIdleConsumers": "false",
                    **security.trigger_metadata(),
                },
            }
            if security.keys:
                trigger["authenticationRef"] = {"name": f"{name}-kafka"}
            triggers.append(trigger)
        return {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": metadata,
            "spec": {
                "scaleTargetRef": (
                    {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
                    if options.static_membership
                    else {"name": name}
                ),
                "minReplicaCount": options.min_replicas,
                "maxReplicaCount": options.max_replicas,
                "pollingInterval": 15,
                "cooldownPeriod": 300,
                "advanced": {
                    "horizontalPodAutoscalerConfig": {
                        # Every change of the member count is a rebalance: scale down slowly.
                        "behavior": {
                            "scaleDown": {
                                "stabilizationWindowSeconds": 300,
                                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                            }
                        }
                    }
                },
                # Retry topics are left out on purpose: their records wait there until due, and
                # that lag is not work more replicas could do.
                "triggers": triggers,
            },
        }


def _times(quantity: str, factor: int) -> str:
    """A CPU quantity ("250m", "1") times the processes per pod."""
    if factor == 1:
        return quantity
    if quantity.endswith("m"):
        return f"{int(quantity[:-1]) * factor}m"
    return f"{float(quantity) * factor:g}"


class _Security:
    """The worker's SASL/TLS settings as Secret keys: the worker reads them as files and
    environment variables, KEDA as TriggerAuthentication parameters of the same names."""

    def __init__(self, settings: Settings, secret: str) -> None:
        self.secret = secret
        sec = settings.kafka.security
        self.protocol = sec.protocol
        self.enabled = sec.protocol != "PLAINTEXT"
        self.tls = sec.protocol.endswith("SSL")
        self.sasl = sec.sasl
        self.ssl = sec.ssl
        # Secret key -> the worker's setting (as a file, or as an environment variable).
        self.files: dict[str, str] = {}
        self.values: dict[str, str] = {}
        sasl = sec.sasl
        if sasl is not None and sasl.mechanism != "OAUTHBEARER":
            self.values["username"] = "SECURITY__SASL__USERNAME"
            self.files["password"] = "SECURITY__SASL__PASSWORD_FILE"
        elif sasl is not None:
            oauth = sasl.oauthbearer
            assert oauth is not None  # settings validation: OAUTHBEARER has its section
            if oauth.method == "callback":
                raise ConfigError(
                    "sasl.oauthbearer method callback (a token provider, e.g. MSK IAM) has no "
                    "generated KEDA authentication: generate without it and write the "
                    "TriggerAuthentication yourself (KEDA: saslTokenProvider aws_msk_iam)"
                )
            # KEDA's oauthbearer takes the client credentials as username and password.
            self.values["username"] = "SECURITY__SASL__OAUTHBEARER__CLIENT_ID"
            self.files["password"] = "SECURITY__SASL__OAUTHBEARER__CLIENT_SECRET_FILE"
            self.values["oauthTokenEndpointUri"] = "SECURITY__SASL__OAUTHBEARER__TOKEN_ENDPOINT_URL"
            if oauth.scope:
                self.values["scopes"] = "SECURITY__SASL__OAUTHBEARER__SCOPE"
            if oauth.extensions:
                self.values["oauthExtensions"] = "SECURITY__SASL__OAUTHBEARER__EXTENSIONS"
        if self.ssl.ca_location is not None:
            self.files["ca"] = "SECURITY__SSL__CA_LOCATION"
        if self.ssl.certificate_location is not None:
            self.files["cert"] = "SECURITY__SSL__CERTIFICATE_LOCATION"
            self.files["key"] = "SECURITY__SSL__KEY_LOCATION"
        if self.ssl.key_password is not None or self.ssl.key_password_file is not None:
            self.files["keyPassword"] = "SECURITY__SSL__KEY_PASSWORD_FILE"

    def worker_env(self) -> list[Manifest]:
        if not self.enabled:
            return []
        env: list[Manifest] = [{"name": f"{_ENV}KAFKA__SECURITY__PROTOCOL", "value": self.protocol}]
        if self.sasl is not None:
            env.append(
                {"name": f"{_ENV}KAFKA__SECURITY__SASL__MECHANISM", "value": self.sasl.mechanism}
            )
        if self.sasl is not None and self.sasl.oauthbearer is not None:
            env.append(
                {"name": f"{_ENV}KAFKA__SECURITY__SASL__OAUTHBEARER__METHOD", "value": "oidc"}
            )
        for key, setting in self.values.items():
            env.append(
                {
                    "name": f"{_ENV}KAFKA__{setting}",
                    "valueFrom": {"secretKeyRef": {"name": self.secret, "key": key}},
                }
            )
        for key, setting in self.files.items():
            env.append({"name": f"{_ENV}KAFKA__{setting}", "value": f"{SECRET_DIR}/{key}"})
        if not self.ssl.endpoint_identification:
            env.append(
                {"name": f"{_ENV}KAFKA__SECURITY__SSL__ENDPOINT_IDENTIFICATION", "value": "false"}
            )
        return env

    def trigger_metadata(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.sasl is not None:
            found["sasl"] = _KEDA_SASL[self.sasl.mechanism]
        if self.tls:
            found["tls"] = "enable"
            if not self.ssl.endpoint_identification:
                # KEDA cannot skip only the host name check: the closest is no verification.
                found["unsafeSsl"] = "true"
        return found

    @property
    def keys(self) -> list[str]:
        """The keys the app's Secret must have; none: no Secret, no TriggerAuthentication."""
        return [*self.values, *self.files]

    def trigger_authentication(self, metadata: Manifest) -> Manifest:
        return {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "TriggerAuthentication",
            "metadata": metadata,
            "spec": {
                "secretTargetRef": [
                    {"parameter": key, "name": self.secret, "key": key} for key in self.keys
                ]
            },
        }
