"""Shared terminal output for the ``tfprod`` verbs: tables, progress, ``--json`` files.

Every module in ``tfprod.commands`` imports these; nothing imports ``tfprod.cli``. TensorFlow is
imported only through :func:`tf` (inside a verb), so ``tfprod --help`` answers at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A left-titled table; cell text is escaped so user strings never read as markup."""
    out = Table(title=title, title_justify="left")
    for c in columns:
        out.add_column(c, overflow="fold")
    for r in rows:
        out.add_row(*[escape(str(v)) for v in r])
    return out
