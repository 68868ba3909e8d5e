"""Fixtures of the integration tests beside the session broker (tests/conftest.py): a real
Schema Registry (Apicurio, Confluent-compatible; kafkaworker.testing.registry), started at the
first test that asks for it and stopped with the session.

Tests of the registry's own failures (killed, hung) start a private one with `own_registry`,
so that the session's registry stays healthy for every other test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kafkaworker.testing.registry import RegistryError, SchemaRegistry

LOG_DIR = Path(__file__).resolve().parent.parent.parent / "build" / "test-logs" / "registry"
_registries: list[SchemaRegistry] = []


def _new_registry() -> SchemaRegistry:
    try:
        registry = SchemaRegistry()
    except RegistryError as exc:
        # Without java or mvn the tests are skipped on a laptop; CI must have them.
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Schema Registry for this test: {exc}")
    _registries.append(registry)
    registry.start()
    return registry


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.testsfailed:
        for index, registry in enumerate(_registries):
            kept = registry.keep_log(LOG_DIR / str(index))
            if kept is not None:
                print(f"\nkept registry log: {kept}")
    for registry in _registries:
        registry.cleanup()


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[SchemaRegistry]:
    """A real Schema Registry for the session; `schema_registry.url` is the Confluent API.

    Its default compatibility is NONE: a test of refusals sets its subject's level itself.
    Tests use topic-unique subjects, so they never see one another's schemas."""
    registry = _new_registry()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def own_registry() -> Iterator[Callable[[], SchemaRegistry]]:
    """own_registry(): a private registry for a test that kills or freezes it."""
    started: list[SchemaRegistry] = []

    def start() -> SchemaRegistry:
        registry = _new_registry()
        started.append(registry)
        return registry

    yield start
    for registry in started:
        registry.stop(kill=True)
