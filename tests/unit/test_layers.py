"""The layers: the public API stands on its own; the runtime is loaded only to run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def test_the_public_api_does_not_import_the_runtime() -> None:
    # A fresh interpreter: this test process may have imported the runtime already.
    code = (
        "import sys, kafkaworker, kafkaworker.app, kafkaworker.handlers, kafkaworker.message\n"
        "app = kafkaworker.App('svc')\n"
        "app.handler('orders', retries=1, dlq='orders.dlq')(lambda msg: None)\n"
        "print(sorted(m for m in sys.modules if m.startswith('kafkaworker.runtime')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def _imports(tree: ast.Module, module: str, package: Path) -> set[str]:
    """The kafkaworker modules `module` imports, at any depth of its code but inside
    `if TYPE_CHECKING:` (annotations only: never executed)."""
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        if name != "kafkaworker" and not name.startswith("kafkaworker."):
            return None
        parts = name.split(".")[1:]
        path = package.joinpath(*parts)
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            return name
        return None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := resolve(alias.name)) is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            for alias in node.names:
                # `from kafkaworker import clients` imports the module kafkaworker.clients.
                target = resolve(f"{node.module}.{alias.name}") or resolve(node.module)
                if target is not None:
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def test_no_module_of_kafkaworker_imports_itself_back() -> None:
    """No import cycle, lazy imports inside functions included: each one is a dependency
    that points the wrong way (docs/architecture.md, Layout)."""
    package = ROOT / "kafkaworker"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = _imports(ast.parse(path.read_text()), module, package)
    cycles: list[list[str]] = []
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            walk(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(("side", "other"), [("execute", "poll"), ("poll", "execute")])
def test_the_poll_and_execute_sides_share_only_the_hand_off(side: str, other: str) -> None:
    package = ROOT / "kafkaworker"
    forbidden = f"kafkaworker.runtime.{other}"
    found = {
        (path.name, name)
        for path in (package / "runtime" / side).rglob("*.py")
        for name in _imports(ast.parse(path.read_text()), "", package)
        if name == forbidden or name.startswith(forbidden + ".")
    }
    assert found == set()
