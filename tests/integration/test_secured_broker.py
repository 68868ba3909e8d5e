"""The secured test broker (Cluster(secured=True)) with the plain confluent_kafka clients and
raw librdkafka keys: SASL_SSL with SCRAM and PLAIN, mTLS, the StandardAuthorizer's ACLs, and
the refusals the framework's own security tests will rely on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker.testing.broker import Secured

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

# Small enough that a refused client gives up well before the test's own deadline.
FAST: dict[str, Any] = {
    "socket.timeout.ms": 10_000,
    "socket.connection.setup.timeout.ms": 10_000,
    "reconnect.backoff.ms": 500,
    "reconnect.backoff.max.ms": 2_000,
    "log_level": 0,
}
DEADLINE = 20.0


@dataclass
class Outcome:
    """What a producer saw: the delivery reports and the errors of error_cb."""

    deliveries: list[KafkaError | None] = field(default_factory=list)
    errors: list[KafkaError] = field(default_factory=list)

    # In confluent-kafka 2.16 KafkaError == None raises TypeError (inside a list's == or `in`
    # it surfaced as a SystemError at the next call): reports are compared with `is` only.
    @property
    def delivered(self) -> bool:
        """The one record was delivered, and no client error came."""
        return len(self.deliveries) == 1 and self.deliveries[0] is None and not self.errors


def _topic(admin: AdminClient, prefix: str) -> str:
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=30)
    return name


@pytest.fixture
def topics(secured_kafka: Secured) -> Iterator[list[str]]:
    """Topics this test creates (as admin over SASL_SSL), deleted afterwards."""
    created: list[str] = []
    yield created
    if created:
        admin = secured_kafka.admin_client()
        for future in admin.delete_topics(created, operation_timeout=30).values():
            future.exception(timeout=30)


@pytest.fixture
def app_topic(secured_kafka: Secured, topics: list[str]) -> str:
    """A topic User:app may use (its name starts with the app prefix)."""
    topics.append(_topic(secured_kafka.admin_client(), secured_kafka.app_prefix))
    return topics[-1]


@pytest.fixture
def other_topic(secured_kafka: Secured, topics: list[str]) -> str:
    """A topic no ACL names: only super users may use it."""
    topics.append(_topic(secured_kafka.admin_client(), "other-"))
    return topics[-1]


def produce(config: dict[str, Any], topic: str, value: bytes) -> Outcome:
    """Produce one record and wait for its delivery report or the first client error."""
    outcome = Outcome()
    producer = Producer(
        {**config, **FAST, "message.timeout.ms": 15_000, "error_cb": outcome.errors.append}
    )
    producer.produce(topic, value, on_delivery=lambda err, _msg: outcome.deliveries.append(err))
    deadline = time.monotonic() + DEADLINE
    while not outcome.deliveries and not outcome.errors and time.monotonic() < deadline:
        producer.poll(0.2)
    producer.purge()
    producer.flush(2)
    return outcome


def consume_one(config: dict[str, Any], topic: str, group: str) -> bytes:
    """Subscribe as `group`, return the first record's value and commit it (the group ACL)."""
    consumer = Consumer(
        {
            **config,
            **FAST,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6_000,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                pytest.fail(f"consumer error: {error.name()}: {error.str()}")
            committed = consumer.commit(message=msg, asynchronous=False)
            assert committed is not None
            assert all(tp.error is None for tp in committed), committed
            return bytes(msg.value() or b"")
        pytest.fail(f"no record from {topic} within {DEADLINE:.0f}s")
    finally:
        consumer.close()


def round_trip(config: dict[str, Any], topic: str, group: str) -> None:
    value = uuid.uuid4().bytes
    outcome = produce(config, topic, value)
    assert outcome.delivered, outcome
    assert consume_one(config, topic, group) == value


def first_error(outcome: Outcome) -> KafkaError:
    assert outcome.errors, f"no client error; deliveries: {outcome.deliveries}"
    # The record is purged at the end of produce(): its report is _PURGE_QUEUE, not success.
    assert all(report is not None for report in outcome.deliveries), "it was delivered"
    return outcome.errors[0]


def first_failed_delivery(outcome: Outcome) -> KafkaError:
    assert outcome.deliveries, f"no delivery report; errors: {outcome.errors}"
    error = outcome.deliveries[0]
    assert error is not None, "the record was delivered"
    return error


# -- allowed -------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_app_produces_and_consumes_over_sasl_ssl(
    secured_kafka: Secured, app_topic: str, mechanism: str
) -> None:
    config = secured_kafka.sasl_config("app", mechanism=mechanism)
    assert config["security.protocol"] == "SASL_SSL"
    round_trip(config, app_topic, f"{secured_kafka.app_prefix}{uuid.uuid4().hex[:8]}")


def test_app_produces_and_consumes_over_mtls(secured_kafka: Secured, app_topic: str) -> None:
    config = secured_kafka.mtls_config(secured_kafka.app_cert)
    assert config["security.protocol"] == "SSL"
    round_trip(config, app_topic, f"{secured_kafka.app_prefix}{uuid.uuid4().hex[:8]}")


def test_plaintext_listener_stays_unrestricted(secured_kafka: Secured, other_topic: str) -> None:
    """User:ANONYMOUS (every PLAINTEXT connection) is a super user: no ACL needed."""
    config = {"bootstrap.servers": secured_kafka.plain_bootstrap}
    round_trip(config, other_topic, f"plain-{uuid.uuid4().hex[:8]}")


def test_admin_is_a_super_user_over_sasl_ssl(secured_kafka: Secured, other_topic: str) -> None:
    round_trip(secured_kafka.sasl_config("admin"), other_topic, f"adm-{uuid.uuid4().hex[:8]}")


# -- authentication refused ------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_wrong_password_fails_authentication(
    secured_kafka: Secured, app_topic: str, mechanism: str
) -> None:
    config = secured_kafka.sasl_config("app", mechanism=mechanism, password="not-the-password")
    error = first_error(produce(config, app_topic, b"x"))
    assert error.code() == KafkaError._AUTHENTICATION, error
    assert error.name() == "_AUTHENTICATION"
    assert "SASL authentication error" in error.str()


