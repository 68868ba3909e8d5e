"""Jaeger v2 (all-in-one) for the tracing tests, built from the Go module proxy.

`python -m tools.jaeger` (what `make test` runs first, as `make jaeger-tools`): builds the
module pinned in tools/jaeger/go.mod and go.sum (github.com/jaegertracing/jaeger/cmd/jaeger at
v1.75.0, the Jaeger v2 binary) into
${XDG_CACHE_HOME:-~/.cache}/kafkaworker/jaeger-<hash of go.mod and go.sum>/jaeger, once (about
8 minutes on 2 cores, a 121 MB binary); a no-op when that is there. go.sum pins every module's
hash, so the proxy cannot hand a different build. Without a Go toolchain (>= 1.24) it says how,
and exits 1 when CI is set (0 elsewhere: the tracing tests then skip, saying the same).

The tests start the binary themselves on free ports with a config file
(kafkaworker.testing.jaeger).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kafkaworker.testing.maven import cache_dir

SOURCE = Path(__file__).with_name("jaeger")
FILES = ("go.mod", "go.sum")
PACKAGE = "github.com/jaegertracing/jaeger/cmd/jaeger"
HOW = "install Go >= 1.24 (https://go.dev/dl), then python -m tools.jaeger"


class JaegerMissingError(RuntimeError):
    """Go or the built binary is missing; the message says how to get them."""


def build_dir() -> Path:
    """Where this go.sum's build goes: a new pin, a new directory."""
    digest = hashlib.sha256()
    for name in FILES:
        digest.update((SOURCE / name).read_bytes())
    return cache_dir(f"jaeger-{digest.hexdigest()[:12]}")


def binary() -> Path | None:
    """The built binary, if a complete build is in the cache."""
    target = build_dir()
    return target / "jaeger" if (target / ".complete").is_file() else None


def build() -> Path:
    """The binary's path, building it first if needed."""
    found = binary()
    if found is not None:
        return found
    go = shutil.which("go")
    if go is None:
        raise JaegerMissingError(f"no Go toolchain to build Jaeger: {HOW}")
    target = build_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside, renamed into place once complete: an interrupted build is never taken for
    # a finished one.
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        for name in FILES:
            shutil.copyfile(SOURCE / name, work / name)
        print(f"building Jaeger v2 (about 8 minutes on 2 cores) into {target}", file=sys.stderr)
        subprocess.run(
            [go, "build", "-trimpath", "-o", str(work / "jaeger"), PACKAGE],
            cwd=work,
            check=True,
            # readonly: go.sum must already hold every hash (no silent re-resolution).
            env={**os.environ, "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"},
        )
        (work / ".complete").touch()
        try:
            work.rename(target)
        except OSError:  # another run finished first: keep its copy
            if binary() is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = binary()
    assert found is not None
    return found


def main() -> int:
    """The CI set-up step: without Go the build fails only when CI is set; elsewhere the
    tracing tests skip, saying how."""
    try:
        print(build())
    except JaegerMissingError as exc:
        print(exc, file=sys.stderr)
        return 1 if os.environ.get("CI") else 0
    except subprocess.CalledProcessError as exc:
        print(f"jaeger: {' '.join(exc.cmd)} exited {exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
