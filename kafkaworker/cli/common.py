"""What every command shares: the settings option, one line per failure, tables that fit an
80-column terminal, --json, and the exit codes of an interrupted command (130, 143)."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click
import orjson

from kafkaworker.app import App
from kafkaworker.errors import AppImportError, KafkaWorkerError
from kafkaworker.observability import logging as kw_logging
from kafkaworker.settings import Settings, load_settings, settings_for_run

F = TypeVar("F", bound=Callable[..., Any])

SETTINGS_OPTION = click.option(
    "--settings",
    "settings_path",
    type=click.Path(dir_okay=False),
    help="settings file (default: $KAFKAWORKER_SETTINGS, else ./settings.yaml)",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="print JSON, for scripts")

# Exit codes of a command cut short by a signal, as a shell reports them (128 + signal).
INTERRUPTED = 128 + signal.SIGINT
TERMINATED = 128 + signal.SIGTERM


class Group(click.Group):
    """Ctrl+C exits 130 and SIGTERM 143, at once, from whatever a command is waiting on.

    The handlers end the process on the spot (os._exit) rather than raise: a signal handled
    inside a C call's Python callback (librdkafka's logger, called from describe_topics)
    made its exception "returned a result with an exception set", and a KeyboardInterrupt
    kept by confluent-kafka for its next call resurfaced at exit (both seen in the signal
    test, a few runs in a hundred). A command has nothing to clean up that a kill would not
    leave too. `run` installs its own handlers once its workers start (a first signal drains
    them)."""

    def invoke(self, ctx: click.Context) -> Any:
        with _exit_on_signals():
            return super().invoke(ctx)


@contextlib.contextmanager
def _exit_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        interrupted = signum == signal.SIGINT
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.write("interrupted\n" if interrupted else "terminated\n")
            sys.stderr.flush()
        os._exit(INTERRUPTED if interrupted else TERMINATED)

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def one_line() -> Iterator[None]:
    """A KafkaWorkerError (what is wrong and what to do) becomes `Error: <it>` and exit 1."""
    try:
        yield
    except KafkaWorkerError as exc:
        raise click.ClickException(str(exc)) from None


class IsoDateTime(click.ParamType[datetime]):
    """ISO 8601 (2026-11-28T09:30:00+01:00, 2026-11-28T08:30Z, 2026-11-28); UTC if no zone."""

    name = "ISO8601"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2026-11-28T09:30:00Z)", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def settings_from(path: str | None, app: App | None = None) -> Settings:
    """The settings a command runs with: as `run` would read them (the app's own, unless a
    file is named; else file + environment), and logging set up from them, librdkafka's
    lines included."""
    settings = settings_for_run(app.settings, path, {}) if app else load_settings(path)
    kw_logging.configure(settings.log_level, settings.log_format)
    return settings


def load_app(reference: str) -> App:
    """Import `MODULE:APP` (the current directory is importable, as with uvicorn)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise AppImportError(f"{reference!r} is not MODULE:APP (for example myapp:app)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppImportError(
                f"cannot import module {module_name!r} (from {reference!r}): no module named "
                f"{exc.name!r}; run from the directory that holds it, or fix the name"
            ) from None
        raise AppImportError(f"importing {module_name!r} failed: {exc}") from exc
    except KafkaWorkerError:
        raise  # e.g. an invalid handler option: its own message says it all
    except Exception as exc:
        raise AppImportError(
            f"importing {module_name!r} raised {type(exc).__name__}: {exc}{where(exc)}"
        ) from exc
    try:
        app: Any = getattr(module, attribute)
    except AttributeError:
        apps = [name for name, value in vars(module).items() if isinstance(value, App)]
        hint = f"it defines: {', '.join(apps)}" if apps else "it defines no App"
        raise AppImportError(
            f"module {module_name!r} has no attribute {attribute!r}; {hint}"
        ) from None
    if not isinstance(app, App):
        raise AppImportError(f"{reference!r} is a {type(app).__name__}, not a kafkaworker.App")
    return app


