"""A Protobuf message as one self-contained .proto text, printed from its descriptor: what an
AsyncAPI document carries as a payload of schemaFormat `application/vnd.google.protobuf`.

Generated classes keep their file's descriptor, not its source text. AsyncAPI's Protobuf
schema parser reads a single text and implements no imports (but Google's well-known types),
so the message's own file is not enough when it uses a type of another file: the text holds
the message (marked `@RootNode`, which the parser looks for among several messages) and every
type it uses, transitively, in the message's package. The wire format does not carry type
names, so the text describes the same bytes; a comment names each moved type's origin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

_FIELD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _FIELD.TYPE_DOUBLE: "double",
    _FIELD.TYPE_FLOAT: "float",
    _FIELD.TYPE_INT64: "int64",
    _FIELD.TYPE_UINT64: "uint64",
    _FIELD.TYPE_INT32: "int32",
    _FIELD.TYPE_FIXED64: "fixed64",
    _FIELD.TYPE_FIXED32: "fixed32",
    _FIELD.TYPE_BOOL: "bool",
    _FIELD.TYPE_STRING: "string",
    _FIELD.TYPE_BYTES: "bytes",
    _FIELD.TYPE_UINT32: "uint32",
    _FIELD.TYPE_SFIXED32: "sfixed32",
    _FIELD.TYPE_SFIXED64: "sfixed64",
    _FIELD.TYPE_SINT32: "sint32",
    _FIELD.TYPE_SINT64: "sint64",
}
_WELL_KNOWN = "google.protobuf."
_INDENT = "  "


class UnprintableProtoError(ValueError):
    """The message's types cannot share one text (files of different syntaxes)."""


@dataclass
class _Types:
    """The top-level types the text holds: full name -> the name they get in the text."""

    package: str
    names: dict[str, str] = field(default_factory=dict)
    order: list[Descriptor | EnumDescriptor] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)

    def add(self, top: Descriptor | EnumDescriptor) -> bool:
        if top.full_name in self.names:
            return False
        taken = set(self.names.values())
        name = top.name
        if name in taken:  # the same name in two packages: qualify the moved one
            name = top.full_name.replace(".", "_")
        self.names[top.full_name] = name
        self.order.append(top)
        return True

    def reference(self, full_name: str) -> str:
        """How the text names a type given by its full name (".pkg.Outer.Inner")."""
        full_name = full_name.lstrip(".")
        if full_name.startswith(_WELL_KNOWN):
            return full_name
        for top, name in self.names.items():
            if full_name == top or full_name.startswith(f"{top}."):
                return name + full_name[len(top) :]
        raise KeyError(full_name)  # every used type was collected first


def proto_text(message: Descriptor) -> str:
    """The .proto text of `message` and the types it uses (see the module's docstring)."""
    root = _top(message)
    types = _Types(message.file.package)
    _collect(root, types)
    syntaxes = {_syntax(t.file) for t in types.order}
    if len(syntaxes) > 1:
        raise UnprintableProtoError(
            f"{message.full_name} uses types of files of different syntaxes "
            f"({', '.join(sorted(syntaxes))}): they cannot share one .proto text"
        )
    syntax = syntaxes.pop()
    lines = [f'syntax = "{syntax}";']
    if types.package:
        lines.append(f"package {types.package};")
    lines += [f'import "{path}";' for path in sorted(types.imports)]
    for top in types.order:
        lines.append("")
        if top.file.package != types.package or top.file.name != message.file.name:
            lines.append(f"// {top.full_name}, from {top.file.name}")
        if isinstance(top, EnumDescriptor):
            lines += _enum(top, types.names[top.full_name], 0)
        else:
            lines += _message(top, types, 0, syntax, root_node=message, name=None)
    return "\n".join(lines) + "\n"


def _top(descriptor: Descriptor | EnumDescriptor) -> Descriptor | EnumDescriptor:
    while descriptor.containing_type is not None:
        descriptor = descriptor.containing_type
    return descriptor


def _syntax(file: FileDescriptor) -> str:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto.syntax or "proto2"  # protoc leaves it empty for proto2


def _collect(top: Descriptor | EnumDescriptor, types: _Types) -> None:
    """`top` and every type its fields use, transitively, well-known ones as imports."""
    pending = [top]
    while pending:
        current = pending.pop(0)
        if not types.add(current) or isinstance(current, EnumDescriptor):
            continue
        for used in _used_types(current):
            if used.full_name.startswith(_WELL_KNOWN):
                types.imports.add(used.file.name)
            else:
                pending.append(_top(used))


