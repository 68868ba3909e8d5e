"""The bridge process: `python -m apps.bridge [--port 50051] [--format json|protobuf] ...`.

Kafka connection settings come from kafkaworker's settings (settings.yaml, KAFKAWORKER_*
variables), as for a worker. One Bridge owns everything the process runs: the gRPC server,
the producer, the admin client for topic lookups and the task that watches the brokers; its
stop() ends them in order. SIGTERM or SIGINT: the health service says NOT_SERVING, RPCs not
started yet are refused UNAVAILABLE for `drain` seconds, then the listener closes and those in
flight get `grace` seconds, then the records still waiting are committed and the process
exits 0. A second signal exits at once (1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import confluent_kafka
import grpc
import structlog
from confluent_kafka import KafkaException

from apps.bridge.events import Format
from apps.bridge.proto import bridge_pb2, bridge_pb2_grpc
from apps.bridge.publisher import Publisher, Publishes, TopicCatalog
from apps.bridge.service import OrderBridgeService
from apps.bridge.standard import HEALTH_SERVICE, OVERALL, Health, enable_reflection
from apps.bridge.transactions import TransactionalProducer, producer_settings
from kafkaworker import KafkaWorkerError, Settings, StartupError, load_settings, tracing
from kafkaworker.observability.logging import configure
from kafkaworker.ops import KafkaAdmin
from kafkaworker.producer import producer_config

if TYPE_CHECKING:
    from apps.bridge.outbox import OutboxPublisher

log = structlog.get_logger("bridge")
SERVICE = bridge_pb2.DESCRIPTOR.services_by_name["OrderBridge"].full_name


@dataclass(frozen=True)
class BridgeOptions:
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (Bridge.start returns it)
    orders_topic: str = "orders.placed"
    format: Format = Format.JSON
    # The longest an RPC waits for its transaction to commit before it is answered
    # UNAVAILABLE (not committed, and never will be) or DEADLINE_EXCEEDED (the commit was sent
    # and not answered: it may have been written); see transactions.py.
    publish_timeout: float = 10.0
    # Topic lookups (NOT_FOUND) and the health probe's Metadata request.
    metadata_timeout: float = 5.0
    health_interval: float = 2.0
    # How long RPCs in flight at SIGTERM may take: above publish_timeout, so each gets its
    # answer (acknowledged or UNAVAILABLE) rather than being cancelled.
    grace: float = 15.0
    # Before the listener closes at SIGTERM, how long RPCs not started yet are refused
    # UNAVAILABLE (what clients retry on). Without it, calls that reached the server but
    # were not started when it stopped accepting are answered CANCELLED by grpc itself (the
    # SIGTERM-under-load test saw most of its 32 callers get one).
    drain: float = 1.0
    flush_timeout: float = 10.0
    # Beyond this many RPCs at once the server answers RESOURCE_EXHAUSTED: the producer's
    # queue, not the caller, decides how much memory waits for the brokers.
    max_concurrent_rpcs: int = 10_000
    # TLS on the listener: the server's certificate (chain) and key, PEM files. With
    # tls_client_ca too, clients must present a certificate that CA signed (mutual TLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # The producer's transactional.id: one per bridge instance (two bridges sharing one fence
    # each other). None: kafkaworker-bridge-HOST-PORT, stable across restarts of an instance,
    # so that a restarted bridge fences its previous run and settles its open transaction.
    transactional_id: str | None = None
    # Publish through the PostgreSQL outbox at postgres.url (apps/bridge/outbox.py): an RPC
    # is answered once its record is committed to the database, and the bridge's relay
    # publishes it; no transactional producer.
    outbox: bool = False

    @property
    def tls(self) -> str:
        """How the listener is secured: "off", "on" or "mutual" (for the logs)."""
        if self.tls_cert is None:
            return "off"
        return "mutual" if self.tls_client_ca is not None else "on"


def server_credentials(options: BridgeOptions) -> grpc.ServerCredentials | None:
    """The listener's TLS credentials, None for plaintext. Bad files are a StartupError in one
    line naming the option and the file, found here rather than at the first handshake (grpc
    would accept a key that does not match its certificate and fail every connection)."""
    cert, key, client_ca = options.tls_cert, options.tls_key, options.tls_client_ca
    if (cert is None) != (key is None):
        raise StartupError("--tls-cert and --tls-key go together: pass both, or neither")
    if cert is None or key is None:
        if client_ca is not None:
            raise StartupError("--tls-client-ca needs --tls-cert and --tls-key (the server's)")
        return None

    def read(option: str, path: str) -> bytes:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise StartupError(f"cannot read {option} {path}: {exc.strerror}") from None

    chain, private_key = read("--tls-cert", cert), read("--tls-key", key)
    try:
        # The stdlib checks that the files are PEM and that the key is the certificate's.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise StartupError(
            f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and its key: {exc}"
        ) from None
    roots = None
    if client_ca is not None:
        roots = read("--tls-client-ca", client_ca)
        try:
            ssl.create_default_context(cadata=roots.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise StartupError(
                f"--tls-client-ca {client_ca} holds no PEM CA certificate: {exc}"
            ) from None
    return grpc.ssl_server_credentials(
        [(private_key, chain)],
        root_certificates=roots,
        require_client_auth=roots is not None,
    )


def bridge_producer_config(
    settings: Settings, options: BridgeOptions, transactional_id: str
) -> dict[str, object]:
    """The transactional producer's librdkafka properties: kafkaworker's (acks=all,
    idempotent, murmur2), the user's kafka.producer, then the bridge's own."""
    config = producer_config(settings)  # kafka.producer applied: a client.id of the user's wins
    config.setdefault("client.id", "kafkaworker-bridge")
    return producer_settings(
        config, transactional_id=transactional_id, delivery_timeout=options.publish_timeout
    )


class Bridge:
    """The gRPC server and the clients behind it: start(), then stop() (once)."""

    def __init__(self, settings: Settings, options: BridgeOptions) -> None:
        self.options = options
        self._credentials = server_credentials(options)  # before any client: fails first
        self.settings = settings
        self.port = 0
        self._admin = KafkaAdmin(self.settings, timeout=options.metadata_timeout)
        self._server = grpc.aio.server(
            maximum_concurrent_rpcs=options.max_concurrent_rpcs,
            # grpc sets SO_REUSEPORT by default: a second bridge on the same port would start
            # "fine" and take half the connections. Refusing the port is the clearer failure.
            options=[("grpc.so_reuseport", 0)],
        )
        self._health = Health(self._server)
        self._stopping = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._serving: bool | None = None
        # Its thread starts in start(), once the port (part of the default transactional.id)
        # is known.
        self._producer = TransactionalProducer(
            self._new_producer,
            api_timeout=options.publish_timeout,
            init_timeout=options.metadata_timeout,
        )
        topics = TopicCatalog(lambda: {t.name for t in self._admin.topics()})
        publisher: Publishes
        self._outbox: OutboxPublisher | None = None
        if options.outbox:
            from apps.bridge.outbox import OutboxPublisher  # noqa: PLC0415 - the postgres extra

            publisher = self._outbox = OutboxPublisher(
                settings, topics, timeout=options.publish_timeout
            )
        else:
            publisher = Publisher(
                self._producer,
                topics,
                timeout=options.publish_timeout,
                bootstrap=self.settings.kafka.bootstrap_servers,
            )
        spans = None
        if settings.tracing.enabled:
            from apps.bridge.tracing import RpcSpans  # noqa: PLC0415 - the otel extra

            spans = RpcSpans(SERVICE)
        self._service = OrderBridgeService(
            publisher, orders_topic=options.orders_topic, fmt=options.format, spans=spans
        )
        bridge_pb2_grpc.add_OrderBridgeServicer_to_server(self._service, self._server)
        enable_reflection([SERVICE, HEALTH_SERVICE], self._server)

    @property
    def transactional_id(self) -> str:
        return self.options.transactional_id or (
            f"kafkaworker-bridge-{socket.gethostname()}-{self.port}"
        )

    def _new_producer(self) -> confluent_kafka.Producer:
        config = bridge_producer_config(self.settings, self.options, self.transactional_id)
        try:
            return confluent_kafka.Producer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise StartupError(f"the producer configuration was rejected: {exc}") from None

    async def start(self) -> int:
        """Listens, with the health status known first; returns the port. On failure the
        clients are closed before the error is raised."""
        address = f"{self.options.host}:{self.options.port}"
        try:
            if self._credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, self._credentials)
            if self._outbox is None:
                self._producer.start()  # a configuration librdkafka refuses stops it here
        except RuntimeError as exc:  # grpc's whole message is "Failed to bind to address"
            self._admin.close()
            raise StartupError(f"cannot listen on {address} (in use?): {exc}") from None
        except StartupError:
            self._admin.close()
            raise
        try:
            if self._outbox is not None:
                await self._outbox.open()
            await self._check_brokers()
            await self._server.start()
        except BaseException:
            await asyncio.to_thread(self._producer.close, 0)
            if self._outbox is not None:
                await self._outbox.close()
            self._admin.close()
            raise
        self._watch = asyncio.create_task(self._watch_brokers(), name="bridge-broker-watch")
        log.info(
            "bridge started",
            address=f"{self.options.host}:{self.port}",
            bootstrap=self.settings.kafka.bootstrap_servers,
            orders_topic=self.options.orders_topic,
            format=self.options.format.value,
            tls=self.options.tls,
            transactional_id=None if self._outbox is not None else self.transactional_id,
            outbox=self._outbox is not None,
        )
        return self.port

    def _ping(self) -> bool:
        try:
            self._admin.metadata()
        except KafkaWorkerError:
            return False
        return True

    async def _check_brokers(self) -> None:
        serving = await asyncio.to_thread(self._ping)
        if serving != self._serving:
            self._serving = serving
            await self._health.set([OVERALL, SERVICE], serving)
            if serving:
                log.info("brokers answer: SERVING")
            else:
                log.warning(
                    "brokers do not answer: NOT_SERVING",
                    bootstrap=self.settings.kafka.bootstrap_servers,
                    within=self.options.metadata_timeout,
                )

    async def _watch_brokers(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.options.health_interval)
            if not self._stopping.is_set():
                await self._check_brokers()

    async def stop(self) -> int:
        """Stops in order; returns how many records the final transaction could not commit."""
        await self._health.enter_graceful_shutdown()  # load balancers stop sending first
        self._service.refusing = True
        log.info("stopping: no new RPCs", drain=self.options.drain, grace=self.options.grace)
        if self.options.drain > 0:
            await asyncio.sleep(self.options.drain)  # calls queued in grpc are refused
        log.info("closing the listener")
        await self._server.stop(self.options.grace)
        self._stopping.set()
        if self._watch is not None:
            await self._watch  # its probe is a thread: let it end before the clients do
        remaining = await asyncio.to_thread(self._producer.close, self.options.flush_timeout)
        if self._outbox is not None:
            await self._outbox.close()
        self._admin.close()
        log.info("bridge stopped", undelivered=remaining)
        return remaining


async def serve(settings: Settings, options: BridgeOptions) -> int:
    """Runs a bridge until SIGTERM or SIGINT; 0 when everything was delivered."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("signal received", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # Traced (tracing.enabled): set up before the bridge, flushed after it stopped.
    traced = (
        tracing.sdk("kafkaworker-bridge") if settings.tracing.enabled else contextlib.nullcontext()
    )
    with traced:
        bridge = Bridge(settings, options)
        await bridge.start()
        await stop.wait()
        return 1 if await bridge.stop() else 0


