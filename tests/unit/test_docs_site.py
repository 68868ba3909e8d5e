"""The documentation site (mkdocs.yml) builds with --strict, and its settings reference, made
from the settings model at build time, has every setting."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from kafkaworker.settings import Settings
from tests.support import ROOT
from tools import settings_reference


def setting_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every setting's dotted path, a handler's name as `<name>`: walked here on its own,
    so that a kind of field the generator skips shows up as missing."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        annotation = field.annotation
        candidates = typing.get_args(annotation) or (annotation,)
        if typing.get_origin(annotation) is dict:
            candidates = (typing.get_args(annotation)[1],)
            path = f"{path}.<name>"
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield from setting_paths(candidate, f"{path}.")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return out


def test_the_site_builds_strictly_with_every_page_of_the_nav(site: Path) -> None:
    for page in (
        "getting-started",
        "handlers",
        "failures",
        "payloads",
        "async",
        "operations",
        "deployment",
        "dashboards",
        "reliability",
        "performance",
        "settings",
        "api",
    ):
        assert (site / page / "index.html").is_file(), page
    started = (site / "getting-started" / "index.html").read_text()
    # The README's getting started, included, its numbered steps one list.
    assert "<strong>Install</strong>" in started and "<strong>See it work:</strong>" in started
    assert started.count("<ol>") == 1
    api = (site / "api" / "index.html").read_text()
    assert "wait_for_commit" in api and "Register a handler for" in api  # from the docstrings


def test_the_settings_reference_has_every_setting(site: Path) -> None:
    page = (site / "settings" / "index.html").read_text()
    generated = settings_reference.markdown()
    for path in setting_paths(Settings):
        assert f"`{path}`" in generated, path
        shown = path.replace("<", "&lt;").replace(">", "&gt;")
        assert f"<code>{shown}</code>" in page, path
        variable = "KAFKAWORKER_" + "__".join(p.upper() for p in path.split("."))
        assert variable.replace("<", "&lt;").replace(">", "&gt;") in page, variable


def test_a_new_setting_is_in_the_reference_with_its_comment() -> None:
    """What the model says is what the reference says: a field added to a section comes out
    with its type, default, variable and the comment above it in settings.py."""
    rows = {row.setting: row for s in settings_reference.sections() for row in s.rows}
    row = rows["kafka.group_protocol"]
    assert row.kind == "`classic` / `consumer`" and row.default == "`classic`"
    assert row.variable == "KAFKAWORKER_KAFKA__GROUP_PROTOCOL"
    assert row.meaning.startswith('"classic" uses cooperative-sticky assignment')

    class Extended(Settings):
        fresh: int = 3

    assert "| `fresh` | integer | `3` | `KAFKAWORKER_FRESH` |" in settings_reference.markdown(
        Extended
    )
