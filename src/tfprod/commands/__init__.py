"""CLI verbs that live beside ``tfprod.cli``, one module per stage.

Each module here defines ``register(app)`` that adds its verbs to the root typer app; it may use
the shared helpers of ``tfprod.cli`` (``_tf``, ``_progress``, ``_table``, ``_write_json``,
``console``). ``tfprod.cli`` registers every module named in ``MODULES``, in order.
"""

MODULES: tuple[str, ...] = ("export", "serve", "optimize")
