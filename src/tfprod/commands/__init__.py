"""The ``tfprod`` verbs, one module per stage of the lifecycle.

Each module defines ``register(app)``, which adds its verbs to the root typer app; the shared
terminal helpers come from ``tfprod.console``. ``tfprod.cli`` registers every module named in
``MODULES``, in this order (the order of ``tfprod --help``).
"""

from __future__ import annotations

import typer

MODULES: tuple[str, ...] = ("quickstart", "data", "models", "train", "doctor", "export",
                            "optimize", "serve", "monitor", "rl", "migrate")


def group(app: typer.Typer, name: str, help: str) -> typer.Typer:
    """The ``tfprod NAME ...`` sub-app, created on first use (several stages add ``bench`` verbs).

    ``help`` is used only when this call creates the group.
    """
    for info in app.registered_groups:
        if info.name == name:
            return info.typer_instance
    sub = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub
