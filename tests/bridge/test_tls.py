"""TLS and mutual TLS on the bridge's gRPC listener, over real channels to a bridge process,
with certificates from a CA made for the test; and the options' bad input, refused at start in
one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from apps.bridge import client
from apps.bridge.client import open_channel
from apps.bridge.proto import bridge_pb2 as pb
from apps.bridge.proto import bridge_pb2_grpc
from apps.bridge.standard import check_health
from kafkaworker.testing.certs import CertificateAuthority, ServerCert, untrusted_client_cert
from tests.bridge.conftest import ROOT, BridgeFactory
from tests.conftest import TopicFactory
from tests.support import read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path, name="bridge test CA")


@pytest.fixture
def server(ca: CertificateAuthority) -> ServerCert:
    return ca.server_cert("bridge")


def tls_args(server: ServerCert) -> list[str]:
    return ["--tls-cert", str(server.certificate), "--tls-key", str(server.key)]


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    """The status a health check on `channel` fails with (it must fail)."""
    with pytest.raises(grpc.RpcError) as caught, channel:
        check_health(channel, timeout=5)
    assert isinstance(caught.value, grpc.Call)
    return caught.value.code()


def test_tls_serves_clients_that_trust_its_ca_and_no_one_else(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    start_bridge: BridgeFactory,
    ca: CertificateAuthority,
    server: ServerCert,
) -> None:
    topic = new_topic(1)
    bridge = start_bridge(*tls_args(server))
    assert "tls=on" in bridge.wait_for_line("bridge started")
    with open_channel(bridge.address, ca=str(ca.path)) as channel:
        assert check_health(channel) == "SERVING"
        reply = bridge_pb2_grpc.OrderBridgeStub(channel).Publish(
            pb.PublishRequest(topic=topic, key=b"k", value=b"over TLS"), timeout=30
        )
    [record] = read_topic(kafka_bootstrap, topic, 1)
    assert (record.value(), reply.offset) == (b"over TLS", 0)
    # Plaintext to a TLS listener, or TLS trusting another CA: no handshake, no RPC.
    assert refused(grpc.insecure_channel(bridge.address)) == grpc.StatusCode.UNAVAILABLE
    other = CertificateAuthority(ca.directory / "other", name="another CA")
    assert refused(open_channel(bridge.address, ca=str(other.path))) == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_mutual_tls_asks_every_client_for_a_certificate_its_ca_signed(
    start_bridge: BridgeFactory,
    ca: CertificateAuthority,
    server: ServerCert,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bridge = start_bridge(*tls_args(server), "--tls-client-ca", str(ca.path))
    assert "tls=mutual" in bridge.wait_for_line("bridge started")
    app = ca.client_cert("orders-api")
    with open_channel(
        bridge.address, ca=str(ca.path), cert=str(app.certificate), key=str(app.key)
    ) as channel:
        assert check_health(channel) == "SERVING"
    assert refused(open_channel(bridge.address, ca=str(ca.path))) == grpc.StatusCode.UNAVAILABLE
    rogue = untrusted_client_cert(tmp_path / "rogue", "orders-api")
    rogue_channel = open_channel(
        bridge.address, ca=str(ca.path), cert=str(rogue.certificate), key=str(rogue.key)
    )
    assert refused(rogue_channel) == grpc.StatusCode.UNAVAILABLE
    # The command-line client speaks it too.
    tls = ["--tls-ca", str(ca.path), "--tls-cert", str(app.certificate), "--tls-key", str(app.key)]
    assert client.main(["--address", bridge.address, *tls, "health"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "(server): SERVING"


def start_failure(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apps.bridge", "--port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_tls_options_stop_the_start_in_one_line(
    ca: CertificateAuthority, server: ServerCert, tmp_path: Path
) -> None:
    other = ca.server_cert("other")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (["--tls-cert", str(server.certificate)], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", str(ca.path)], "--tls-client-ca needs --tls-cert and --tls-key"),
        (
            ["--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(server.key)],
            f"cannot read --tls-cert {tmp_path / 'nope.crt'}: No such file or directory",
        ),
        (
            ["--tls-cert", str(server.certificate), "--tls-key", str(other.key)],
            f"--tls-cert {server.certificate} and --tls-key {other.key} are not a PEM "
            "certificate and its key",
        ),
        (
            [*tls_args(server), "--tls-client-ca", str(not_pem)],
            f"--tls-client-ca {not_pem} holds no PEM CA certificate",
        ),
    ]
    for args, words in cases:
        result = start_failure(*args)
        assert result.returncode == 2, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and words in errors[0], (args, result.stderr)
        # The key's contents never reach the output.
        assert "PRIVATE KEY" not in result.stdout + result.stderr
