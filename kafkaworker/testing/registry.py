"""A real Schema Registry on loopback, for tests: Apicurio Registry, Confluent-compatible.

Like the broker (broker.py), it comes from Maven Central, not Docker: the runnable Quarkus app
(`io.apicurio:apicurio-registry-app`, classifier `all`, a tar.gz) is unpacked once into
~/.cache/kafkaworker and run from there with the `java` on PATH (17+). The Confluent API is at
`<url>/apis/ccompat/v7`; `SchemaRegistry.url` is that, ready for `SchemaRegistryClient`.

Differences from Confluent's registry that tests must allow for: the default compatibility is
NONE (Confluent's is BACKWARD), so a test of refusals sets BACKWARD itself; refusals are HTTP
409 with error code 409, and the error texts differ, so tests assert status and code, not text;
`GET /schemas/ids/{id}/subjects` answers 404 (the serializers never call it).

Storage is H2 in a file under the data directory rather than Apicurio's in-memory default, so
that a registry killed and started again still knows its schemas (as a real one, backed by
Kafka or a database, does): the restart tests depend on it.

The JVM runs in its own session (stopped with its whole process group) under
`setpriv --pdeathsig KILL`, so it dies with the Python process that started it even when that
one is killed with SIGKILL (see broker.py for why setpriv rather than a preexec_fn).

    python -m kafkaworker.testing.registry fetch            # fetch the app (idempotent)
    python -m kafkaworker.testing.registry run --port 8081  # a dev registry; Ctrl+C stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from kafkaworker.testing import jvm, maven

POM = Path(__file__).with_name("registry-pom.xml")
# Where the Confluent-compatible API lives under the registry's root.
CCOMPAT = "/apis/ccompat/v7"


class RegistryError(RuntimeError):
    """The registry could not be fetched or started; the message says what to do."""


def registry_version() -> str:
    """The Apicurio version pinned in registry-pom.xml, the single place it is written."""
    return maven.pinned_version(POM, "apicurio.version", RegistryError)


def cache_dir() -> Path:
    return maven.cache_dir(f"apicurio-registry-{registry_version()}")


def runner_jar(directory: Path) -> Path:
    return directory / f"apicurio-registry-app-{registry_version()}-runner.jar"


def ensure_registry() -> Path:
    """Return the runner jar, unpacking the app with Maven the first time (~150 MB)."""
    target = maven.fetch(
        POM,
        ["dependency:unpack-dependencies"],
        target=cache_dir(),
        what=f"the registry (Apicurio Registry {registry_version()})",
        error=RegistryError,
        check=lambda staged: runner_jar(staged).exists(),
    )
    return runner_jar(target)


class SchemaRegistry(jvm.DevServer):
    """One Apicurio Registry JVM on 127.0.0.1 (a free port unless `port` is given).

    `stop(kill=True)` then `start()` is a crash and a restart on the same port, schemas kept;
    `freeze()`/`thaw()` (SIGSTOP/SIGCONT) make it a registry that accepts connections but
    never answers.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        heap: str = "256m",
    ) -> None:
        self.jar = ensure_registry()
        self.port = port or jvm.free_port()
        # Quarkus's management interface would otherwise bind 0.0.0.0:9000 where enabled:
        # pinned to loopback and a free port so that two registries never collide.
        self.management_port = jvm.free_port()
        self.heap = heap
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="kafkaworker-registry-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: `SchemaRegistryClient({"url": registry.url})`."""
        return self.root + CCOMPAT

    @property
    def log_file(self) -> Path:
        return self.data_dir / "registry.log"

    def _command(self) -> list[str]:
        return [
            "java",
            # Small and quick to start: one test registry idles beside the broker on 2 cores.
            "-XX:+UseSerialGC",
            f"-Xmx{self.heap}",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={self.management_port}",
            # The prod profile's pool opens 20 H2 connections at start; tests need a few.
            "-D%prod.quarkus.datasource.jdbc.initial-size=2",
            "-D%prod.quarkus.datasource.jdbc.min-size=2",
            "-jar",
            str(self.jar),
        ]

    def start(self, *, timeout: float = 90.0) -> None:
        """Start the JVM (if it is not running) and wait until the API answers."""
        if self.process is None or self.process.poll() is not None:
            env = dict(os.environ)
            # Set through the environment variable the app's own %prod property reads: a
            # plain -D would lose to the profile-specific key. WRITE_DELAY=0: H2 otherwise
            # writes a commit up to a second later, and a schema registered just before a
            # SIGKILL was gone after the restart.
            env["REGISTRY_DATASOURCE_URL"] = (
                f"jdbc:h2:file:{self.data_dir / 'db' / 'registry'};WRITE_DELAY=0"
            )
            self.process = jvm.spawn(self._command(), self.log_file, cwd=self.jar.parent, env=env)
        try:
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.stop(kill=True)
            raise

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether GET /subjects answers 200 within `timeout`."""
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=timeout) as response:
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, *, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process is None or self.process.poll() is not None:
                raise RegistryError(
                    f"the Schema Registry exited during start-up; its log ({self.log_file}):\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"the Schema Registry did not answer GET {self.url}/subjects within "
                    f"{timeout:.0f}s; log:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def _signal(self, signum: signal.Signals) -> None:
        jvm.signal_group(self.process, signum)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung registry)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, *, timeout: float = 20.0, kill: bool = False) -> None:
        """Stop the JVM and its process group: SIGTERM (SIGKILL with kill=True, a crash),
        then SIGKILL after `timeout`."""
        self.thaw()  # a stopped process would not act on SIGTERM
        process, self.process = self.process, None
        jvm.stop_group(process, timeout=timeout, kill=kill)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def keep_log(self, destination: Path) -> Path | None:
        """Copy the registry's log to `destination` (for failed runs)."""
        if not self.log_file.exists():
            return None
        destination.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(self.log_file, destination / "registry.log"))


def main(argv: list[str] | None = None) -> int:
    parser, _ = jvm.command_line(
        "python -m kafkaworker.testing.registry", __doc__, "registry", 8081
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            what = f"Apicurio Registry {registry_version()} (~150 MB)"
            return jvm.fetch(cache_dir(), what, ensure_registry)
        registry = SchemaRegistry(port=args.port)

        def start() -> subprocess.Popen[bytes]:
            registry.start()
            assert registry.process is not None
            return registry.process

        return jvm.run_in_foreground(
            args,
            registry,
            start=start,
            banner=lambda process: (
                f"Apicurio Registry {registry_version()} is up: schema_registry.url "
                f"{registry.url} (pid {process.pid}, data {registry.data_dir}); "
                "Ctrl+C stops it"
            ),
            log_tail=registry.log_tail,
            what="registry",
        )
    except RegistryError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
