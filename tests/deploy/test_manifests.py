"""`kafkaworker manifests`: the Kubernetes manifests validate against Kubernetes' own schemas,
KEDA's triggers use only the keys KEDA documents, the probes reach what a worker serves, and
the checked-in example (deploy/kubernetes) is what the command writes today."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kafkaworker.ops.kubernetes import Options, Route, build
from kafkaworker.settings import Settings
from kafkaworker.testing.certs import CertificateAuthority
from tests.conftest import TopicFactory
from tests.metrics_support import get
from tests.support import wait_until

try:
    import kubernetes_validate  # type: ignore[import-untyped]
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "kubernetes-validate is not installed: make install (a dev dependency)",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "deploy" / "kubernetes"
# How deploy/kubernetes was generated (its files' header says so too).
EXAMPLE_ARGS = [
    "apps.orders.app:app",
    "--image",
    "registry.example.com/kafkaworker:0.1.0",
    "--namespace",
    "orders",
    "--bootstrap-servers",
    "my-cluster-kafka-bootstrap.kafka:9092",
]
# The Kafka scaler's trigger metadata and authentication parameters as KEDA documents them
# (keda.sh/docs/2.17/scalers/apache-kafka), written out here rather than imported from the
# code under test.
KEDA_TRIGGER_KEYS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
    "excludePersistentLag", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
    "version", "partitionLimitation", "sasl", "saslTokenProvider", "tls", "unsafeSsl",
    "awsRegion",
}  # fmt: skip
KEDA_AUTH_PARAMETERS = {
    "sasl", "saslTokenProvider", "username", "password", "keytab", "realm", "kerberosConfig",
    "kerberosServiceName", "kerberosDisableFAST", "oauthTokenEndpointUri", "scopes",
    "oauthExtensions", "tls", "ca", "cert", "key", "keyPassword", "awsRoleArn",
    "awsAccessKeyID", "awsSecretAccessKey",
}  # fmt: skip
CORE_KINDS = {"Deployment", "PodDisruptionBudget", "Service"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def generate(*args: str, out: Path, env: dict[str, str] | None = None) -> dict[str, list[Any]]:
    """Run the command as a user would (its own process, no KAFKAWORKER_* of ours); the
    documents written, by kind."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAFKAWORKER_")}
    result = subprocess.run(
        [sys.executable, "-m", "kafkaworker", "manifests", *args, "--out", str(out)],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return by_kind(out)


def by_kind(directory: Path) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found.setdefault(doc["kind"], []).append(doc)
    return found


def check_manifests(docs: dict[str, list[Any]]) -> None:
    """Every rule the generated manifests must keep, whatever the app and settings."""
    version = kubernetes_validate.latest_version()
    for kind in CORE_KINDS:
        assert docs.get(kind), f"no {kind}"
        for doc in docs[kind]:
            # strict: an unknown field (a typo) is an error too.
            kubernetes_validate.validate(doc, version, strict=True)
    for scaled in docs["ScaledObject"]:
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        targets = {d["metadata"]["name"] for d in docs["Deployment"]}
        assert scaled["spec"]["scaleTargetRef"]["name"] in targets
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "kafka"
            metadata = trigger["metadata"]
            assert set(metadata) <= KEDA_TRIGGER_KEYS, set(metadata) - KEDA_TRIGGER_KEYS
            # KEDA's metadata is a map of strings: a YAML number or boolean is refused.
            assert all(isinstance(v, str) for v in metadata.values()), metadata
            assert metadata["allowIdleConsumers"] == "false"
            assert {"bootstrapServers", "consumerGroup", "topic"} <= set(metadata)
    for auth in docs.get("TriggerAuthentication", []):
        parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        assert parameters <= KEDA_AUTH_PARAMETERS, parameters - KEDA_AUTH_PARAMETERS
    for deployment in docs["Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert ports["metrics"] == int(env["KAFKAWORKER_METRICS__PORT"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for monitor in docs["ServiceMonitor"]:
            assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def by_kinds(manifests: list[Any]) -> dict[str, list[Any]]:
    docs: dict[str, list[Any]] = {}
    for doc in manifests:
        docs.setdefault(doc["kind"], []).append(doc)
    return docs


def test_checked_in_example_is_current_and_valid(tmp_path: Path) -> None:
    docs = generate(*EXAMPLE_ARGS, out=tmp_path)
    written = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    example = {p.name: p.read_text() for p in EXAMPLE.glob("*.yaml")}
    assert written == example, (
        "deploy/kubernetes is out of date: regenerate it with "
        f"`kafkaworker manifests {' '.join(EXAMPLE_ARGS)} --out deploy/kubernetes`"
    )
    check_manifests(docs)
    [deployment] = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > Settings().shutdown_timeout
    [scaled] = docs["ScaledObject"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["metadata"]["consumerGroup"] == "orders-service"
    assert trigger["metadata"]["topic"] == "orders"
    assert trigger["metadata"]["offsetResetPolicy"] == "earliest"
    assert "TriggerAuthentication" not in docs  # a PLAINTEXT cluster needs no credentials


def test_grace_period_group_per_deployment_and_offset_policy() -> None:
    settings = Settings.model_validate(
        {"shutdown_timeout": 75, "auto_offset_reset": "latest", "metrics": {"port": 9555}}
    )
    routes = [
        Route("ingest", ("a", "b"), "svc"),
        Route("audit", ("a",), "svc-audit"),
        Route("more", ("c",), "svc"),
    ]
    workloads = build("svc", routes, settings, Options("m:app", "img:1"))
    assert [(w.name, w.group) for w in workloads] == [
        ("svc", "svc"),
        ("svc-svc-audit", "svc-audit"),
    ]
    docs = by_kinds([doc for w in workloads for doc in w.manifests])
    check_manifests(docs)
    first = docs["Deployment"][0]["spec"]["template"]["spec"]
    assert first["terminationGracePeriodSeconds"] > 75
    assert first["containers"][0]["args"] == ["run", "m:app", "--only", "ingest", "--only", "more"]
    triggers = docs["ScaledObject"][0]["spec"]["triggers"]
    assert [t["metadata"]["topic"] for t in triggers] == ["a", "b", "c"]
    assert {t["metadata"]["offsetResetPolicy"] for t in triggers} == {"latest"}


def test_static_membership_is_a_stateful_set_whose_pod_names_are_the_members_names(
    tmp_path: Path,
) -> None:
    docs = generate(*EXAMPLE_ARGS, "--static-membership", out=tmp_path)
    assert "Deployment" not in docs
    [stateful] = docs["StatefulSet"]
    kubernetes_validate.validate(stateful, kubernetes_validate.latest_version(), strict=True)
    spec = stateful["spec"]
    assert "replicas" not in spec, "the HPA owns the replica count"
    assert spec["serviceName"] in {service["metadata"]["name"] for service in docs["Service"]}
    assert spec["podManagementPolicy"] == "Parallel"
    [container] = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKAWORKER_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    [scaled] = docs["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": stateful["metadata"]["name"],
    }
    header = (tmp_path / "orders-service.yaml").read_text()
    assert "--static-membership" in header and "session.timeout.ms" in header


def test_secured_cluster_credentials_come_from_one_secret(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path)
    client = authority.client_cert("app", key_password="key-secret-1")
    password = "sasl-secret-2"
    settings = Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": "kafka:9093",
                "security": {
                    "protocol": "SASL_SSL",
                    "sasl": {"mechanism": "SCRAM-SHA-512", "username": "app", "password": password},
                    "ssl": {
                        "ca_location": str(authority.path),
                        "certificate_location": str(client.certificate),
                        "key_location": str(client.key),
                        "key_password": "key-secret-1",
                    },
                },
            }
        }
    )
    route = Route("h", ("orders",), "orders")
    [workload] = build("orders", [route], settings, Options("m:app", "img"))
    text = yaml.safe_dump_all(workload.manifests)
    assert password not in text and "key-secret-1" not in text, "a secret written inline"
    docs = by_kinds(workload.manifests)
    check_manifests(docs)
    [auth] = docs["TriggerAuthentication"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    keys = ("username", "password", "ca", "cert", "key", "keyPassword")
    assert refs == {key: ("orders-kafka", key) for key in keys}
    [scaled] = docs["ScaledObject"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"
    # The worker reads the same Secret: the username from its key, the rest as mounted files.
    pod = docs["Deployment"][0]["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "orders-kafka"
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e for e in container["env"]}
    prefix = "KAFKAWORKER_KAFKA__SECURITY__"
    assert env[f"{prefix}SASL__USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "orders-kafka",
        "key": "username",
    }
    for setting, key in (
        ("SASL__PASSWORD_FILE", "password"),
        ("SSL__CA_LOCATION", "ca"),
        ("SSL__CERTIFICATE_LOCATION", "cert"),
        ("SSL__KEY_LOCATION", "key"),
        ("SSL__KEY_PASSWORD_FILE", "keyPassword"),
    ):
        assert env[prefix + setting]["value"] == f"{mount['mountPath']}/{key}"
    assert env[f"{prefix}PROTOCOL"]["value"] == "SASL_SSL"


@pytest.mark.kafka
def test_probes_reach_what_the_worker_serves(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """The Deployment's own args and environment run a worker here; each probe's path on
    each probe's port answers 200, and SIGTERM ends it with 0 within the grace period."""
    orders, accepted, dlq = (new_topic(1, prefix=p) for p in ("orders", "accepted", "dlq"))
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(
        yaml.safe_dump(
            {
                "metrics": {"port": free_port()},
                "handlers": {"accept_order": {"topics": orders, "output": accepted, "dlq": dlq}},
            }
        )
    )
    env = {"KAFKAWORKER_SETTINGS": str(settings_file)}
    docs = generate(
        "apps.orders.app:app", "--image", "img", "--bootstrap-servers", kafka_bootstrap,
        out=tmp_path / "out", env=env,
    )  # fmt: skip
    check_manifests(docs)
    [deployment] = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    worker_env = {e["name"]: e["value"] for e in container["env"]}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAFKAWORKER_")}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "kafkaworker", *container["args"]],
            cwd=ROOT,
            env={**clean, **worker_env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = container[probe]["httpGet"]
            port, path = ports[action["port"]], action["path"]

            def answered(port: int = port, path: str = path) -> bool:
                return get(port, path)[0] == 200 or worker.poll() is not None

            wait_until(answered, 60, f"{probe} {path} on {port}")
            assert worker.poll() is None, log.read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(pod["terminationGracePeriodSeconds"]) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
