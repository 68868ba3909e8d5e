"""Certificates for the secured test broker, made at test time and never checked in.

A `CertificateAuthority` writes its certificate (`ca.pem`, the truststore of the broker and of
every client) and issues the broker's keystore (key + certificate chain in one PEM file, as
Kafka reads with `ssl.keystore.type=PEM`) and client certificates for mTLS, whose CN becomes
the client's principal. `expired` and `untrusted` client certificates are there for the tests
that prove the broker refuses them.

Keys are EC P-256 (generated in microseconds, unlike RSA), PKCS#8 PEM: the form both Kafka's
PEM keystore and OpenSSL (librdkafka) read. Needs `cryptography` (the `dev` extras).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=7)
# Issued an hour in the past: a clock a little behind the issuer's still accepts it.
_SKEW = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class ClientCert:
    """A client certificate for mTLS: librdkafka's ssl.certificate.location / ssl.key.location."""

    cn: str
    certificate: Path
    key: Path
    key_password: str | None = None

    def librdkafka(self) -> dict[str, str]:
        """The librdkafka keys that present this certificate."""
        config = {
            "ssl.certificate.location": str(self.certificate),
            "ssl.key.location": str(self.key),
        }
        if self.key_password is not None:
            config["ssl.key.password"] = self.key_password
        return config


@dataclass(frozen=True)
class ServerCert:
    """A server's certificate and key as separate PEM files (what gRPC's TLS takes)."""

    certificate: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password is not None
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, secret: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return path


class CertificateAuthority:
    """A self-signed CA in `directory`; `path` is its certificate, the PEM truststore."""

    def __init__(self, directory: Path, name: str = "kafkaworker test CA") -> None:
        self.directory = directory
        self.name = name
        self._key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        slug = "".join(c if c.isalnum() else "-" for c in name.lower())
        self.path = _write(directory / f"{slug}.pem", _cert_pem(self.certificate))

    def _issue(
        self,
        cn: str,
        *,
        usage: x509.ObjectIdentifier,
        hosts: Sequence[str] = (),
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _new_key()
        now = _now()
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _SKEW)
            .not_valid_after(not_after or now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, builder.sign(self._key, hashes.SHA256())

    def server_keystore(
        self, name: str = "broker", hosts: Sequence[str] = ("127.0.0.1", "localhost")
    ) -> Path:
        """A PEM keystore for the broker: its key, its certificate (SAN: `hosts`), this CA's."""
        key, cert = self._issue(name, usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=hosts)
        return _write(
            self.directory / f"{name}-keystore.pem",
            _key_pem(key) + _cert_pem(cert) + _cert_pem(self.certificate),
            secret=True,
        )

    def server_cert(
        self, name: str = "server", hosts: Sequence[str] = ("127.0.0.1", "localhost")
    ) -> ServerCert:
        """A server certificate (SAN: `hosts`) and its key, in files of their own."""
        key, cert = self._issue(name, usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=hosts)
        return ServerCert(
            certificate=_write(self.directory / f"{name}.crt", _cert_pem(cert)),
            key=_write(self.directory / f"{name}.key", _key_pem(key), secret=True),
        )

    def client_cert(
        self,
        cn: str,
        *,
        name: str | None = None,
        key_password: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> ClientCert:
        """A client certificate for `CN=cn` (the principal `User:cn` on the broker's mTLS
        listener) and its key, encrypted with `key_password` when given."""
        key, cert = self._issue(
            cn,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before=not_before,
            not_after=not_after,
        )
        stem = name or cn
        return ClientCert(
            cn=cn,
            certificate=_write(self.directory / f"{stem}.crt", _cert_pem(cert)),
            key=_write(self.directory / f"{stem}.key", _key_pem(key, key_password), secret=True),
            key_password=key_password,
        )

    def expired_client_cert(self, cn: str, *, name: str | None = None) -> ClientCert:
        """A client certificate from this CA that expired yesterday."""
        now = _now()
        return self.client_cert(
            cn,
            name=name or f"{cn}-expired",
            not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(days=1),
        )


def untrusted_client_cert(directory: Path, cn: str, *, name: str | None = None) -> ClientCert:
    """A client certificate for `CN=cn` from a fresh CA that no truststore holds."""
    rogue = CertificateAuthority(directory, name=f"untrusted CA for {name or cn}")
    return rogue.client_cert(cn, name=name or f"{cn}-untrusted")
