"""The app as an AsyncAPI 3.0 document (`kafkaworker asyncapi MODULE:APP`): its topics,
what its handlers receive and send, payload schemas, keys and the kw.* headers, servers and
security from the settings. document.py assembles it; payloads.py, servers.py and
proto_text.py describe its parts."""

from __future__ import annotations

from typing import Any, Literal

import orjson
import yaml

from kafkaworker.asyncapi.document import ASYNCAPI_VERSION, build

__all__ = ["ASYNCAPI_VERSION", "build", "render"]

Format = Literal["yaml", "json"]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a .proto text, a traceback's description) as YAML block scalars,
    readable as written, rather than one quoted line of \\n escapes. No anchors and aliases:
    a payload shared by two messages is written out twice, as a reader expects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render(document: dict[str, Any], fmt: Format = "yaml") -> str:
    """The document as YAML (in its own order: asyncapi, info, servers...) or JSON."""
    if fmt == "json":
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
