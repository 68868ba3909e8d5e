"""The official AsyncAPI parser (`@asyncapi/parser`, with its Avro and Protobuf schema parsers,
from the npm registry), run with node, for the tests of `kafkaworker asyncapi`.

`python -m tools.asyncapi_parser` (what `make test` runs first): installs the versions pinned
in tools/asyncapi/package-lock.json with `npm ci` into
${XDG_CACHE_HOME:-~/.cache}/kafkaworker/asyncapi-<hash of the lock file>, once (about 10 s,
60 MB); a no-op when that is there. Without node and npm it installs Debian's nodejs and npm
as root; else it says how, and exits 1 when CI is set (0 elsewhere: the validation tests
then skip, saying the same). `--ignore-scripts`: no package's install script runs (one of the
parser's dependencies would report the install to a telemetry service).

ES modules resolve packages from the script's own directory, not NODE_PATH: validate.mjs is
copied beside the node_modules it imports.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from kafkaworker.testing.maven import cache_dir

SOURCE = Path(__file__).with_name("asyncapi")
FILES = ("package.json", "package-lock.json", "validate.mjs")
HOW = (
    "install node and npm (Debian: apt-get install nodejs npm), then "
    "python -m tools.asyncapi_parser"
)


class ParserMissingError(RuntimeError):
    """node, npm or the installed parser is missing; the message says how to get them."""


@dataclass(frozen=True)
class Diagnostic:
    severity: int  # 0 error, 1 warning, 2 information, 3 hint (Spectral's)
    code: str
    message: str
    path: str


def install_dir() -> Path:
    """Where this lock file's packages go: a new lock file, a new directory."""
    digest = hashlib.sha256()
    for name in FILES:
        digest.update((SOURCE / name).read_bytes())
    return cache_dir(f"asyncapi-{digest.hexdigest()[:12]}")


def installed() -> Path | None:
    target = install_dir()
    return target if (target / ".complete").is_file() else None


def install() -> Path:
    """The directory of validate.mjs and its node_modules, installing them first if needed."""
    found = installed()
    if found is not None:
        return found
    _ensure_node()
    target = install_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Installed beside, renamed into place once complete: an interrupted install is never
    # taken for a finished one.
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        for name in FILES:
            shutil.copyfile(SOURCE / name, work / name)
        print(f"installing the AsyncAPI parser (npm ci) into {target}", file=sys.stderr)
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=work,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (work / ".complete").touch()
        try:
            work.rename(target)
        except OSError:  # another run finished first: keep its copy
            if installed() is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _ensure_node() -> None:
    if shutil.which("node") and shutil.which("npm"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ParserMissingError(f"node and npm are needed for the AsyncAPI parser: {HOW}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", "nodejs", "npm"]
    if subprocess.run(command, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)  # a fresh image's lists
        subprocess.run(command, env=env, check=True)


def validate(document: str) -> tuple[bool, list[Diagnostic]]:
    """(parsed, diagnostics) of the official parser for `document` (YAML or JSON)."""
    where = installed()
    if where is None or shutil.which("node") is None:
        raise ParserMissingError(f"the AsyncAPI parser is not installed: {HOW}")
    result = subprocess.run(
        ["node", str(where / "validate.mjs")],
        input=document.encode(),
        capture_output=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the AsyncAPI parser failed: {result.stderr.decode(errors='replace')}")
    answer = orjson.loads(result.stdout)
    return bool(answer["parsed"]), [Diagnostic(**d) for d in answer["diagnostics"]]


def main() -> int:
    """The CI set-up step: without node and npm (and no way to install them) it fails only
    when CI is set; elsewhere the validation tests skip, saying how."""
    try:
        print(install())
    except ParserMissingError as exc:
        print(exc, file=sys.stderr)
        return 1 if os.environ.get("CI") else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
