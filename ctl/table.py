"""How ctrctl presents things: tables that fit the terminal, sizes and ages as docker writes them.

One table printer for every listing. Columns are separated by three spaces and left-aligned,
as docker's. On a terminal narrower than the table, the widest shrinkable columns are cut
(with "…") until the table fits or each is down to its header's width; anything but a
terminal gets the full width, so scripts and pipes never lose text.

Sizes and durations follow docker's go-units: `human_size` is decimal (`1.23MB`, used for
images, disk usage and I/O), `bytes_size` is binary (`1.5MiB`, used for memory), and
`human_duration` is docker's "5 minutes" / "About an hour".
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Collection, Sequence
from typing import TextIO

GAP = "   "
ELLIPSIS = "…"
MIN_WIDTH = 4  # a column is never cut below this (nor below its header)


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, ending with "…" when it was cut."""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS if width > 0 else ""


def fit(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int | None,
    shrink: Collection[int] | None = None,
) -> list[int]:
    """Column widths: natural, or narrowed (widest first) so the table fits `width`."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    if width is None or not widths:
        return widths
    allowed = set(range(len(widths)) if shrink is None else shrink)
    floors = [max(len(h), MIN_WIDTH) for h in header]
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    while excess > 0:
        candidates = [i for i in allowed if widths[i] > floors[i]]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: (widths[i], -i))
        others = [widths[i] for i in candidates if i != widest]
        # Narrow the widest down to the next widest (or by what is left) in one step.
        step = min(excess, widths[widest] - max([floors[widest], *others]) or 1)
        widths[widest] -= step
        excess -= step
    return widths


def render(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int | None = None,
    shrink: Collection[int] | None = None,
) -> list[str]:
    """The table's lines; `width` None means no limit."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = fit(header, rows, width, shrink)
    return [
        GAP.join(cut(cell, w).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(header), *rows]
    ]


def terminal_width(out: TextIO) -> int | None:
    """The terminal's width when `out` is one, else None (full width)."""
    try:
        if not out.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size().columns


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    out: TextIO | None = None,
    shrink: Collection[int] | None = None,
) -> None:
    """Print a table on `out` (stdout), fitted to the terminal if it is one."""
    out = out or sys.stdout
    for line in render(header, rows, terminal_width(out), shrink):
        out.write(line + "\n")
    out.flush()


def _custom_size(size: float, precision: int, base: float, units: Sequence[str]) -> str:
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def human_size(size: float, precision: int = 4) -> str:
    """Decimal sizes as docker prints them: `0B`, `999B`, `1.234kB`, `5.6MB`."""
    return _custom_size(size, precision, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB", "EB"))


def bytes_size(size: float) -> str:
    """Binary sizes as docker prints memory: `512KiB`, `1.5MiB`, `23.54GiB`."""
    return _custom_size(size, 4, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"))


def human_duration(seconds: float) -> str:
    """docker's coarse durations ("Less than a second", "5 minutes", "About an hour")."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = whole // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def ago(seconds_since_epoch: float, now: float) -> str:
    """`5 minutes ago`, or "" when the time is unknown (0)."""
    if not seconds_since_epoch:
        return ""
    return human_duration(max(now - seconds_since_epoch, 0)) + " ago"
