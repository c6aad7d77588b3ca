"""`tfprod`: the root app. It registers the verbs of ``tfprod.commands`` and turns errors into
one line; the verbs and the shared console helpers live elsewhere, and nothing imports this module.

TensorFlow is imported only inside verbs (``tfprod --help`` answers at once), with its start-up
log noise off unless ``--verbose``.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import typer
from rich.markup import escape

from tfprod.console import err_console, state
from tfprod.errors import TfprodError

app = typer.Typer(
    help="tfprod: the production toolkit for TensorFlow 2.21 / Keras 3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="TensorFlow's logs and full tracebacks."),
) -> None:
    """tfprod: the production toolkit for TensorFlow 2.21 / Keras 3."""
    state["verbose"] = verbose


class _Warnings:
    """Prints tfprod's warnings (e.g. skipped records) as one yellow line; others if verbose."""

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("tfprod"):
            err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False,
                              soft_wrap=True)
        elif state["verbose"]:
            err_console.print(f"[yellow]warning[/] {category.__name__}: {escape(str(message))} "
                              f"({filename}:{lineno})", highlight=False, soft_wrap=True)


def _register_commands() -> None:
    from tfprod import commands

    for name in commands.MODULES:
        importlib.import_module(f"tfprod.commands.{name}").register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tfprod`` command."""
    warnings.showwarning = _Warnings()
    args = sys.argv[1:] if argv is None else argv
    state["argv"] = list(args)
    state["verbose"] = "--verbose" in args or "-v" in args
    try:
        app(args=args, prog_name="tfprod", standalone_mode=True)
    except SystemExit:
        raise
    except TfprodError as e:
        if state["verbose"]:
            err_console.print_exception()
        err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        raise SystemExit(130) from None
    except Exception as e:
        if state["verbose"]:
            err_console.print_exception()
        first = (getattr(e, "message", None) or str(e)).strip().splitlines()
        detail = first[0] if first else type(e).__name__
        err_console.print(f"[red]error:[/] {type(e).__name__}: {escape(detail)} "
                          "(run with --verbose for the traceback)", highlight=False,
                          soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
