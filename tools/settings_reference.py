"""The settings reference of the docs site, generated from the settings model when the site is
built, so it cannot drift from kafkaworker/settings.py: every setting, its type, default,
environment variable and meaning.

The meanings are the model's own words: a section's class docstring, and the comments written
above (or beside) each field in settings.py, read with tokenize. A mkdocs hook (mkdocs.yml
`hooks:`) puts the reference where docs/settings.md says `<!-- settings-reference -->`.

    python -m tools.settings_reference      # print it
"""

from __future__ import annotations

import ast
import inspect
import io
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from kafkaworker import settings as settings_module
from kafkaworker.settings import Settings

PLACEHOLDER = "<!-- settings-reference -->"
_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}
ENV_PREFIX = "KAFKAWORKER_"


@dataclass(frozen=True)
class Row:
    path: tuple[str, ...]  # ("kafka", "security", "protocol"); "<name>" for a handler's name
    kind: str
    default: str
    meaning: str

    @property
    def setting(self) -> str:
        return ".".join(self.path)

    @property
    def variable(self) -> str:
        return ENV_PREFIX + "__".join(p.upper() for p in self.path)


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]
    about: str
    rows: list[Row]


def sections(model: type[BaseModel] = Settings, path: tuple[str, ...] = ()) -> Iterator[Section]:
    """The model's settings, a section per nested model (depth first, in declaration order)."""
    comments = _comments()
    rows: list[Row] = []
    nested: list[tuple[tuple[str, ...], type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        here = (*path, name)
        inner = _model_of(field.annotation)
        values = _dict_values(field.annotation)
        if values is not None and _model_of(values) is not None:
            nested.append(((*here, "<name>"), _model_of(values)))  # type: ignore[arg-type]
        elif inner is not None:
            nested.append((here, inner))
        meaning = comments.get((model.__name__, name), "")
        if inner is not None and not meaning:
            meaning = _first_paragraph(inner)
        rows.append(Row(here, _kind(field.annotation), _default(field), meaning))
    about = _docstring(model) if model is not Settings else ""
    yield Section(path, about, rows)
    for inner_path, inner in nested:
        yield from sections(inner, inner_path)


def markdown(model: type[BaseModel] = Settings) -> str:
    """The reference as Markdown: a heading and a table per section."""
    out: list[str] = []
    for section in sections(model):
        title = ".".join(section.path) if section.path else "Top level"
        out += [f"### `{title}`" if section.path else f"### {title}", ""]
        if section.about:
            out += [section.about, ""]
        out += [
            "| setting | type | default | environment variable | meaning |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| `{row.setting}` | {_cell(row.kind)} | {_cell(row.default)} | "
            f"`{row.variable}` | {_cell(row.meaning)} |"
            for row in section.rows
        ]
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown_text: str, **kwargs: Any) -> str:
    """The mkdocs hook: the reference where the page asks for it."""
    if PLACEHOLDER not in markdown_text:
        return markdown_text
    return markdown_text.replace(PLACEHOLDER, markdown())


def _comments() -> dict[tuple[str, str], str]:
    """(class, field) -> the comment lines right above the field, else the one beside it."""
    source = inspect.getsource(settings_module)
    lines = source.splitlines()
    beside: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            beside[token.start[0]] = token.string.lstrip("#").strip()
    found: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above: list[str] = []
            line = item.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, lines[line - 1].strip().lstrip("#").strip())
                line -= 1
            trailing = beside.get(item.lineno) if item.lineno not in _whole_line(lines) else None
            text = " ".join(above) or trailing or ""
            found[(node.name, item.target.id)] = text
    return found


def _whole_line(lines: list[str]) -> set[int]:
    return {n for n, text in enumerate(lines, start=1) if text.strip().startswith("#")}


def _docstring(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    return "" if doc == inspect.getdoc(BaseModel) else doc


def _first_paragraph(model: type[BaseModel]) -> str:
    return " ".join(_docstring(model).split("\n\n", 1)[0].split())


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in _members(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _dict_values(annotation: Any) -> Any:
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    return None


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _kind(annotation: Any) -> str:
    """A type as a reader would write it."""
    members = _members(annotation)
    if len(members) > 1:
        return " or ".join(_kind(m) for m in members)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " / ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin is dict:
        _key, value = typing.get_args(annotation)
        if _model_of(value) is not None:
            return "map of name to section"
        return "map of librdkafka properties"
    if origin is tuple:
        return f"list of {_kind(typing.get_args(annotation)[0])}"
    if origin is typing.Annotated:
        return _kind(typing.get_args(annotation)[0])
    if annotation is type(None):
        return "null"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if isinstance(annotation, type):
        return _NAMES.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "`null`"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    sys.stdout.write(markdown())
