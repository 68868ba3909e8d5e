"""Where each setting came from: the command line, a KAFKAWORKER_* variable, the settings
file, the app's own settings (App(settings=...)), or the default. Settings errors name it
("which of the three places do I fix?"), and `kafkaworker settings` shows it beside each
effective value, secrets masked."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

ENV_PREFIX = "KAFKAWORKER_"
# KAFKAWORKER_* variables read by kafkaworker that are not settings.
NOT_SETTINGS = frozenset({"SETTINGS", "PROCESS_INDEX", "TEST_BOOTSTRAP", "BENCH_BOOTSTRAP"})
MASK = "**********"

# Words that mark a setting's key or a client property as holding a secret.
_SECRET_WORDS = (
    "password",
    "passphrase",
    "secret",
    "private.key",
    "key.pem",
    "jaas",
    "user.info",
    "token",
)
# user:password@ in a URL (a registry's, say): the password is masked.
_URL_PASSWORD = re.compile(r"(?<=://)([^/@:\s]*):[^/@\s]*@")


def is_secret_key(key: str) -> bool:
    """Whether a librdkafka property (or a setting's key) holds a secret."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def env_path(name: str) -> list[str] | None:
    """The setting a KAFKAWORKER_* variable sets, as pydantic-settings reads it (lowercase,
    `__` between levels); None for another variable."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX) or upper[len(ENV_PREFIX) :] in NOT_SETTINGS:
        return None
    return name[len(ENV_PREFIX) :].lower().split("__")


@dataclass(frozen=True)
class Sources:
    """What each place said; `of(path)` names the one whose value is in force."""

    file: Path | None = None
    file_values: Mapping[str, Any] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # The settings came from App(settings=...) (no file named): what it set, else None.
    app_values: Mapping[str, Any] | None = None

    @classmethod
    def read(
        cls,
        file: Path | None,
        overrides: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
    ) -> Sources:
        values: Any = {}
        if file is not None:
            try:
                values = yaml.safe_load(file.read_text()) or {}
            except (OSError, ValueError, yaml.YAMLError):
                values = {}  # its own error is told by whoever loads it
        return cls(
            file,
            values if isinstance(values, Mapping) else {},
            dict(os.environ if environ is None else environ),
            overrides,
        )

    def of(self, path: Sequence[str | int]) -> str:
        """Where the value at `path` (("kafka", "bootstrap_servers")) was set."""
        parts = [str(part) for part in path]
        if _sets(self.overrides, parts):
            return "command line"
        if self.app_values is not None:
            return "App(settings=...)" if _sets(self.app_values, parts) else "default"
        variable = self.variable(parts)
        if variable is not None:
            return f"environment {variable}"
        if self.file is not None and _sets(self.file_values, parts):
            return f"settings file {str(self.file)!r}"
        return "default"

    def variable(self, parts: Sequence[str]) -> str | None:
        """The KAFKAWORKER_* variable that sets `parts` (or the section holding it)."""
        wanted = [part.lower() for part in parts]
        for name in sorted(self.environ):
            found = env_path(name)
            if found is not None and found == wanted[: len(found)]:
                return name
        return None


def _sets(values: Mapping[str, Any], parts: Sequence[str]) -> bool:
    """Whether `values` sets `parts`: the key itself, or a section above it given whole."""
    below: Any = values
    for part in parts:
        if not isinstance(below, Mapping):
            return True  # a scalar (or a list) stands where a section was expected
        if part not in below:
            return False
        below = below[part]
    return True


def masked(key: str, value: Any) -> Any:
    """`value` as it may be shown: a secret's masked, a URL's password too."""
    if value is None:
        return None
    if is_secret_key(key) and not key.endswith(("_file", "_location")):  # a path: shown
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", value)
    return value


def leaves(
    values: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every setting in `values` (a model_dump) with its path (("kafka", "consumer",
    "fetch.min.bytes"), value); an empty section ({}: no handlers) as itself."""
    for key, value in values.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            yield from leaves(value, path)
        else:
            yield path, value


def without_user_info(url: str) -> str:
    """`url` without `user:password@` (each of a comma-separated list)."""
    shown = []
    for one in url.split(","):
        parts = urlsplit(one.strip())
        if not parts.scheme:
            shown.append(one.strip())
            continue
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        shown.append(urlunsplit((parts.scheme, host, parts.path, "", "")))
    return ",".join(shown)
