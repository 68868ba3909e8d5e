"""A real Apache Kafka (KRaft, broker + controller in one JVM) on loopback, for tests.

No Docker here, so the broker is the Apache Kafka jars from Maven Central, run straight from a
cache outside the work tree. One node, or a three-node cluster whose nodes a test can stop and
start one at a time.

Every JVM runs in its own session (so it is stopped with its whole process group) under
`setpriv --pdeathsig KILL`, so it also dies with the Python process that started it when that
process is killed with SIGKILL: a failed or interrupted run never leaves an orphan broker behind.
setpriv sets PR_SET_PDEATHSIG between fork and exec in C; a Python preexec_fn would do the same
but can deadlock in a process that already runs threads, as a test process does.

    python -m kafkaworker.testing.broker fetch            # fetch the jars (idempotent)
    python -m kafkaworker.testing.broker run --port 9092  # a dev broker; Ctrl+C stops it
    python -m kafkaworker.testing.broker run --secured    # ... with SASL_SSL and mTLS too

`Cluster(1, secured=True)` adds, on the same node as the PLAINTEXT listener the rest of the
suite uses, a SASL_SSL listener (SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN users) and an SSL
listener that requires a client certificate (mTLS), with the StandardAuthorizer and ACLs;
`Cluster.secured` (a `Secured`) has their addresses, users, certificates and an ACL helper.
"""

from __future__ import annotations

import base64
import faulthandler
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from kafkaworker.testing import maven
from kafkaworker.testing.jvm import (
    DevServer,
    command_line,
    die_with_parent,
    fetch,
    free_port,
    run_in_foreground,
    signal_group,
    spawn,
    stop_group,
)

if TYPE_CHECKING:
    # Imported when a secured cluster is asked for: `cryptography` is a dev dependency.
    from kafkaworker.testing.certs import CertificateAuthority, ClientCert

POM = Path(__file__).with_name("pom.xml")


class BrokerError(RuntimeError):
    """The broker could not be fetched or started; the message says what to do."""


def kafka_version() -> str:
    """The version pinned in pom.xml, the single place it is written."""
    return maven.pinned_version(POM, "kafka.version", BrokerError)


def cache_dir() -> Path:
    return maven.cache_dir(f"kafka-{kafka_version()}")


def ensure_jars() -> Path:
    """Return the directory of broker jars, fetching them with Maven the first time."""
    return maven.fetch(
        POM,
        ["dependency:copy-dependencies", "-DincludeScope=runtime"],
        target=cache_dir(),
        what=f"the Kafka broker (Apache Kafka {kafka_version()} jars)",
        error=BrokerError,
    )


# Tuned for tests on a 2-core machine: fast group joins, small internal topics, short sessions
# for the kill -9 tests, and every group protocol (classic, KIP-848 consumer, KIP-932 share).
TEST_BROKER_PROPERTIES: dict[str, str] = {
    "num.partitions": "1",
    "auto.create.topics.enable": "false",
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.num.partitions": "4",
    "group.min.session.timeout.ms": "1000",
    "group.consumer.min.session.timeout.ms": "3000",
    "group.consumer.session.timeout.ms": "10000",
    "group.consumer.min.heartbeat.interval.ms": "250",
    "group.consumer.heartbeat.interval.ms": "1000",
    "group.share.min.heartbeat.interval.ms": "250",
    "group.share.heartbeat.interval.ms": "1000",
    # Lets a test give its share group a 4 s acquisition lock (Kafka's floor is 15 s).
    "group.share.min.record.lock.duration.ms": "1000",
    "group.coordinator.rebalance.protocols": "classic,consumer,share",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "log.cleaner.threads": "1",
    "num.recovery.threads.per.data.dir": "1",
}


