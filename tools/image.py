"""`make image`: the worker image, built with podman where there is no Docker engine and no
container registry (this project's CI machines).

1. podman, buildah, runc and mmdebstrap are installed with apt-get when missing and we are root
   (`--setup` stops there: the CI set-up step). Idempotent: nothing runs when they are present.
2. podman reads a containers.conf of our own (build/container/containers.conf, through
   CONTAINERS_CONF): runc (crun fails on this kernel's cgroup layout), cgroupfs, a file event
   log, ulimits at or below the hard limits (podman's defaults cannot be set here). No system
   configuration is written.
3. Without a registry, the Dockerfile's base image (`ARG BASE_IMAGE`, python:3.11-slim) is built
   from Debian packages with mmdebstrap and tagged with that name, once: an existing base is
   kept, because re-importing it gives it a new id and throws away the build cache.
4. `podman build --pull=never --format docker` (the OCI format drops HEALTHCHECK).

Users with Docker and a registry need none of this: `docker build -t kafkaworker .`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "container"
DOCKERFILE = ROOT / "Dockerfile"
DEFAULT_TAG = "localhost/kafkaworker:dev"
# Command -> the Debian package that provides it.
TOOLS = {"podman": "podman", "buildah": "buildah", "runc": "runc", "mmdebstrap": "mmdebstrap"}
INSTALL_HINT = "`make image` installs them (as root, with apt-get) and builds the image"
# The Debian release whose python3 is the base's Python version.
DEBIAN_FOR_PYTHON = {"3.11": "bookworm", "3.13": "trixie"}
BASE_PACKAGES = ["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"]
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
CONTAINERS_CONF = """\
# Written by tools/image.py; podman reads it through CONTAINERS_CONF (no system config changed).
[containers]
# podman's default rlimits are above this machine's hard limits, and cannot be set.
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
# crun fails on this kernel's cgroup layout; runc works.
runtime = "runc"
cgroup_manager = "cgroupfs"
# No systemd journal here.
events_logger = "file"
"""


class ImageError(Exception):
    """A step of the image build failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class BuildReport:
    tag: str
    base: str
    base_seconds: float | None  # None: the base image existed and was kept
    build_seconds: float
    size_bytes: int

    def summary(self) -> str:
        base = "kept" if self.base_seconds is None else f"built in {self.base_seconds:.1f}s"
        return (
            f"{self.tag}: built in {self.build_seconds:.1f}s, "
            f"{self.size_bytes / 1e6:.0f} MB (base {self.base}: {base})"
        )


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def ensure_tools(*, quiet: bool = False) -> None:
    """Install what is missing with apt-get (root only); a no-op when all are present."""
    missing = missing_tools()
    if not missing:
        return
    packages = [TOOLS[tool] for tool in missing]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImageError(
            f"{', '.join(missing)} not installed: as root, apt-get install -y {' '.join(packages)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.DEVNULL if quiet else None
    print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=out)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=out)
    if still := missing_tools():
        raise ImageError(f"apt-get installed {packages} but {still} are still missing")


def containers_conf() -> Path:
    """Our containers.conf, (re)written only when its content changed."""
    path = WORK / "containers.conf"
    if not path.exists() or path.read_text() != CONTAINERS_CONF:
        WORK.mkdir(parents=True, exist_ok=True)
        path.write_text(CONTAINERS_CONF)
    return path


def podman_env() -> dict[str, str]:
    """The environment every podman command of this project runs with."""
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf())}


def podman(*args: str, check: bool = True, capture: bool = True) -> str:
    """Run `podman ARGS` with our configuration; its stdout (when captured)."""
    result = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        check=False,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise ImageError(f"podman {' '.join(args)} exited {result.returncode}: {detail}")
    return result.stdout or ""


def dockerfile_base(dockerfile: Path = DOCKERFILE) -> str:
    """The default of the Dockerfile's `ARG BASE_IMAGE=...` (the image its stages start FROM)."""
    match = re.search(r"^ARG\s+BASE_IMAGE=(\S+)", dockerfile.read_text(), re.MULTILINE)
    if match is None:
        raise ImageError(f"{dockerfile} declares no ARG BASE_IMAGE=<image> before its FROM lines")
    return match.group(1)


