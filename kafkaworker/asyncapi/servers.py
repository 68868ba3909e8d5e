"""The servers of an app's AsyncAPI document: its bootstrap brokers and how it authenticates,
from the settings. Never a secret: no password, token, key or URL user info is read here."""

from __future__ import annotations

from typing import Any

from kafkaworker.settings import Settings
from kafkaworker.settings_sources import without_user_info

KAFKA_BINDING = "0.5.0"
_SASL_SCHEMES = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}


def servers(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(servers, components.securitySchemes): one server per bootstrap broker."""
    security = settings.kafka.security
    schemes = _security_schemes(settings)
    tls = security.protocol.endswith("SSL")
    described = f"a bootstrap broker; kafka.security.protocol {security.protocol}"
    found: dict[str, Any] = {}
    brokers = [b.strip() for b in settings.kafka.bootstrap_servers.split(",") if b.strip()]
    for index, broker in enumerate(brokers, start=1):
        server: dict[str, Any] = {
            "host": broker,
            "protocol": "kafka-secure" if tls else "kafka",
            "description": described,
        }
        if schemes:
            server["security"] = [{"$ref": f"#/components/securitySchemes/{n}"} for n in schemes]
        if settings.schema_registry is not None:
            server["bindings"] = {
                "kafka": {
                    "schemaRegistryUrl": without_user_info(settings.schema_registry.url),
                    "schemaRegistryVendor": "confluent",
                    "bindingVersion": KAFKA_BINDING,
                }
            }
        found[f"broker-{index}"] = server
    return found, schemes


def _security_schemes(settings: Settings) -> dict[str, Any]:
    security = settings.kafka.security
    schemes: dict[str, Any] = {}
    sasl = security.sasl
    if sasl is not None and sasl.mechanism in _SASL_SCHEMES:
        schemes["sasl"] = {
            "type": _SASL_SCHEMES[sasl.mechanism],
            "description": f"SASL/{sasl.mechanism} over {security.protocol}: a username and "
            "password",
        }
    elif sasl is not None and sasl.oauthbearer is not None:
        oauth = sasl.oauthbearer
        if oauth.method == "oidc":
            scopes = {scope: "" for scope in (oauth.scope or "").split() if scope}
            schemes["sasl"] = {
                "type": "oauth2",
                "description": f"SASL/OAUTHBEARER over {security.protocol}: OIDC client "
                "credentials",
                "flows": {
                    "clientCredentials": {
                        "tokenUrl": without_user_info(oauth.token_endpoint_url or ""),
                        "availableScopes": scopes,
                    }
                },
                "scopes": list(scopes),
            }
        else:
            schemes["sasl"] = {
                "type": "oauth2",
                "description": f"SASL/OAUTHBEARER over {security.protocol}: tokens from "
                f"{oauth.token_provider}",
                "flows": {},
            }
    if security.ssl.certificate_location is not None:
        schemes["mtls"] = {
            "type": "X509",
            "description": "TLS client certificate (mutual TLS)",
        }
    return schemes
