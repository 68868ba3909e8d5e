"""Session-wide fixtures: one real Apache Kafka broker for the whole run.

With KAFKAWORKER_TEST_BOOTSTRAP=host:port the suite uses that cluster instead of starting one.
When any test fails, the broker logs are copied to build/test-logs/ for the post-mortem.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker.testing.broker import BrokerError, Cluster, Secured
from kafkaworker.testing.postgres import PostgresError, PostgresServer

LOG_DIR = Path(__file__).resolve().parent.parent / "build" / "test-logs"
_clusters: list[tuple[str, Cluster]] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.testsfailed:
        for name, cluster in _clusters:
            for path in cluster.keep_logs(LOG_DIR / name):
                print(f"\nkept broker log: {path}")


def _started(name: str, cluster: Cluster) -> Cluster:
    _clusters.append((name, cluster))
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """bootstrap.servers of a real broker (KRaft, share groups on)."""
    external = os.environ.get("KAFKAWORKER_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    cluster = _started("single", Cluster(1))
    try:
        yield cluster.bootstrap
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def kafka_broker(kafka_bootstrap: str) -> str:
    """The pytest plugin's fixture (kafkaworker.testing), on the suite's own broker."""
    return kafka_bootstrap


@pytest.fixture(scope="module")
def kafka_cluster3() -> Iterator[Cluster]:
    """Three KRaft nodes, replication factor 3, min.insync.replicas=2; nodes can be stopped.

    Module-scoped: three idle JVMs would otherwise load the 2-core machine for the rest of
    the run."""
    cluster = _started("cluster3", Cluster(3, heap="512m"))
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def secured_kafka() -> Iterator[Secured]:
    """A second single-node broker, started at the first test that asks for it and kept for the
    session, with secured listeners beside its PLAINTEXT one: SASL_SSL (SCRAM-SHA-512/256 and
    PLAIN users admin, app and nobody) and mTLS (client certificates from a CA made at test
    time, principal = CN), under the StandardAuthorizer. User app may use the topics, groups
    and transactional ids starting with "app-", nobody nothing; admin is a super user.
    See kafkaworker.testing.broker.Secured. Always started here, also when
    KAFKAWORKER_TEST_BOOTSTRAP names an external cluster for the rest of the suite. Without
    java, mvn or cryptography the tests that use it are skipped, or fail when CI is set."""
    try:
        cluster = Cluster(1, secured=True, heap="512m")
    except BrokerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no secured Kafka broker for this test: {exc}")
    _started("secured", cluster)
    try:
        assert cluster.secured is not None
        yield cluster.secured
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


TopicFactory = Callable[..., str]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    """Run a test with a `def` handler and with an `async def` one (tests.support.as_kind)."""
    return str(request.param)


@pytest.fixture
def new_topic(admin: AdminClient) -> Iterator[TopicFactory]:
    """Create uniquely named topics for one test and delete them afterwards."""
    created: list[str] = []

    def create(partitions: int = 1, *, prefix: str = "t", replication: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, partitions, replication)])[name].result(timeout=30)
        created.append(name)
        return name

    yield create
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            future.exception(timeout=30)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL (Debian's; kafkaworker.testing.postgres) for the session,
    started at the first test that asks for it. The package is installed first when missing
    and this is root (tools.install_postgres, as `make postgres-tools`); elsewhere the tests
    that use it skip, or fail when CI is set."""
    from tools import install_postgres  # noqa: PLC0415 - only where a test needs the server

    try:
        install_postgres.install()
        server = PostgresServer().start()
    except (SystemExit, PostgresError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own for one test (created, then dropped), on the session's server."""
    import psycopg  # noqa: PLC0415 - the postgres extra, needed by these tests only

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as admin_db:
        admin_db.execute(f"create database {name}")
    yield postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_server.url, autocommit=True) as admin_db:
        admin_db.execute(f"drop database {name} with (force)")