def image_exists(name: str) -> bool:
    exists = subprocess.run(["podman", "image", "exists", name], check=False, env=podman_env())
    return exists.returncode == 0


def _host_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return ""


def debian_sources(suite: str) -> list[str]:
    """One-line apt sources for `suite` (and its -updates and -security) on the Debian mirrors
    the host's apt uses, so that mmdebstrap reaches the packages wherever apt does."""
    main, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    codename = _host_codename()
    lists = Path("/etc/apt")
    files = [lists / "sources.list", *lists.glob("sources.list.d/*")]
    texts = [path.read_text() for path in files if path.is_file()]
    for text in texts:
        # deb822 ("URIs: ... Suites: ...") and one-line ("deb URI SUITE ...") entries alike;
        # only Debian's own (their suites are the host's codename), not third-party repos.
        entries = re.findall(r"^URIs:\s*(\S+)\s*\nSuites:\s*(.+)$", text, re.MULTILINE)
        entries += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.MULTILINE)
        for uri, suites in entries:
            if codename and suites.split()[0].startswith(f"{codename}-security"):
                security = uri
            elif codename and suites.split()[0] == codename:
                main = uri
    return [
        f"deb {main} {suite} main",
        f"deb {main} {suite}-updates main",
        f"deb {security} {suite}-security main",
    ]


def build_base(name: str) -> float:
    """Build `name` (python:3.X-slim) from Debian packages with mmdebstrap; seconds taken."""
    version = re.search(r"python:(3\.\d+)", name)
    suite = DEBIAN_FOR_PYTHON.get(version.group(1)) if version else None
    if suite is None:
        raise ImageError(
            f"cannot build base {name!r} from Debian: known bases are "
            + ", ".join(f"python:{v}-slim ({s})" for v, s in DEBIAN_FOR_PYTHON.items())
        )
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    tarball = WORK / f"base-{suite}.tar"
    cas = sorted(HOST_CA_DIR.glob("*.crt"))
    hooks = [
        # pip in the build must trust what the host trusts (a TLS-inspecting proxy's CA).
        *(f"copy-in {ca} /usr/local/share/ca-certificates/" for ca in cas),
        'chroot "$1" update-ca-certificates --fresh >/dev/null',
        # The base is the image's own Python, as in python:3.X-slim: pip may install into it.
        'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
    ]
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--quiet",
        # As Debian's own slim images: no documentation, manuals or translations (about 50 MB;
        # the copyright files stay).
        *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--customize-hook={hook}" for hook in hooks),
        suite,
        str(tarball),
        *debian_sources(suite),
    ]
    print(f"building the base image {name} from Debian {suite} (mmdebstrap)", file=sys.stderr)
    subprocess.run(cmd, check=True)
    podman(
        "import",
        "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", "ENV LANG=C.UTF-8",
        "--change", 'CMD ["python3"]',
        str(tarball),
        name,
    )  # fmt: skip
    tarball.unlink()
    return time.monotonic() - started


def build(tag: str = DEFAULT_TAG, *, quiet: bool = False) -> BuildReport:
    """Everything `make image` does: tools, configuration, base image, build."""
    ensure_tools(quiet=quiet)
    base = dockerfile_base()
    base_seconds = None if image_exists(base) else build_base(base)
    started = time.monotonic()
    cmd = ["build", "--pull=never", "--format", "docker", "--network", "host", "-t", tag]
    if quiet:
        podman(*cmd, "--quiet", str(ROOT))
    else:
        podman(*cmd, str(ROOT), capture=False)
    build_seconds = time.monotonic() - started
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).strip())
    return BuildReport(tag, base, base_seconds, build_seconds, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"image name (default {DEFAULT_TAG})")
    parser.add_argument(
        "--setup",
        action="store_true",
        help="only install the tools when missing (CI set-up); without root, say what is missing"
        " and exit 0, or 1 when CI is set",
    )
    args = parser.parse_args(argv)
    try:
        if args.setup:
            ensure_tools()
            print(f"container tools present: {', '.join(TOOLS)}")
            return 0
        report = build(args.tag)
    except ImageError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1 if not args.setup or os.environ.get("CI") else 0
    except subprocess.CalledProcessError as exc:
        print(f"image: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