@dataclass
class Node:
    """One KRaft node (broker + controller) and the JVM running it."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    jars: Path
    heap: str
    process: subprocess.Popen[bytes] | None = None
    properties: dict[str, str] = field(default_factory=dict)
    # A secured node (Cluster(secured=True)): the SASL_SSL and the mTLS listeners' ports.
    sasl_ssl_port: int | None = None
    mtls_port: int | None = None
    # Extra arguments of the storage format step (the SCRAM users: --add-scram).
    format_args: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def mtls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _java(self, main: str, *args: str) -> list[str]:
        log4j = self.data_dir / "log4j2.properties"
        return [
            "java",
            "-Xms128m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{self.jars}/*",
            main,
            *args,
        ]

    def write_config(self, voters: str, cluster_id: str, *, share_groups: bool) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        listeners = (
            f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        )
        advertised = f"PLAINTEXT://127.0.0.1:{self.port}"
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        # The listener names are the protocols' (SASL_SSL, SSL): `listener.name.sasl_ssl.*`.
        for name, port in (("SASL_SSL", self.sasl_ssl_port), ("SSL", self.mtls_port)):
            if port is not None:
                listeners += f",{name}://127.0.0.1:{port}"
                advertised += f",{name}://127.0.0.1:{port}"
                protocols += f",{name}:{name}"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "listeners": listeners,
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": protocols,
            "controller.quorum.voters": voters,
            "log.dirs": str(self.data_dir / "data"),
            **self.properties,
        }
        (self.data_dir / "server.properties").write_text(
            "".join(f"{k}={v}\n" for k, v in props.items())
        )
        (self.data_dir / "log4j2.properties").write_text(
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = file\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.kafkaapache.name = org.apache.kafka\nlogger.kafkaapache.level = INFO\n"
        )
        fmt = self._java(
            "kafka.tools.StorageTool",
            "format",
            # --opt=value: a random id may start with "-", which argparse reads as an option.
            f"--cluster-id={cluster_id}",
            "-c",
            str(self.data_dir / "server.properties"),
            "--ignore-formatted",
        )
        if share_groups:
            fmt += ["--feature", "share.version=1"]
        fmt += self.format_args
        result = subprocess.run(
            die_with_parent(fmt),
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,
        )
        if result.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage for node {self.node_id} failed: "
                f"{(result.stdout + result.stderr).strip()[-500:]}"
            )

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.process = spawn(
            self._java("kafka.Kafka", str(self.data_dir / "server.properties")),
            self.data_dir / "stdout.log",
        )

    def signal_stop(self, *, kill: bool = False) -> None:
        """Ask the JVM's whole process group to stop (SIGTERM: clean shutdown) without waiting."""
        signal_group(self.process, signal.SIGKILL if kill else signal.SIGTERM)

    def stop(self, *, timeout: float = 30.0, kill: bool = False) -> None:
        """Stop the JVM and its process group: SIGTERM, then SIGKILL after `timeout`."""
        process, self.process = self.process, None
        stop_group(process, timeout=timeout, kill=kill)

    def log_tail(self, lines: int = 15) -> str:
        texts = []
        for path in (self.data_dir / "stdout.log", self.log_file):
            if path.exists():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(texts)


