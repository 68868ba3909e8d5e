"""Helpers of the Schema Registry tests: a counting proxy in front of the real registry (which
can also stand in for an authenticating proxy: Basic auth or 401), the test protos generated
with grpcio-tools at test time, and records sent through a codec."""

from __future__ import annotations

import base64
import collections
import hmac
import http.client
import importlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from kafkaworker import Producer
from kafkaworker.serialization import Codec
from tests.support import make_settings

PROTOS = Path(__file__).resolve().parent.parent / "protos"


class CountingProxy:
    """An HTTP proxy to the real registry that counts the requests it forwards, by method and
    path without the query: how many requests the codecs' caches let through.

    With `basic_auth=(user, password)` it is also the authenticating reverse proxy deployments
    put in front of a registry (Apicurio 2.6 checks credentials only with Keycloak): a request
    without that `Authorization: Basic` header is answered 401 with Confluent's JSON error body
    and never forwarded; `refused` counts those, and `refused_event` is set at the first."""

    def __init__(self, target_root: str, *, basic_auth: tuple[str, str] | None = None) -> None:
        target = urlsplit(target_root)
        assert target.hostname is not None and target.port is not None
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.refused: collections.Counter[tuple[str, str]] = collections.Counter()
        self.refused_event = threading.Event()
        lock = threading.Lock()
        counts, refused, refused_event = self.counts, self.refused, self.refused_event
        expected = None
        if basic_auth is not None:
            token = base64.b64encode(":".join(basic_auth).encode()).decode()
            expected = f"Basic {token}".encode()

        class Forward(BaseHTTPRequestHandler):
            def _authorized(self) -> bool:
                if expected is None:
                    return True
                given = self.headers.get("Authorization", "").encode()
                return hmac.compare_digest(given, expected)

            def _unauthorized(self) -> None:
                with lock:
                    refused[(self.command, self.path.split("?", 1)[0])] += 1
                # Set before the answer goes out: a client that got its 401 may look at once
                # (set after the write, a fresh-clone CI run saw it still unset).
                refused_event.set()
                body = b'{"error_code": 401, "message": "Unauthorized"}'
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="schema-registry"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if not self._authorized():
                    self._unauthorized()
                    return
                with lock:
                    counts[(self.command, self.path.split("?", 1)[0])] += 1
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    # The credentials are the proxy's business: the registry never sees them.
                    dropped = ("host", "authorization")
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in ("transfer-encoding", "connection"):
                            self.send_header(name, value)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{target.path}"

    def count(self, method: str, path_suffix: str) -> int:
        """Requests of `method` whose path ends with `path_suffix`."""
        return sum(
            n for (m, p), n in self.counts.items() if m == method and p.endswith(path_suffix)
        )

    @contextmanager
    def running(self) -> Iterator[CountingProxy]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def generate_protos(out: Path) -> dict[str, ModuleType]:
    """tests/protos/*.proto compiled with grpcio-tools into `out` and imported: the same
    command a project runs (python -m grpc_tools.protoc -I protos --python_out=. ...)."""
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTOS.glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            *map(str, protos),
        ],
        check=True,
    )
    # The generated modules import one another by file name (import money_pb2).
    sys.path.insert(0, str(out))
    return {p.stem: importlib.import_module(f"{p.stem}_pb2") for p in protos}


def send(bootstrap: str, topic: str, values: list[Any], codec: Codec) -> None:
    """Produce `values` to `topic`, each encoded by `codec` (registering its schema)."""
    producer = Producer(make_settings(bootstrap))
    try:
        for value in values:
            producer.send_sync(topic, value, codec=codec)
    finally:
        producer.close()
