"""The checked-in generated code matches apps/bridge/proto/bridge.proto.

What is compared is the file descriptor the .proto compiles to now against the one embedded
in bridge_pb2.py: a changed .proto fails here until `python -m apps.bridge.codegen` is run,
while a newer protoc that only formats its output differently does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from apps.bridge import codegen
from apps.bridge.proto import bridge_pb2

pytest.importorskip("grpc_tools", reason="grpcio-tools compiles the .proto")


def test_the_generated_code_is_up_to_date() -> None:
    embedded = descriptor_pb2.FileDescriptorProto.FromString(bridge_pb2.DESCRIPTOR.serialized_pb)
    assert codegen.compiled_descriptor() == embedded, (
        "apps/bridge/proto/bridge.proto changed: run python -m apps.bridge.codegen"
    )


def test_the_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .proto with one more field compiles to another descriptor."""
    changed = tmp_path / codegen.PROTO
    changed.parent.mkdir(parents=True)
    source = (codegen.ROOT / codegen.PROTO).read_text()
    changed.write_text(source.replace("string currency = 4;", "string currency = 4; int32 x = 9;"))
    monkeypatch.setattr(codegen, "ROOT", tmp_path)
    embedded = descriptor_pb2.FileDescriptorProto.FromString(bridge_pb2.DESCRIPTOR.serialized_pb)
    assert codegen.compiled_descriptor() != embedded


def test_every_generated_file_is_checked_in() -> None:
    for name in codegen.GENERATED:
        assert (codegen.ROOT / codegen.PROTO.parent / name).is_file(), name