# Every PLAINTEXT connection (the listener the rest of the suite uses, the inter-broker and the
# controller listeners) is User:ANONYMOUS, a super user: the authorizer leaves them as they are
# without ACLs, while allow.everyone.if.no.acl.found stays false so that a SASL or mTLS user
# with no ACL on a resource is denied. (A client certificate with CN=ANONYMOUS would be a super
# user too; only the test CA issues certificates here.)
_SUPER_USERS = ("ANONYMOUS", "admin")
_STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True)
class Secured:
    """The secured listeners of a `Cluster(secured=True)`, its users and its certificates.

    - `sasl_ssl_bootstrap`: SASL_SSL; users admin (a super user), app and nobody, each with its
      password under SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN. No client certificate asked for.
    - `mtls_bootstrap`: SSL with a required client certificate signed by the test CA; the
      principal is the certificate's CN (`app_cert` is User:app, `nobody_cert` User:nobody).
    - `plain_bootstrap`: the PLAINTEXT listener, unrestricted (User:ANONYMOUS is a super user).
    - `ca_location`: the CA (PEM) that signed the broker's certificate (SAN 127.0.0.1 and
      localhost) and the client certificates: librdkafka's ssl.ca.location.

    User app may do everything on the topics, groups and transactional ids whose names start
    with `app_prefix` ("app-"); nobody may do nothing. `allow` adds ACLs, `revoke` removes them.
    """

    plain_bootstrap: str
    sasl_ssl_bootstrap: str
    mtls_bootstrap: str
    ca_location: Path
    certs_dir: Path
    app_cert: ClientCert
    nobody_cert: ClientCert
    app_password: str = field(repr=False)
    nobody_password: str = field(repr=False)
    admin_password: str = field(repr=False)
    authority: CertificateAuthority = field(repr=False)
    app_user: str = "app"
    nobody_user: str = "nobody"
    admin_user: str = "admin"
    app_prefix: str = "app-"

    @property
    def users(self) -> dict[str, str]:
        """Every SASL user and its password (the same for SCRAM and PLAIN)."""
        return {
            self.admin_user: self.admin_password,
            self.app_user: self.app_password,
            self.nobody_user: self.nobody_password,
        }

    def sasl_config(
        self,
        user: str = "app",
        *,
        mechanism: str = "SCRAM-SHA-512",
        password: str | None = None,
    ) -> dict[str, str]:
        """librdkafka keys for `user` on the SASL_SSL listener (`password` overrides theirs)."""
        return {
            "bootstrap.servers": self.sasl_ssl_bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": mechanism,
            "sasl.username": user,
            "sasl.password": self.users[user] if password is None else password,
            "ssl.ca.location": str(self.ca_location),
        }

    def mtls_config(self, cert: ClientCert | None = None) -> dict[str, str]:
        """librdkafka keys for the mTLS listener presenting `cert` (default: `app_cert`)."""
        return {
            "bootstrap.servers": self.mtls_bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.ca_location),
            **(cert or self.app_cert).librdkafka(),
        }

    def admin_client(self) -> AdminClient:
        """An AdminClient for the super user admin over SASL_SSL (SCRAM-SHA-512)."""
        quiet: dict[str, Any] = {"log_level": 0, "logger": _SilentLogger()}
        return AdminClient({**self.sasl_config(self.admin_user), **quiet})

    def client_cert(self, cn: str, **options: Any) -> ClientCert:
        """Another client certificate from the trusted CA (principal User:`cn`); options:
        name, key_password, not_before, not_after (CertificateAuthority.client_cert)."""
        return self.authority.client_cert(cn, **options)

    def expired_cert(self, cn: str = "app") -> ClientCert:
        """A certificate for `cn` from the trusted CA that expired yesterday."""
        return self.authority.expired_client_cert(cn, name=f"{cn}-expired-{_suffix()}")

    def untrusted_cert(self, cn: str = "app") -> ClientCert:
        """A valid certificate for `cn` from a CA the broker does not trust."""
        from kafkaworker.testing.certs import untrusted_client_cert  # noqa: PLC0415

        return untrusted_client_cert(self.certs_dir, cn, name=f"{cn}-untrusted-{_suffix()}")

    def untrusted_ca_location(self) -> Path:
        """A CA certificate (PEM) that did not sign the broker's: as ssl.ca.location, a client
        refuses the broker."""
        from kafkaworker.testing.certs import CertificateAuthority  # noqa: PLC0415

        return CertificateAuthority(self.certs_dir, name=f"untrusted CA {_suffix()}").path

    def allow(
        self,
        user: str,
        *,
        topics: Iterable[str] = (),
        groups: Iterable[str] = (),
        transactional_ids: Iterable[str] = (),
        cluster: bool = False,
        operations: Iterable[AclOperation | str] = (AclOperation.ALL,),
        prefixed: bool = False,
        deny: bool = False,
        timeout: float = 15.0,
    ) -> list[AclBinding]:
        """Grant (or with deny=True, deny) `operations` to User:`user` on the named topics,
        groups and transactional ids (names are prefixes when `prefixed`), and on the cluster
        when `cluster`; returns once the broker's authorizer has them, so the next request
        sees them. For example `allow("app", topics=[t], operations=["READ", "DESCRIBE"])`."""
        ops = tuple(operations)
        pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
        permission = AclPermissionType.DENY if deny else AclPermissionType.ALLOW
        resources = [
            *((ResourceType.TOPIC, name) for name in topics),
            *((ResourceType.GROUP, name) for name in groups),
            *((ResourceType.TRANSACTIONAL_ID, name) for name in transactional_ids),
        ]
        bindings = [
            AclBinding(restype, name, pattern, f"User:{user}", "*", op, permission)
            for restype, name in resources
            for op in ops
        ]
        bindings += [
            AclBinding(
                ResourceType.BROKER,
                "kafka-cluster",
                ResourcePatternType.LITERAL,
                f"User:{user}",
                "*",
                op,
                permission,
            )
            for op in (ops if cluster else ())
        ]
        if not bindings:
            raise ValueError("allow() needs topics, groups, transactional_ids or cluster=True")
        admin = self.admin_client()
        for future in admin.create_acls(bindings, request_timeout=timeout).values():
            future.result()
        self._await_acls(admin, user, set(bindings), present=True, timeout=timeout)
        return bindings

    def revoke(self, user: str, *, timeout: float = 15.0) -> None:
        """Delete every ACL of User:`user`; returns once the broker's authorizer forgot them."""
        admin = self.admin_client()
        for future in admin.delete_acls(
            [_principal_filter(user)], request_timeout=timeout
        ).values():
            future.result()
        self._await_acls(admin, user, set(), present=False, timeout=timeout)

    @staticmethod
    def _await_acls(
        admin: AdminClient,
        user: str,
        bindings: set[AclBinding],
        *,
        present: bool,
        timeout: float,
    ) -> None:
        # DescribeAcls is answered from the broker's own authorizer, which applies the
        # controller's metadata a moment after CreateAcls/DeleteAcls return.
        deadline = time.monotonic() + timeout
        while True:
            seen = set(
                admin.describe_acls(_principal_filter(user), request_timeout=timeout).result()
            )
            if (bindings <= seen) if present else not seen:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the ACLs of User:{user} did not reach the broker within {timeout:.0f}s"
                )
            time.sleep(0.05)


def _principal_filter(user: str) -> AclBindingFilter:
    # None matches any name and any host (the stubs say str; the library and Kafka accept it).
    return AclBindingFilter(
        ResourceType.ANY,
        None,  # type: ignore[arg-type]
        ResourcePatternType.ANY,
        f"User:{user}",
        None,  # type: ignore[arg-type]
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


def _secure(certs_dir: Path, nodes: list[Node]) -> tuple[Secured, dict[str, str], list[str]]:
    """Certificates, users and the broker properties and format arguments of a secured
    cluster whose nodes already have their ports."""
    try:
        from kafkaworker.testing.certs import CertificateAuthority  # noqa: PLC0415
    except ImportError as exc:
        raise BrokerError(
            f"a secured broker makes its certificates with 'cryptography' ({exc}); "
            "install the dev extras: pip install -e '.[dev]'"
        ) from exc

    authority = CertificateAuthority(certs_dir)
    keystore = authority.server_keystore()
    # Hex: safe inside the JAAS string and the --add-scram argument without quoting.
    passwords = {user: f"{user}-{secrets.token_hex(12)}" for user in ("admin", "app", "nobody")}
    plain_users = " ".join(f'user_{user}="{pw}"' for user, pw in passwords.items())
    properties = {
        "authorizer.class.name": _STANDARD_AUTHORIZER,
        "super.users": ";".join(f"User:{user}" for user in _SUPER_USERS),
        "allow.everyone.if.no.acl.found": "false",
        # One PEM keystore (key + chain) and one PEM truststore for both TLS listeners.
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(authority.path),
        # mTLS: a client certificate is required and its CN is the principal (User:app).
        "listener.name.ssl.ssl.client.auth": "required",
        "listener.name.ssl.ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
        "listener.name.sasl_ssl.ssl.client.auth": "none",
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        # SCRAM users live in the metadata log (--add-scram at format time); PLAIN's here.
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_ssl.plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
        ),
    }
    format_args = [
        f"--add-scram={mechanism}=[name={user},password={pw}]"
        for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256")
        for user, pw in passwords.items()
    ]
    secured = Secured(
        plain_bootstrap=",".join(node.bootstrap for node in nodes),
        sasl_ssl_bootstrap=",".join(node.sasl_ssl_bootstrap for node in nodes),
        mtls_bootstrap=",".join(node.mtls_bootstrap for node in nodes),
        ca_location=authority.path,
        certs_dir=certs_dir,
        app_cert=authority.client_cert("app"),
        nobody_cert=authority.client_cert("nobody"),
        app_password=passwords["app"],
        nobody_password=passwords["nobody"],
        admin_password=passwords["admin"],
        authority=authority,
    )
    return secured, properties, format_args


