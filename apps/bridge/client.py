"""A command-line client for the bridge, for trying it without grpcurl:

    python -m apps.bridge.client place-order --order-id o-1 --customer customer-1 --line A:2:150
    python -m apps.bridge.client publish orders.audit --key k --value '{"a": 1}' --header source=cli
    python -m apps.bridge.client health

Prints the answer (where the broker wrote the record) as JSON, or the gRPC status and its
details on one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import grpc

from apps.bridge.proto import bridge_pb2 as pb
from apps.bridge.proto import bridge_pb2_grpc
from apps.bridge.standard import OVERALL, check_health

SERVICE = pb.DESCRIPTOR.services_by_name["OrderBridge"].full_name


def _line(text: str) -> pb.OrderLine:
    try:
        sku, quantity, price = text.split(":")
        return pb.OrderLine(sku=sku, quantity=int(quantity), unit_price_cents=int(price))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected SKU:QUANTITY:UNIT_PRICE_CENTS"
        ) from None


def _header(text: str) -> pb.Header:
    name, _, value = text.partition("=")
    return pb.Header(name=name, value=value.encode())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m apps.bridge.client")
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--timeout", type=float, default=30.0, help="the RPC's deadline, s")
    parser.add_argument("--tls-ca", help="TLS: trust the bridge's certificate from this CA (PEM)")
    parser.add_argument("--tls-cert", help="mTLS: this client's certificate (PEM)")
    parser.add_argument("--tls-key", help="mTLS: its private key (PEM)")
    commands = parser.add_subparsers(dest="command", required=True)
    place = commands.add_parser("place-order")
    place.add_argument("--order-id", required=True)
    place.add_argument("--customer", required=True)
    place.add_argument("--currency", default="EUR")
    place.add_argument("--line", type=_line, action="append", default=[], dest="lines")
    publish = commands.add_parser("publish")
    publish.add_argument("topic")
    publish.add_argument("--key")
    publish.add_argument("--value")
    publish.add_argument("--header", type=_header, action="append", default=[], dest="headers")
    commands.add_parser("health")
    return parser.parse_args(argv)


def open_channel(
    address: str,
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> grpc.Channel:
    """A channel to the bridge: plaintext, or TLS trusting `ca` (with a client certificate
    for a bridge that asks for one)."""
    if ca is None and cert is None:
        return grpc.insecure_channel(address)

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as file:
            return file.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )
    return grpc.secure_channel(address, credentials)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        print("--tls-cert and --tls-key go together: pass both, or neither", file=sys.stderr)
        return 2
    try:
        channel = open_channel(args.address, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    except OSError as exc:
        print(f"cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    with channel:
        stub = bridge_pb2_grpc.OrderBridgeStub(channel)
        try:
            if args.command == "health":
                return _health(channel, args.timeout)
            if args.command == "place-order":
                reply = stub.PlaceOrder(
                    pb.PlaceOrderRequest(
                        order_id=args.order_id,
                        customer_id=args.customer,
                        currency=args.currency,
                        lines=args.lines,
                    ),
                    timeout=args.timeout,
                )
            else:
                request = pb.PublishRequest(topic=args.topic, headers=args.headers)
                if args.key is not None:
                    request.key = args.key.encode()
                if args.value is not None:
                    request.value = args.value.encode()
                reply = stub.Publish(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    # Not json_format: proto3's JSON mapping leaves out partition 0 and offset 0 and writes
    # int64 fields as strings.
    answer = {
        "topic": reply.topic,
        "partition": reply.partition,
        "offset": reply.offset,
        "timestamp_ms": reply.timestamp_ms,
    }
    print(json.dumps(answer))
    return 0


def _health(channel: grpc.Channel, timeout: float) -> int:
    for service in (OVERALL, SERVICE):
        print(f"{service or '(server)'}: {check_health(channel, service, timeout)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
