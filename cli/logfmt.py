"""JSON log lines for log shippers (Loki, Vector, Fluent Bit): one object per line.

Each record becomes one line of JSON, keys in this order::

    {"time": "2026-05-09T12:02:11.532Z", "level": "WARNING", "program": "reader1",
     "logger": "actors.core.actor", "message": "actor reader1 link up -> down: ...",
     "actor": "reader1", "exception": "Traceback ..."}

- ``time``: when the record was made, UTC, ISO 8601 to the millisecond with ``Z``;
- ``level``: ``DEBUG`` ... ``CRITICAL``; ``logger``: the module's logger name;
- ``program``: the program that logged: supervisord's program name
  (``$SUPERVISOR_PROCESS_NAME``, set for every program it runs), else the actor or simulator
  name of ``sctl actor NAME`` / ``sctl sim --name NAME``, else the command (``router``,
  ``watchdog``, ``alerts``, ``send``);
- ``message``: the formatted message (%-args applied);
- the structured context: every key the call passed in ``extra=`` at the top level, under its
  own name (a key that would overwrite one of the fixed keys above is written ``extra_KEY``).
  Values that JSON cannot hold are written as text (bytes as hex);
- ``exception`` / ``stack``: the formatted traceback, only when there is one.

Selected with ``sctl --log-format json`` (any command) or, for every program supervisord runs,
``[supervisor] log_format = "json"`` in the site file (``sctl deploy render`` then writes the
option into each program's command). The process commands' own ``--json`` selects it too.
`cli.common.setup_logging` installs it; logging is configured nowhere else.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any, Final

TEXT: Final = "text"
JSON: Final = "json"
FORMATS: Final = (TEXT, JSON)
PROGRAM_ENV: Final = "SUPERVISOR_PROCESS_NAME"
FIXED: Final = ("time", "level", "program", "logger", "message", "exception", "stack")
# attributes every LogRecord has: whatever else a record carries came from `extra=`
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}

_selected = TEXT


def select(fmt: str) -> None:
    """Choose the format of this process's log (``--log-format``); before `setup_logging`."""
    global _selected
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    _selected = fmt


def json_selected(as_json: bool = False) -> bool:
    """Whether log lines are JSON: chosen by `select` or by a command's own ``--json``."""
    return as_json or _selected == JSON


def check_format(value: Any) -> None:
    """A site-file check for ``[supervisor] log_format``."""
    if value not in FORMATS:
        raise ValueError(f"must be one of {', '.join(repr(f) for f in FORMATS)}")


def program_name() -> str:
    """The program this process is, as `JsonLogFormatter` names it (see the module doc)."""
    from_supervisor = os.environ.get(PROGRAM_ENV)
    if from_supervisor:
        return from_supervisor
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return "sctl"
    name = ctx.params.get("name")
    if isinstance(name, str) and name:
        return name
    kind = ctx.params.get("kind")
    if ctx.info_name == "sim" and isinstance(kind, str):
        return f"sim-{kind}"
    return ctx.info_name or "sctl"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record (see the module doc); `program` defaults to
    `program_name()` of the process at construction."""

    def __init__(self, program: str | None = None) -> None:
        super().__init__()
        self.program = program if program is not None else program_name()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "program": self.program, "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[f"extra_{key}" if key in FIXED else key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=_plain)