def test_scram_user_unknown_to_the_broker_fails_authentication(
    secured_kafka: Secured, app_topic: str
) -> None:
    config = secured_kafka.sasl_config("app", password="x")
    config["sasl.username"] = "stranger"
    error = first_error(produce(config, app_topic, b"x"))
    assert error.code() == KafkaError._AUTHENTICATION, error


def _assert_refused_by_broker(error: KafkaError) -> None:
    """The broker ended the TLS handshake with an alert: it refused the client's certificate
    (a client that refused the broker's would say 'certificate verify failed')."""
    assert error.code() in (KafkaError._TRANSPORT, KafkaError._SSL), error
    assert "alert" in error.str(), error.str()
    assert "certificate verify failed" not in error.str()


def test_mtls_refuses_a_certificate_from_an_untrusted_ca(
    secured_kafka: Secured, app_topic: str
) -> None:
    cert = secured_kafka.untrusted_cert("app")
    _assert_refused_by_broker(
        first_error(produce(secured_kafka.mtls_config(cert), app_topic, b"x"))
    )


def test_mtls_refuses_an_expired_certificate(secured_kafka: Secured, app_topic: str) -> None:
    cert = secured_kafka.expired_cert("app")
    _assert_refused_by_broker(
        first_error(produce(secured_kafka.mtls_config(cert), app_topic, b"x"))
    )


def test_mtls_refuses_a_client_without_certificate(secured_kafka: Secured, app_topic: str) -> None:
    config = secured_kafka.mtls_config()
    del config["ssl.certificate.location"], config["ssl.key.location"]
    _assert_refused_by_broker(first_error(produce(config, app_topic, b"x")))


def test_client_refuses_a_broker_signed_by_another_ca(
    secured_kafka: Secured, app_topic: str
) -> None:
    config = secured_kafka.sasl_config("app")
    config["ssl.ca.location"] = str(secured_kafka.untrusted_ca_location())
    error = first_error(produce(config, app_topic, b"x"))
    # librdkafka reports the failed verification as _SSL from the handshake or, when it
    # surfaces on a read, as _TRANSPORT (a fresh-clone CI run saw the latter): the text holds.
    assert error.code() in (KafkaError._SSL, KafkaError._TRANSPORT), error
    assert "certificate verify failed" in error.str()


