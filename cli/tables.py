"""Text tables that fit the terminal.

Each `Column` has an importance. When the natural widths do not fit, the columns give way
least important first: text is truncated down to its `min_width` (cut text ends in "…"), a
number is dropped (a cut number misleads); if that is not enough, the truncated ones are
dropped too, least important first; a column marked `keep` (a program's name, its
state) is never truncated nor dropped. Notes too long for a line (alarms, reasons) are
wrapped with `wrap`.

The width is ``$COLUMNS`` if set, else the terminal's when stdout is one; into a pipe or a file
nothing is cut (scripts should use ``--json`` anyway).
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TextIO

GAP: Final = 1  # spaces between columns
ELLIPSIS: Final = "…"


@dataclass(frozen=True)
class Column:
    header: str
    importance: int = 1  # lower: truncated, then dropped, first
    min_width: int = 4  # narrowest it is truncated to before it is dropped
    keep: bool = False  # never truncated nor dropped
    right: bool = False  # numbers: aligned right, dropped rather than cut


def terminal_width(stream: TextIO | None = None) -> int | None:
    """``$COLUMNS``, else the terminal's width when `stream` (stdout) is one, else None."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[:max(0, width - 1)] + ELLIPSIS if width > 0 else ""


def layout(columns: Sequence[Column], rows: Sequence[Sequence[str]],
           width: int | None) -> list[int | None]:
    """The width of each column, None for a dropped one."""
    widths: list[int | None] = [max([len(c.header), *(len(r[i]) for r in rows)])
                                for i, c in enumerate(columns)]
    if width is None:
        return widths

    def excess() -> int:
        shown = [w for w in widths if w is not None]
        return sum(shown) + GAP * (len(shown) - 1) - width

    # least important first; among equals, the rightmost first
    order = sorted((i for i, c in enumerate(columns) if not c.keep),
                   key=lambda i: (columns[i].importance, -i))
    for i in order:
        over, w = excess(), widths[i]
        if over <= 0:
            return widths
        if columns[i].right:  # a cut number misleads: dropped instead
            widths[i] = None
        elif w is not None and w > columns[i].min_width:
            widths[i] = max(columns[i].min_width, w - over)
    for i in order:
        if excess() <= 0:
            break
        widths[i] = None
    return widths


def render(columns: Sequence[Column], rows: Sequence[Sequence[str]],
           width: int | None) -> list[str]:
    """The header line and one line per row, fitted to `width` (None: as wide as needed)."""
    widths = layout(columns, rows, width)
    lines = []
    for cells in ([c.header for c in columns], *rows):
        parts = []
        for c, w, text in zip(columns, widths, cells, strict=True):
            if w is None:
                continue
            text = cut(text, w)
            parts.append(text.rjust(w) if c.right else text.ljust(w))
        lines.append((" " * GAP).join(parts).rstrip())
    return lines


def wrap(text: str, width: int | None, indent: str = "  ") -> list[str]:
    """`text` wrapped to `width`, continuation lines indented (None: one line)."""
    if width is None or len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [""]
