"""The worker image, built once per session with podman (tools/image.py), for the tests here.

Without podman these tests skip, saying how to install it; in CI (CI set) they fail instead,
since CI's set-up installs podman and an image never built is an untested image.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.container.podman import Container
from tools import image as image_tool

IMAGE_TAG = "localhost/kafkaworker:test"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than in pyproject.toml so that this directory is self-contained
    # under --strict-markers.
    config.addinivalue_line(
        "markers", "container: builds the worker image with podman and runs it (make image)"
    )


@pytest.fixture(scope="session")
def image() -> str:
    """The image's tag, built (or found in podman's build cache: seconds) for this session."""
    if missing := image_tool.missing_tools():
        message = f"{', '.join(missing)} not installed: {image_tool.INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        report = image_tool.build(IMAGE_TAG, quiet=True)
    except (image_tool.ImageError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"building the image failed: {exc}")
    print(f"\n{report.summary()}")
    return report.tag


ContainerFactory = Callable[..., Container]


@pytest.fixture
def container(image: str) -> Iterator[ContainerFactory]:
    """Start containers of the image; each is removed (killed if need be) after the test, and
    its log printed when the test failed (pytest shows captured output then)."""
    started: list[Container] = []

    def start(
        command: list[str], *, env: dict[str, str], mounts: dict[Path, str] | None = None
    ) -> Container:
        box = Container(image, command, env=env, mounts=mounts or {})
        started.append(box)
        return box.start()

    yield start
    for box in started:
        print(f"--- log of container {box.name}:\n{box.logs()}")
        box.remove()