def parse_args(argv: Sequence[str] | None) -> tuple[BridgeOptions, str]:
    defaults = BridgeOptions()
    parser = argparse.ArgumentParser(
        prog="python -m apps.bridge",
        description="gRPC to Kafka: PlaceOrder and Publish RPCs become records. Kafka "
        "settings as for a worker (settings.yaml, KAFKAWORKER_* variables).",
    )
    parser.add_argument("--host", default=defaults.host, help="0.0.0.0 in a container")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--orders-topic", default=defaults.orders_topic)
    parser.add_argument(
        "--format", choices=[f.value for f in Format], default=defaults.format.value
    )
    parser.add_argument("--publish-timeout", type=float, default=defaults.publish_timeout)
    parser.add_argument("--metadata-timeout", type=float, default=defaults.metadata_timeout)
    parser.add_argument("--health-interval", type=float, default=defaults.health_interval)
    parser.add_argument("--grace", type=float, default=defaults.grace)
    parser.add_argument("--drain", type=float, default=defaults.drain)
    parser.add_argument("--tls-cert", help="the server's certificate (chain), PEM: TLS on")
    parser.add_argument("--tls-key", help="its private key, PEM (unencrypted)")
    parser.add_argument(
        "--tls-client-ca", help="require client certificates signed by this CA (PEM): mTLS"
    )
    parser.add_argument(
        "--transactional-id",
        help="the producer's transactional.id, one per bridge instance "
        "(default: kafkaworker-bridge-HOST-PORT)",
    )
    parser.add_argument(
        "--outbox",
        action="store_true",
        help="publish through the PostgreSQL outbox at postgres.url (KAFKAWORKER_POSTGRES__URL):"
        " OK once the record is committed there; the bridge runs the relay",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    options = BridgeOptions(
        host=args.host,
        port=args.port,
        orders_topic=args.orders_topic,
        format=Format(args.format),
        publish_timeout=args.publish_timeout,
        metadata_timeout=args.metadata_timeout,
        health_interval=args.health_interval,
        grace=args.grace,
        drain=args.drain,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        transactional_id=args.transactional_id,
        outbox=args.outbox,
    )
    return options, str(args.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    options, level = parse_args(argv)
    configure(level)
    try:
        return asyncio.run(serve(load_settings(), options))
    except KafkaWorkerError as exc:  # settings or start-up: one line, as the worker says it
        log.error(str(exc))
        return 2