def _used_types(message: Descriptor) -> list[Descriptor | EnumDescriptor]:
    used: list[Descriptor | EnumDescriptor] = []
    for fd in message.fields:
        if fd.message_type is not None:
            used.append(fd.message_type)
        elif fd.enum_type is not None:
            used.append(fd.enum_type)
    for nested in message.nested_types:
        used += _used_types(nested)
    return used


def _message(
    message: Descriptor,
    types: _Types,
    depth: int,
    syntax: str,
    *,
    root_node: Descriptor,
    name: str | None,
) -> list[str]:
    pad = _INDENT * depth
    lines = [f"{pad}// @RootNode"] if message.full_name == root_node.full_name else []
    lines.append(f"{pad}message {name or types.names[message.full_name]} {{")
    inner = _INDENT * (depth + 1)
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    maps = {n.name for n in proto.nested_type if n.options.map_entry}
    oneofs: dict[int, list[str]] = {}
    for fd_proto in proto.field:
        line = _field(fd_proto, message, types, syntax, maps)
        real_oneof = fd_proto.HasField("oneof_index") and not fd_proto.proto3_optional
        if real_oneof:
            oneofs.setdefault(fd_proto.oneof_index, []).append(line)
            if len(oneofs[fd_proto.oneof_index]) == 1:
                lines.append(f"\0oneof {fd_proto.oneof_index}")  # placeholder, in field order
        else:
            lines.append(f"{inner}{line}")
    lines = _expand_oneofs(lines, oneofs, proto, inner)
    for nested in message.nested_types:
        if nested.name not in maps:
            lines += _message(
                nested, types, depth + 1, syntax, root_node=root_node, name=nested.name
            )
    for enum in message.enum_types:
        lines += _enum(enum, enum.name, depth + 1)
    lines.append(f"{pad}}}")
    return lines


def _expand_oneofs(
    lines: list[str], oneofs: dict[int, list[str]], proto: Any, inner: str
) -> list[str]:
    expanded: list[str] = []
    for line in lines:
        if not line.startswith("\0oneof "):
            expanded.append(line)
            continue
        index = int(line.split(" ", 1)[1])
        expanded.append(f"{inner}oneof {proto.oneof_decl[index].name} {{")
        expanded += [f"{inner}{_INDENT}{member}" for member in oneofs[index]]
        expanded.append(f"{inner}}}")
    return expanded


def _field(fd: Any, message: Descriptor, types: _Types, syntax: str, maps: set[str]) -> str:
    if fd.type == _FIELD.TYPE_MESSAGE and fd.type_name.rsplit(".", 1)[-1] in maps:
        entry = message.nested_types_by_name[fd.type_name.rsplit(".", 1)[-1]]
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return f"map<{_type_of(key, types)}, {_type_of(value, types)}> {fd.name} = {fd.number};"
    label = ""
    if fd.label == _FIELD.LABEL_REPEATED:
        label = "repeated "
    elif fd.label == _FIELD.LABEL_REQUIRED:
        label = "required "
    elif fd.proto3_optional or (syntax == "proto2" and not fd.HasField("oneof_index")):
        label = "optional "
    kind = _SCALARS.get(fd.type) or types.reference(fd.type_name)
    default = f" [default = {_default(fd)}]" if fd.HasField("default_value") else ""
    return f"{label}{kind} {fd.name} = {fd.number}{default};"


def _type_of(fd: Any, types: _Types) -> str:
    if fd.message_type is not None:
        return types.reference(fd.message_type.full_name)
    if fd.enum_type is not None:
        return types.reference(fd.enum_type.full_name)
    return _SCALARS[fd.type]


def _default(fd: Any) -> str:
    if fd.type in (_FIELD.TYPE_STRING, _FIELD.TYPE_BYTES):
        return json.dumps(fd.default_value)
    return str(fd.default_value)


def _enum(enum: EnumDescriptor, name: str, depth: int) -> list[str]:
    pad = _INDENT * depth
    lines = [f"{pad}enum {name} {{"]
    lines += [f"{pad}{_INDENT}{value.name} = {value.number};" for value in enum.values]
    lines.append(f"{pad}}}")
    return lines
