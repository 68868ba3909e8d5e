"""Install what the inbox tests run: Debian's `postgresql` package (initdb and the server).

`python -m tools.install_postgres` (a step of `make test`, and of the tests' PostgreSQL
fixture): prints the server's bin directory and exits 0 when it is there already (idempotent);
else, as root on Debian or Ubuntu, installs the package with apt-get (no cluster is started
where there is no systemd: the tests initdb their own, kafkaworker.testing.postgres); else
says how, and exits 1 when CI is set (0 elsewhere: the inbox tests then skip, saying the same).
"""

from __future__ import annotations

from kafkaworker.testing.postgres import bin_dir
from tools.debian import apt_install, can_install, setup_step

HOW = (
    "install PostgreSQL for the inbox tests: sudo python -m tools.install_postgres "
    "(Debian's postgresql package)"
)


def install() -> str:
    """The server's bin directory, installing the package first when missing (root only)."""
    found = bin_dir()
    if found is not None:
        return str(found)
    if not can_install():
        raise SystemExit(f"no PostgreSQL server under /usr/lib/postgresql: {HOW}")
    apt_install("postgresql")
    found = bin_dir()
    if found is None:
        raise SystemExit("apt-get installed postgresql but no server is under /usr/lib/postgresql")
    return str(found)


def main() -> int:
    return setup_step("install_postgres", install)


if __name__ == "__main__":
    raise SystemExit(main())
