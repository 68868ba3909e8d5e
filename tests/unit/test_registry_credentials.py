"""A registry that refuses the credentials (HTTP 401/403), met at a codec's first use rather
than at a worker's start-up (a producer's send, a record whose schema is not cached): one line
naming the URL and the setting to fix, never the credentials, and retryable, not a bad record.
(Against a real registry behind an authenticating proxy: tests/integration/test_registry_auth.py.)
"""

from __future__ import annotations

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from kafkaworker.errors import SchemaRegistryUnavailable
from kafkaworker.serialization.registry import decode_failure, encode_failure, registry_client

FRAMED = b"\x00\x00\x00\x00\x2a{}"  # schema id 42
SECRET = "hunter2-" + "x" * 8


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_say_which_setting_to_check_and_never_the_secret(status: int) -> None:
    registry = registry_client(
        {"url": "http://registry:8081/apis", "basic.auth.user.info": f"svc:{SECRET}"}
    )
    refused = SchemaRegistryError(status, status, "Unauthorized")
    decoded = decode_failure(registry, refused, FRAMED)
    encoded = encode_failure(registry, refused, "orders-value", auto_register=True)
    assert isinstance(decoded, SchemaRegistryUnavailable)  # retried, never dead-lettered
    assert isinstance(encoded, SchemaRegistryUnavailable)
    where = (
        f"the Schema Registry at http://registry:8081/apis refused the credentials (HTTP {status})"
    )
    assert str(decoded) == (
        f"{where} for schema id 42: check schema_registry.config basic.auth.user.info; "
        "retried with backoff"
    )
    assert str(encoded) == (
        f"{where} for subject 'orders-value': check schema_registry.config basic.auth.user.info"
    )
    for message in (str(decoded), str(encoded)):
        assert SECRET not in message
        assert "svc:" not in message
