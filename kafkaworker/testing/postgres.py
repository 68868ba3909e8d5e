"""A throwaway PostgreSQL server on loopback (Debian's package), for tests and development.

initdb into a temporary directory, then `postgres` on a free port, listening on 127.0.0.1
only, trust authentication, as the `postgres` user when this process is root (the server
refuses to run as root). Its process group is stopped with it, and it dies with this process
(setpriv's parent-death signal), so an interrupted run leaves no server behind. The user is
switched with `setpriv`, which execs rather than forks (runuser waits in a process of its
own): the postmaster is this process's own child, so a stop or a kill returns once it is gone,
and a restart on the same data never finds its postmaster.pid still held.

    python -m kafkaworker.testing.postgres run --port 5432   # a dev server; Ctrl+C stops it

The package itself is installed by `python -m tools.install_postgres` (`make postgres-tools`).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kafkaworker.testing.jvm import free_port, spawn, stop_group

# initdb takes about 0.6 s here, and the server is ready well under 1 s after it.
START_TIMEOUT = 30.0


class PostgresError(RuntimeError):
    """The server cannot be set up here (no package, or it would not start)."""


def bin_dir() -> Path | None:
    """Debian's server binaries (/usr/lib/postgresql/<version>/bin), the newest version."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


class PostgresServer:
    """One server; `start()` it, then `url` (database `postgres`, user `postgres`)."""

    def __init__(self, port: int | None = None, *, fsync: bool = False) -> None:
        self.port = port or free_port()
        self.fsync = fsync
        self._bin = bin_dir()
        self._root = Path(tempfile.mkdtemp(prefix="kw-postgres-"))
        self.data = self._root / "data"
        self.log = self._root / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        # The server refuses to run as root: then it runs as the package's `postgres` user.
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self, command: list[str]) -> list[str]:
        if self._user is None:
            return command
        return [
            "setpriv",
            f"--reuid={self._user}",
            f"--regid={self._user}",
            "--init-groups",
            "--",
            *command,
        ]

    def start(self) -> PostgresServer:
        if self._bin is None:
            raise PostgresError(
                "no PostgreSQL server here: python -m tools.install_postgres (as root)"
            )
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self._root, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            initdb = self._as_user(
                [str(self._bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
            )
            done = subprocess.run(initdb, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise PostgresError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        self._process = spawn(
            self._as_user(
                [
                    str(self._bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    # The fault tests run a few workers, each a pool of its concurrency.
                    "-c",
                    "max_connections=200",
                    # A throwaway server: durability is the tests' subject only through the
                    # worker's transactions, never through the machine crashing. On for a
                    # benchmark that weighs commits as production pays for them.
                    "-c",
                    f"fsync={'on' if self.fsync else 'off'}",
                ]
            ),
            self.log,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until the server accepts a connection (pg_isready; a polled readiness: the server
        offers no event to wait for)."""
        assert self._bin is not None
        deadline = time.monotonic() + START_TIMEOUT
        ready = [
            *[str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            *["-U", "postgres", "-d", "postgres"],
        ]
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise PostgresError(f"postgres exited; log:\n{self.log_tail()}")
            if subprocess.run(ready, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise PostgresError(f"postgres did not answer in {START_TIMEOUT:g} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server (a crash); start() brings it back on the same data."""
        stop_group(self._process, timeout=10, kill=True)
        self._process = None

    def stop(self) -> None:
        # SIGTERM to the whole group (the postmaster and its backends): a smart shutdown.
        stop_group(self._process, timeout=10, kill=False)
        self._process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kafkaworker.testing.postgres")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="a dev server in the foreground until Ctrl+C")
    run.add_argument("--port", type=int, default=5432)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = PostgresServer(args.port)
    try:
        server.start()
        print(f"PostgreSQL on {server.url} (data {server.data}); Ctrl+C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except PostgresError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        server.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
