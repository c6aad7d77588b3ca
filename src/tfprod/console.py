"""Shared terminal output for the ``tfprod`` verbs: tables, progress, ``--json`` files.

Every module in ``tfprod.commands`` imports these; nothing imports ``tfprod.cli``. TensorFlow is
imported only through :func:`tf` (inside a verb), so ``tfprod --help`` answers at once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

console = Console()
err_console = Console(stderr=True)
state: dict[str, Any] = {"verbose": False, "argv": None}
"""Process-wide CLI state: ``verbose`` (``--verbose``) and ``argv`` (the arguments as given)."""

SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


def tf() -> None:
    """Import TensorFlow with its start-up noise off unless ``--verbose``."""
    from tfprod import runtime

    runtime.configure(verbose=state["verbose"])


def progress() -> Progress:
    """A transient progress bar on stderr (stdout stays clean for tables and pipes)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                    transient=True)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    err_console.print(f"[dim]wrote {path}[/]")


def write_text(path: Path | None, text: str) -> None:
    """Write a text report (Markdown, HTML) to ``path`` and say where."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    err_console.print(f"[dim]wrote {path}[/]")


_NUMBER = re.compile(r"^[-+]?[\d.,]*\d[\d.,]*\s?(µs|ms|s|KB|MB|GB|B|x|%|/s)?$")
_LONGEST_UNBROKEN = 24  # longer words (paths) fold; anything shorter is never cut


def table(title: str, columns: list[str], rows: list[list[Any]], *,
          width: int | None = None) -> Table:
    """A left-titled table that stays readable at 80 columns and uses the width it has.

    No word of a header or cell is cut in two (only words longer than 24 characters, such as
    paths, fold); numeric columns (numbers with an optional unit) are right-aligned. When the
    bordered layout cannot hold every column's longest word at ``width`` (the terminal's by
    default), the table drops its vertical borders and edge padding (two characters between
    columns instead of three). Spare width goes first to the columns that need the least to
    show their headers and cells unwrapped. Cell text is escaped so user strings never read as
    markup.
    """
    cells = [[str(v) for v in r] for r in rows]
    least, natural, numeric = [], [], []
    for i, name in enumerate(columns):
        column = [r[i] for r in cells if i < len(r)]
        is_number = bool(column) and all(v in ("", "-") or _NUMBER.match(v) for v in column)
        words = name.split() + [w for v in column for w in ([v] if is_number else v.split())]
        least.append(min(max((cell_len(w) for w in words), default=1), _LONGEST_UNBROKEN))
        natural.append(max(cell_len(v) for v in [name, *column]))
        numeric.append(is_number)
    available = width or console.width
    n = len(columns)
    bordered = sum(least) + 3 * n + 1 <= available
    spare = available - sum(least) - (3 * n + 1 if bordered else 2 * (n - 1))
    widths = list(least)
    for i in sorted(range(n), key=lambda i: natural[i] - least[i]):
        grow = min(max(spare, 0), natural[i] - widths[i])
        widths[i] += grow
        spare -= grow
    style = {} if bordered else {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False,
                                 "collapse_padding": True}
    out = Table(title=title, title_justify="left", **style)
    for name, w, is_number in zip(columns, widths, numeric, strict=True):
        out.add_column(name, width=w, overflow="fold", justify="right" if is_number else "left")
    for r in cells:
        out.add_row(*[escape(v) for v in r])
    return out
