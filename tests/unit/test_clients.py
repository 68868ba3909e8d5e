"""clients.refusal: which errors end start-up at once (no retry changes them) and which are
kept for the end of the wait (a restarting broker drops TLS connections too)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from kafkaworker.clients import ConnectionWatch, refusal
from kafkaworker.errors import StartupError
from kafkaworker.settings import Settings

SASL = {
    "protocol": "SASL_SSL",
    "sasl": {"mechanism": "SCRAM-SHA-512", "username": "app", "password": "pw"},
}
OAUTH = {
    "protocol": "SASL_SSL",
    "sasl": {
        "mechanism": "OAUTHBEARER",
        "oauthbearer": {
            "client_id": "worker",
            "client_secret": "s",
            "token_endpoint_url": "https://idp.example/token",
        },
    },
}


def settings(security: dict[str, object]) -> Settings:
    return Settings(kafka={"bootstrap_servers": "b:9093", "security": security})


@pytest.mark.parametrize(
    ("security", "code", "text", "permanent", "says"),
    [
        (
            SASL,
            KafkaError._AUTHENTICATION,
            "sasl_ssl://b:9093/bootstrap: SASL authentication error: Authentication failed",
            True,
            "authentication failed at b:9093 (SASL_SSL, SCRAM-SHA-512, user 'app')",
        ),
        (
            SASL,
            KafkaError._SSL,
            "ssl://b:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
            "certificate verify failed: broker certificate could not be verified",
            True,
            "check kafka.security.ssl.ca_location",
        ),
        (
            {"protocol": "SSL"},
            KafkaError._TRANSPORT,
            "ssl://b:9093/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls "
            "alert bad certificate: SSL alert number 42 (after 0ms in state APIVERSION_QUERY)",
            True,
            "refused this client's TLS certificate (SSL, none given)",
        ),
        (
            SASL,
            KafkaError._SSL,
            "ssl://b:9093/bootstrap: SSL handshake failed: Disconnected: connecting to a "
            "PLAINTEXT broker listener? (after 3ms in state SSL_HANDSHAKE)",
            False,
            "check that the listener speaks TLS",
        ),
        (
            OAUTH,
            KafkaError._AUTHENTICATION,
            "Failed to acquire SASL OAUTHBEARER token: HTTP 503",
            False,
            "OAUTHBEARER authentication failed at b:9093",
        ),
    ],
)
def test_permanent_refusals_and_passing_ones(
    security: dict[str, object], code: int, text: str, permanent: bool, says: str
) -> None:
    found = refusal(settings(security), KafkaError(code, text))
    assert found is not None
    line, is_permanent = found
    assert is_permanent is permanent
    assert says in str(line) and "(after " not in str(line)


def test_a_broker_down_is_no_refusal_and_a_passing_one_is_told_at_the_end() -> None:
    assert refusal(settings(SASL), KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 down")) is None
    watch = ConnectionWatch(settings(SASL))
    watch(KafkaError(KafkaError._SSL, "SSL handshake failed: Disconnected"))
    watch.check()  # not permanent: nothing raised yet
    fallback = StartupError("cannot reach Kafka")
    assert "TLS handshake with b:9093 failed" in str(watch.give_up(fallback))
    assert ConnectionWatch(settings(SASL)).give_up(fallback) is fallback
    watch(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: bad"))
    with pytest.raises(StartupError, match="authentication failed"):
        watch.check()


def test_broker_silence_from_librdkafka_statistics() -> None:
    from kafkaworker.runtime.source.consumer_group import _silence  # noqa: PLC0415

    leads = {"t|0": {}}
    brokers = {
        # Connected, a fetch outstanding, nothing received for 21 s: a hung broker.
        "a:1/1": {"nodeid": 1, "state": "UP", "waitresp_cnt": 1, "rxidle": 21_000_000,
                  "toppars": leads},
        # Down for 3 s.
        "b:2/2": {"nodeid": 2, "state": "CONNECT", "stateage": 3_000_000, "toppars": leads},
        # Never connected and leading nothing of ours; a bootstrap entry: ignored.
        "c:3/3": {"nodeid": 3, "state": "INIT", "stateage": 99_000_000, "toppars": {}},
        "c:3/bootstrap": {"nodeid": -1, "state": "DOWN", "stateage": 99_000_000},
    }  # fmt: skip
    assert _silence(brokers) == 21.0
    brokers["a:1/1"]["waitresp_cnt"] = 0  # answered everything it was asked
    assert _silence(brokers) == 3.0
    assert _silence({}) == 0.0
