"""The HTTP endpoint: GET /metrics, /healthz and /readyz, and the dashboard (GET /, /api/...,
POST /api/control/...; observability/dashboard/) when one is given.

prometheus-client's own server answers every path with the metrics; probes need their own
status codes, so this is a small http.server of ours. It runs on one daemon thread owned by
whoever enters it as a context manager (the Runner, or the supervisor under --processes),
which closes it on the way out.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kafkaworker.errors import StartupError
from kafkaworker.observability.health import Health

log = structlog.get_logger("kafkaworker.metrics")


class Pages(Protocol):
    """What the server serves beside its own paths: the worker's dashboard
    (observability/dashboard/), or the fleet's (fleet/dashboard.py). The server starts and
    closes it with itself."""

    def start(self) -> object: ...

    def close(self) -> None: ...

    def answer(self, request: Request) -> tuple[int, bytes, str] | None: ...


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the pages see it: its headers by lower-case name, its body read on
    demand (`read_body(n)`), and who sent it (host:port, for the audit lines)."""

    method: str
    path: str
    headers: Mapping[str, str]
    read_body: Callable[[int], bytes]
    client: str


_OWN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Callable[[], Health],
        dashboard: Pages | None = None,
    ) -> None:
        self.registry = registry
        self.health = health
        self.dashboard = dashboard
        server_owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # an idle connection must not hold a thread forever

            def do_GET(self) -> None:
                server_owner._answer(self)

            def do_POST(self) -> None:  # the dashboard's operator actions only
                server_owner._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the worker's own logs

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror}): choose another "
                "metrics.port (env KAFKAWORKER_METRICS__PORT, or --metrics-port)"
            ) from None
        self._server.daemon_threads = True
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kw-metrics", daemon=True
        )

    def urls(self) -> dict[str, str]:
        """Where a person finds /metrics and the dashboard, as the start-up line says: a
        wildcard host (0.0.0.0, ::) is reached on loopback from the same machine."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        base = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        found = {"metrics": f"{base}/metrics"}
        if self.dashboard is not None:
            found["dashboard"] = f"{base}/"
        return found

    def __enter__(self) -> MetricsServer:
        if self.dashboard is not None:
            self.dashboard.start()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        if self.dashboard is not None:
            self.dashboard.close()

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        try:
            if request.command != "GET" or path not in _OWN_PATHS:
                reply = None
                if self.dashboard is not None:
                    reply = self.dashboard.answer(
                        Request(
                            request.command,
                            path,
                            {name.lower(): value for name, value in request.headers.items()},
                            request.rfile.read,
                            "{}:{}".format(*request.client_address[:2]),
                        )
                    )
                if reply is not None:
                    self._send(request, *reply)
                elif request.command != "GET":
                    self._send(request, 404, b"not found\n", "text/plain")
                else:
                    self._send(request, 404, b"try /metrics, /healthz or /readyz\n", "text/plain")
            elif path == "/metrics":
                self._send(request, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            elif path in {"/healthz", "/readyz"}:
                health = self.health()
                ok = health.live if path == "/healthz" else health.ready
                body = orjson.dumps({"live": health.live, "ready": health.ready, **health.detail})
                self._send(request, 200 if ok else 503, body, "application/json")
        except (BrokenPipeError, ConnectionResetError):  # the prober gave up first
            pass
        except Exception:
            log.exception("metrics endpoint failed", path=path)
            with contextlib.suppress(OSError):
                self._send(request, 500, b"internal error: see the worker's log\n", "text/plain")

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
