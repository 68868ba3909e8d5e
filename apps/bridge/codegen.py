"""Regenerates the bridge's Python code from apps/bridge/proto/bridge.proto:

    python -m apps.bridge.codegen

The output is checked in beside the .proto (bridge_pb2.py and bridge_pb2_grpc.py, with typed
stubs .pyi from mypy-protobuf), so that running the bridge needs grpcio and protobuf but not
the compiler (grpcio-tools bundles protoc: 8 MB that the image would carry for nothing), and so
that mypy --strict and reviewers see the generated API without a build step first.
tests/bridge/test_codegen.py fails when the checked-in descriptor differs from the .proto.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
# The path relative to ROOT is also the Python package of the output: protoc names the
# generated modules' imports after it (from apps.bridge.proto import bridge_pb2).
PROTO = Path("apps/bridge/proto/bridge.proto")
GENERATED = ("bridge_pb2.py", "bridge_pb2.pyi", "bridge_pb2_grpc.py", "bridge_pb2_grpc.pyi")


class CodegenError(RuntimeError):
    """protoc failed; its own messages are on stderr."""


def _protoc(*args: str) -> None:
    # Imported here: only regenerating needs grpcio-tools, never the running bridge.
    from grpc_tools import protoc  # type: ignore[import-untyped]  # noqa: PLC0415

    includes = str(resources.files("grpc_tools") / "_proto")  # the well-known types
    command = ["protoc", f"-I{ROOT}", f"-I{includes}", *args, str(ROOT / PROTO)]
    if protoc.main(command) != 0:
        raise CodegenError(f"protoc failed on {PROTO} (see above)")


def _plugin(name: str) -> str:
    """mypy-protobuf's protoc plugins, from this interpreter's environment (they are scripts
    installed beside it, not necessarily on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise CodegenError(f"{name} not found: pip install mypy-protobuf")
    return f"--plugin={name}={found}"


def generate(out: Path) -> list[Path]:
    """Writes the generated files under `out` (as out/apps/bridge/proto/...); returns them."""
    _protoc(
        _plugin("protoc-gen-mypy"),
        _plugin("protoc-gen-mypy_grpc"),
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
    )
    return [out / PROTO.parent / name for name in GENERATED]


def compiled_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """What the .proto compiles to now, as the generated module embeds it (no source info)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bridge.desc"
        _protoc(f"--descriptor_set_out={path}")
        files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    [file] = [f for f in files if f.name == PROTO.as_posix()]
    _strip_json_names(file.message_type)
    return file


def _strip_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """protoc's descriptor sets carry each field's json_name; the Python generator leaves it
    out of the descriptor it embeds (the runtime derives it), so it is left out here too."""
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _strip_json_names(message.nested_type)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, ROOT / PROTO.parent / path.name)
            print(f"wrote {PROTO.parent / path.name}")


if __name__ == "__main__":
    main()
