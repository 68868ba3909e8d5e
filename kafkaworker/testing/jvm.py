"""What the test broker (broker.py) and the test Schema Registry (registry.py) share as JVM
processes: each runs in a process group of its own (the JVM forks nothing we need, but a
wrapper script would, and a signal must reach the whole tree), dies with its parent (a test
run killed with -9 must not leave a broker holding its port), and has a `run` command that
keeps it in the foreground until Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self


class DevServer:
    """What the test broker and the test registry share as objects: started by a `with`
    block, stopped at its end, and their data directory removed then unless it was given
    (`data_dir`: kept for the next run)."""

    data_dir: Path
    _own_dir: bool

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def command_line(
    prog: str, doc: str | None, what: str, default_port: int
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `fetch` and `run` commands of a dev server (the broker, the registry); `run`'s
    parser is handed back for options of its own."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"fetch the {what} into the cache (once; idempotent)")
    run = sub.add_parser("run", help=f"run a {what} in the foreground until Ctrl+C")
    run.add_argument("--port", type=int, default=default_port)
    run.add_argument(
        "--if-free",
        action="store_true",
        help="exit 0 at once when something already answers on the port",
    )
    return parser, run


def fetch(cache: Path, what: str, ensure: Callable[[], Path]) -> int:
    """The `fetch` command: say where to on a first fetch (stderr), fetch, print the path."""
    notice = fetch_notice(cache, what)
    if notice is not None:
        print(notice, file=sys.stderr, flush=True)
    print(ensure())
    return 0


def fetch_notice(cache: Path, what: str) -> str | None:
    """What a first fetch says before it starts (where to, how long), or None when `cache`
    holds it already. The path is the real one: $XDG_CACHE_HOME moves it."""
    if (cache / ".complete").exists():
        return None
    return f"fetching {what} into {cache} (once)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def die_with_parent(command: list[str]) -> list[str]:
    """Prefix `command` so that the kernel kills it when its parent dies."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def spawn(command: list[str], log: Path, **options: Any) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own (stopped with its whole group), dying with
    this process, its output appended to `log`."""
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            die_with_parent(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **options,
        )


def signal_group(process: subprocess.Popen[bytes] | None, signum: signal.Signals) -> None:
    """Send `signum` to the process group of `process`, if it still runs."""
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


def stop_group(process: subprocess.Popen[bytes] | None, *, timeout: float, kill: bool) -> None:
    """SIGTERM the group (SIGKILL with kill=True, a crash); SIGKILL it after `timeout`."""
    if process is None:
        return
    signal_group(process, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_in_foreground(
    args: argparse.Namespace,
    server: DevServer,
    *,
    start: Callable[[], subprocess.Popen[bytes]],
    banner: Callable[[subprocess.Popen[bytes]], str],
    log_tail: Callable[[], str],
    what: str,
) -> int:
    """The `run` command: start `server`, print `banner`, wait until Ctrl+C (or SIGTERM),
    clean it up.
    0 on Ctrl+C or when `if_free` and the port answers already; 2 when the port is taken; 1
    when the process exited by itself (its log's tail printed)."""
    # Ctrl+C must stop it even when this process inherited SIGINT as ignored (Python keeps an
    # inherited SIG_IGN, e.g. under a non-interactive shell's background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    port = args.port
    if port_answers(port):
        if args.if_free:
            print(f"something already answers on 127.0.0.1:{port}; using it")
            return 0
        print(f"port {port} is taken; stop what uses it or pass --port", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        process = start()
        print(banner(process), flush=True)
        process.wait()
        print(f"the {what} exited; log:\n{log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.cleanup()