def where(exc: BaseException, frames: int = 3) -> str:
    """Where the user's code raised `exc`, innermost first: " (at pkg/orders.py:12 in
    load, from app.py:3)"; "" when none of the traceback is theirs. A NameError in a module
    the app imports is found from this line alone, without a traceback."""
    found = [
        (frame.filename, frame.lineno, frame.name)
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<") and not _ours(frame.filename)
    ]
    if not found:  # a SyntaxError's own message says where
        return ""
    shown = [
        f"{_relative(path)}:{line}" + ("" if name == "<module>" else f" in {name}")
        for path, line, name in reversed(found[-frames:])
    ]
    return f" (at {shown[0]}" + "".join(f", from {s}" for s in shown[1:]) + ")"


_PACKAGE = str(Path(__file__).resolve().parent.parent)


def _ours(path: str) -> bool:
    """A frame of kafkaworker itself (loading the app), or of importlib."""
    return path.startswith(_PACKAGE) or "importlib" in path


def _relative(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return path


def echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    *,
    width: int | None = None,
    right: Sequence[str] = (),
) -> str:
    """Rows as aligned columns within `width` (default: terminal_width()): the widest cells
    wrap onto more lines rather than being cut, so nothing is lost."""
    if width is None:
        width = terminal_width()
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    gap = 2
    if width is None:
        width = sum(widths) + gap * (len(widths) - 1)  # not a terminal: no wrapping
    # Neither a header nor a word (a name between separators) is ever cut.
    floors = [
        max([len(c), *(len(p) for r in cells for p in _pieces(r[i]))])
        for i, c in enumerate(columns)
    ]
    while sum(widths) + gap * (len(widths) - 1) > width:
        narrowable = [i for i in range(len(widths)) if widths[i] > floors[i]]
        if not narrowable:
            return _blocks(cells, columns)
        widths[max(narrowable, key=lambda i: widths[i])] -= 1
    lines = [_line([c.upper() for c in columns], widths, columns, right)]
    for row in cells:
        wrapped = [_wrap(text, w) for text, w in zip(row, widths, strict=True)]
        for n in range(max(len(part) for part in wrapped)):
            lines.append(
                _line(
                    [part[n] if n < len(part) else "" for part in wrapped], widths, columns, right
                )
            )
    return "\n".join(lines)


def terminal_width() -> int | None:
    """The columns to fit: $COLUMNS, else the terminal's; None when standard output is not a
    terminal (piped, redirected), where wrapping would only break the words that grep, cut
    and awk look for ("handle_" / "order")."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((80, 24)).columns


def _line(
    cells: Sequence[str], widths: Sequence[int], columns: Sequence[str], right: Sequence[str]
) -> str:
    return "  ".join(
        cell.rjust(w) if column in right else cell.ljust(w)
        for cell, w, column in zip(cells, widths, columns, strict=True)
    ).rstrip()


def _blocks(cells: Sequence[Sequence[str]], columns: Sequence[str]) -> str:
    """Too wide for a table even wrapped: one block per row, a line per column."""
    pad = max(len(c) for c in columns)
    blocks = []
    for row in cells:
        blocks.append(
            "\n".join(
                f"{column.upper().ljust(pad)}  {cell}"
                for column, cell in zip(columns, row, strict=True)
            )
        )
    return "\n\n".join(blocks)


def _pieces(text: str) -> list[str]:
    """`text` cut after each separator: topic.name,list -> topic. name, list."""
    return [piece for piece in re.findall(r"[^,.\-_ ]*[,.\-_ ]?", text) if piece]


def _wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` (never less than its longest piece), broken after
    a separator."""
    if len(text) <= width:
        return [text]
    lines, line = [], ""
    for piece in _pieces(text):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return lines


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def duration(seconds: float | None) -> str:
    """12.3s, 4m05s, 2h03m, 3d04h: an age at a glance."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