# -- authorization (ACLs) ---------------------------------------------------------------------


def test_nobody_is_denied_the_topic_over_sasl_ssl(secured_kafka: Secured, app_topic: str) -> None:
    outcome = produce(secured_kafka.sasl_config("nobody"), app_topic, b"x")
    assert outcome.errors == []
    error = first_failed_delivery(outcome)
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_nobody_is_denied_the_topic_over_mtls(secured_kafka: Secured, app_topic: str) -> None:
    """CN=nobody authenticates (the principal is the CN) but has no ACL."""
    outcome = produce(secured_kafka.mtls_config(secured_kafka.nobody_cert), app_topic, b"x")
    assert outcome.errors == []
    error = first_failed_delivery(outcome)
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_nobody_cannot_read_the_topic(secured_kafka: Secured, app_topic: str) -> None:
    assert produce(secured_kafka.sasl_config("app"), app_topic, b"secret").delivered
    # Allowed its group, so that what is denied is the topic (not FindCoordinator first).
    group = f"nobody-{uuid.uuid4().hex[:8]}"
    secured_kafka.allow("nobody", groups=[group], operations=["READ", "DESCRIBE"])
    consumer = Consumer(
        {
            **secured_kafka.sasl_config("nobody"),
            **FAST,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([app_topic])
        errors = _consumer_errors(consumer, until=KafkaError.TOPIC_AUTHORIZATION_FAILED)
        assert KafkaError.TOPIC_AUTHORIZATION_FAILED in errors, errors
    finally:
        consumer.close()
        secured_kafka.revoke("nobody")


def _consumer_errors(consumer: Consumer, *, until: int) -> list[int]:
    """The codes of the consumer's errors, up to the first `until` (or the deadline); fails
    the test if a record is read."""
    codes: list[int] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and until not in codes:
        msg: Message | None = consumer.poll(0.5)
        if msg is not None:
            error = msg.error()
            assert error is not None, f"a record was read: {msg.value()!r}"
            codes.append(error.code())
    return codes


def test_app_is_denied_topics_outside_its_prefix(secured_kafka: Secured, other_topic: str) -> None:
    error = first_failed_delivery(produce(secured_kafka.sasl_config("app"), other_topic, b"x"))
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_app_is_denied_groups_outside_its_prefix(secured_kafka: Secured, app_topic: str) -> None:
    consumer = Consumer(
        {
            **secured_kafka.sasl_config("app"),
            **FAST,
            "group.id": f"other-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([app_topic])
        errors = _consumer_errors(consumer, until=KafkaError.GROUP_AUTHORIZATION_FAILED)
        assert errors[:1] == [KafkaError.GROUP_AUTHORIZATION_FAILED], errors
    finally:
        consumer.close()


def test_allow_and_revoke_take_effect_at_once(secured_kafka: Secured, other_topic: str) -> None:
    config = secured_kafka.mtls_config(secured_kafka.nobody_cert)
    denied = first_failed_delivery(produce(config, other_topic, b"x"))
    assert denied.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    try:
        secured_kafka.allow("nobody", topics=[other_topic], operations=["WRITE", "DESCRIBE"])
        allowed = produce(config, other_topic, b"y")
        assert allowed.delivered, allowed
    finally:
        secured_kafka.revoke("nobody")
    denied_again = first_failed_delivery(produce(config, other_topic, b"z"))
    assert denied_again.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_client_certificate_with_an_encrypted_key(secured_kafka: Secured, app_topic: str) -> None:
    cert = secured_kafka.client_cert(
        "app", name=f"app-enc-{uuid.uuid4().hex[:6]}", key_password="k3y"
    )
    assert b"ENCRYPTED PRIVATE KEY" in cert.key.read_bytes()
    config = secured_kafka.mtls_config(cert)
    assert config["ssl.key.password"] == "k3y"
    outcome = produce(config, app_topic, b"x")
    assert outcome.delivered, outcome
