"""The gRPC-to-Kafka bridge (docs/bridge.md): RPCs in, Kafka events out.

- proto/bridge.proto: the service; the Python beside it is generated (codegen.py) and checked in
- server.py: the process; Bridge owns the gRPC server, the producer, the admin client and the
  broker watch, and stops them in order on SIGTERM
- service.py: the RPCs; events.py: the order event, its validation and its two formats;
  publisher.py: topic lookups, and what an outcome becomes as a gRPC status;
  transactions.py: the transactional producer that makes every answer true
- standard.py: the standard health and reflection services, typed
- worker.py: the kafkaworker app that consumes the events
- client.py, bench.py: a command-line client, and the rate and latency of PlaceOrder
"""
