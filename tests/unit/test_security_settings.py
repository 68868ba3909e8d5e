"""kafka.security: typed TLS/SASL settings, applied once to every client, secrets masked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kafkaworker import App, ConfigError, Message, load_settings
from kafkaworker.clients import base_config, connection_config
from kafkaworker.handlers import resolve_specs
from kafkaworker.producer import producer_config
from kafkaworker.runtime.source.consumer_group import consumer_config

SECRET = "s3cret-Pa55"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAFKAWORKER_SETTINGS", raising=False)
    return tmp_path


def write_settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def every_client_config(settings: Any) -> list[dict[str, Any]]:
    app = App("svc")

    @app.handler("orders")
    def handle(msg: Message[Any]) -> None:
        pass

    [spec] = resolve_specs(app, settings)
    return [
        consumer_config("svc", spec, settings),
        producer_config(settings),
        connection_config(settings),
        base_config(settings),
    ]


def test_scram_from_the_environment_reaches_every_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    for name, value in {
        "PROTOCOL": "SASL_SSL",
        "SASL__MECHANISM": "SCRAM-SHA-512",
        "SASL__USERNAME": "app",
        "SASL__PASSWORD": SECRET,
        "SSL__CA_LOCATION": str(ca),
    }.items():
        monkeypatch.setenv(f"KAFKAWORKER_KAFKA__SECURITY__{name}", value)
    settings = load_settings()
    for config in every_client_config(settings):
        assert {
            key: config[key]
            for key in (
                "security.protocol",
                "sasl.mechanism",
                "sasl.username",
                "sasl.password",
                "ssl.ca.location",
                "ssl.endpoint.identification.algorithm",
            )
        } == {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "app",
            "sasl.password": SECRET,
            "ssl.ca.location": str(ca),
            "ssl.endpoint.identification.algorithm": "https",
        }
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert SECRET not in repr(settings.kafka.security.sasl)


def test_mtls_with_a_key_password_file_read_without_its_newline(tmp_path: Path) -> None:
    for name in ("client.pem", "client.key"):
        (tmp_path / name).write_text("pem")
    (tmp_path / "key-password").write_text(SECRET + "\n")
    settings = load_settings(
        write_settings(
            tmp_path,
            "kafka:\n  security:\n    protocol: SSL\n    ssl:\n"
            "      certificate_location: client.pem\n      key_location: client.key\n"
            "      key_password_file: key-password\n      endpoint_identification: false\n",
        )
    )
    config = base_config(settings)
    assert config["security.protocol"] == "SSL"
    assert (config["ssl.certificate.location"], config["ssl.key.location"]) == (
        "client.pem",
        "client.key",
    )
    assert config["ssl.key.password"] == SECRET
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    assert "sasl.mechanism" not in config


def test_oauthbearer_oidc_client_credentials(tmp_path: Path) -> None:
    settings = load_settings(
        write_settings(
            tmp_path,
            "kafka:\n  security:\n    protocol: SASL_SSL\n    sasl:\n"
            "      mechanism: OAUTHBEARER\n      oauthbearer:\n        client_id: worker\n"
            f"        client_secret: {SECRET}\n"
            "        token_endpoint_url: https://idp.example/oauth2/token\n"
            "        scope: kafka\n        extensions: logicalCluster=lkc-1\n",
        )
    )
    config = base_config(settings)
    assert {k: v for k, v in config.items() if k.startswith("sasl.")} == {
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "worker",
        "sasl.oauthbearer.client.secret": SECRET,
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example/oauth2/token",
        "sasl.oauthbearer.scope": "kafka",
        "sasl.oauthbearer.extensions": "logicalCluster=lkc-1",
    }
    assert SECRET not in repr(settings)


def test_raw_client_properties_still_win_and_are_masked_in_the_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Security set up with raw properties only (as before kafka.security): they are used.
    monkeypatch.setenv(
        "KAFKAWORKER_KAFKA__CONSUMER",
        f'{{"sasl.password": "{SECRET}", "security.protocol": "SASL_SSL", "fetch.min.bytes": 7}}',
    )
    settings = load_settings()
    [consumer, _producer, tool, _base] = every_client_config(settings)
    assert consumer["sasl.password"] == tool["sasl.password"] == SECRET
    assert consumer["security.protocol"] == "SASL_SSL" and consumer["fetch.min.bytes"] == 7
    assert SECRET not in repr(settings)


def test_a_raw_security_property_beside_kafka_security_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKAWORKER_KAFKA__SECURITY__PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKAWORKER_KAFKA__SECURITY__SASL__MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKAWORKER_KAFKA__SECURITY__SASL__USERNAME", "app")
    monkeypatch.setenv("KAFKAWORKER_KAFKA__SECURITY__SASL__PASSWORD", "typed")
    monkeypatch.setenv("KAFKAWORKER_KAFKA__PRODUCER", f'{{"sasl.password": "{SECRET}"}}')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "setting kafka.producer.sasl.password conflicts with kafka.security (which sets the "
        "security properties of every client): remove one of them"
    )


def test_secrets_put_where_a_path_or_a_section_belongs_are_not_echoed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAFKAWORKER_KAFKA__SECURITY__PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKAWORKER_KAFKA__SECURITY__SASL__MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKAWORKER_KAFKA__SECURITY__SASL__USERNAME", "app")
    monkeypatch.setenv("KAFKAWORKER_KAFKA__SECURITY__SASL__PASSWORD_FILE", SECRET)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "password_file cannot be read" in str(caught.value)
    assert SECRET not in str(caught.value)
    monkeypatch.delenv("KAFKAWORKER_KAFKA__SECURITY__SASL__PASSWORD_FILE")
    path = write_settings(tmp_path, f"kafka:\n  security:\n    sasl: app:{SECRET}\n")
    monkeypatch.delenv("KAFKAWORKER_KAFKA__SECURITY__SASL__MECHANISM")
    monkeypatch.delenv("KAFKAWORKER_KAFKA__SECURITY__SASL__USERNAME")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert SECRET not in str(caught.value), caught.value


def test_a_ca_directory_and_probe_are_accepted(tmp_path: Path) -> None:
    for ca in (str(tmp_path), "probe"):
        settings = load_settings(
            write_settings(
                tmp_path,
                f"kafka:\n  security:\n    protocol: SSL\n    ssl:\n      ca_location: {ca}\n",
            )
        )
        assert base_config(settings)["ssl.ca.location"] == ca


@pytest.mark.parametrize(
    ("yaml_security", "expected"),
    [
        ("protocol: SASL_SSL\n", "protocol SASL_SSL needs sasl"),
        (
            "protocol: PLAINTEXT\n    sasl:\n      mechanism: PLAIN\n      username: a\n"
            f"      password: {SECRET}\n",
            "sasl is set but protocol is PLAINTEXT",
        ),
        (
            "protocol: SASL_PLAINTEXT\n    sasl:\n      mechanism: SCRAM-SHA-256\n",
            "needs sasl.username",
        ),
        (
            "protocol: SASL_SSL\n    sasl:\n      mechanism: PLAIN\n      username: a\n",
            "needs one of password and password_file",
        ),
        (
            "protocol: SASL_SSL\n    sasl:\n      mechanism: PLAIN\n      username: a\n"
            f"      password: {SECRET}\n      password_file: /nowhere/pw\n",
            "needs one of password and password_file",
        ),
        (
            "protocol: SASL_SSL\n    sasl:\n      mechanism: PLAIN\n      username: a\n"
            "      password_file: /nowhere/pw\n",
            "password_file cannot be read (No such file or directory)",
        ),
        (
            "protocol: SSL\n    ssl:\n      ca_location: /nowhere/ca.pem\n",
            "ca_location '/nowhere/ca.pem'",
        ),
        ("protocol: SSL\n    ssl:\n      certificate_location: /etc/hostname\n", "needs both"),
        ("protocol: PLAINTEXT\n    ssl:\n      endpoint_identification: false\n", "ssl is set"),
        (
            "protocol: SASL_SSL\n    sasl:\n      mechanism: OAUTHBEARER\n",
            "OAUTHBEARER needs sasl.oauthbearer",
        ),
        ("protocol: TLS\n", "kafka.security.protocol='TLS' is invalid"),
    ],
)
def test_what_cannot_be_honoured_is_refused_in_one_line_without_the_secret(
    tmp_path: Path, yaml_security: str, expected: str
) -> None:
    path = write_settings(tmp_path, "kafka:\n  security:\n    " + yaml_security)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert expected in message and "\n" not in message, message
    assert SECRET not in message


def msk_token(config: str) -> tuple[str, float]:
    """A token provider as a user writes one (MSK IAM would sign a token here)."""
    return f"token-for-{config}", 1e10


def test_oauthbearer_with_a_token_provider_function(tmp_path: Path) -> None:
    settings = load_settings(
        write_settings(
            tmp_path,
            "kafka:\n  security:\n    protocol: SASL_SSL\n    sasl:\n"
            "      mechanism: OAUTHBEARER\n      oauthbearer:\n        method: callback\n"
            f"        token_provider: {__name__}:msk_token\n",
        )
    )
    config = base_config(settings)
    assert config["oauth_cb"] is msk_token
    assert "sasl.oauthbearer.method" not in config


def test_a_token_provider_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    settings = load_settings(
        write_settings(
            tmp_path,
            "kafka:\n  security:\n    protocol: SASL_SSL\n    sasl:\n"
            "      mechanism: OAUTHBEARER\n      oauthbearer:\n        method: callback\n"
            "        token_provider: no_such_module:token\n",
        )
    )
    with pytest.raises(ConfigError, match=r"token_provider='no_such_module:token' cannot be"):
        base_config(settings)
