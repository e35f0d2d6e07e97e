"""Tables that fit the terminal: the least important columns give way first, the kept ones
(a program's name, its state) never do."""

from __future__ import annotations

import pytest

from cli.tables import ELLIPSIS, Column, layout, render, terminal_width, wrap

COLUMNS = (Column("PROGRAM", keep=True), Column("STATE", keep=True),
           Column("LINK", 5, min_width=8), Column("EVENTS", 3, right=True),
           Column("NOTE", 1, min_width=6))
ROWS = [["reader1", "RUNNING", "down since 14:02:11, 37 attempts, last: refused", "1234",
         "stopped after 5 restarts within 60 s"],
        ["spec1", "FATAL", "-", "0", ""]]


def test_wide_enough_nothing_changes() -> None:
    lines = render(COLUMNS, ROWS, 500)
    assert lines == render(COLUMNS, ROWS, None)
    assert lines[1].startswith("reader1 RUNNING down since 14:02:11, 37 attempts, last: refused")
    assert "stopped after 5 restarts within 60 s" in lines[1]
    assert lines[2].split()[:2] == ["spec1", "FATAL"]


@pytest.mark.parametrize("width", [100, 80, 60, 40, 30, 24])
def test_every_line_fits_and_the_state_is_whole(width: int) -> None:
    lines = render(COLUMNS, ROWS, width)
    assert all(len(line) <= width for line in lines), lines
    assert lines[1].split()[:2] == ["reader1", "RUNNING"]
    assert lines[2].split()[:2] == ["spec1", "FATAL"]


def test_least_important_gives_way_first() -> None:
    widths = layout(COLUMNS, ROWS, 80)
    assert widths[0] == len("reader1") and widths[1] == len("RUNNING")
    link, note = widths[2], widths[4]
    assert link is not None and link == len(ROWS[0][2])  # LINK untouched ...
    assert note is not None and note < len(ROWS[0][4])  # ... while NOTE was cut
    narrow = layout(COLUMNS, ROWS, 30)
    assert narrow[4] is None  # NOTE dropped before LINK
    assert narrow[2] is not None and narrow[2] >= COLUMNS[2].min_width
    assert ELLIPSIS in render(COLUMNS, ROWS, 30)[1]


def test_kept_columns_survive_a_tiny_width() -> None:
    lines = render(COLUMNS, ROWS, 5)
    assert lines[0].split() == ["PROGRAM", "STATE"]
    assert lines[1].split() == ["reader1", "RUNNING"]


def test_numbers_align_right_and_lines_end_without_blanks() -> None:
    lines = render(COLUMNS, ROWS, None)
    at = lines[0].index("EVENTS")
    assert lines[2][at:at + len("EVENTS")] == "     0"
    assert all(line == line.rstrip() for line in lines)


def test_wrap_and_width_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "ALARM reader1: stopped after 5 restarts within 60 s; last: exited: boom"
    assert wrap(text, None) == [text]
    lines = wrap(text, 30)
    assert len(lines) > 1 and all(len(line) <= 30 for line in lines)
    assert lines[1].startswith("  ")
    monkeypatch.setenv("COLUMNS", "57")
    assert terminal_width() == 57
    monkeypatch.delenv("COLUMNS")
    assert terminal_width() is None  # pytest's stdout is no terminal: nothing is cut
