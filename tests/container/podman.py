"""A container of the worker image, driven with the podman CLI as an operator would."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.metrics_support import get
from tools.image import podman, podman_env


def free_port() -> int:
    """A TCP port nothing listens on now (the container shares the host's network)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Container:
    """One `podman run --network host` of `image` with `command` after its ENTRYPOINT.

    The worker's metrics port is chosen free on the host and passed as
    KAFKAWORKER_METRICS__PORT, so the HEALTHCHECK and the tests find it."""

    def __init__(
        self, image: str, command: list[str], *, env: dict[str, str], mounts: dict[Path, str]
    ) -> None:
        self.image, self.command = image, command
        self.name = f"kw-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.env = {**env, "KAFKAWORKER_METRICS__PORT": str(self.port)}
        self.mounts = mounts

    def start(self) -> Container:
        args = ["run", "--detach", "--name", self.name, "--network", "host"]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        for host, inside in self.mounts.items():
            args += ["--volume", f"{host}:{inside}"]
        podman(*args, self.image, *self.command)
        return self

    def restart(self) -> None:
        """Start the stopped container again: same name, environment and mounts."""
        podman("start", self.name)

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def exit_code(self) -> int:
        return int(self.inspect("{{.State.ExitCode}}"))

    def host_pid(self) -> int:
        """The worker's (PID 1 of the container) process id as the host sees it."""
        return int(self.inspect("{{.State.Pid}}"))

    def stop(self, timeout: int) -> int:
        """`podman stop -t TIMEOUT`: SIGTERM (the image's STOPSIGNAL), SIGKILL after TIMEOUT
        seconds; returns once the container has exited, with its exit code."""
        podman("stop", "--time", str(timeout), self.name)
        return self.exit_code()

    def kill(self) -> int:
        """SIGKILL to the worker, no chance to finish or commit; its exit code (137)."""
        podman("kill", "--signal", "KILL", self.name)
        podman("wait", self.name)
        return self.exit_code()

    def get(self, path: str) -> tuple[int, bytes]:
        return get(self.port, path)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /readyz answers 200; fails at once, with the log, if the container exits."""
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            if not self.running():
                raise AssertionError(
                    f"container exited {self.exit_code()} before it was ready:\n{self.logs()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout}s:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        result = subprocess.run(
            ["podman", "logs", self.name],
            capture_output=True,
            text=True,
            check=False,
            env=podman_env(),
        )
        return result.stdout + result.stderr

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)