class Cluster(DevServer):
    """One or three KRaft nodes on 127.0.0.1, free ports, a temporary data directory.

    secured=True: each node also has a SASL_SSL and an mTLS listener, with the
    StandardAuthorizer; `secured` then describes them (see `Secured`)."""

    def __init__(
        self,
        size: int = 1,
        *,
        heap: str = "768m",
        share_groups: bool = True,
        properties: Mapping[str, str] | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
        secured: bool = False,
    ) -> None:
        if size not in (1, 3):
            raise ValueError("a cluster has 1 or 3 nodes")
        self.jars = ensure_jars()
        self._own_dir = data_dir is None
        self.keeps_data = not self._own_dir
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="kafkaworker-kafka-"))
        props = dict(TEST_BROKER_PROPERTIES)
        replication = str(size)
        min_isr = "2" if size == 3 else "1"
        props.update(
            {
                "default.replication.factor": replication,
                "min.insync.replicas": min_isr,
                "offsets.topic.replication.factor": replication,
                "transaction.state.log.replication.factor": replication,
                "transaction.state.log.min.isr": min_isr,
                "share.coordinator.state.topic.replication.factor": replication,
                "share.coordinator.state.topic.min.isr": min_isr,
            }
        )
        props.update(properties or {})
        self.nodes = [
            Node(
                node_id=i + 1,
                port=port if (port and size == 1) else free_port(),
                controller_port=free_port(),
                data_dir=self.data_dir / f"node{i + 1}",
                jars=self.jars,
                heap=heap,
                properties=props,
                sasl_ssl_port=free_port() if secured else None,
                mtls_port=free_port() if secured else None,
            )
            for i in range(size)
        ]
        self.share_groups = share_groups
        self.secured: Secured | None = None
        if secured:
            try:
                self.secured, security, format_args = _secure(self.data_dir / "tls", self.nodes)
            except BaseException:
                if self._own_dir:
                    shutil.rmtree(self.data_dir, ignore_errors=True)
                raise
            # The caller's properties still win; the nodes share this one dict.
            props.update({**security, **(properties or {})})
            for node in self.nodes:
                node.format_args = format_args

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, *, timeout: float = 90.0) -> None:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        # Kept beside the data: a data directory formatted for one cluster id refuses another,
        # and --data DIR starts the same cluster again.
        kept = self.data_dir / "cluster.id"
        if kept.exists():
            cluster_id = kept.read_text().strip()
        else:
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            kept.write_text(cluster_id)
        for node in self.nodes:
            node.write_config(voters, cluster_id, share_groups=self.share_groups)
        try:
            for node in self.nodes:
                node.start()
            self.wait_ready(timeout=timeout)
            if self.secured is not None:
                self._grant_app(timeout)
        except BaseException:
            self.stop()
            raise

    def _grant_app(self, timeout: float) -> None:
        """User app's ACLs on its prefix, set by admin over SASL_SSL: this also proves that
        the SASL_SSL listener, its TLS and its SCRAM users work before a test relies on them."""
        assert self.secured is not None
        prefix = self.secured.app_prefix
        try:
            self.secured.allow(
                self.secured.app_user,
                topics=[prefix],
                groups=[prefix],
                transactional_ids=[prefix],
                prefixed=True,
                timeout=timeout,
            )
        except KafkaException as exc:
            raise BrokerError(
                f"the secured broker is up but admin could not set ACLs over SASL_SSL "
                f"({self.secured.sasl_ssl_bootstrap}): {exc}; log:\n{self.nodes[0].log_tail()}"
            ) from exc

    def wait_ready(self, *, timeout: float = 90.0, nodes: list[Node] | None = None) -> None:
        """Block until every given node answers a Metadata request listing all live brokers."""
        targets = nodes or self.nodes
        deadline = time.monotonic() + timeout
        for node in targets:
            quiet: dict[str, Any] = {"log_level": 0, "logger": _SilentLogger()}
            admin = AdminClient({"bootstrap.servers": node.bootstrap, **quiet})
            while True:
                if node.process is None or node.process.poll() is not None:
                    raise BrokerError(
                        f"Kafka node {node.node_id} exited during start-up; "
                        f"its log ({node.log_file}):\n{node.log_tail()}"
                    )
                try:
                    metadata = admin.list_topics(timeout=1.0)
                    if len(metadata.brokers) >= sum(1 for n in self.nodes if n.process is not None):
                        break
                except Exception:  # noqa: BLE001 - not up yet; the deadline bounds the loop
                    pass
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"Kafka node {node.node_id} did not answer a Metadata "
                        f"request within {timeout:.0f}s; log:\n{node.log_tail()}"
                    )
                time.sleep(0.2)

    def stop_node(self, index: int, *, kill: bool = False) -> None:
        self.nodes[index].stop(kill=kill)

    def start_node(self, index: int, *, timeout: float = 90.0) -> None:
        self.nodes[index].start()
        self.wait_ready(timeout=timeout, nodes=[self.nodes[index]])

    def stop(self) -> None:
        # Signal every node first: stopped one by one, each waits on a quorum that is leaving.
        for node in self.nodes:
            node.signal_stop()
        for node in self.nodes:
            node.stop(timeout=15.0)

    def keep_logs(self, destination: Path) -> list[Path]:
        """Copy each node's logs to `destination` (for failed runs) and return the copies."""
        destination.mkdir(parents=True, exist_ok=True)
        kept = []
        for node in self.nodes:
            for src in (node.log_file, node.data_dir / "stdout.log"):
                if src.exists():
                    dst = destination / f"node{node.node_id}-{src.name}"
                    shutil.copyfile(src, dst)
                    kept.append(dst)
        return kept


def data_note(cluster: Cluster) -> str:
    """Where the dev broker keeps its topics and offsets, and whether they outlive it."""
    if cluster.keeps_data:
        return "its data (topics, offsets) is kept after it stops: --data DIR again resumes it"
    return "its data (topics, offsets) is deleted when it stops; --data DIR keeps it across runs"


class _SilentLogger:
    """librdkafka logs every refused connection while the broker boots; those are expected."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        return self.log


def _describe(secured: Secured) -> str:
    """What a developer needs to connect to the dev broker's secured listeners."""
    users = ", ".join(f"{user}/{password}" for user, password in secured.users.items())
    return (
        f"SASL_SSL ({', '.join(SASL_MECHANISMS)}): {secured.sasl_ssl_bootstrap}, "
        f"users {users}\n"
        f"mTLS: {secured.mtls_bootstrap}, client certificates {secured.app_cert.certificate} "
        f"(key {secured.app_cert.key}) and {secured.nobody_cert.certificate}\n"
        f"CA: {secured.ca_location}; User:{secured.app_user} may use the topics and groups "
        f"starting with {secured.app_prefix!r}, User:{secured.nobody_user} nothing"
    )


def main(argv: list[str] | None = None) -> int:
    parser, run = command_line("python -m kafkaworker.testing.broker", __doc__, "broker", 9092)
    run.add_argument("--auto-create-topics", action="store_true")
    run.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="keep the broker's data (topics, offsets) in DIR across runs (default: a "
        "temporary directory, deleted on stop)",
    )
    run.add_argument(
        "--secured",
        action="store_true",
        help="add SASL_SSL and mTLS listeners with ACLs; prints their users and certificates",
    )
    args = parser.parse_args(argv)
    # `kill -USR1 <pid>` prints where this process is: for a run that does not stop.
    faulthandler.register(signal.SIGUSR1)
    try:
        if args.command == "fetch":
            return fetch(cache_dir(), f"the Kafka {kafka_version()} jars (~45 s)", ensure_jars)
        properties = {"auto.create.topics.enable": "true"} if args.auto_create_topics else {}
        cluster = Cluster(
            1, port=args.port, properties=properties, secured=args.secured, data_dir=args.data
        )
        node = cluster.nodes[0]

        def start() -> subprocess.Popen[bytes]:
            cluster.start()
            assert node.process is not None
            return node.process

        def banner(process: subprocess.Popen[bytes]) -> str:
            text = (
                f"Kafka {kafka_version()} is up on {cluster.bootstrap} (pid {process.pid}, "
                f"data {cluster.data_dir}); Ctrl+C stops it\n{data_note(cluster)}"
            )
            return text if cluster.secured is None else f"{text}\n{_describe(cluster.secured)}"

        return run_in_foreground(
            args, cluster, start=start, banner=banner, log_tail=node.log_tail, what="broker"
        )
    except BrokerError as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
